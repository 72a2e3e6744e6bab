"""The firmware's streaming mode in the core (host build): the running normalisation bit for bit against
pipeline.model.streaming.RunningNormalizer, and the block picker's picks (and when each is reported) sample for sample
against its Python twin, pipeline.model.block_picks: per-phase delays, warm-up, partial blocks, gaps, vertical-only
stations, a tiny causal student's INT8 streaming model in TFLite Micro."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest

from pipeline.deploy.serial_protocol import parse_pick_lines
from pipeline.model.block_picks import block_stream_picks, flat_blocks
from pipeline.model.picking import PickRule
from pipeline.model.streaming import BLOCK, NormSettings, RunningNormalizer, block_live_rule

from host_core import (TOP, compare_picks, floats_text, picking_causal_stream, run, square_model, stream_text,
                       zsquare_model)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no host g++")

WINDOW, DELAYS, NORM_BLOCKS, EPS = 1024, (100, 180), 8, 1e-6


def block_args(model="square", delays=DELAYS, window=WINDOW, thresholds=(0.5, 0.5), max_gap=100) -> list:
    """The host driver's block mode: window, per-phase delays, normalisation, thresholds, gap fill, top, model."""
    return ["block", window, delays[0], delays[1], NORM_BLOCKS, f"{EPS!r}", thresholds[0], thresholds[1], max_gap, TOP,
            model]


def event_stream(n: int = 6000, seed: int = 6, flat_horizontals: bool = False) -> np.ndarray:
    """Integer counts (as a digitiser gives them): noise and a few P-like (Z) and S-like (N) wave packets."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = rng.normal(0, 30, (3, n)) + [[1000.0], [-300.0], [50.0]]
    for center, comp, amp in [(1500, 0, 900.0), (1700, 1, 700.0), (2600, 0, 400.0), (2660, 1, 800.0),
                              (3900, 0, 700.0), (4700, 1, 500.0), (5950, 0, 900.0)]:
        x[comp] += amp * np.exp(-0.5 * ((t - center) / 20.0) ** 2) * np.sin(t / 3.0)
    if flat_horizontals:
        x[1:] = [[12.0], [-7.0]]
    return np.round(x).astype(np.float32)


def twin(x: np.ndarray, model=square_model, delays=DELAYS, window=WINDOW, thresholds=(0.5, 0.5), gate=False,
         per_sample=False, lag=0):
    """pipeline.model.block_picks on ``model`` run block by block on the running normalisation of ``x``."""
    norm = RunningNormalizer(3, NORM_BLOCKS, EPS, per_sample, lag)
    blocks = x.shape[1] // BLOCK
    written = np.concatenate([model(norm(x[:, b * BLOCK:(b + 1) * BLOCK].astype(np.float64))) for b in range(blocks)])
    live = block_live_rule(window, *delays)
    rule = PickRule(p_threshold=thresholds[0], s_threshold=thresholds[1], top_tolerance=TOP)
    picks, _ = block_stream_picks(written, x.shape[1], live, rule, flat=flat_blocks(x, window) if gate else None)
    return picks


def compare_reported(got: list[dict], ref: list[dict]):
    compare_picks(got, ref)
    assert [p["reported"] for p in got] == [p["reported"] for p in ref]


@pytest.mark.parametrize("per_sample, lag", [(False, 0), (True, 0), (True, 100)])
@pytest.mark.parametrize("kind", ["counts", "floats"])
def test_running_normalisation_is_the_twins_bit_for_bit(driver, kind, per_sample, lag):
    """Block by block, over the window's first blocks and on after it is full: the same float32 values, and the same
    int8 input of a quantized model (one float32 pass from the same statistics); with a peak per block and with the
    peak up to each sample (an onset inside a block, the constants computed again where the peak changes), and with
    it lagged (an onset measured against the noise before it, clipped)."""
    rng = np.random.default_rng(1)
    blocks = 12
    x = rng.normal(0, 500, (3, blocks * BLOCK)) + [[2e5], [-40.0], [3.0]]
    x[:, 5 * BLOCK:] += rng.normal(0, 4e4, (3, 7 * BLOCK))
    x[:, 5 * BLOCK + 37:] += rng.normal(0, 2e5, (3, 7 * BLOCK - 37))  # an onset in a block, not at its start
    x[:, 9 * BLOCK:] = x[:, 9 * BLOCK:10 * BLOCK].mean(1, keepdims=True)  # flat blocks: 0 (and peak 1 once alone)
    flag = (["--per-sample"] if per_sample else []) + (["--lag", lag] if lag else [])
    x = (np.round(x) if kind == "counts" else x).astype(np.float32)
    norm = RunningNormalizer(3, 4, EPS, per_sample, lag)
    ref = np.concatenate([norm(x[:, b * BLOCK:(b + 1) * BLOCK].astype(np.float64)).T for b in range(blocks)])
    out = run(driver, "runnorm", 4, f"{EPS!r}", *flag, stdin=floats_text(x.T))
    got = np.array([np.float32(v) for v in out.split()], dtype=np.float32).reshape(-1, 3)
    assert got.dtype == ref.dtype and np.array_equal(got, ref)

    scale, zero = 0.0078431377, -3  # an int8 input's quantization (about 2 / 255)
    norm = RunningNormalizer(3, 4, EPS, per_sample, lag)
    ref = np.concatenate([norm.quantized(x[:, b * BLOCK:(b + 1) * BLOCK], scale, zero).T for b in range(blocks)])
    out = run(driver, "runnorm", 4, f"{EPS!r}", f"{scale!r}", zero, *flag, stdin=floats_text(x.T))
    got = np.array([int(v) for v in out.split()], dtype=np.int8).reshape(-1, 3)
    assert np.array_equal(got, ref) and len(np.unique(ref)) > 100
    # the one pass is the float block quantized as TFLite Micro's Quantize kernel would, to within a step
    from pipeline.deploy.tflm import quantize_input
    float_norm, details = RunningNormalizer(3, 4, EPS, per_sample, lag), {"dtype": "int8", "scale": scale, "zero_point": zero}
    plain = np.concatenate([quantize_input(float_norm(x[:, b * BLOCK:(b + 1) * BLOCK]), dict(details, shape=(BLOCK, 3)))
                            for b in range(blocks)])
    assert np.abs(plain.astype(int) - got.astype(int)).max() <= 1 and (plain == got).mean() > 0.99


@pytest.mark.parametrize("delays, per_sample, lag", [((100, 100), False, 0), (DELAYS, False, 0), (DELAYS, True, 0),
                                                     (DELAYS, True, 150)])
def test_block_picker_is_its_python_twin(driver, delays, per_sample, lag):
    """Picks, their on / off / fwhm / probability and the sample each is reported at, with S later than P or not,
    on a stream that ends in a partial block (never run) and with a trigger open at the end (closed by "#end");
    with the normalisation's peak per block, per sample, or per sample and lagged."""
    x = event_stream()
    ref = twin(x, delays=delays, per_sample=per_sample, lag=lag)
    flag = (["--per-sample"] if per_sample else []) + (["--lag", lag] if lag else [])
    lines = run(driver, *block_args(delays=delays), *flag, stdin=stream_text(x)).splitlines()
    assert not [line for line in lines if json.loads(line)["type"] == "error"]
    assert {p["phase"] for p in ref} == {"P", "S"} and len(ref) >= 6
    assert max(p["sample"] for p in ref) > x.shape[1] - BLOCK - delays[0] - 100  # the last P, closed at "#end"
    assert min(p["sample"] for p in ref) >= WINDOW - BLOCK - max(delays)  # nothing in the first window's warm-up
    compare_reported(parse_pick_lines(lines), ref)
    summary = json.loads(lines[-1])
    assert summary["msg"].startswith(f"end: {x.shape[1]} samples, {x.shape[1] // BLOCK} blocks")


