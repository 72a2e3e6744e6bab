"""The live mode and its retraction lines in the core (host build) against the Python twin
(pipeline.model.picking.live_stream_picks), sample for sample."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from pipeline.model.picking import LiveRule, PickRule, live_blinding, live_offsets, live_stream_picks
from pipeline.deploy.serial_protocol import parse_pick_lines

from host_core import (EPS, IN_SAMPLES, LIVE_CONFIRM, LIVE_HOP, LIVE_LOOKAHEAD, TOP, compare_picks, live_stream,
                       live_stream_args, run, square_model, stream_args, stream_text)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no host g++")


# ---------------------------------------------------------------------------------------------------------------
# The live mode: a small hop and a look-ahead, every sample from one window (docs/firmware.md, "Live mode")
# ---------------------------------------------------------------------------------------------------------------
def test_live_mode_matches_python_twin_within_its_latency_budget(driver):
    """The core with exact_tail off, the live hop and blinding: the picks of pipeline.model.picking.live_stream_picks,
    each reported (the last sample received when its line came out) when the twin says: its trigger's closing
    sample (off + 1) is final its phase's look-ahead to look-ahead + hop - 1 samples after it arrived, so a pick
    comes at most look-ahead + hop + its trigger-off delay after its sample; the exact replay's come a window late.
    P does not wait for S's longer look-ahead."""
    x = live_stream()
    end = x.shape[1] - 1
    rule = PickRule(p_threshold=0.3, s_threshold=0.3, top_tolerance=TOP)
    ref, _ = live_stream_picks(x, square_model, LiveRule.of(IN_SAMPLES, LIVE_HOP, LIVE_LOOKAHEAD), rule, EPS)
    args = live_stream_args()
    lines = run(driver, *args, stdin=stream_text(x)).splitlines()
    assert not [line for line in lines if json.loads(line)["type"] == "error"]
    got = parse_pick_lines(lines)
    assert len(ref) >= 10 and {p["phase"] for p in ref} == {"P", "S"}
    compare_picks(got, ref)
    assert [p["reported"] for p in got] == [p["reported"] for p in ref]
    emitted = [json.loads(line)["reported"] for line in lines if json.loads(line)["type"] == "pick"]
    assert emitted == sorted(emitted)  # each line as its trigger closed, in stream order
    closed = [p for p in got if p["reported"] < end]
    assert len(got) - len(closed) == 1  # the last P closes at "#end"
    for p in got:
        assert p["reported"] - p["sample"] <= LIVE_LOOKAHEAD[p["phase"]] + LIVE_HOP + (p["off"] + 1 - p["sample"]), p
    for p in closed:
        lookahead = LIVE_LOOKAHEAD[p["phase"]]
        assert lookahead <= p["reported"] - (p["off"] + 1) <= lookahead + LIVE_HOP - 1, p
    assert {p["phase"] for p in closed} == {"P", "S"}
    exact = [p for p in parse_pick_lines(run(driver, *stream_args(), stdin=stream_text(x)).splitlines())
             if p["reported"] < end]
    assert exact and all(p["reported"] - (p["off"] + 1) >= IN_SAMPLES for p in exact)





def test_live_retractions_match_python_twin(driver):
    """With a confirming look-ahead the core prints the same picks as without one, and a "retract" line for each
    pick pipeline.model.picking.mark_retractions withdraws, at the sample it says (its confirming curve final past the
    pick + the reach and any trigger open there closed), after that pick's own line; the others stay."""
    x = live_stream()
    within = 50
    rule = PickRule(p_threshold=0.3, s_threshold=0.3, top_tolerance=TOP)
    ref, _ = live_stream_picks(x, square_model, LiveRule.of(IN_SAMPLES, LIVE_HOP, LIVE_LOOKAHEAD, LIVE_CONFIRM, within),
                               rule, EPS)
    args = live_stream_args()
    plain = run(driver, *args, stdin=stream_text(x)).splitlines()
    lines = run(driver, *args, "--confirm", f"{LIVE_CONFIRM['P']},{LIVE_CONFIRM['S']}", within,
                stdin=stream_text(x)).splitlines()
    messages = [json.loads(line) for line in lines]
    assert not [m for m in messages if m["type"] == "error"]
    compare_picks(parse_pick_lines(lines), ref)
    unmarked = [{k: v for k, v in p.items() if k != "retracted"} for p in parse_pick_lines(lines)]
    assert unmarked == [{k: v for k, v in p.items() if k != "retracted"} for p in parse_pick_lines(plain)]
    assert [p["retracted"] for p in parse_pick_lines(lines)] == [p["retracted"] for p in ref]  # host side's marks
    retracts = [m for m in messages if m["type"] == "retract"]
    expected = [(p["phase"], p["sample"], p["retracted"]) for p in ref if p["retracted"] is not None]
    assert 3 <= len(expected) < len(ref)  # some withdrawn, most kept
    assert sorted((m["phase"], m["sample"], m["reported"]) for m in retracts) == sorted(expected)
    position = {(m["phase"], m["sample"]): k for k, m in enumerate(messages) if m["type"] == "pick"}
    for k, m in enumerate(messages):
        if m["type"] == "retract":
            assert position[m["phase"], m["sample"]] < k  # never before the pick it withdraws
            assert abs(m["time"] - m["sample"] / 100.0) < 1e-6
    assert f"{len(expected)} retracted" in messages[-1]["msg"]
    # refused: a confirming look-ahead no longer than the phase's own, or with the exact replay
    for bad in ([*args, "--confirm", "48,250", within], [*stream_args(), "--confirm", "200", within]):
        result = subprocess.run([str(driver), *map(str, bad)], input=b"", capture_output=True)
        assert result.returncode == 1 and b"init failed" in result.stderr


