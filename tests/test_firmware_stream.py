"""The whole streaming picker of the core (host build) against the Python pipeline and SeisBench's classify: the
same picks, sample for sample; garbage, gaps and bad settings."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from pipeline.deploy.serial_protocol import parse_pick_lines

from host_core import (EPS, HOP, IN_SAMPLES, TOP, compare_picks, run, square_model, stream_args, stream_reference,
                       stream_text, synthetic_stream)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no host g++")


# ---------------------------------------------------------------------------------------------------------------
# The whole streaming picker against the Python pipeline and SeisBench's classify
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("blinding", [(0, 0), (100, 60), (300, 200)])
def test_stream_without_exact_tail_keeps_only_the_open_span(driver, blinding):
    """Without the exact tail (EDGEPICK_EXACT_TAIL=0) each phase's stacker holds only the samples a later window can
    still add to (StackCapacity: from the first sample not final to the last one a window keeps), yet on a stream the
    regular windows end exactly on (no SeisBench last window) it picks as stream_picks, here with a long gap that
    restarts the windows after it too."""
    x = synthetic_stream()[:, : IN_SAMPLES + 8 * HOP]  # 2560 samples: windows at 0, 256, ..., 2048 end at its end
    ref, _ = stream_reference(x, square_model, IN_SAMPLES, HOP, 0.3, EPS, blinding=blinding, top_tolerance=TOP)
    lines = run(driver, *stream_args(exact=0, blinding=blinding), stdin=stream_text(x)).splitlines()
    assert not [line for line in lines if json.loads(line)["type"] == "error"]
    assert len(ref) >= 4
    compare_picks(parse_pick_lines(lines), ref)
    # a 300-sample gap (> max_gap_fill) ends the segment; the next one's picks are the second stream's, shifted
    gap = 300
    text = "".join(f"{i} {a:.9g} {b:.9g} {c:.9g}\n" for i, (a, b, c) in enumerate(x.T))
    text += "".join(f"{i + x.shape[1] + gap} {a:.9g} {b:.9g} {c:.9g}\n" for i, (a, b, c) in enumerate(x.T)) + "#end\n"
    got = parse_pick_lines(run(driver, *stream_args(exact=0, blinding=blinding), stdin=text).splitlines())
    shifted = [dict(p, sample=p["sample"] + x.shape[1] + gap, on=p["on"] + x.shape[1] + gap,
                    off=p["off"] + x.shape[1] + gap, time=p["time"] + (x.shape[1] + gap) / 100.0) for p in ref]
    compare_picks(got, ref + shifted)


@pytest.mark.parametrize("layout,blinding", [("last", (0, 0)), ("first", (0, 0)), ("last", (100, 60))])
def test_stream_matches_python_pipeline(driver, layout, blinding):
    x = synthetic_stream()
    ref, stacked = stream_reference(x, square_model, IN_SAMPLES, HOP, 0.3, EPS, blinding=blinding, top_tolerance=TOP)
    lines = run(driver, *stream_args(layout=layout, blinding=blinding), stdin=stream_text(x)).splitlines()
    assert all(json.loads(line) for line in lines)  # every output line is JSON
    got = parse_pick_lines(lines)
    assert len(ref) >= 4 and {p["phase"] for p in ref} == {"P", "S"}
    compare_picks(got, ref)


def test_stream_matches_seisbench_classify(driver):
    """The firmware's picks equal what SeisBench's own annotate/classify does with the student's hooks."""
    torch = pytest.importorskip("torch")
    obspy = pytest.importorskip("obspy")
    from pipeline.model.student import XiaoNet

    class SquareStudent(XiaoNet):
        def forward(self, x, logits=False):
            p, s = 0.9 * x[:, 0] ** 2, 0.9 * x[:, 1] ** 2
            return torch.stack([p, s, 1 - p - s], dim=1)

    model = SquareStudent(base_channels=1, in_samples=IN_SAMPLES).eval()
    x = synthetic_stream()
    start = obspy.UTCDateTime(2020, 1, 1)
    stream = obspy.Stream([obspy.Trace(x[i].copy(), header={"network": "EP", "station": "T", "channel": f"HH{c}",
                                                              "sampling_rate": 100.0, "starttime": start})
                           for i, c in enumerate("ZNE")])
    picks = model.classify(stream, overlap=IN_SAMPLES - HOP, P_threshold=0.3, S_threshold=0.3).picks
    ref = sorted(({"phase": p.phase, "sample": int(round((p.peak_time - start) * 100)), "prob": float(p.peak_value),
                   "on": int(round((p.start_time - start) * 100)), "off": int(round((p.end_time - start) * 100))}
                  for p in picks), key=lambda p: (p["sample"], p["phase"]))
    blinding = model.default_args["blinding"]  # the student's default: the firmware gets it from model_config.h
    assert blinding[0] > 0
    got = parse_pick_lines(run(driver, *stream_args(blinding=blinding), stdin=stream_text(x)).splitlines())
    assert len(ref) >= 4
    for p in ref:
        p["time"] = p["sample"] / 100.0
    compare_picks(got, ref)


