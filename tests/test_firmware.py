"""The firmware's portable core (firmware/lib/edgepick_core) compiled with the host g++ and checked against Python
references on golden vectors made here: bit-exact on integer paths, <= 1e-5 on float paths; pick extraction equal
to SeisBench's classify; the serial parser survives malformed input; platformio.ini parses with `pio project config`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.deploy.convert.fp16_pack import expand_fp16
from pipeline.model.picking import LiveRule, PickRule, live_blinding, live_offsets, live_stream_picks, stream_picks
from pipeline.deploy.serial_protocol import parse_pick_lines

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "firmware" / "lib" / "edgepick_core"
FIRMWARE = REPO / "firmware"
EPS = 1e-6  # pipeline.model.student.NORM_EPS

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no host g++")


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    """The core + host driver, built with -Wall -Wextra -Werror -std=c++17 (a warning fails the test)."""
    out = tmp_path_factory.mktemp("core") / "host_driver"
    sources = sorted(str(p) for p in (CORE / "src").glob("*.cpp")) + [str(CORE / "host" / "host_driver.cpp")]
    cmd = ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-O1", f"-I{CORE / 'src'}", *sources, "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def run(driver: Path, *args, stdin: str | bytes = "", timeout: float = 60) -> str:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    result = subprocess.run([str(driver), *map(str, args)], input=data, capture_output=True, timeout=timeout)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


def floats_text(values) -> str:
    return "".join(f"{float(v):.9g}\n" for v in np.asarray(values, dtype=np.float32).ravel())


def test_core_has_no_platform_includes():
    for path in (CORE / "src").iterdir():
        text = path.read_text()
        for banned in ("Arduino.h", "esp_", "freertos", "tensorflow/"):
            assert f"#include <{banned}" not in text and f'#include "{banned}' not in text, (path.name, banned)


# ---------------------------------------------------------------------------------------------------------------
# int8 quantization (bit-exact)
# ---------------------------------------------------------------------------------------------------------------
def reference_quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """TFLite's Quantize: round half away from zero of x / scale (float32), + zero point, clamp to int8."""
    r = np.asarray(x, dtype=np.float32) / np.float32(scale)
    t = np.trunc(r)
    rounded = np.where(np.abs(r - t) == np.float32(0.5), t + np.sign(r), np.round(r))
    return np.clip(rounded + np.float32(zero_point), -128, 127).astype(np.int8)


@pytest.mark.parametrize("scale,zero_point", [(0.0078125, 0), (0.00392157, -128), (0.0123, 7)])
def test_quantize_bit_exact(driver, scale, zero_point):
    rng = np.random.default_rng(1)
    s = np.float32(scale)
    x = np.concatenate([
        rng.uniform(-1.5, 1.5, 3000).astype(np.float32),
        (np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)) * s,  # exact ties
        np.array([0.0, -0.0, 1e30, -1e30, 1e-30, 127.5 * s, -128.5 * s], dtype=np.float32),
    ])
    out = np.array(run(driver, "quant", f"{scale:.9g}", zero_point, stdin=floats_text(x)).split(), dtype=np.int64)
    np.testing.assert_array_equal(out, reference_quantize(x, scale, zero_point))


def test_dequantize_bit_exact(driver):
    q = np.arange(-128, 128)
    out = np.array(run(driver, "dequant", "0.00390625", "-128", stdin="".join(f"{v}\n" for v in q)).split(),
                   dtype=np.float32)
    np.testing.assert_array_equal(out, (q.astype(np.float32) + np.float32(128)) * np.float32(0.00390625))


# ---------------------------------------------------------------------------------------------------------------
# FP16 (bit-exact), in pipeline/deploy/convert/fp16_pack.py's EPH1 format
# ---------------------------------------------------------------------------------------------------------------
def test_half_to_float_all_values_bit_exact(driver):
    halves = np.arange(65536, dtype=np.uint16)
    out = np.array(run(driver, "half", stdin="".join(f"{h}\n" for h in halves)).split(), dtype=np.uint64)
    expected = halves.view(np.float16).astype(np.float32).view(np.uint32)
    np.testing.assert_array_equal(out.astype(np.uint32), expected)


