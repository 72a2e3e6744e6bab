"""``make quantize``: the student -> ONNX -> TFLite FP32 / FP16 / INT8, each run in TFLite Micro, the chosen variant
checked against the board's memory budget and written for the firmware.

Out: ``quantize.out`` (``student.onnx``, ``model_fp32.tflite``, ``model_fp16.ef16`` (packed), ``model_int8.tflite``,
``quantize_report.json``, the resolved configuration) and ``quantize.firmware_dir`` (``model_data.cc/.h``,
``model_config.h``, ``model_ops.h``). Both are staged beside their targets before the conversion and replace them
together (pipeline.artifacts.atomic_dirs): nothing partial on error, nothing written for a model over its budget,
and never the variants of one run beside the firmware model of another. The run's id (``quantize_id`` in
quantize_report.json, ``EDGEPICK_QUANTIZE_ID`` in model_config.h) is what ``make firmware`` checks they share.
A causal student's streaming model instead: pipeline/deploy/stream_quantize.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.data import generators
from pipeline.deploy import boards, stream_quantize
from pipeline.artifacts import atomic_dirs, save_config
from pipeline.deploy.convert import QuantizeResult, c_array, quantize_student
from pipeline.deploy.convert.chain import format_latency, format_variants
from pipeline.errors import EdgepickError
from pipeline.model.picking import LiveRule
from pipeline.model.student import hop_samples, load_student


def run(config) -> QuantizeResult:
    q = config.quantize
    model = load_student(q.student)
    if model.causal:  # its streaming model: block + states in, probabilities + states out (issue 30)
        return stream_quantize.run(config, model)
    live = _live_settings(config.live, model.in_samples)  # refused before the long conversion
    dataset = q.dataset or config.distill.dataset
    calibration = _windows(dataset, "train", max(int(q.calibration_windows), 1), model.in_samples, q.seed)
    if "int8" in q.precisions and len(calibration) < q.min_calibration_windows:
        raise EdgepickError(
            f"INT8 needs >= {q.min_calibration_windows} calibration windows from the train split of {dataset}, "
            f"got {len(calibration)} (quantize.calibration_windows={q.calibration_windows})"
        )
    heldout = _windows(dataset, "test", int(q.heldout_windows), model.in_samples, q.seed + 1)
    precisions = tuple(q.precisions)
    if q.firmware_precision not in precisions:
        raise EdgepickError(f"quantize.firmware_precision {q.firmware_precision} is not among quantize.precisions {precisions}")
    board = boards.get_board(config.board.name)
    out, firmware_dir = c_array.output_folders(q.out, q.firmware_dir)
    # Both folders are staged first (one that cannot be written fails before the conversion) and replace their old
    # selves together at the end: never the TFLite variants of one run beside the firmware model of another.
    with atomic_dirs(out, firmware_dir) as (tmp, tmp_firmware):
        result = quantize_student(model, calibration, heldout, precisions, check_agreement=q.check_agreement,
                                  equalize_alpha=q.equalize_alpha, range_percentile=q.range_percentile)
        budgets = _budgets(result, model, live, board, config.board, q.firmware_precision)
        chosen = result.variants[q.firmware_precision]
        payload = result.flatbuffers[q.firmware_precision]
        firmware = (payload, chosen, model.pick_rule, budgets[q.firmware_precision], model.norm_eps, live)
        run_id = c_array.quantize_id(result.flatbuffers, c_array.model_config_header(*firmware[1:]))
        report = {
            "student": str(q.student), "dataset": str(dataset), "calibration_windows": len(calibration),
            "heldout_windows": len(heldout), "onnx_max_error": result.onnx_max_error,
            "keras_max_error": result.keras_max_error, "variants": result.variants, "budgets": budgets,
            "firmware_precision": q.firmware_precision, "board": board.name, "quantize_id": run_id,
            "firmware_dir": str(firmware_dir),
        }
        _write_variants(tmp, result, report, config)
        c_array.fill_firmware_dir(tmp_firmware, firmware_dir, c_array.firmware_files(*firmware, quantize_id=run_id),
                                  payload, replaces=c_array.STREAM_FILES)
    print(f"wrote {out}/ and {firmware_dir}/ ({q.firmware_precision}, {chosen['bytes']} bytes, arena "
          f"{chosen['arena_bytes']} bytes; quantize id {run_id})")
    return result


def _budgets(result: QuantizeResult, model, live: LiveRule | None, board, board_config, firmware_precision: str) -> dict:
    """Each variant's memory budget on the board (its info completed with what the firmware needs), the tables
    printed; refuses a firmware variant over its budget."""
    budgets = {}
    for precision, info in result.variants.items():
        info["hop_samples"] = hop_samples(model)
        info["sampling_rate"] = float(model.sampling_rate)
        info["macs"] = model.count_macs()
        info["s_needs_horizontals"] = bool(model.default_args.get("s_needs_horizontals", False))
        if live:  # the retraction's confirming curves: one hop of stitch buffer per confirming phase
            info["confirm_stitch_samples"] = live.hop * sum(v > 0 for v in live.confirms.values())
        info["estimated_latency"] = boards.estimate_latency(info["macs"], precision,
                                                            info["hop_samples"] / info["sampling_rate"])
        budgets[precision] = boards.check_budget(board, info, board_config, raise_error=False)
    print(format_variants(result))
    print(format_latency(result))
    for precision, info in result.variants.items():
        if info["reference_picks"] and info["pick_agreement"] < info["agreement_required"]:
            print(f"WARNING: {precision} picks agree with PyTorch {info['pick_agreement']:.3f} < {info['agreement_required']}: "
                  "below the bar for shipping (fine-tune with `make qat`; quantize.check_agreement=true refuses it)")
    print(boards.format_budget(budgets[firmware_precision]))
    if budgets[firmware_precision]["overflow"]:
        raise EdgepickError(budgets[firmware_precision]["overflow"])
    return budgets


def _write_variants(tmp: Path, result: QuantizeResult, report: dict, config) -> None:
    """quantize.out's files into its temporary: the ONNX model, every variant, the report, the configuration."""
    (tmp / "student.onnx").write_bytes(result.onnx_bytes)
    for precision, data in result.flatbuffers.items():
        suffix = "ef16" if precision == "fp16" else "tflite"
        (tmp / f"model_{precision}.{suffix}").write_bytes(data)
    (tmp / "quantize_report.json").write_text(json.dumps(report, indent=2, default=str))
    save_config(tmp, config)


def _live_settings(live, in_samples: int) -> LiveRule | None:
    """The live rule model_config.h takes (None when the firmware is to replay exactly); a hop or look-ahead that
    does not fit the student's window is refused here."""
    return live.rule(in_samples) if live.enabled else None


def _windows(dataset: str, split: str, count: int, samples: int, seed: int):
    """``count`` normalised windows of ``split``; from a mixture ("a,b,c", as distill trains on) an equal share of
    each folder."""
    paths = [p.strip() for p in str(dataset).split(",") if p.strip()]
    shares = [count // len(paths) + (i < count % len(paths)) for i in range(len(paths))]
    parts = [generators.dataset_windows(path, split, share, samples, seed=seed) for path, share in zip(paths, shares) if share]
    return np.concatenate(parts)
