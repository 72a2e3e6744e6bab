"""``make quantize`` for a causal student: its streaming model (pipeline/deploy/convert/stream_export.py) in FP32
and INT8, each checked block by block in TensorFlow Lite Micro against the PyTorch stream, written with the state
description and the C sources the firmware's streaming loop takes (pipeline/deploy/convert/stream_c.py).

Out: ``quantize.out``: ``student_stream.onnx``, ``model_stream_<precision>.tflite`` and ``.json`` (its state
tensors), ``quantize_report.json``, the resolved configuration, and ``firmware/`` (``stream_model_data.cc/.h``,
``stream_model_config.h``, ``stream_model_ops.h``, ``stream_states.json``) for ``quantize.firmware_precision``.
``quantize.firmware_dir`` is left as it is: the firmware runs whole windows until its streaming loop exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.artifacts import atomic_dir, save_config
from pipeline.data.datasets import open_dataset
from pipeline.deploy import boards
from pipeline.deploy.convert import stream_c
from pipeline.deploy.convert.stream_export import StreamResult, stream_export
from pipeline.errors import EdgepickError
from pipeline.model.streaming import BLOCK

STREAM_BUILT = ("fp32", "int8")  # quantize.precisions the streaming model is built in (no float16 kernels in TFLM)


def dataset_traces(dataset: str, split: str, count: int, seed: int) -> list[np.ndarray]:
    """Up to ``count`` whole traces (3, n) of ``split``, raw samples, seeded; from a mixture ("a,b") an equal
    share of each folder."""
    paths = [p.strip() for p in str(dataset).split(",") if p.strip()]
    shares = [count // len(paths) + (i < count % len(paths)) for i in range(len(paths))]
    traces = []
    for path, share in zip(paths, shares):
        part = getattr(open_dataset(path), split)()
        order = np.random.default_rng(seed).permutation(len(part))
        for idx in order[:share]:
            waveform = np.asarray(part.get_waveforms(int(idx)), dtype=np.float64)
            if waveform.ndim == 2 and waveform.shape[0] == 3 and waveform.shape[1] >= BLOCK and np.isfinite(waveform).all():
                traces.append(waveform)
    return traces


def stream_memory(board, result: StreamResult, info: dict, student, margin: float) -> dict:
    """What the streaming model needs on ``board`` besides the picker: the arena, the firmware's own copy of the
    states and the normaliser's block statistics (sum, maximum, minimum per component and block, 8 bytes each);
    checked against the board's internal RAM and the model's share of flash (one error line when over)."""
    states = sum(int(np.prod(shape)) for shape in result.state_shapes) * (1 if info["precision"] == "int8" else 4)
    norm = student.norm_window // BLOCK * 3 * 3 * 8
    sram = int((info.get("arena_bytes", 0) + states + norm) * (1 + margin))
    memory = {"arena": info.get("arena_bytes", 0), "state copy": states, "normaliser": norm,
              "sram_with_margin": sram, "sram_capacity": board.sram_bytes, "flash": info["bytes"],
              "flash_capacity": board.flash_bytes}
    if sram > board.sram_bytes or info["bytes"] > board.flash_bytes:
        raise EdgepickError(f"the streaming model needs {sram} bytes of RAM and {info['bytes']} of flash on {board.name} "
                            f"(has {board.sram_bytes} / {board.flash_bytes})")
    return memory


def format_stream(result: StreamResult, student, window_macs: int, hop: int) -> str:
    rate = float(student.sampling_rate)
    per_second = result.macs_per_block * rate / BLOCK
    live = window_macs * rate / hop
    lines = [f"streaming step: ONNX vs PyTorch max |diff| {result.onnx_max_error:.2e}; Keras vs onnxruntime "
             f"{result.keras_max_error:.2e}; {len(result.state_shapes)} states; {result.calibration_pairs} calibration blocks",
             f"{'variant':14} {'bytes':>7} {'arena':>7} {'max err':>9} {'agree':>6} {'picks':>6}  ops"]
    for precision, info in result.variants.items():
        ops = " ".join(f"{k}x{v}" for k, v in info["ops"].items())
        lines.append(f"{precision:14} {info['bytes']:7d} {info.get('arena_bytes', 0):7d} {info['max_abs_error']:9.2e} "
                     f"{info['pick_agreement']:6.3f} {info['reference_picks']:6d}  {ops}")
    lines.append(f"MACs: {result.macs_per_block:,} per {BLOCK}-sample block = {per_second:,.0f} per second of data; "
                 f"the whole-window live mode {window_macs:,} per window every {hop} samples = {live:,.0f} per second "
                 f"({live / per_second:.0f}x)")
    return "\n".join(lines)


def run(config, student) -> StreamResult:
    """The quantize stage's work for a causal ``student`` (its configuration: ``config``)."""
    q = config.quantize
    built = tuple(p for p in q.precisions if p in STREAM_BUILT)
    if q.firmware_precision not in built:
        raise EdgepickError(f"quantize.firmware_precision {q.firmware_precision}: a causal student's streaming model is "
                            f"built in {' / '.join(STREAM_BUILT)} among quantize.precisions {tuple(q.precisions)}")
    dataset = q.dataset or config.distill.dataset
    calibration = dataset_traces(dataset, "train", max(int(q.calibration_windows), 1), q.seed) if "int8" in built else []
    if "int8" in built and len(calibration) < q.min_calibration_windows:
        raise EdgepickError(f"INT8 needs >= {q.min_calibration_windows} calibration traces from the train split of "
                            f"{dataset}, got {len(calibration)} (quantize.calibration_windows={q.calibration_windows})")
    heldout = dataset_traces(dataset, "test", int(q.heldout_windows), q.seed + 1)
    board = boards.get_board(config.board.name)
    result = stream_export(student, calibration, heldout, built, check_agreement=q.check_agreement,
                           equalize_alpha=q.equalize_alpha)
    skipped = [p for p in q.precisions if p not in built]
    window_macs = student.count_macs()
    print(format_stream(result, student, window_macs, int(config.live.hop_samples)))
    if skipped:
        print(f"not built for the stream: {', '.join(skipped)} (TFLite Micro has no float16 kernels; the FP16 variant "
              "packs a whole-window model)")
    descriptions, memory = {}, {}
    for precision, info in result.variants.items():
        descriptions[precision] = stream_c.state_description(info, result.state_layers, student)
        memory[precision] = stream_memory(board, result, info, student, float(config.board.margin))
        if info["reference_picks"] and info["pick_agreement"] < info["agreement_required"]:
            print(f"WARNING: streaming {precision} picks agree with PyTorch {info['pick_agreement']:.3f} < "
                  f"{info['agreement_required']}: below the bar for shipping")
    out = Path(q.out)
    with atomic_dir(out) as tmp:
        (tmp / "student_stream.onnx").write_bytes(result.onnx_bytes)
        for precision, data in result.flatbuffers.items():
            (tmp / f"model_stream_{precision}.tflite").write_bytes(data)
            (tmp / f"model_stream_{precision}.json").write_text(json.dumps(descriptions[precision], indent=2) + "\n")
        report = {"student": str(q.student), "dataset": str(dataset), "streaming": True,
                  "calibration_traces": len(calibration), "calibration_blocks": result.calibration_pairs,
                  "heldout_traces": len(heldout), "onnx_max_error": result.onnx_max_error,
                  "keras_max_error": result.keras_max_error, "variants": result.variants, "memory": memory,
                  "macs_per_block": result.macs_per_block,
                  "macs_per_second": result.macs_per_block * float(student.sampling_rate) / BLOCK,
                  "window_macs": window_macs, "firmware_precision": q.firmware_precision, "board": board.name}
        (tmp / "quantize_report.json").write_text(json.dumps(report, indent=2, default=str))
        save_config(tmp, config)
        stream_c.write_stream_firmware(tmp / "firmware", result.flatbuffers[q.firmware_precision],
                                       descriptions[q.firmware_precision], student.pick_rule)
    chosen = result.variants[q.firmware_precision]
    print(f"wrote {out}/ (streaming {q.firmware_precision}: {chosen['bytes']} bytes, arena {chosen.get('arena_bytes')} "
          f"bytes, firmware sources in {out}/firmware/; {q.firmware_dir} left as it is)")
    return result