def pack_eph1(segments: list[tuple[int, bytes]], expanded: bytes) -> bytes:
    """A blob in pipeline/deploy/convert/fp16_pack.py's layout (header, segment table, payloads)."""
    h = 0x811C9DC5
    for byte in expanded:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    table = b"".join(struct.pack("<II", kind, len(data) // (2 if kind else 1)) for kind, data in segments)
    return struct.pack("<4sIII", b"EPH1", len(expanded), len(segments), h) + table + b"".join(d for _, d in segments)


def test_fp16_expand_matches_python_packer(driver, tmp_path):
    rng = np.random.default_rng(2)
    weights = rng.normal(0, 0.3, 1001).astype(np.float32)
    weights[:4] = [65504.0, 1e-7, -0.0, 3e-5]  # max half, a subnormal, signed zero
    halves = weights.astype(np.float16)
    raw1, raw2 = bytes(rng.integers(0, 256, 37, dtype=np.uint8)), bytes(rng.integers(0, 256, 3, dtype=np.uint8))
    expanded = raw1 + halves.astype(np.float32).tobytes() + raw2
    packed = pack_eph1([(0, raw1), (1, halves.tobytes()), (0, raw2)], expanded)
    assert expand_fp16(packed) == expanded  # the Python twin
    (tmp_path / "m.ef16").write_bytes(packed)
    assert run(driver, "fp16expand", tmp_path / "m.ef16", tmp_path / "m.tflite").split() == ["ok", str(len(expanded))]
    assert (tmp_path / "m.tflite").read_bytes() == expanded

    # malformed blobs are refused with a reason, never a crash
    for bad, reason in [(packed[:-1], "truncated"), (b"XXXX" + packed[4:], "magic"),
                        (packed[:-1] + bytes([packed[-1] ^ 1]), "checksum"), (packed[:10], "truncated")]:
        (tmp_path / "bad.ef16").write_bytes(bad)
        result = subprocess.run([str(driver), "fp16expand", tmp_path / "bad.ef16", tmp_path / "o"], capture_output=True, text=True)
        assert result.returncode == 1 and reason in result.stdout, (reason, result.stdout)


# ---------------------------------------------------------------------------------------------------------------
# Normalisation and ring buffer (float <= 1e-5; copies exact)
# ---------------------------------------------------------------------------------------------------------------
def normalize_reference(window: np.ndarray) -> np.ndarray:
    """(3, n) -> (3, n): the student's own normalisation, which the firmware reproduces."""
    from pipeline.data.normalization import normalize_windows

    return normalize_windows(window.astype(np.float32), EPS)


@pytest.mark.parametrize("layout", ["last", "first"])
def test_normalize_matches_student(driver, layout):
    rng = np.random.default_rng(3)
    n = 501
    cases = [
        rng.normal(0, 1, (3, n)) * [[1], [100], [1e-3]] + [[5], [-2e3], [0]],
        rng.normal(0, 1e-14, (3, n)),  # tiny amplitudes: the relative epsilon must not swamp them
        np.zeros((3, n)),
        np.stack([np.zeros(n), rng.normal(0, 1, n), np.full(n, 7.0)]),  # a dead and a constant channel
    ]
    for case in cases:
        window = np.asarray(case, dtype=np.float32)
        out = np.array(run(driver, "normalize", n, layout, f"{EPS:g}", stdin=floats_text(window.T)).split(), dtype=np.float32)
        out = out.reshape(n, 3).T if layout == "last" else out.reshape(3, n)
        np.testing.assert_allclose(out, normalize_reference(window), rtol=0, atol=1e-5)


def test_ring_buffer_windows(driver):
    frames = np.arange(150, dtype=np.float32).reshape(50, 3)
    queries = [(34, 16, "last"), (40, 10, "first"), (33, 16, "last"), (45, 6, "last"), (0, 1, "last")]
    text = "50\n" + "".join(" ".join(f"{v:g}" for v in f) + "\n" for f in frames)
    text += "".join(f"{s} {n} {lay}\n" for s, n, lay in queries)
    out = run(driver, "ring", 16, stdin=text).splitlines()
    for (start, n, lay), line in zip(queries, out):
        if start < 50 - 16 or start + n > 50:
            assert line == "fail"
            continue
        window = frames[start : start + n]
        expected = window.ravel() if lay == "last" else window.T.ravel()
        np.testing.assert_array_equal(np.array(line.split()[1:], dtype=np.float32), expected)


# ---------------------------------------------------------------------------------------------------------------
# Pick extraction (SeisBench's trigger: exact samples)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top", [None, 0.02, 0.5])
def test_trigger_matches_seisbench(driver, top):
    """top None: SeisBench's first maximum; a number t: the centre of the peak's top, the samples >= (1 - t) x the
    maximum (the student's picker)."""
    rng = np.random.default_rng(4)
    t = np.arange(4000)
    curve = np.zeros(4000, dtype=np.float32)
    for center, height, width in [(200, 0.9, 20), (700, 0.31, 5), (1200, 0.29, 30), (1500, 0.8, 50), (1560, 0.7, 30),
                                  (2500, 0.5, 3), (3990, 0.95, 40)]:  # the last one is still on at the end
        curve += (height * np.exp(-0.5 * ((t - center) / width) ** 2)).astype(np.float32)
    curve = np.clip(curve + rng.normal(0, 0.01, 4000).astype(np.float32), 0, 1).astype(np.float32)
    curve[3000:3005] = [0.3, 0.1, 0.3, 0.3, 0.0]  # exactly at the threshold, twice
    # saturated tops wider than the 256-sample search: the maximum early (the cap on the right counts) and late
    # (the left edge comes from the picker's history)
    curve[1800:2400] = 0.86 + rng.normal(0, 0.002, 600).astype(np.float32)
    curve[1850] = 0.87
    curve[2600:2990] = 0.86 + rng.normal(0, 0.002, 390).astype(np.float32)
    curve[2950] = 0.87
    args = ["trigger", 0.3] + ([] if top is None else [top])
    out = [line.split() for line in run(driver, *args, stdin=floats_text(curve)).splitlines()]
    got = [(int(s), int(on), int(off), np.float32(p), int(w)) for s, on, off, p, w in out]
    ref = [(p["sample"], p["on"], p["off"], np.float32(p["prob"]), p["fwhm"])
           for p in PickRule(p_threshold=0.3, top_tolerance=top).picks(curve[:, None], "P")]
    assert got == ref and len(ref) >= 7
    # the width at half maximum whatever the top tolerance, capped at 256 samples either side of the maximum:
    # [1800, 1850 + 256] and [2950 - 256, 2989]
    assert [p[4] for p in got if 1800 <= p[0] < 2400 or 2600 <= p[0] < 3000] == [307, 296]
    if top is not None:  # the tops moved the picks off the maxima, by the 256-sample caps
        # top [1800, 1850 + 256] -> 1953; top [2950 - 256, 2989] -> 2841
        assert [p[0] for p in got if 1800 <= p[0] < 2400 or 2600 <= p[0] < 3000] == [1953, 2841]


# ---------------------------------------------------------------------------------------------------------------
# The serial parser: malformed input is reported, never fatal
# ---------------------------------------------------------------------------------------------------------------
def test_parser_handles_malformed_lines(driver):
    text = ("1 2 3\r\n4,5;6\n\t-1e-3  2.5e2 7\n1 2\n1 2 3 4 5\nx 1 2\n1 2 nan\n1 inf 2\n0x10 1 2\n1e39 0 0\n"
            "#t0 1473000000.25\n#gap 12\n#gap -1\n#end\n#reset\n# a comment\n\n12 1 2 3\n-1 1 2 3\n"
            + "9" * 500 + "\n1 2 3\n")
    out = run(driver, "parse", stdin=text).splitlines()
    kinds = [line.split()[0] for line in out]
    assert kinds == ["sample", "sample", "sample", "error", "error", "error", "error", "error", "error", "error",
                     "t0", "gap", "error", "end", "reset", "comment", "empty", "indexed", "error", "toolong", "sample"]
    assert out[2] == "sample -0.00100000005 250 7" and out[17] == "indexed 12 1 2 3" and out[10] == "t0 1473000000.250000"


def test_parser_survives_random_bytes(driver):
    rng = np.random.default_rng(5)
    blob = bytes(rng.integers(0, 256, 200_000, dtype=np.uint8))
    out = run(driver, "parse", stdin=blob)
    assert len(out.splitlines()) > 100


# ---------------------------------------------------------------------------------------------------------------
# The whole streaming picker against the Python pipeline and SeisBench's classify
# ---------------------------------------------------------------------------------------------------------------
IN_SAMPLES, HOP = 512, 256


def square_model(window: np.ndarray) -> np.ndarray:
    """The host driver's "square" stand-in model: P = 0.9 z^2, S = 0.9 n^2, noise = 1 - P - S."""
    z, n = window[0].astype(np.float32), window[1].astype(np.float32)
    p, s = np.float32(0.9) * z * z, np.float32(0.9) * n * n
    return np.stack([p, s, np.float32(1) - p - s], axis=1)


def synthetic_stream(n: int = 3000, seed: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = rng.normal(0, 0.05, (3, n)) + [[10.0], [-3.0], [0.5]]
    for center, comp, amp in [(400, 0, 3.0), (650, 1, 2.0), (1300, 0, 1.0), (1340, 1, 2.5), (2200, 0, 2.0),
                              (2950, 1, 1.5)]:
        x[comp] += amp * np.exp(-0.5 * ((t - center) / 8.0) ** 2) * np.sin(t / 2.0)
    return x.astype(np.float32)


def stream_text(x: np.ndarray, indexed: bool = False) -> str:
    rows = [f"{i} " if indexed else "" for i in range(x.shape[1])]
    return "".join(f"{r}{a:.9g} {b:.9g} {c:.9g}\n" for r, (a, b, c) in zip(rows, x.T)) + "#end\n"


TOP = PickRule.top_tolerance  # the student's pick_top_tolerance


def stream_reference(x, model, in_samples, hop, threshold, eps, blinding=(0, 0), top_tolerance=TOP):
    """pipeline.model.picking.stream_picks with both thresholds at ``threshold``."""
    rule = PickRule(p_threshold=threshold, s_threshold=threshold, top_tolerance=top_tolerance, blinding=blinding)
    return stream_picks(x, model, in_samples, hop, rule, eps)


def stream_args(exact=1, layout="last", max_gap=100, thresholds=(0.3, 0.3), blinding=(0, 0)):
    return ["stream", IN_SAMPLES, HOP, exact, blinding[0], blinding[1], f"{EPS:g}", thresholds[0], thresholds[1], max_gap,
            layout, TOP, "square"]


def compare_picks(got: list[dict], ref: list[dict]):
    """The firmware's JSON picks against a reference: pipeline.model.picking's (with fwhm and uncertainty_s, compared too)
    or SeisBench's classify (without them)."""
    assert [(p["phase"], p["sample"], p["on"], p["off"]) for p in got] == [(p["phase"], p["sample"], p["on"], p["off"]) for p in ref]
    for g, r in zip(got, ref):
        assert abs(g["prob"] - r["prob"]) <= 1e-5
        assert abs(g["time"] - r["time"]) <= 1e-6
        if "fwhm" in r:
            assert g["fwhm"] == r["fwhm"], (g, r)
            assert abs(g["unc"] - r["uncertainty_s"]) <= 5e-5  # printed with 4 decimals


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


# ---------------------------------------------------------------------------------------------------------------
# End to end over a pseudo-terminal: the replay script against the host program serving the serial protocol
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="no pseudo-terminals")
def test_replay_over_pty(driver, tmp_path):
    import tty

    from pipeline.deploy import replay
    master, slave = os.openpty()
    tty.setraw(slave)
    slave_name = os.ttyname(slave)
    env = dict(os.environ, EDGEPICK_TTY=slave_name)
    server = subprocess.Popen([str(driver), "serve", *map(str, stream_args()[1:])], env=env, stderr=subprocess.PIPE)
    try:
        x = synthetic_stream()
        picks, messages = replay.replay_array(os.fdopen(master, "r+b", buffering=0), x, timeout=30.0)
    finally:
        server.kill()
        server.wait()
        os.close(slave)
    ref, _ = stream_reference(x, square_model, IN_SAMPLES, HOP, 0.3, EPS)
    compare_picks(picks, ref)
    assert any(m.get("msg", "").startswith("end:") for m in messages)


# ---------------------------------------------------------------------------------------------------------------
# PlatformIO project and the firmware stage
# ---------------------------------------------------------------------------------------------------------------
def pio() -> str:
    exe = Path(sys.executable).with_name("pio")
    if not exe.is_file():
        pytest.skip("PlatformIO is not installed in the venv")
    return str(exe)


def test_platformio_ini_is_valid():
    result = subprocess.run([pio(), "project", "config", "--json-output"], cwd=FIRMWARE, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    sections = {name: dict(options) for name, options in json.loads(result.stdout)}
    envs = {name.split(":", 1)[1]: opts for name, opts in sections.items() if name.startswith("env:")}
    from pipeline.deploy import boards

    assert set(envs) >= set(boards.BOARDS)  # one environment per board, named as the board
    for name in boards.BOARDS:  # ... that says which board it is (model_config.h no longer overrides it)
        assert f'-DEDGEPICK_BOARD_NAME=\\"{name}\\"' in " ".join(envs[name]["build_flags"]), name
    assert envs["esp32c3"]["board"] == "esp32-c3-devkitm-1"
    for opts in envs.values():
        assert opts["framework"] == ["espidf"] and opts["platform"].startswith("espressif32")
    wrover_flags = " ".join(envs["esp32-psram4"]["build_flags"])
    assert "-DBOARD_HAS_PSRAM" in wrover_flags and "-mfix-esp32-psram-cache-issue" in wrover_flags
    assert envs["esp32s3-psram8"]["board_build.psram_type"] == "opi"
    assert "BOARD_HAS_PSRAM" not in " ".join(envs["esp32"].get("build_flags", []))
    component = (FIRMWARE / "src" / "idf_component.yml").read_text()
    assert "espressif/esp-tflite-micro" in component
    for name, mode in (("esp32-psram4", "CONFIG_SPIRAM_MODE_QUAD=y"), ("esp32s3-psram8", "CONFIG_SPIRAM_MODE_OCT=y")):
        files = envs[name]["board_build.cmake_extra_args"].split("=", 1)[1].split(";")
        text = "".join((FIRMWARE / f).read_text() for f in files)
        assert "CONFIG_SPIRAM=y" in text and mode in text, name
    assert "CONFIG_SPIRAM" not in (FIRMWARE / "sdkconfig.defaults").read_text()


def test_firmware_stage_errors_are_one_line(tmp_path, monkeypatch):
    from pipeline.config import Config
    from pipeline.stages import firmware as flash
    from pipeline.errors import EdgepickError

    monkeypatch.setattr(flash, "MODEL_CONFIG", tmp_path / "missing.h")
    with pytest.raises(EdgepickError, match="make quantize"):
        flash.read_model_config(flash.MODEL_CONFIG)
    header = tmp_path / "model_config.h"
    header.write_text("#define EDGEPICK_BUDGET_SRAM_CAPACITY 100u\n#define EDGEPICK_BUDGET_SRAM_USED 200u\n")
    with pytest.raises(EdgepickError, match="budget exceeded"):
        flash.budget_lines(flash.read_model_config(header))
    with pytest.raises(EdgepickError, match="unknown board 'arduino-uno'"):
        flash.pio_env("arduino-uno")
    monkeypatch.setattr(flash, "read_model_config", lambda path=None: {"EDGEPICK_BUDGET_SRAM_CAPACITY": "300u",
                                                                      "EDGEPICK_BUDGET_SRAM_USED": "200u"})

    def no_pio():
        raise EdgepickError("PlatformIO is not installed: pip install platformio")

    monkeypatch.setattr(flash, "pio_executable", no_pio)
    config = Config()
    config.board.name = "esp32-psram4"
    with pytest.raises(EdgepickError, match="predates model_ops.h"):  # a model folder of an older make quantize
        flash.build(config)
    (tmp_path / "model_ops.h").write_text("// ops\n")
    with pytest.raises(EdgepickError, match="PlatformIO is not installed"):
        flash.build(config)
    for output in ("PlatformIO: HTTPClientError: could not resolve registry", "Error: Unknown board ID 'esp32dev'"):
        message = flash._explain_pio_failure(output, "esp32")
        assert "\n" not in message and "espressif32" in message


def test_resampler_matches_numpy_interp(driver):
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (1000, 3)).astype(np.float32)
    text = "".join(" ".join(f"{v:.9g}" for v in row) + "\n" for row in x)
    out = np.array(run(driver, "resample", 125, 100, stdin=text).split(), dtype=np.float32).reshape(-1, 3)
    positions = np.arange(len(out)) * 1.25
    assert len(out) == int(np.floor(999 / 1.25)) + 1
    expected = np.stack([np.interp(positions, np.arange(1000), x[:, c].astype(np.float64)) for c in range(3)], axis=1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def tiny_tflite_model(n: int) -> bytes:
    """A real .tflite flatbuffer for TFLite Micro, written with the schema's object API (no TensorFlow needed):
    input [1, n, 1, 3] float32 -> MUL by (6, 5, 0) per component -> SOFTMAX over the last axis = (P, S, noise)."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s

    model = s.ModelT()
    model.version = 3
    empty, weights = s.BufferT(), s.BufferT()
    empty.data = []
    weights.data = list(np.array([6.0, 5.0, 0.0], dtype="<f4").tobytes())
    model.buffers = [empty, weights]

    def tensor(name, shape, buffer):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), s.TensorType.FLOAT32, buffer
        return t

    graph = s.SubGraphT()
    graph.tensors = [tensor("x", (1, n, 1, 3), 0), tensor("w", (3,), 1), tensor("xw", (1, n, 1, 3), 0),
                     tensor("p", (1, n, 1, 3), 0)]
    graph.inputs, graph.outputs = [0], [3]
    mul, softmax = s.OperatorT(), s.OperatorT()
    mul.opcodeIndex, mul.inputs, mul.outputs = 0, [0, 1], [2]
    mul.builtinOptionsType, mul.builtinOptions = s.BuiltinOptions.MulOptions, s.MulOptionsT()
    options = s.SoftmaxOptionsT()
    options.beta = 1.0
    softmax.opcodeIndex, softmax.inputs, softmax.outputs = 1, [2], [3]
    softmax.builtinOptionsType, softmax.builtinOptions = s.BuiltinOptions.SoftmaxOptions, options
    graph.operators = [mul, softmax]
    model.subgraphs = [graph]
    model.operatorCodes = []
    for op in (s.BuiltinOperator.MUL, s.BuiltinOperator.SOFTMAX):
        code = s.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = op
        code.version = 1
        model.operatorCodes.append(code)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def int8_student_tflite(n: int) -> bytes:
    """A real INT8 student of the XiaoNet family converted by the quantize stage (PyTorch -> ONNX -> TFLite), its
    head scaled up so that an untrained network crosses the pick threshold often: picks to compare, not skill."""
    torch = pytest.importorskip("torch")
    from pipeline.deploy.convert import quantize_student
    from pipeline.model.student import XiaoNet

    torch.manual_seed(3)
    model = XiaoNet(base_channels=2, in_samples=n).eval()
    with torch.no_grad():
        model.head.weight.mul_(40.0)
    rng = np.random.default_rng(2)
    windows = np.stack([synthetic_stream(n + 400, seed=k)[:, :n] for k in range(8)])
    windows = np.stack([normalize_reference(w) for w in windows]) + rng.normal(0, 0.01, (8, 3, n)).astype(np.float32)
    result = quantize_student(model, windows, windows[:2], ("int8",), measure_arena=False)
    return result.flatbuffers["int8"]


@pytest.mark.skipif(not hasattr(os, "openpty") or not hasattr(os, "mkfifo"), reason="no pseudo-terminals / fifos")
@pytest.mark.parametrize("model", ["mul-softmax", "int8-student"])
def test_replay_over_pty_with_tflite_micro(driver, tmp_path, model):
    """End to end: replay.py -> pseudo-terminal -> host program (the portable core) whose model is a real .tflite
    run by the tflite-micro interpreter (the reference kernels of the microcontroller) -> picks equal to the
    Python pipeline's on the same model. Models: a two-op float flatbuffer, and an INT8 student of the XiaoNet
    family from the quantize stage (int8 input quantised and output dequantised as the firmware does)."""
    import tty

    runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    from pipeline.deploy import replay
    if model == "mul-softmax":
        interpreter = runtime.Interpreter.from_bytes(tiny_tflite_model(IN_SAMPLES), arena_size=64 * 1024)

        def tflm(window_nw: np.ndarray) -> np.ndarray:  # (n, 3) normalised -> (n, 3) probabilities
            interpreter.set_input(np.ascontiguousarray(window_nw, dtype=np.float32).reshape(1, IN_SAMPLES, 1, 3), 0)
            interpreter.invoke()
            return np.asarray(interpreter.get_output(0), dtype=np.float32).reshape(IN_SAMPLES, 3)
    else:
        from pipeline.deploy import tflm as runtime_tflm

        flatbuffer = int8_student_tflite(IN_SAMPLES)

        def tflm(window_nw: np.ndarray) -> np.ndarray:
            return runtime_tflm.run(flatbuffer, np.ascontiguousarray(window_nw.T, dtype=np.float32)[None])[0].T

    x = synthetic_stream()
    ref, _ = stream_reference(x, lambda w: tflm(w.T), IN_SAMPLES, HOP, 0.3, EPS)
    assert len(ref) >= 3

    request, reply = tmp_path / "request", tmp_path / "reply"
    os.mkfifo(request)
    os.mkfifo(reply)
    windows_served = []

    def serve():
        with open(request, "rb") as req, open(reply, "wb") as rep:
            size = IN_SAMPLES * 3 * 4
            while True:
                data = req.read(size)
                if len(data) < size:
                    return
                window = np.frombuffer(data, dtype="<f4").reshape(IN_SAMPLES, 3)
                windows_served.append(window)
                rep.write(tflm(window).astype("<f4").tobytes())
                rep.flush()

    model_server = threading.Thread(target=serve, daemon=True)
    model_server.start()
    master, slave = os.openpty()
    tty.setraw(slave)
    env = dict(os.environ, EDGEPICK_TTY=os.ttyname(slave))
    args = [*map(str, stream_args()[1:-1]), "pipe", str(request), str(reply)]
    server = subprocess.Popen([str(driver), "serve", *args], env=env, stderr=subprocess.PIPE)
    try:
        picks, messages = replay.replay_array(os.fdopen(master, "r+b", buffering=0), x, timeout=30.0)
    finally:
        server.kill()
        server.wait()
        os.close(slave)
    compare_picks(picks, ref)
    assert len(windows_served) == len(range(0, x.shape[1] - IN_SAMPLES + 1, HOP)) + 1  # + SeisBench's last window


@pytest.mark.parametrize("defines,precision", [(["-DEDGEPICK_SAMPLE_SOURCE=0"], "fp16"),
                                               (["-DEDGEPICK_SAMPLE_SOURCE=1", "-DBOARD_HAS_PSRAM", "-DCONFIG_SPIRAM"],
                                                "int8")])
def test_firmware_glue_syntax(defines, precision, tmp_path):
    """A typo check of firmware/src/*.cc against minimal stand-ins of the IDF / TFLite Micro headers
    (firmware/lib/edgepick_core/host/stubs) and a model_config.h from the quantize stage's own writer: the real
    build needs the espressif32 platform."""
    from pipeline.deploy import boards
    from pipeline.deploy.convert import c_array

    dtype, scale = ("int8", 0.0078125) if precision == "int8" else ("float32", 0.0)
    info = {"precision": precision, "bytes": 100, "expanded_bytes": 200 if precision == "fp16" else 0,
            "sha256": "abc", "arena_bytes": 1000, "in_samples": 3001, "hop_samples": 1501, "sampling_rate": 100.0,
            "ops": {"CONV_2D": 9, "RESHAPE": 2, "SOFTMAX": 1, "TRANSPOSE_CONV": 1},
            "io": {"input": {"dtype": dtype, "scale": scale, "zero_point": 0},
                   "output": {"dtype": dtype, "scale": scale / 2, "zero_point": -128}}}
    budget = boards.check_budget(boards.get_board("esp32s3-psram8"), info)
    model_dir = tmp_path / "model"
    c_array.write_firmware(model_dir, bytes(100), info, PickRule(blinding=(302, 302)), budget, 1e-6)
    stubs = CORE / "host" / "stubs"
    for source in sorted((FIRMWARE / "src").glob("*.cc")):
        cmd = ["g++", "-std=gnu++17", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-fsyntax-only", *defines,
               f"-I{stubs}", f"-I{model_dir}", f"-I{FIRMWARE / 'src'}", f"-I{CORE / 'src'}", str(source)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, f"{source.name}: {result.stderr}"


def test_replay_reads_miniseed_gaps_as_gaps_and_opens_datasets(driver, tmp_path):
    """scripts/replay.py reads miniSEED as the data stage does: a gap stays a gap (an index jump the firmware
    reports), never interpolated; and --dataset opens an edgepick dataset (it used to refuse every one)."""
    obspy = pytest.importorskip("obspy")
    from pipeline.deploy import replay
    from pipeline.config import DataConfig
    from pipeline.data.datasets import write_dataset
    from pipeline.deploy.serial_protocol import sample_lines

    rng = np.random.default_rng(3)
    start = obspy.UTCDateTime(2020, 1, 1)
    stream = obspy.Stream()
    for component in "ZNE":
        for offset, n in ((0.0, 4000), (42.0, 3000)):  # 40 s of data, a 2 s gap, 30 s more
            stream.append(obspy.Trace(rng.normal(size=n).astype(np.float32), header={
                "network": "XX", "station": "A", "channel": f"HH{component}", "sampling_rate": 100.0,
                "starttime": start + offset}))
    stream.write(str(tmp_path / "gap.mseed"), format="MSEED")
    segments, t0 = replay.load_mseed(str(tmp_path / "gap.mseed"))
    assert t0 == pytest.approx(start.timestamp)
    assert [(first, data.shape) for first, data in segments] == [(0, (3, 4000)), (4200, (3, 3000))]
    out = run(driver, *stream_args(), stdin="".join(sample_lines(segments)))
    assert "gap of 200 samples" in out
    with pytest.raises(replay.EdgepickError, match="cannot read"):
        replay.load_mseed(str(tmp_path / "missing.mseed"))

    def records():
        for i in range(3):
            yield {"trace_name": f"t{i}", "trace_sampling_rate_hz": 100.0, "source_id": f"e{i}"}, rng.normal(size=(3, 4000))

    write_dataset(records(), tmp_path / "ds", DataConfig(), "test")
    x, _ = replay.load_dataset_trace(str(tmp_path / "ds"), 1)
    assert x.shape == (3, 4000)


# ---------------------------------------------------------------------------------------------------------------
# The live mode: a small hop and a look-ahead, every sample from one window (docs/firmware.md, "Live mode")
# ---------------------------------------------------------------------------------------------------------------
LIVE_HOP, LIVE_LOOKAHEAD = 64, {"P": 48, "S": 96}  # each phase its own look-ahead (live.*_lookahead_samples)


def live_stream_args() -> list:
    """The host driver's stream arguments of the live mode: the live hop and each phase's live blinding ("P,S")."""
    blinding = [live_blinding(IN_SAMPLES, LIVE_HOP, LIVE_LOOKAHEAD[phase]) for phase in "PS"]
    args = stream_args(exact=0, blinding=[",".join(str(b[k]) for b in blinding) for k in (0, 1)])  # "P,S"
    args[2] = LIVE_HOP
    return args


def live_stream() -> np.ndarray:
    """synthetic_stream and one more P whose trigger reaches past the last window's kept slice (closed at "#end")."""
    x = synthetic_stream()
    t = np.arange(x.shape[1])
    x[0] += 3.0 * np.exp(-0.5 * ((t - 2890) / 8.0) ** 2) * np.sin(t / 2.0)
    return x


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


LIVE_CONFIRM = {"P": 200, "S": 250}  # live.*_confirm_samples: the same windows, a longer look-ahead


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


def test_firmware_glue_syntax_live_mode(tmp_path):
    """firmware/src/main_functions.cc with a model_config.h in live mode (the default of `make quantize`), and the
    one-line refusal of -DEDGEPICK_LIVE=1 with a header written without live settings."""
    from pipeline.deploy import boards
    from pipeline.deploy.convert import c_array

    info = {"precision": "int8", "bytes": 100, "expanded_bytes": 0, "sha256": "abc", "arena_bytes": 1000,
            "in_samples": 3001, "hop_samples": 1501, "sampling_rate": 100.0, "ops": {"CONV_2D": 9, "SOFTMAX": 1},
            "io": {"input": {"dtype": "int8", "scale": 0.0078125, "zero_point": 0},
                   "output": {"dtype": "int8", "scale": 0.00390625, "zero_point": -128}}}
    budget = boards.check_budget(boards.get_board("esp32s3-psram8"), info)
    stubs = CORE / "host" / "stubs"

    def compile_glue(model_dir, *defines):
        cmd = ["g++", "-std=gnu++17", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-fsyntax-only",
               "-DEDGEPICK_SAMPLE_SOURCE=0", *defines, f"-I{stubs}", f"-I{model_dir}", f"-I{FIRMWARE / 'src'}",
               f"-I{CORE / 'src'}", str(FIRMWARE / "src" / "main_functions.cc")]
        return subprocess.run(cmd, capture_output=True, text=True)

    live = LiveRule.of(info["in_samples"], 100, {"P": 100, "S": 200})
    files = c_array.write_firmware(tmp_path / "live", bytes(100), info, PickRule(blinding=(302, 302)), budget, 1e-6, live)
    assert "#define EDGEPICK_LIVE_P_BLIND_PRE 2801 " in files["model_config.h"]
    assert "#define EDGEPICK_LIVE_S_BLIND_PRE 2701 " in files["model_config.h"]
    for defines in ((), ("-DEDGEPICK_LIVE=0",)):
        result = compile_glue(tmp_path / "live", *defines)
        assert result.returncode == 0, result.stderr
    c_array.write_firmware(tmp_path / "replay", bytes(100), info, PickRule(blinding=(302, 302)), budget, 1e-6)
    result = compile_glue(tmp_path / "replay", "-DEDGEPICK_LIVE=1")
    assert result.returncode != 0 and "model_config.h has no live settings" in result.stderr