def test_stream_survives_garbage_and_gaps(driver):
    x = synthetic_stream()
    filled = x.copy()
    filled[:, 1800:1805] = x[:, 1799:1800]  # what the firmware makes of the 5 missing samples below
    ref, _ = stream_reference(filled, square_model, IN_SAMPLES, HOP, 0.3, EPS)
    lines = stream_text(x, indexed=True).splitlines()
    del lines[1800:1805]  # an indexed gap: filled with the last sample
    # garbage lines between indexed samples are reported and dropped: the indices keep the timeline
    lines[1000:1000] = ["hello world", "1 2", "9" * 300, "\x00\x01\x02", "1000 nan 1 2", "1.0.0 1 2", "999 1 2 3"]
    out = run(driver, *stream_args(), stdin="\n".join(lines) + "\n").splitlines()
    messages = [json.loads(line) for line in out]
    errors = [m for m in messages if m["type"] == "error"]
    warns = [m for m in messages if m["type"] == "warn"]
    assert len(errors) == 6 and any("longer than" in m["msg"] for m in errors), errors
    assert any("gap of 5 samples" in m["msg"] for m in warns) and any("repeats or goes back" in m["msg"] for m in warns)
    compare_picks(parse_pick_lines(out), ref)
    assert messages[-1]["type"] == "info" and messages[-1]["msg"].startswith("end:")

    # without indices a bad line stands for one sample (a 1-sample gap filled with the last sample)
    plain = stream_text(x).splitlines()
    plain[700] = "not a sample"
    filled = x.copy()
    filled[:, 700] = x[:, 699]
    ref, _ = stream_reference(filled, square_model, IN_SAMPLES, HOP, 0.3, EPS)
    out = run(driver, *stream_args(), stdin="\n".join(plain) + "\n").splitlines()
    compare_picks(parse_pick_lines(out), ref)


def test_malformed_control_lines_stand_for_no_sample(driver):
    """A malformed control line is reported and stands for no sample: in a stream without indices it used to count
    as a one-sample gap and shift every later pick by one. Indices and gaps beyond 2^48 are refused, so the sample
    counter cannot wrap (an index of 2^64 - 1 used to be accepted)."""
    x = synthetic_stream()
    ref, _ = stream_reference(x, square_model, IN_SAMPLES, HOP, 0.3, EPS)
    plain = stream_text(x).splitlines()
    bad = ["#gap abc", "#gap -5", "#t0 nan", "#gap 18446744073709551615", "#gap 281474976710657",
           "# a comment longer than a line may be " + "x" * 200]
    plain[700:700] = bad
    out = [json.loads(line) for line in run(driver, *stream_args(), stdin="\n".join(plain) + "\n").splitlines()]
    errors = [m["msg"] for m in out if m["type"] == "error"]
    assert len(errors) == len(bad) and not any("counted as" in m for m in errors), errors
    compare_picks(parse_pick_lines([json.dumps(m) for m in out]), ref)

    # gaps add up to no more than 2^48 either: of three gaps of 2^47, the second and third are refused
    text = stream_text(x[:, :1500])[: -len("#end\n")] + "#gap 140737488355328\n" * 3 + stream_text(x[:, 1500:])
    out = [json.loads(line) for line in run(driver, *stream_args(max_gap=50), stdin=text).splitlines()]
    assert sum("past 2^48" in m.get("msg", "") for m in out if m["type"] == "error") == 2
    assert 2 ** 47 < max(p["sample"] for p in out if p["type"] == "pick") < 2 ** 48

    indexed = stream_text(x, indexed=True).splitlines()
    indexed[900:900] = ["18446744073709551615 1 2 3", "281474976710657 1 2 3"]
    out = [json.loads(line) for line in run(driver, *stream_args(), stdin="\n".join(indexed) + "\n").splitlines()]
    errors = [m["msg"] for m in out if m["type"] == "error"]
    assert len(errors) == 2 and all("bad sample index" in m for m in errors), errors
    compare_picks(parse_pick_lines([json.dumps(m) for m in out]), ref)


def test_stream_long_gap_starts_a_new_segment(driver):
    x = synthetic_stream()
    text = stream_text(x[:, :1500])[: -len("#end\n")] + "#gap 100000\n" + stream_text(x[:, 1500:])
    out = [json.loads(line) for line in run(driver, *stream_args(max_gap=50), stdin=text).splitlines()]
    assert any("segment ended" in m.get("msg", "") for m in out)
    picks = [m for m in out if m["type"] == "pick"]
    assert picks and max(p["sample"] for p in picks) > 100000


def test_stream_rejects_bad_config(driver):
    args = ["stream", 512, 600, 1, 0, 0, "1e-6", 0.3, 0.3, 10, "last", TOP, "square"]
    result = subprocess.run([str(driver), *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 1 and "hop" in result.stderr


@pytest.mark.parametrize("gate", [False, True])
def test_no_s_on_a_vertical_only_stream_with_s_needs_horizontals(driver, gate):
    """A window whose N and E are flat gives no S with s_needs_horizontals (DropS), as pipeline.model.picking's
    twin does; the same stream with live horizontals keeps its S."""
    from host_core import zsquare_model
    from pipeline.model.picking import PickRule, stream_picks

    x = synthetic_stream()
    x[1:, :] = 0.0  # a vertical-only station: N and E flat
    rule = PickRule(p_threshold=0.3, s_threshold=0.3, top_tolerance=TOP, blinding=(0, 0))
    ref, _ = stream_picks(x, zsquare_model, IN_SAMPLES, HOP, rule, EPS, s_needs_horizontals=gate)
    args = stream_args()[:-1] + ["zsquare"] + (["--s-needs-horizontals"] if gate else [])
    got = parse_pick_lines(run(driver, *args, stdin=stream_text(x)).splitlines())
    compare_picks(got, ref)
    assert {p["phase"] for p in ref} == ({"P"} if gate else {"P", "S"})
