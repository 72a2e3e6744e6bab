"""``python -m pipeline replay`` keeps what a board sent (issue 31): a board that stops answering (reset, unplugged,
no end-of-stream summary) still gets every pick received written in every output, with one line saying the
summary is missing and a non-zero exit; an output folder that cannot be written is refused before the replay; no
thread traceback when the port closes. The board here is a stand-in on a pseudo-terminal, read through pyserial
as a real one is."""

from __future__ import annotations

import json
import os
import threading
import time
import tty
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="no pseudo-terminals")
obspy = pytest.importorskip("obspy")
pytest.importorskip("serial")

T0 = obspy.UTCDateTime(2020, 1, 1)


class Board(threading.Thread):
    """A board on the far side of a pseudo-terminal: it says "ready" until the first line comes, picks P at sample
    500 and S at 1500, retracts the S at 2100, and at "#end" prints its summary ("good"), nothing ("silent", a
    board reset or timed out), or has gone after sample 2500 ("unplugged": its side is closed); "noisy" also sends a
    pick with a NaN time and the P pick again."""

    def __init__(self, mode: str):
        super().__init__(daemon=True)
        self.mode = mode
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.received = 0
        self.closed = False

    def say(self, message: dict) -> None:
        os.write(self.master, (json.dumps(message) + "\r\n").encode())

    def answer(self, line: str) -> bool:
        """Act on one line of the host; False when the board has gone."""
        if line == "#end" and self.mode in ("good", "noisy"):
            self.say({"type": "info", "msg": "end: 3000 samples, 0 bad lines"})
        first = line.split()[0] if line.split() else ""
        sample = int(first) if first.isdigit() else -1
        if sample in (500, 1500):
            self.say({"type": "pick", "phase": "P" if sample == 500 else "S", "sample": sample,
                      "time": T0.timestamp + sample / 100.0, "prob": 0.9, "fwhm": 20, "unc": 0.085,
                      "on": sample - 5, "off": sample + 5, "reported": sample + 200})
        if sample == 1000 and self.mode == "noisy":  # a pick that cannot be written, and the P pick again
            self.say({"type": "pick", "phase": "P", "sample": 1000, "time": float("nan"), "prob": 0.9, "unc": 0.1})
            self.say({"type": "pick", "phase": "P", "sample": 500, "time": T0.timestamp + 5.0, "prob": 0.9,
                      "unc": 0.085})
        if sample == 2100:
            self.say({"type": "retract", "phase": "S", "sample": 1500, "time": T0.timestamp + 15.0, "reported": 2100})
        if sample == 2500 and self.mode == "unplugged":
            time.sleep(1.0)  # what it sent is read by the host before the cable goes
            return False
        return True

    def run(self):
        greeting = threading.Thread(target=self.greet, daemon=True)
        greeting.start()
        buffer = b""
        try:
            while True:
                chunk = os.read(self.master, 65536)
                if not chunk:
                    return
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in lines:
                    self.received += 1
                    if not self.answer(line.decode().strip()):
                        self.close()
                        return
        except OSError:
            return

    def greet(self):
        while not self.received and not self.closed:
            try:
                self.say({"type": "info", "msg": "ready"})
            except OSError:
                return
            time.sleep(0.2)

    def close(self):
        if not self.closed:
            self.closed = True
            os.close(self.master)


@pytest.fixture
def mseed(tmp_path) -> Path:
    x = np.random.default_rng(0).normal(size=(3, 3000)).astype(np.float32)
    stream = obspy.Stream([obspy.Trace(x[i], header={"network": "OK", "station": "X34", "channel": f"HH{c}",
                                                     "sampling_rate": 100.0, "starttime": T0})
                           for i, c in enumerate("ZNE")])
    stream.write(str(tmp_path / "x34.mseed"), format="MSEED")
    return tmp_path / "x34.mseed"


