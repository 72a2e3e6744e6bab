"""The firmware's portable core (firmware/lib/edgepick_core) compiled with the host g++ and checked against Python
references on golden vectors made here: bit-exact on integer paths, <= 1e-5 on float paths; pick extraction equal
to SeisBench's classify; the serial parser survives malformed input."""

from __future__ import annotations

import shutil
import struct
import subprocess

import numpy as np
import pytest

from pipeline.deploy.convert.fp16_pack import expand_fp16
from pipeline.model.picking import PickRule

from host_core import CORE, EPS, floats_text, normalize_reference, run

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no host g++")


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




def test_resampler_matches_numpy_interp(driver):
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (1000, 3)).astype(np.float32)
    text = "".join(" ".join(f"{v:.9g}" for v in row) + "\n" for row in x)
    out = np.array(run(driver, "resample", 125, 100, stdin=text).split(), dtype=np.float32).reshape(-1, 3)
    positions = np.arange(len(out)) * 1.25
    assert len(out) == int(np.floor(999 / 1.25)) + 1
    expected = np.stack([np.interp(positions, np.arange(1000), x[:, c].astype(np.float64)) for c in range(3)], axis=1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
