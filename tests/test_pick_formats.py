"""Picks in the formats networks ingest (pipeline/deploy/pick_formats.py) and the live listener (pipeline/stages/listen.py):
QuakeML / SeisComP XML / NonLinLoc from picks replayed through the firmware's core, read back; Earthworm
TYPE_PICK_SCNL lines as pick_ew writes them; the listen stage on a file of JSON lines and on a pseudo-terminal."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli
from pipeline.deploy import pick_formats
from pipeline.errors import EdgepickError
from pipeline.model.picking import PickRule

from host_core import stream_args, synthetic_stream

obspy = pytest.importorskip("obspy")

REPO = Path(__file__).resolve().parents[1]
START = obspy.UTCDateTime(2020, 1, 1, 3, 4, 5.25)
STATION = "OK.X34..HH"
# A TYPE_PICK_SCNL message as Earthworm documents it (the comment of rd_pick_scnl in src/libsrc/util/rdpickcoda.c):
EARTHWORM_EXAMPLE = "8 6 3 7226 PCC.SHZ.NC.01 U2 20040430210553.360 161 200 137"
# rd_pick_scnl's own reading of it: sscanf("%d %d %d %d %s %c%c %18s %ld %ld %ld")
EARTHWORM_FIELDS = re.compile(r"^(\d+) (\d+) (\d+) (\d+) (\S+)\.(\S+)\.(\S+)\.(\S+) (\S)(\d) (\d{14}\.\d{2}0) (-?\d+) "
                              r"(-?\d+) (-?\d+)$")


def replay_module():
    from pipeline.deploy import replay

    return replay


# ---------------------------------------------------------------------------------------------------------------
# Picks replayed through the firmware's core (host build) from a miniSEED file, written by scripts/replay.py
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def replayed(driver, tmp_path_factory):  # noqa: F811
    """scripts/replay.py --mseed --quakeml --earthworm against the host program serving the serial protocol on a
    pseudo-terminal: (the picks it printed, the folder of its files)."""
    import tty

    import serial

    replay = replay_module()
    folder = tmp_path_factory.mktemp("replayed")
    x = synthetic_stream()
    stream = obspy.Stream([obspy.Trace(x[i].copy(), header={"network": "OK", "station": "X34", "channel": f"HH{c}",
                                                             "sampling_rate": 100.0, "starttime": START})
                           for i, c in enumerate("ZNE")])
    stream.write(str(folder / "x34.mseed"), format="MSEED")
    master, slave = os.openpty()
    tty.setraw(slave)
    env = dict(os.environ, EDGEPICK_TTY=os.ttyname(slave))
    server = subprocess.Popen([str(driver), "serve", *map(str, stream_args()[1:])], env=env, stderr=subprocess.PIPE)
    port = os.fdopen(master, "r+b", buffering=0)
    real_serial = serial.Serial
    serial.Serial = lambda *args, **kwargs: port  # replay.py opens "the device": this end of the terminal
    try:
        rc = replay.main(["--port", "pty", "--mseed", str(folder / "x34.mseed"), "--speed", "0", "--timeout", "30",
                          "--out", str(folder / "picks.jsonl"), "--quakeml", str(folder / "picks.xml"),
                          "--earthworm", str(folder / "picks.pick_scnl")])
    finally:
        serial.Serial = real_serial
        server.kill()
        server.wait()
        os.close(slave)
    assert rc == 0
    picks = [json.loads(line) for line in (folder / "picks.jsonl").read_text().splitlines()]
    assert len(picks) >= 4 and {p["phase"] for p in picks} == {"P", "S"}
    return picks, folder


def extra_probability(pick) -> float:
    extra = pick.extra["probability"]
    assert extra["namespace"] == pick_formats.EDGEPICK_NAMESPACE
    return float(extra["value"])


def test_quakeml_from_replayed_picks_reads_back(replayed):
    picks, folder = replayed
    assert all(abs(p["time"] - (START.timestamp + p["sample"] / 100.0)) < 1e-6 for p in picks)  # absolute times
    catalog = obspy.read_events(str(folder / "picks.xml"), format="QUAKEML")
    assert len(catalog) == 1
    back = sorted(catalog[0].picks, key=lambda p: p.time)
    assert len(back) == len(picks)
    for pick, q in zip(sorted(picks, key=lambda p: p["time"]), back):
        assert abs(q.time.timestamp - pick["time"]) <= 1e-6
        assert q.phase_hint == pick["phase"] and q.evaluation_mode == "automatic"
        assert q.time_errors.uncertainty == pytest.approx(pick["unc"], abs=1e-9)
        assert pick["unc"] == pytest.approx(pick["fwhm"] / (2 * math.sqrt(2 * math.log(2))) / 100.0, abs=5e-5)
        assert q.waveform_id.get_seed_string() == f"OK.X34..HH{'Z' if pick['phase'] == 'P' else 'N'}"
        assert extra_probability(q) == pytest.approx(pick["prob"], abs=1e-6)
        assert any(f"{pick['prob']:.6f}" in c.text for c in q.comments)
        assert str(q.method_id) == "smi:edgepick/picker/student" and q.creation_info.author == "edgepick"


def test_earthworm_file_from_replayed_picks(replayed):
    picks, folder = replayed
    lines = (folder / "picks.pick_scnl").read_text().splitlines()
    assert len(lines) == len(picks)
    for k, (line, pick) in enumerate(zip(lines, sorted(picks, key=lambda p: p["time"])), start=1):
        fields = EARTHWORM_FIELDS.match(line).groups()
        assert fields[:4] == ("8", str(pick_formats.EARTHWORM_MODULE), str(pick_formats.EARTHWORM_INSTALLATION), str(k))
        assert fields[4:8] == ("X34", "HHZ" if pick["phase"] == "P" else "HHN", "OK", "--")
        assert fields[8] == "?" and int(fields[9]) == pick_formats.earthworm_weight(pick["unc"])
        time = obspy.UTCDateTime.strptime(fields[10][:-1], "%Y%m%d%H%M%S.%f")
        assert abs(time.timestamp - pick["time"]) <= 0.005 + 1e-6  # rounded to the hundredth, as pick_ew does


def test_sc3ml_and_nlloc_from_replayed_picks(replayed, tmp_path):
    picks, _ = replayed
    waveform_id = pick_formats.parse_waveform_id(STATION)
    catalog = pick_formats.picks_catalog(picks, waveform_id, agency="OK")
    sc3ml = pick_formats.write_sc3ml(catalog, tmp_path / "picks.sc3ml.xml")
    root = ET.parse(sc3ml).getroot()
    ns = {"sc": root.tag[1:].split("}")[0]}
    assert "seiscomp" in root.tag
    elements = root.findall("sc:EventParameters/sc:pick", ns)
    ordered = sorted(picks, key=lambda p: p["time"])
    assert len(elements) == len(picks)
    for element, pick in zip(elements, ordered):
        time = obspy.UTCDateTime(element.find("sc:time/sc:value", ns).text)
        assert abs(time.timestamp - pick["time"]) <= 1e-6
        assert float(element.find("sc:time/sc:uncertainty", ns).text) == pytest.approx(pick["unc"])
        assert element.find("sc:phaseHint", ns).text == pick["phase"]
        assert element.find("sc:evaluationMode", ns).text == "automatic"
        assert element.find("sc:creationInfo/sc:agencyID", ns).text == "OK"
        wid = element.find("sc:waveformID", ns).attrib
        assert (wid["networkCode"], wid["stationCode"], wid["channelCode"]) == (
            "OK", "X34", "HHZ" if pick["phase"] == "P" else "HHN")
        assert f"{pick['prob']:.6f}" in element.find("sc:comment/sc:text", ns).text
    # obspy's SeisComP reader keeps only picks an origin refers to: these, not yet located, read back as none
    read = obspy.read_events(str(sc3ml), format="SCML")
    assert len(read) == 1 and all(p.phase_hint in "PS" for p in read[0].picks)

    nlloc = pick_formats.write_nlloc_obs(catalog, tmp_path / "picks.obs").read_text().splitlines()
    rows = [line.split() for line in nlloc if not line.startswith("PUBLIC_ID")]
    assert len(rows) == len(picks)
    for pick in ordered:
        time = obspy.UTCDateTime(pick["time"])
        channel = "HHZ" if pick["phase"] == "P" else "HHN"
        row = next(r for r in rows if r[2] == channel and r[4] == pick["phase"] and
                   abs(float(r[8]) - (time.second + time.microsecond / 1e6)) < 1e-4)
        assert row[0] == "X34" and row[6:8] == [time.strftime("%Y%m%d"), time.strftime("%H%M")]
        assert row[9] == "GAU" and float(row[10]) == pytest.approx(pick["unc"], rel=1e-2)


# ---------------------------------------------------------------------------------------------------------------
# The uncertainty and Earthworm's line
# ---------------------------------------------------------------------------------------------------------------
def test_uncertainty_of_a_gaussian_peak_is_its_sigma():
    sigma = 12.0
    t = np.arange(2000)
    curve = (0.9 * np.exp(-0.5 * ((t - 1000) / sigma) ** 2)).astype(np.float32)
    (pick,) = PickRule(top_tolerance=None).picks(curve[:, None], "P", sampling_rate=100.0)
    assert pick["fwhm"] == 2 * 14 + 1  # the samples within sigma sqrt(2 ln 2) = 14.13 of the peak
    assert pick["uncertainty_s"] == pytest.approx(sigma / 100.0, rel=0.03)
    assert {"phase", "sample", "time", "prob", "on", "off"} <= set(pick)


def test_earthworm_line_has_pick_ew_layout():
    """Against Earthworm's own example: the same station, time, weight and ids give the same line but for what
    edgepick does not measure (first motion "?", amplitudes 0)."""
    pick = {"phase": "P", "time": obspy.UTCDateTime("2004-04-30T21:05:53.36").timestamp, "prob": 0.8, "unc": 0.15}
    line = pick_formats.earthworm_line(pick, pick_formats.parse_waveform_id("NC.PCC.01.SH"), 7226, installation=3,
                                       module=6)
    assert line.endswith("\n") and line.count("\n") == 1
    expected = EARTHWORM_EXAMPLE.replace(" U2 ", " ?2 ").replace(" 161 200 137", " 0 0 0")
    assert line.rstrip("\n") == expected
    example, ours = EARTHWORM_FIELDS.match(EARTHWORM_EXAMPLE).groups(), EARTHWORM_FIELDS.match(line.rstrip()).groups()
    assert [len(f) for f in example[:11]] == [len(f) for f in ours[:11]] and example[9] == ours[9] == "2"


def test_earthworm_time_weight_and_ids():
    def line(time, unc=0.01, phase="S", sequence=1, station="OK.X34..HHZ"):
        pick = {"phase": phase, "time": obspy.UTCDateTime(time).timestamp, "prob": 0.5, "unc": unc}
        return pick_formats.earthworm_line(pick, pick_formats.parse_waveform_id(station), sequence).split()

    assert line("2020-12-31T23:59:59.996")[6] == "20210101000000.000"  # rounding carries into the next year
    assert line("2020-01-01T00:00:07.004")[6] == "20200101000007.000"
    assert line("2020-01-01T00:00:07.005001")[6] == "20200101000007.010"
    assert line("2020-01-01T00:00:07")[4] == "X34.HHN.OK.--"  # S on the N component; no location: "--"
    assert line("2020-01-01T00:00:07", station="OK.X34.00.HH", phase="P")[4] == "X34.HHZ.OK.00"
    assert line("2020-01-01T00:00:07", sequence=1000000)[3] == "0"  # pick_ew's index wraps after 999999
    assert [pick_formats.earthworm_weight(u) for u in (0.0, 0.05, 0.0501, 0.1, 0.2, 0.4, 0.41, 5.0)] == [
        0, 0, 1, 1, 2, 3, 4, 4]
    with pytest.raises(EdgepickError, match="installation id must lie in 0 ... 255"):
        pick_formats.earthworm_line({"phase": "P", "time": 0.0, "prob": 0.5, "unc": 0.1},
                                    pick_formats.parse_waveform_id(STATION), 1, installation=256)


@pytest.mark.parametrize("bad", ["OK.X34", "OK.X34..H", "OK.X34..HHZZ", "OKLA.X34..HH", "OK.X34567..HH",
                                 "OK.X 34..HH", "OK.X34.ABC.HH", ""])
def test_malformed_waveform_ids_are_refused(bad):
    with pytest.raises(EdgepickError, match="is not NET.STA.LOC.CHA"):
        pick_formats.parse_waveform_id(bad)


@pytest.mark.parametrize("change,problem", [
    ({"time": float("nan")}, '"time" NaN is not an epoch second of 1970 ... 2100'),
    ({"time": float("inf")}, '"time" Infinity is not'), ({"time": 1e20}, '"time" 1e+20 is not'),
    ({"time": "12"}, '"time" "12" is not'), ({"prob": 1.5}, '"prob" 1.5 is not a probability'),
    ({"unc": "abc"}, '"unc" "abc" is not an uncertainty'), ({"unc": float("nan")}, '"unc" NaN is not'),
    ({"unc": -0.5}, '"unc" -0.5 is not'), ({"unc": None}, '"unc" is missing'),
    ({"phase": ["P"]}, '"phase" ["P"] is not P or S'),
    ({"sample": -3}, '"sample" -3 is not a sample index'), ({"prob": True}, '"prob" true is not'),
])
def test_a_pick_that_cannot_be_written_is_named(change, problem):
    """Each of these ended a writer in a traceback or wrote QuakeML that fails its schema, or a weight that lies."""
    pick = {"type": "pick", "phase": "P", "sample": 10, "time": 1.6e9, "prob": 0.8, "unc": 0.1, **change}
    assert problem in pick_formats.pick_problem(pick)
    assert pick_formats.pick_problem({"phase": "S", "time": 0.0, "prob": 0.0, "uncertainty_s": 0.0}) is None
    good = {**pick, "phase": "P", "sample": 10, "time": 1.6e9, "prob": 0.8, "unc": 0.1}
    kept, problems = pick_formats.kept_picks([pick, good, good])
    assert kept == [good] and len(problems) == 2 and "repeats a pick kept already" in problems[1]


def test_the_next_earthworm_index_is_read_from_the_end_past_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "x.pick_scnl"
    assert pick_formats.next_earthworm_sequence(path) == 1
    path.write_bytes(b"\xff junk\n" * 5000 + b"8 0 255 41 X34.HHZ.OK.-- ?1 20210506070819.000 0 0 0\n\xff\xfe\n")
    assert pick_formats.next_earthworm_sequence(path) == 42
    path.write_bytes(b"8 0 255 999999 X34.HHZ.OK.-- ?1 20210506070819.000 0 0 0\n")
    assert pick_formats.next_earthworm_sequence(path) == 0  # pick_ew's index wraps


# ---------------------------------------------------------------------------------------------------------------
# The listen stage
# ---------------------------------------------------------------------------------------------------------------
def device_output(t0: float) -> list[str]:
    def pick(phase, sample, prob, fwhm):
        unc = fwhm / (2 * math.sqrt(2 * math.log(2))) / 100.0
        return json.dumps({"type": "pick", "phase": phase, "sample": sample, "time": round(t0 + sample / 100.0, 6),
                           "prob": prob, "fwhm": fwhm, "unc": round(unc, 4), "on": sample - 5, "off": sample + 5})

    return ["ets Jun  8 2016 00:22:57 rst:0x1 (POWERON_RESET)", '{"type":"info","msg":"ready"}',
            pick("P", 1234, 0.81, 24), '{"type":"warn","msg":"gap of 5 samples at sample 1500: filled"}',
            '{"type":"pick","phase":"P"', pick("S", 1600, 0.62, 60),
            '{"type":"info","msg":"end: 3000 samples, 5 windows, 2 picks, 0 bad lines, 5 gap samples"}',
            pick("P", 2500, 0.9, 20)]  # after the end of stream: not read


def listen_args(port: str, out: Path, *more: str) -> list[str]:
    args = ["listen", "--set", f"listen.port={port}", "--set", f"listen.station={STATION}", "--set",
            f"listen.out={out}", "--set", "listen.formats=quakeml,sc3ml,earthworm"]
    for item in more:
        args += ["--set", item]
    return args


def check_session(out: Path, t0: float, first_sequence: int = 1) -> None:
    (quakeml,) = out.glob("*.quakeml.xml")
    assert len(list(out.glob("*.sc3ml.xml"))) == 1
    picks = sorted(obspy.read_events(str(quakeml))[0].picks, key=lambda p: p.time)
    assert [(p.phase_hint, p.waveform_id.channel_code) for p in picks] == [("P", "HHZ"), ("S", "HHN")]
    assert abs(picks[0].time.timestamp - (t0 + 12.34)) <= 1e-6 and extra_probability(picks[1]) == pytest.approx(0.62)
    lines = (out / f"{STATION}{pick_formats.EARTHWORM_SUFFIX}").read_text().splitlines()
    assert [line.split()[3] for line in lines[-2:]] == [str(first_sequence), str(first_sequence + 1)]


def test_listen_reads_a_file_until_the_end_of_stream(tmp_path, capsys):
    t0 = obspy.UTCDateTime(2021, 5, 6, 7, 8, 9).timestamp
    source = tmp_path / "board.log"
    source.write_text("\n".join(device_output(t0)) + "\n")
    out = tmp_path / "listen"
    assert cli.main(listen_args(str(source), out)) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 and "OK.X34..HHN" in captured.out.splitlines()[1]
    assert "device warn: gap of 5 samples" in captured.err
    assert "end of stream: 2 picks (0 retracted), 0 device errors, 2 non-JSON lines" in captured.err
    check_session(out, t0)
    # a second session appends to the Earthworm file, its pick index going on (as pick_ew's across restarts)
    for path in out.glob("*.xml"):
        path.unlink()
    assert cli.main(listen_args(str(source), out, "listen.max_picks=2")) == 0
    check_session(out, t0, first_sequence=3)


def test_listen_marks_a_retracted_pick_rejected(tmp_path, capsys):
    """A "retract" line (the live mode's retraction) turns its pick's QuakeML and SeisComP XML status to rejected and
    takes it out of the NonLinLoc phase lines; the operator is told its Earthworm line went out already. A
    retraction of a pick the session never saw is a warning, not a crash; one read twice counts once."""
    t0 = obspy.UTCDateTime(2021, 5, 6, 7, 8, 9).timestamp
    lines = device_output(t0)
    end = next(k for k, line in enumerate(lines) if '"end:' in line)
    retract_s = '{"type":"retract","phase":"S","sample":1600,"time":%.6f,"reported":2700}' % (t0 + 16.0)
    retract_unknown = '{"type":"retract","phase":"P","sample":999,"time":%.6f,"reported":2701}' % (t0 + 9.99)
    lines[end:end] = [retract_s, retract_s, retract_unknown]  # the S one twice: counted once
    source = tmp_path / "board.log"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "listen"
    assert cli.main(listen_args(str(source), out, "listen.formats=quakeml,sc3ml,nlloc,earthworm")) == 0
    captured = capsys.readouterr()
    assert "retracted: S  OK.X34..HHN" in captured.out and "its Earthworm line went out already" in captured.out
    assert "matches no pick of this session" in captured.err and "2 picks (1 retracted)" in captured.err
    (quakeml,) = out.glob("*.quakeml.xml")
    picks = sorted(obspy.read_events(str(quakeml))[0].picks, key=lambda p: p.time)
    assert [(p.phase_hint, p.evaluation_status) for p in picks] == [("P", None), ("S", "rejected")]
    (sc3ml,) = out.glob("*.sc3ml.xml")
    assert sc3ml.read_text().count("<evaluationStatus>rejected</evaluationStatus>") == 1
    (nlloc,) = out.glob("*.nlloc.obs")
    phases = [line.split()[4] for line in nlloc.read_text().splitlines() if len(line.split()) > 4]
    assert phases == ["P"]
    # written at once (replay.py), the Earthworm file leaves it out
    written = pick_formats.write_earthworm([{"phase": "P", "time": t0, "unc": 0.05, "retracted": None},
                                            {"phase": "S", "time": t0 + 3, "unc": 0.05, "retracted": 2700}],
                                           pick_formats.parse_waveform_id(STATION), tmp_path / "x.pick_scnl")
    assert len(written.read_text().splitlines()) == 1


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="no pseudo-terminals")
def test_listen_on_a_serial_port(tmp_path, capsys, monkeypatch):
    """The board's side of a pseudo-terminal written to, the listener reading the other side through pyserial."""
    import tty

    from pipeline.stages import listen

    master, slave = os.openpty()
    tty.setraw(slave)
    opened = threading.Event()
    open_serial = listen.open_serial

    def open_and_tell(port, baud):
        device = open_serial(port, baud)
        opened.set()
        return device

    monkeypatch.setattr(listen, "open_serial", open_and_tell)
    t0 = obspy.UTCDateTime(2021, 5, 6, 7, 8, 9).timestamp

    def board():
        if opened.wait(30):
            for line in device_output(t0):
                os.write(master, (line + "\r\n").encode())

    writer = threading.Thread(target=board, daemon=True)
    writer.start()
    out = tmp_path / "listen"
    try:
        assert cli.main(listen_args(os.ttyname(slave), out, "listen.max_seconds=30")) == 0
    finally:
        writer.join(5)
        os.close(master)
        os.close(slave)
    assert "end of stream: 2 picks" in capsys.readouterr().err
    check_session(out, t0)


@pytest.mark.parametrize("settings,message", [
    (["listen.station=OK.X34", "listen.port=FILE"], "station id 'OK.X34' is not NET.STA.LOC.CHA"),
    (["listen.station=OK.X34..HH", "listen.port=/nonexistent/ttyUSB9"], "cannot open /nonexistent/ttyUSB9"),
    (["listen.station=OK.X34..HH"], "listen.port is required"),
    (["listen.port=FILE"], "listen.station is required"),
    (["listen.station=OK.X34..HH", "listen.port=FILE", "listen.formats=quakeml,kml"], "unknown format 'kml'"),
])
def test_listen_bad_input_is_one_line(tmp_path, capsys, settings, message):
    source = tmp_path / "board.log"
    source.write_text("")
    args = ["listen", "--set", f"listen.out={tmp_path / 'out'}"]
    for item in settings:
        args += ["--set", item.replace("FILE", str(source))]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("edgepick listen: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_replay_needs_a_station_for_network_formats(tmp_path, capsys):
    """A dataset trace has no station: --quakeml without --waveform-id is refused in one line, before streaming."""
    replay = replay_module()
    rc = replay.main(["--port", "/nonexistent/tty", "--dataset", str(tmp_path), "--quakeml", str(tmp_path / "q.xml")])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and "--waveform-id NET.STA.LOC.CHA" in err[0]
