"""The student -> every TFLite variant, each checked in the real TFLite Micro interpreter.

1. PyTorch -> ONNX (:mod:`.onnx_export`), onnxruntime within 1e-4 of PyTorch;
2. ONNX -> Keras (:mod:`.onnx_to_keras`), within 1e-4 of onnxruntime;
3. Keras -> TFLite (:mod:`.tflite`): FP32; INT8 full-integer after depthwise equalisation, its activation ranges
   chosen on train windows (:mod:`.int8`); FP16 as the FP32 flatbuffer with float16 weights, packed
   (:mod:`.fp16_pack`);
4. every variant in TFLite Micro (:mod:`pipeline.deploy.tflm`): unsupported ops named with their layer, the smallest
   arena found by exact search, outputs and picks (the student's own :class:`~pipeline.model.picking.PickRule`)
   compared with PyTorch on held-out windows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.deploy import boards, tflm
from pipeline.model import picking
from pipeline.deploy.convert import int8, tflite
from pipeline.deploy.convert.fp16_pack import expand_fp16, pack_fp16
from pipeline.deploy.convert.onnx_export import ONNX_TOLERANCE, export_onnx, onnxruntime_run, torch_run
from pipeline.deploy.convert.onnx_to_keras import keras_run, layer_name, module_of, onnx_to_keras
from pipeline.errors import EdgepickError

PRECISIONS = boards.PRECISIONS
AGREEMENT_REQUIRED = {"fp32": 0.99, "fp16": 0.99, "int8": 0.97}  # pick agreement with PyTorch to ship a variant


@dataclass
class QuantizeResult:
    onnx_max_error: float = 0.0
    keras_max_error: float = 0.0
    variants: dict = field(default_factory=dict)  # precision -> info dict
    flatbuffers: dict = field(default_factory=dict)  # precision -> bytes that go to the device (fp16: packed)
    onnx_bytes: bytes = b""
    origin: dict = field(default_factory=dict)


def quantize_student(
    model,
    calibration: Iterable | np.ndarray,
    heldout: np.ndarray,
    precisions: Iterable[str] = PRECISIONS,
    strip: bool = True,
    measure_arena: bool = True,
    check_agreement: bool = False,
    equalize_alpha: float = 1.0,
    range_percentile: float = -1.0,
) -> QuantizeResult:
    """Run the chain on ``model``. ``calibration``: iterable / array of normalised (3, N) windows (>= 1; >= 200 in
    production); ``heldout``: (B, 3, N) normalised windows for parity and pick agreement."""
    precisions = tuple(precisions)
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise EdgepickError(f"unknown precision(s) {bad}; use {', '.join(PRECISIONS)}")
    model = model.eval()
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise EdgepickError(f"student parameter {name} holds NaN or inf: refusing to convert (re-run distill)")
    calibration = _stack_windows(calibration)
    heldout = np.asarray(heldout, dtype=np.float32)
    expected = (3, model.in_samples)
    for name, arr in (("calibration", calibration), ("held-out", heldout)):
        if arr.ndim != 3 or arr.shape[1:] != expected or len(arr) == 0:
            raise EdgepickError(f"{name} windows must be (B, {expected[0]}, {expected[1]}), got {arr.shape}")
    result = QuantizeResult()
    reference = torch_run(model, heldout)

    onnx_model = export_onnx(model)
    result.onnx_bytes = onnx_model.SerializeToString()
    result.onnx_max_error = float(np.abs(onnxruntime_run(onnx_model, heldout) - reference).max())
    if result.onnx_max_error > ONNX_TOLERANCE:
        raise EdgepickError(f"onnxruntime differs from PyTorch by {result.onnx_max_error:.2e} (> {ONNX_TOLERANCE})")
    result.origin = {layer_name(n.name): module_of(n.name) for n in onnx_model.graph.node}

    keras_model = onnx_to_keras(onnx_model)
    ort_out = onnxruntime_run(onnx_model, heldout)
    result.keras_max_error = float(np.abs(keras_run(keras_model, heldout) - ort_out).max())
    if result.keras_max_error > ONNX_TOLERANCE:
        raise EdgepickError(f"the Keras model differs from onnxruntime by {result.keras_max_error:.2e}")

    fp32 = tflite.convert_fp32(keras_model)
    if strip:
        fp32_stripped = tflite.strip_strings(fp32)
    for precision in precisions:
        started = time.perf_counter()
        info: dict = {"precision": precision}
        if precision == "fp32":
            raw = fp32
            device = fp32_stripped if strip else fp32
            runnable = device
        elif precision == "int8":
            int8_model = keras_model
            if equalize_alpha > 0:
                int8_model = onnx_to_keras(onnx_model)
                info["equalization"] = int8.equalize_depthwise(
                    int8_model, int8.depthwise_pointwise_pairs(onnx_model), calibration[:64], alpha=equalize_alpha
                )
                drift = float(np.abs(keras_run(int8_model, heldout[:4]) - ort_out[:4]).max())
                if drift > ONNX_TOLERANCE:
                    raise EdgepickError(f"depthwise equalisation changed the float model by {drift:.2e}")
            raw = tflite.convert_int8(int8_model, calibration)
            raw, info["activation_percentile"], info["selection_agreement"] = int8.choose_activation_ranges(
                raw, int8_model, model, calibration, range_percentile
            )
            device = tflite.strip_strings(raw) if strip else raw
            runnable = device
        else:
            base = fp32_stripped if strip else fp32
            device = pack_fp16(base)
            runnable = expand_fp16(device)
            info["expanded_bytes"] = len(runnable)
            raw = base
        # name the layer of an unsupported op from the unstripped flatbuffer
        tflm.check_ops(raw if precision != "fp16" else runnable, result.origin)
        tflm.check_ops(runnable, result.origin)
        info["ops"] = tflm.op_counts(runnable)
        info["bytes"] = len(device)
        info["bytes_unstripped"] = len(raw)
        info["sha256"] = hashlib.sha256(device).hexdigest()
        info["io"] = tflm.io_details(runnable)
        info["in_samples"] = model.in_samples
        info["pick_rule"] = dataclasses.asdict(model.pick_rule)  # the rule the agreement is scored with
        if measure_arena:
            sample_in = tflm.quantize_input(heldout[0], info["io"]["input"])
            info["arena_bytes"] = tflm.minimal_arena(runnable, sample_in)
        outputs = tflm.run(runnable, heldout, info.get("arena_bytes"))
        info["max_abs_error"] = float(np.abs(outputs - reference).max())
        info["mean_abs_error"] = float(np.abs(outputs - reference).mean())
        agreement, n_picks = picking.pick_agreement(reference, outputs, model.pick_rule, model.sampling_rate)
        info["pick_agreement"] = agreement
        info["reference_picks"] = n_picks
        info["agreement_required"] = AGREEMENT_REQUIRED[precision]
        info["seconds"] = round(time.perf_counter() - started, 2)
        if check_agreement and n_picks and agreement < AGREEMENT_REQUIRED[precision]:
            raise EdgepickError(
                f"{precision}: pick agreement with PyTorch {agreement:.3f} < {AGREEMENT_REQUIRED[precision]} "
                f"({n_picks} picks on {len(heldout)} held-out windows)"
            )
        result.variants[precision] = info
        result.flatbuffers[precision] = device
        if precision == "fp16":
            result.flatbuffers["fp16_expanded"] = runnable
    return result


def _stack_windows(windows) -> np.ndarray:
    """An array (B, 3, N), or an iterable of windows (3, N) or batches (b, 3, N), as one float32 array."""
    if isinstance(windows, np.ndarray):
        return windows.astype(np.float32)
    parts = []
    for item in windows:
        item = np.asarray(item.numpy() if isinstance(item, torch.Tensor) else item, dtype=np.float32)
        parts.append(item if item.ndim == 3 else item[None])
    if not parts:
        raise EdgepickError("no calibration windows")
    return np.concatenate(parts)


def format_variants(result: QuantizeResult) -> str:
    lines = [
        f"ONNX vs PyTorch max |diff| {result.onnx_max_error:.2e}; Keras vs onnxruntime {result.keras_max_error:.2e}",
        f"{'variant':8} {'bytes':>8} {'unstripped':>10} {'arena':>8} {'max err':>9} {'agree':>7} {'picks':>6}  ops",
    ]
    for precision, info in result.variants.items():
        ops = " ".join(f"{k}x{v}" for k, v in info["ops"].items())
        lines.append(
            f"{precision:8} {info['bytes']:8d} {info['bytes_unstripped']:10d} {info.get('arena_bytes', 0):8d} "
            f"{info['max_abs_error']:9.2e} {info['pick_agreement']:7.3f} {info['reference_picks']:6d}  {ops}"
        )
    return "\n".join(lines)


def format_latency(result: QuantizeResult) -> str:
    """Estimated ms per window and real-time factor on ESP32 / ESP32-C3 / ESP32-S3 (:data:`pipeline.deploy.boards.CYCLES_PER_MAC`:
    INT8 on ESP32 and ESP32-C3 from the instruction count measured in the emulator, the rest from published timings)."""
    chips = ("esp32", "esp32c3", "esp32s3")
    lines = [f"{'variant':8} {'MACs':>10} " + " ".join(f"{c + ' ms':>11} {'RTF':>7}" for c in chips)
             + "  (estimates: pipeline/deploy/boards.py)"]
    for precision, info in result.variants.items():
        latency = info.get("estimated_latency")
        if not latency:
            continue
        cells = [f"{latency[c]['ms']:11.1f} {latency[c]['real_time_factor']:7.4f}" if c in latency else f"{'-':>11} {'-':>7}"
                 for c in chips]
        lines.append(f"{precision:8} {info['macs']:10d} " + " ".join(cells))
    lines.append(f"  INT8 on ESP32 / ESP32-C3: {boards.EMULATED_INSTRUCTIONS_PER_MAC['esp_nn']:.1f} instructions per MAC "
                 "measured in the emulator (ESP-NN C kernels, `make firmware-sim`), at 1 cycle each; ESP32-S3 and "
                 "float: Espressif's person-detection timings")
    return "\n".join(lines)
