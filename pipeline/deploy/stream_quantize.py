"""``make quantize`` for a causal student: its streaming model (pipeline/deploy/convert/stream_export.py) in FP32
and INT8, each checked block by block in TensorFlow Lite Micro against the PyTorch stream, written with the state
description and the C sources the firmware's streaming loop takes (pipeline/deploy/convert/stream_c.py).

Out: ``quantize.out``: ``student_stream.onnx``, ``model_stream_<precision>.tflite`` and ``.json`` (its state
tensors), ``quantize_report.json``, the resolved configuration; ``quantize.firmware_dir``: the firmware's streaming
model of ``quantize.firmware_precision`` (``stream_model_data.cc/.h``, ``stream_model_config.h`` with the board's
memory budget, ``stream_model_ops.h``, ``stream_states.json``), which replaces a whole-window model there (the
firmware then runs its streaming mode, firmware/src/stream_model.cc). Both folders are replaced together, with one
quantize id, as the whole-window stage writes them (pipeline/stages/quantize.py).
"""

from __future__ import annotations

import json

import numpy as np

from pipeline.artifacts import atomic_dirs, save_config
from pipeline.data.datasets import open_dataset
from pipeline.deploy import boards
from pipeline.deploy.convert import c_array, stream_c
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


def stream_budget(board, description: dict, board_config) -> dict:
    """What the streaming model (its :func:`stream_c.state_description`) needs on ``board`` besides the picker's
    code: the arena, the firmware's own copy of the states, the normaliser's block statistics and the block
    buffers, placed and checked by :func:`pipeline.deploy.boards.check_stream_budget` (not raised: :func:`run`
    refuses the firmware variant's overflow)."""
    need = {key: description[key] for key in ("bytes", "precision", "state_bytes", "norm_window_blocks")}
    need["arena_bytes"] = int(description["arena_bytes"] or 0)
    need["norm_lag_samples"] = int(description.get("norm_lag_samples", 0))
    return boards.check_stream_budget(board, need, board_config, raise_error=False)


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
    descriptions, budgets = {}, {}
    for precision, info in result.variants.items():
        descriptions[precision] = stream_c.state_description(info, result.state_layers, student)
        budgets[precision] = stream_budget(board, descriptions[precision], config.board)
        if info["reference_picks"] and info["pick_agreement"] < info["agreement_required"]:
            print(f"WARNING: streaming {precision} picks agree with PyTorch {info['pick_agreement']:.3f} < "
                  f"{info['agreement_required']}: below the bar for shipping")
    chosen, budget = result.variants[q.firmware_precision], budgets[q.firmware_precision]
    print(boards.format_budget(budget))
    if budget["overflow"]:
        raise EdgepickError(budget["overflow"])
    payload, description = result.flatbuffers[q.firmware_precision], descriptions[q.firmware_precision]
    run_id = c_array.quantize_id(result.flatbuffers, stream_c.stream_config_header(description, student.pick_rule, budget))
    out, firmware_dir = c_array.output_folders(q.out, q.firmware_dir)
    with atomic_dirs(out, firmware_dir) as (tmp, tmp_firmware):
        (tmp / "student_stream.onnx").write_bytes(result.onnx_bytes)
        for precision, data in result.flatbuffers.items():
            (tmp / f"model_stream_{precision}.tflite").write_bytes(data)
            (tmp / f"model_stream_{precision}.json").write_text(json.dumps(descriptions[precision], indent=2) + "\n")
        report = {"student": str(q.student), "dataset": str(dataset), "streaming": True,
                  "calibration_traces": len(calibration), "calibration_blocks": result.calibration_pairs,
                  "heldout_traces": len(heldout), "onnx_max_error": result.onnx_max_error,
                  "keras_max_error": result.keras_max_error, "variants": result.variants, "budgets": budgets,
                  "macs_per_block": result.macs_per_block,
                  "macs_per_second": result.macs_per_block * float(student.sampling_rate) / BLOCK,
                  "window_macs": window_macs, "firmware_precision": q.firmware_precision, "board": board.name,
                  "quantize_id": run_id, "firmware_dir": str(firmware_dir)}
        (tmp / "quantize_report.json").write_text(json.dumps(report, indent=2, default=str))
        save_config(tmp, config)
        files = stream_c.stream_firmware_files(payload, description, student.pick_rule, budget, run_id)
        c_array.fill_firmware_dir(tmp_firmware, firmware_dir, files, payload, replaces=c_array.WINDOW_FILES,
                                  array=("stream_model_data.cc", "g_edgepick_stream_model"))
    print(f"wrote {out}/ and {firmware_dir}/ (streaming {q.firmware_precision}: {chosen['bytes']} bytes, arena "
          f"{chosen.get('arena_bytes')} bytes; quantize id {run_id}): the firmware runs its streaming mode")
    return result