def retractions_of_p_curves(driver, tmp_path, live_p, confirming_p, confirm, within):
    """The twin's picks and the core's output lines when the live and the confirming P curves are ``live_p`` and
    ``confirming_p``: window predictions written so that each sample of either comes from one window (the live
    slice and the confirming slice of a window do not overlap), read by the core's "file" model."""
    n = len(live_p)
    (live_pre, _), (confirm_pre, _) = (live_blinding(IN_SAMPLES, LIVE_HOP, v) for v in (LIVE_LOOKAHEAD["P"], confirm["P"]))
    windows = []
    for o in live_offsets(n, IN_SAMPLES, LIVE_HOP):
        w = np.zeros((IN_SAMPLES, 3), dtype=np.float32)
        w[live_pre : live_pre + LIVE_HOP, 0] = live_p[o + live_pre : o + live_pre + LIVE_HOP]
        w[confirm_pre : confirm_pre + LIVE_HOP, 0] = confirming_p[o + confirm_pre : o + confirm_pre + LIVE_HOP]
        w[:, 2] = 1 - w[:, 0]
        windows.append(w)
    (tmp_path / "probs.f32").write_bytes(np.concatenate(windows).astype("<f4").tobytes())
    served = iter(windows)
    rule = PickRule(p_threshold=0.3, s_threshold=0.3, top_tolerance=TOP)
    ref, _ = live_stream_picks(np.zeros((3, n), np.float32), lambda window: next(served),
                               LiveRule.of(IN_SAMPLES, LIVE_HOP, LIVE_LOOKAHEAD, confirm, within), rule, EPS)
    args = live_stream_args()
    args[-1:] = ["file", tmp_path / "probs.f32"]  # the model: these predictions, window by window
    lines = run(driver, *args, "--confirm", f"{confirm['P']},{confirm['S']}", within,
                stdin=stream_text(np.zeros((3, n), np.float32))).splitlines()
    return ref, lines


def test_retraction_keeps_picks_past_its_pending_list_and_says_so(driver, tmp_path):
    """More unconfirmed live picks of one phase than the core's list holds (32) within a confirming look-ahead: the
    extra ones are kept (the twin, which has no such limit, retracts them all) and each is announced by a warn line;
    every other pick is retracted as the twin says."""
    n, confirm = 3000, {"P": 200, "S": 250}
    t = np.arange(n)
    live_p = sum(0.8 * np.exp(-0.5 * ((t - c) / 1.0) ** 2) for c in range(1000, 1300, 5))  # 60 picks, 5 apart
    ref, lines = retractions_of_p_curves(driver, tmp_path, live_p, np.zeros(n), confirm, 50)
    messages = [json.loads(line) for line in lines]
    assert len(ref) == 60 and all(p["retracted"] is not None for p in ref)
    retracted = {m["sample"] for m in messages if m["type"] == "retract"}
    unchecked = [m["msg"] for m in messages if m["type"] == "warn" and "kept unconfirmed" in m["msg"]]
    assert unchecked and len(retracted) + len(unchecked) == 60 and retracted < {p["sample"] for p in ref}
    assert all("32 picks await confirmation" in text for text in unchecked)


def test_retraction_waits_for_a_confirming_trigger_open_at_its_deadline(driver, tmp_path):
    """Window predictions written so that the live and the confirming P curves are what the test says (each sample
    of either comes from one window): a live pick the confirming curve matches stays; one it has nothing near is
    retracted as soon as that curve is final 50 samples past it; one whose deadline falls inside a long confirming
    trigger peaking too late is retracted only when that trigger closes; one the confirming curve never reaches
    (near the end) stays. The core, reading the same predictions from a file, prints what the twin says."""
    n, within, confirm = 3000, 50, {"P": 200, "S": 250}
    t = np.arange(n)

    def bump(center, width, height=0.8):
        return height * np.exp(-0.5 * ((t - center) / width) ** 2)

    live_p = bump(1000, 3) + bump(1500, 3) + bump(2000, 3) + bump(2850, 3)
    confirming_p = np.where((t >= 1030) & (t <= 1120), 0.2 + 0.6 * (t - 1030) / 90, 0.0) + bump(2010, 3)
    ref, lines = retractions_of_p_curves(driver, tmp_path, live_p, confirming_p, confirm, within)
    retracts = {m["sample"]: m["reported"] for m in map(json.loads, lines) if m["type"] == "retract"}
    assert [p["sample"] for p in ref] == [1000, 1500, 2000, 2850]
    assert {p["sample"]: p["retracted"] for p in ref if p["retracted"] is not None} == retracts
    late = {p["sample"]: p["retracted"] for p in ref}
    # 1500: decided when 1550 is final on the confirming curve; 1000: only when 1121 (the trigger's close) is
    assert sorted(retracts) == [1000, 1500]
    assert late[1000] - 1121 >= confirm["P"] and late[1500] - 1550 >= confirm["P"]
    assert late[1000] - 1121 < confirm["P"] + LIVE_HOP and late[1500] - 1550 < confirm["P"] + LIVE_HOP
