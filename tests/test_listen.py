"""The live listener (pipeline/stages/listen.py, pipeline/deploy/pick_store.py) loses nothing a board sends (issue 31):
two sessions of one station at once, Ctrl-C and kill -9, an output folder it cannot write, a silent writer, bad
lines. Each test drives ``python -m pipeline listen`` (in this process or as a command) and looks at its files."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline import cli

obspy = pytest.importorskip("obspy")

REPO = Path(__file__).resolve().parents[1]
STATION = "OK.X34..HH"
T0 = 1620284889.0
ALL_FORMATS = "listen.formats=quakeml,sc3ml,nlloc,earthworm"


def pick_line(k: int, **changes) -> str:
    """The firmware's k-th pick line (P and S in turn, 2.5 s apart), with ``changes`` (... = left out)."""
    sample = 1000 + 250 * k
    pick = {"type": "pick", "phase": "PS"[k % 2], "sample": sample, "time": round(T0 + sample / 100.0, 6),
            "prob": 0.8, "fwhm": 24, "unc": 0.1, "on": sample - 5, "off": sample + 5}
    pick.update(changes)
    return json.dumps({key: value for key, value in pick.items() if value is not ...})


def retract_line(k: int) -> str:
    sample = 1000 + 250 * k
    return json.dumps({"type": "retract", "phase": "PS"[k % 2], "sample": sample, "time": T0 + sample / 100.0,
                       "reported": sample + 600})


def board_lines(n: int, retract_every: int = 7) -> list[str]:
    """``n`` pick lines, every ``retract_every``-th withdrawn by a retract line right after it."""
    lines = ['{"type":"info","msg":"ready"}']
    for k in range(n):
        lines.append(pick_line(k))
        if k % retract_every == retract_every - 1:
            lines.append(retract_line(k))
    return lines


def listen_args(port, out: Path, *more: str) -> list[str]:
    args = ["listen", "--set", f"listen.port={port}", "--set", f"listen.station={STATION}", "--set",
            f"listen.out={out}"]
    for item in more:
        args += ["--set", item]
    return args


