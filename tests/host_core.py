"""What the firmware tests share: the paths, the host driver's commands and stand-in model, the streams and
their Python references, the live mode's settings, small TFLite models (the ``driver`` fixture is in conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.model.picking import PickRule, live_blinding, stream_picks


REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "firmware" / "lib" / "edgepick_core"
FIRMWARE = REPO / "firmware"
EPS = 1e-6  # pipeline.model.student.NORM_EPS


def build_driver(out: Path) -> Path:
    """The core + host driver, built with -Wall -Wextra -Werror -std=c++17 (a warning fails the test)."""
    sources = sorted(str(p) for p in (CORE / "src").glob("*.cpp")) + [str(CORE / "host" / "host_driver.cpp")]
    cmd = ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-O1", "-ffp-contract=off", f"-I{CORE / 'src'}", *sources,
           "-o", str(out)]
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


def normalize_reference(window: np.ndarray) -> np.ndarray:
    """(3, n) -> (3, n): the student's own normalisation, which the firmware reproduces."""
    from pipeline.data.normalization import normalize_windows

    return normalize_windows(window.astype(np.float32), EPS)


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


def zsquare_model(window: np.ndarray) -> np.ndarray:
    """The host driver's "zsquare" stand-in model: P = 0.5 z^2, S = 0.45 z^2 (S from Z alone), noise the rest."""
    z = window[0].astype(np.float32)
    p, s = np.float32(0.5) * z * z, np.float32(0.45) * z * z
    return np.stack([p, s, np.float32(1) - p - s], axis=1)


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



def pio() -> str:
    exe = Path(sys.executable).with_name("pio")
    if not exe.is_file():
        pytest.skip("PlatformIO is not installed in the venv")
    return str(exe)


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



LIVE_CONFIRM = {"P": 200, "S": 250}  # live.*_confirm_samples: the same windows, a longer look-ahead


def picking_causal_stream(delay: int, norm_window: int, s_delay: int | None = None, measure_arena: bool = False,
                          **settings):
    """(stream, student, the streaming export's StreamResult with its INT8 variant): a tiny causal student (tests/test_streaming.py) whose P and S
    curves swing across 0.4 with the signal (positive weights and a head mapping the median to the 95th percentile
    of its input's sum to 8 logits of P over S, as tests/test_stream_export.py's), converted by the streaming export
    (~8 s), and a stream of six bursts of integer counts that ends in a partial block. ``settings``: the student's
    others (sample_norm, norm_lag)."""
    torch = pytest.importorskip("torch")
    from pipeline.deploy.convert import stream_export
    from pipeline.model.streaming import BLOCK
    from test_streaming import causal_student, waveform

    x = np.concatenate([waveform(1600, seed=7 + k) for k in range(6)] + [waveform(40)], axis=1)
    x = np.round(x).astype(np.float32)
    student = causal_student(delay=delay, norm_window=norm_window, **settings)
    if s_delay is not None:
        student.s_output_delay = s_delay
    with torch.no_grad():
        for name, parameter in student.named_parameters():
            if name.endswith("weight") and ".bn." not in name:
                parameter.abs_()
        student.head.weight.zero_()
        student.head.bias.zero_()
        student.head.weight[0] = 1.0
        logits = student.logits(torch.from_numpy(x[:, : 60 * BLOCK]).float()[None])[0, 0].numpy()
        low, high = np.quantile(logits[3000:], [0.5, 0.95])
        gain = 8 / (high - low)
        student.head.weight[0], student.head.bias[0] = gain, -gain * (low + high) / 2
        student.head.weight[1], student.head.bias[1] = -gain, gain * (low + high) / 2 - 6
    calibration = [waveform(30 * BLOCK, seed=k) for k in range(3)]
    result = stream_export.stream_export(student, calibration, [waveform(10 * BLOCK, seed=9)], ("int8",),
                                         measure_arena=measure_arena)
    return x, student, result