def test_gaps_fill_short_and_restart_the_stream_after_long_ones(driver):
    """A short gap is the last sample repeated; a long one ends the segment (its picks closed) and the next starts
    from the model's zero states and an empty normaliser: its picks are the same stream's, shifted."""
    x = event_stream(4000)
    filled = x.copy()
    filled[:, 2000:2007] = x[:, 1999:2000]
    lines = stream_text(x, indexed=True).splitlines()
    del lines[2000:2007]
    out = run(driver, *block_args(), stdin="\n".join(lines) + "\n").splitlines()
    assert any("gap of 7 samples" in json.loads(line).get("msg", "") for line in out)
    compare_reported(parse_pick_lines(out), twin(filled))

    gap = 300
    text = "".join(f"{i} {a:.9g} {b:.9g} {c:.9g}\n" for i, (a, b, c) in enumerate(x.T))
    text += "".join(f"{i + x.shape[1] + gap} {a:.9g} {b:.9g} {c:.9g}\n" for i, (a, b, c) in enumerate(x.T)) + "#end\n"
    out = run(driver, *block_args(), stdin=text).splitlines()
    assert any("segment ended, blocks restart" in json.loads(line).get("msg", "") for line in out)
    first = twin(x)  # closed at the gap: reported at the segment's last sample, as at "#end"
    shift = x.shape[1] + gap
    second = [dict(p, sample=p["sample"] + shift, on=p["on"] + shift, off=p["off"] + shift, time=p["time"] + shift / 100,
                   reported=p["reported"] + shift) for p in twin(x)]
    compare_reported(parse_pick_lines(out), first + second)