def listen_command(port, out: Path, *more: str, **kwargs) -> subprocess.Popen:
    """listen as a command, started as from a terminal: SIGINT and SIGTERM at their defaults even where the suite
    itself runs as a background job (which ignores SIGINT, and listen rightly keeps a signal ignored at start)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def terminal_signals():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)

    return subprocess.Popen([sys.executable, "-m", "pipeline", *listen_args(port, out, *more)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=terminal_signals,
                            **kwargs)


def one(folder: Path, pattern: str) -> Path:
    (path,) = folder.glob(pattern)
    return path


def catalog_picks(folder: Path) -> dict[str, list[tuple[str, float, str | None]]]:
    """(phase, time, evaluation status) of the picks of each catalog format of the session in ``folder``."""
    import xml.etree.ElementTree as ET

    quakeml = obspy.read_events(str(one(folder, "*.quakeml.xml")))[0].picks
    root = ET.parse(one(folder, "*.sc3ml.xml")).getroot()
    ns = {"sc": root.tag[1:].split("}")[0]}
    sc3ml = [(e.find("sc:phaseHint", ns).text, obspy.UTCDateTime(e.find("sc:time/sc:value", ns).text).timestamp,
              getattr(e.find("sc:evaluationStatus", ns), "text", None))
             for e in root.findall("sc:EventParameters/sc:pick", ns)]
    nlloc = []
    for line in one(folder, "*.nlloc.obs").read_text().splitlines():
        row = line.split()
        if len(row) > 10 and row[9] == "GAU":
            day = obspy.UTCDateTime.strptime(row[6] + row[7], "%Y%m%d%H%M")
            nlloc.append((row[4], round(day.timestamp + float(row[8]), 4), None))
    return {"quakeml": sorted((p.phase_hint, round(p.time.timestamp, 4), p.evaluation_status) for p in quakeml),
            "sc3ml": sorted((phase, round(t, 4), status) for phase, t, status in sc3ml), "nlloc": sorted(nlloc)}


class PacedWriter(threading.Thread):
    """Writes lines into a FIFO, ``pause`` s apart, then keeps it open (a board that goes quiet) until ``done``."""

    def __init__(self, fifo: Path, lines: list[str], pause: float = 0.01):
        super().__init__(daemon=True)
        self.fifo, self.lines, self.pause, self.done = fifo, lines, pause, threading.Event()

    def run(self):
        try:
            with open(self.fifo, "w") as handle:
                for line in self.lines:
                    if self.done.is_set():
                        return
                    handle.write(line + "\n")
                    handle.flush()
                    time.sleep(self.pause)
                self.done.wait(60)
        except BrokenPipeError:
            pass


def run_until_picks(tmp_path: Path, n_picks: int, signum: int, *more: str):
    """listen as a command on a FIFO fed pick lines; ``signum`` sent once it printed ``n_picks`` picks. Returns
    (return code, stdout lines, stderr, out folder)."""
    fifo, out = tmp_path / "board", tmp_path / "out"
    os.mkfifo(fifo)
    process = listen_command(fifo, out, ALL_FORMATS, *more)
    writer = PacedWriter(fifo, board_lines(400))
    writer.start()
    printed = []
    try:
        for line in process.stdout:
            printed.append(line.rstrip("\n"))
            if sum(not p.startswith("retracted") for p in printed) >= n_picks:
                process.send_signal(signum)
                break
        rest, err = process.stdout.read(), process.stderr.read()  # what the line iterator had read ahead too
        process.wait(120)
    finally:
        writer.done.set()
        process.kill()
    return process.returncode, printed + rest.splitlines(), err, out


# ---------------------------------------------------------------------------------------------------------------
# Item 2: two sessions of one station started in the same second
# ---------------------------------------------------------------------------------------------------------------
def test_two_sessions_started_in_the_same_second_keep_their_own_files_and_pick_indices(tmp_path, monkeypatch, capsys):
    """Both sessions are reading before either gets its pick: each keeps its own catalog (the second was named by
    the same start second and overwrote the first) and their Earthworm lines have two indices (both were 1)."""
    frozen = time.gmtime()
    real_gmtime = time.gmtime
    monkeypatch.setattr(time, "gmtime", lambda *args: real_gmtime(*args) if args else frozen)
    out = tmp_path / "out"
    fifos = [tmp_path / "a", tmp_path / "b"]
    results = {}

    def session(fifo):
        results[fifo.name] = cli.main(listen_args(fifo, out, "listen.formats=quakeml,earthworm"))

    threads = []
    for fifo in fifos:
        os.mkfifo(fifo)
        threads.append(threading.Thread(target=session, args=(fifo,), daemon=True))
        threads[-1].start()
    writers = [open(fifo, "w") for fifo in fifos]  # returns once both sessions opened their FIFO
    time.sleep(0.5)
    for k, writer in enumerate(writers):
        writer.write(pick_line(k) + "\n")
        writer.flush()
        time.sleep(0.5)
    for writer in writers:
        writer.close()
    for thread in threads:
        thread.join(60)
    assert results == {"a": 0, "b": 0}
    catalogs = sorted(out.glob("*.quakeml.xml"))
    assert len(catalogs) == 2
    assert sorted(len(obspy.read_events(str(path))[0].picks) for path in catalogs) == [1, 1]
    lines = (out / f"{STATION}.pick_scnl").read_text().splitlines()
    assert sorted(line.split()[3] for line in lines) == ["1", "2"]


# ---------------------------------------------------------------------------------------------------------------
# Item 3: Ctrl-C loses nothing in any format; kill -9 loses nothing of the journal
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_loses_no_pick_or_retraction_in_any_format(tmp_path):
    """SIGINT in the middle of a session: QuakeML, SC3ML and NonLinLoc hold the same picks, as many as the summary
    and the printed lines say, a retracted pick rejected in both XML formats and absent from NonLinLoc."""
    rc, printed, err, out = run_until_picks(tmp_path, 60, signal.SIGINT)
    assert rc == 130, err
    summary = next(line for line in err.splitlines() if line.startswith("listen: interrupted: "))
    n, retracted = map(int, summary.split(": ")[2].replace(" picks (", " ").split()[:2])
    assert n >= 60 and n == sum(not p.startswith("retracted") for p in printed)
    assert retracted == sum(p.startswith("retracted") for p in printed) > 0
    picks = catalog_picks(out)
    assert len(picks["quakeml"]) == len(picks["sc3ml"]) == n
    assert [p[:2] for p in picks["quakeml"]] == [p[:2] for p in picks["sc3ml"]]
    rejected = [p[:2] for p in picks["quakeml"] if p[2] == "rejected"]
    assert len(rejected) == retracted and rejected == [p[:2] for p in picks["sc3ml"] if p[2] == "rejected"]
    assert [p[:2] for p in picks["nlloc"]] == [p[:2] for p in picks["quakeml"] if p[2] != "rejected"]
    assert len((out / f"{STATION}.pick_scnl").read_text().splitlines()) == n


@pytest.mark.slow
def test_kill_9_loses_nothing_of_the_journal_which_rebuilds_the_catalogs(tmp_path):
    """A session killed without a chance to write: its journal holds every pick line it printed, and listen
    reading the journal writes the catalogs of all of them."""
    rc, printed, _, out = run_until_picks(tmp_path, 40, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    n = sum(not p.startswith("retracted") for p in printed)
    journal = one(out, "*.jsonl")
    kept = [json.loads(line) for line in journal.read_text().splitlines()]
    assert sum(m["type"] == "pick" for m in kept) >= n >= 40
    rebuilt = tmp_path / "rebuilt"
    assert cli.main(listen_args(journal, rebuilt, ALL_FORMATS)) == 0
    assert len(catalog_picks(rebuilt)["quakeml"]) == sum(m["type"] == "pick" for m in kept)


# ---------------------------------------------------------------------------------------------------------------
# Item 4: refused at start, stops while the writer is silent
# ---------------------------------------------------------------------------------------------------------------
def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write: read-only, or (as root, who writes anywhere) below a regular file."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file" / "out"


@pytest.mark.parametrize("formats", ["quakeml", "quakeml,earthworm", "nlloc"])
def test_an_output_folder_listen_cannot_write_is_refused_before_the_first_pick(tmp_path, capsys, formats):
    source = tmp_path / "board.log"
    source.write_text(pick_line(0) + "\n" + pick_line(1) + "\n")
    out = unwritable_folder(tmp_path)
    assert cli.main(listen_args(source, out, f"listen.formats={formats}")) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no pick was read (and lost)
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith("edgepick listen: error: cannot write "), err


def test_max_seconds_is_kept_while_a_fifo_writer_is_silent(tmp_path, capsys):
    fifo = tmp_path / "board"
    os.mkfifo(fifo)
    writer = PacedWriter(fifo, [pick_line(0)])
    writer.start()
    result = []
    args = listen_args(fifo, tmp_path / "out", "listen.max_seconds=1")
    listener = threading.Thread(target=lambda: result.append(cli.main(args)), daemon=True)
    started = time.monotonic()
    listener.start()
    listener.join(30)
    writer.done.set()
    assert result == [0] and time.monotonic() - started < 15
    assert "listen: 1 s: 1 picks" in capsys.readouterr().err


@pytest.mark.slow
def test_max_seconds_is_kept_while_stdin_is_silent(tmp_path):
    process = listen_command("stdin", tmp_path / "out", "listen.max_seconds=1", stdin=subprocess.PIPE)
    try:
        process.wait(timeout=60)  # stdin stays open and silent
        err = process.stderr.read()
    finally:
        process.kill()
        process.stdin.close()
    assert process.returncode == 0 and "listen: 1 s: 0 picks" in err, err


# ---------------------------------------------------------------------------------------------------------------
# Item 5: one bad line is counted, skipped and named; the session goes on
# ---------------------------------------------------------------------------------------------------------------
BAD_PICKS = {  # a pick line that cannot be kept -> what the summary names
    "time NaN": (pick_line(1, time=math.nan), '"time" NaN'),
    "time Infinity": (pick_line(2, time=math.inf), '"time" Infinity'),
    "time 1e20": (pick_line(3, time=1e20), '"time" 1e+20'),
    "unc abc": (pick_line(4, unc="abc"), '"unc" "abc"'),
    "no unc": (pick_line(5, unc=...), '"unc" is missing'),
    "unc NaN": (pick_line(6, unc=math.nan), '"unc" NaN'),
    "phase list": (pick_line(7, phase=["P"]), '"phase" ["P"]'),
    "negative unc": (pick_line(8, unc=-0.5), '"unc" -0.5'),
}


def test_bad_pick_lines_are_skipped_and_named_and_the_session_goes_on(tmp_path, capsys):
    from obspy.io.quakeml.core import _validate

    out = tmp_path / "out"
    out.mkdir()
    # a pick file of an earlier session with bytes that are not UTF-8 after its last pick line
    (out / f"{STATION}.pick_scnl").write_bytes(b"8 0 255 41 X34.HHZ.OK.-- ?1 20210506070819.000 0 0 0\n\xff\xfe junk\n")
    lines = [pick_line(0)]
    for bad, _ in BAD_PICKS.values():
        lines += [bad, pick_line(20)]  # the same good pick after each bad line: kept once
    lines += [retract_line(20), pick_line(21), '{"type":"info","msg":"end: 3000 samples"}']
    source = tmp_path / "board.log"
    source.write_text("\n".join(lines) + "\n")
    assert cli.main(listen_args(source, out, ALL_FORMATS)) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 4  # picks 0, 20 and 21, and the retraction of 20
    summary = captured.err.splitlines()[-1]
    assert summary.startswith("listen: end of stream: 3 picks (1 retracted)"), summary
    assert f"{len(BAD_PICKS)} bad lines skipped (line 2: pick " in summary
    assert "7 repeated pick lines kept once" in summary
    for _, named in BAD_PICKS.values():
        assert named in captured.err
    quakeml = one(out, "*.quakeml.xml")
    assert _validate(str(quakeml))
    picks = catalog_picks(out)
    assert [p[2] for p in picks["quakeml"]] == [None, "rejected", None] and len(picks["nlloc"]) == 2
    earthworm = (out / f"{STATION}.pick_scnl").read_bytes().splitlines()[2:]
    assert [line.split()[3] for line in earthworm] == [b"42", b"43", b"44"]  # on from the last pick index
    assert all(line.split()[5] == b"?1" for line in earthworm)  # unc 0.1 s: weight 1; no negative unc as weight 0


def test_a_line_that_is_not_utf8_is_noise_not_a_crash(tmp_path, capsys):
    source = tmp_path / "board.log"
    source.write_bytes(b"\xff\xfe boot\n" + pick_line(0).encode() + b"\n" + b'{"type":"pick","phase":"\xff"}\n')
    assert cli.main(listen_args(source, tmp_path / "out")) == 0
    err = capsys.readouterr().err
    assert "1 picks (0 retracted), 0 device errors, 1 non-JSON lines, 1 bad line skipped" in err, err


# ---------------------------------------------------------------------------------------------------------------
# The study that shows a session is linear (its figures are printed, never asserted)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_listen_study_prints_picks_per_second_and_the_ratio(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", "study", "listen", "--picks", "3", "--formats",
                             "quakeml,earthworm"], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].lstrip().startswith("3 picks:") and lines[2].lstrip().startswith("6 picks:")
    assert lines[3].startswith("time per pick at 6 / at 3 picks: ") and "(1: linear, 2: quadratic)" in lines[3]