def replay(mode: str, mseed: Path, folder: Path, *more: str) -> tuple[int, Board, list]:
    """(return code, the board, exceptions raised in threads) of a replay to a board in ``mode``."""
    from pipeline.deploy import replay as replay_module

    board = Board(mode)
    board.start()
    thread_errors = []
    previous = threading.excepthook
    threading.excepthook = thread_errors.append
    try:
        rc = replay_module.main(["--port", board.port, "--mseed", str(mseed), "--speed", "0", "--timeout", "1",
                                 "--out", str(folder / "picks.jsonl"), "--log", str(folder / "log.jsonl"),
                                 "--quakeml", str(folder / "picks.xml"), "--earthworm",
                                 str(folder / "picks.pick_scnl"), *more])
        time.sleep(0.5)  # a reader thread left running would fail on the closed port now
    finally:
        threading.excepthook = previous
        board.close()
        os.close(board.slave)
    return rc, board, thread_errors


def written(folder: Path) -> dict:
    picks = [json.loads(line) for line in (folder / "picks.jsonl").read_text().splitlines()]
    quakeml = obspy.read_events(str(folder / "picks.xml"))[0].picks
    return {"picks": [(p["phase"], p["sample"], p["retracted"]) for p in picks],
            "log": sum(json.loads(line).get("msg") != "ready"
                       for line in (folder / "log.jsonl").read_text().splitlines()),
            "quakeml": sorted((p.phase_hint, p.evaluation_status) for p in quakeml),
            "earthworm": len((folder / "picks.pick_scnl").read_text().splitlines())}


EXPECTED = {"picks": [("P", 500, None), ("S", 1500, 2100)], "quakeml": [("P", None), ("S", "rejected")],
            "earthworm": 1}


def test_a_good_replay_writes_everything_and_leaves_no_thread_behind(mseed, tmp_path, capsys):
    rc, _, thread_errors = replay("good", mseed, tmp_path)
    assert rc == 0 and thread_errors == []
    assert written(tmp_path) == {**EXPECTED, "log": 4}  # 2 picks, a retraction, the summary (and "ready")
    assert capsys.readouterr().err.splitlines()[-1].startswith("2 picks (1 retracted")


@pytest.mark.parametrize("mode,why", [("silent", "none within 1 s of the last sample"),
                                      ("unplugged", "reset or unplugged?")])
@pytest.mark.slow
def test_a_board_that_stops_answering_loses_nothing_it_sent(mseed, tmp_path, capsys, mode, why):
    """No end-of-stream summary (the board reset, timed out or was unplugged): every output is written with
    every pick received, one line says the summary is missing, the exit code is not 0, no thread traceback."""
    # the unplugged board closes ~1 s after its last pick: a longer --timeout (the last one given counts) keeps the
    # replay's own 1 s timeout from racing the unplug on a loaded machine
    more = ["--timeout", "10"] if mode == "unplugged" else []
    rc, _, thread_errors = replay(mode, mseed, tmp_path, *more)
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and thread_errors == []
    assert written(tmp_path) == {**EXPECTED, "log": 3}
    errors = [line for line in err if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("replay: error: no end-of-stream summary from the device ("), err
    assert why in errors[0] and "kept what it sent: 2 picks (1 retracted" in errors[0]
    assert str(tmp_path / "picks.xml") in errors[0]


@pytest.mark.parametrize("option", ["--out", "--log", "--quakeml", "--earthworm"])
def test_an_output_that_cannot_be_written_is_refused_before_the_replay(mseed, tmp_path, capsys, option):
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
    else:  # root writes anywhere: a folder below a regular file cannot be made
        (tmp_path / "a-file").write_text("")
        folder = tmp_path / "a-file" / "out"
    before = (tmp_path / "picks.jsonl").exists()
    rc, board, _ = replay("good", mseed, tmp_path, option, str(folder / "picks"))
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"replay: error: cannot write {folder / 'picks'}"), err
    assert board.received == 0  # refused before a line went to the board
    assert (tmp_path / "picks.jsonl").exists() == before


def test_pick_lines_that_cannot_be_written_are_named_and_left_out(mseed, tmp_path, capsys):
    """A NaN time and a repeated pick: each named in one line, left out of every output; the QuakeML stays valid."""
    from obspy.io.quakeml.core import _validate

    rc, _, _ = replay("noisy", mseed, tmp_path)
    err = capsys.readouterr().err
    assert rc == 0
    assert written(tmp_path) == {**EXPECTED, "log": 6}
    assert 'replay: skipped the pick at sample 1000: "time" NaN is not an epoch second' in err
    assert "replay: skipped the pick at sample 500: P at" in err and "repeats a pick kept already" in err
    assert _validate(str(tmp_path / "picks.xml"))