def test_no_s_where_the_windows_horizontals_are_flat(driver):
    """A vertical-only station (N and E constant): with --s-needs-horizontals no S where the live window (the
    window samples ending with the block) is flat, as the student's annotate; a model firing S from Z alone does."""
    x = event_stream(flat_horizontals=True)
    assert flat_blocks(x, WINDOW)[WINDOW // BLOCK - 1:].all()
    low = (0.3, 0.3)
    plain = parse_pick_lines(run(driver, *block_args("zsquare", thresholds=low), stdin=stream_text(x)).splitlines())
    assert any(p["phase"] == "S" for p in plain)
    compare_reported(plain, twin(x, zsquare_model, thresholds=low))
    gated = parse_pick_lines(run(driver, *block_args("zsquare", thresholds=low), "--s-needs-horizontals",
                                 stdin=stream_text(x)).splitlines())
    ref = twin(x, zsquare_model, thresholds=low, gate=True)
    assert not any(p["phase"] == "S" for p in ref) and any(p["phase"] == "P" for p in ref)
    compare_reported(gated, ref)
    # horizontals that move: the gate changes nothing
    y = event_stream()
    out = run(driver, *block_args("zsquare", thresholds=low), "--s-needs-horizontals", stdin=stream_text(y))
    compare_reported(parse_pick_lines(out.splitlines()), twin(y, zsquare_model, thresholds=low))


@pytest.mark.parametrize("args,message", [
    (block_args(delays=(100, 1000)), "block + delay shorter than the window"),
    (block_args(window=1000), "whole number"),
    (block_args(delays=(0, 100)), "each delay must be >= 1"),
])
def test_impossible_settings_are_one_line(driver, args, message):
    result = subprocess.run([str(driver), *map(str, args)], input=b"", capture_output=True)
    assert result.returncode == 1 and message in result.stderr.decode() and result.stderr.decode().count("\n") == 1


@pytest.mark.slow
def test_a_causal_students_int8_stream_in_tflite_micro_picks_as_its_twin(driver, tmp_path):
    """A tiny causal student's INT8 streaming model: the core normalises and quantizes each block, a Python TFLite
    Micro server runs it with the states carried (reset at each segment's first block); the picks equal the twin's
    (pipeline.deploy.tflm_stream.run_stream_blocks, then the block picker), reported samples included."""
    from pipeline.deploy import tflm, tflm_stream

    x, student, result = picking_causal_stream(80, 512)
    flatbuffer = result.flatbuffers["int8"]
    io = tflm_stream.io_lists(flatbuffer)
    written = tflm_stream.run_stream_blocks(flatbuffer, x.astype(np.float64), NormSettings.of(student), io=io)
    live = block_live_rule(student.in_samples, 80, 80)
    rule = PickRule(p_threshold=0.4, s_threshold=0.4, top_tolerance=TOP)
    ref, _ = block_stream_picks(written, x.shape[1], live, rule)
    assert len(ref) >= 3

    request, reply = tmp_path / "request", tmp_path / "reply"
    os.mkfifo(request)
    os.mkfifo(reply)
    served = []

    def serve():
        interpreter, _, _ = tflm.load(flatbuffer, tflm.MAX_ARENA)
        states = None
        with open(request, "rb") as req, open(reply, "wb") as rep:
            while len(data := req.read(BLOCK * 3 + 1)) == BLOCK * 3 + 1:
                if data[0] or states is None:
                    states = [tflm_stream.zero_state(d) for d in io["inputs"][1:]]
                served.append(data[0])
                interpreter.set_input(np.frombuffer(data[1:], dtype=np.int8).reshape(io["inputs"][0]["shape"]), 0)
                for k, state in enumerate(states):
                    interpreter.set_input(state, k + 1)
                interpreter.invoke()
                states = [np.array(interpreter.get_output(k + 1), copy=True) for k in range(len(states))]
                rep.write(np.asarray(interpreter.get_output(0), dtype=np.int8).tobytes())
                rep.flush()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    i, o = io["inputs"][0], io["outputs"][0]
    args = ["block", student.in_samples, 80, 80, 512 // BLOCK, f"{student.norm_eps!r}", 0.4, 0.4, 100, TOP, "pipe",
            request, reply, f"{i['scale']!r}", i["zero_point"], f"{o['scale']!r}", o["zero_point"]]
    lines = run(driver, *args, stdin=stream_text(x), timeout=120).splitlines()
    server.join(timeout=30)
    assert served[0] == 1 and not any(served[1:]) and len(served) == x.shape[1] // BLOCK
    compare_reported(parse_pick_lines(lines), ref)
