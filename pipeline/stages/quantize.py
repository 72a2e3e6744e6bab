"""``make quantize``: the student -> ONNX -> TFLite FP32 / FP16 / INT8, each run in TFLite Micro, the chosen variant
checked against the board's memory budget and written for the firmware.

Out: ``quantize.out`` (``student.onnx``, ``model_fp32.tflite``, ``model_fp16.ef16`` (packed), ``model_int8.tflite``,
``quantize_report.json``, the resolved configuration) and ``quantize.firmware_dir`` (``model_data.cc/.h``,
``model_config.h``), each folder written atomically: nothing partial on error, nothing written for a model over
its budget. A causal student's streaming model instead: pipeline/deploy/stream_quantize.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.data import generators
from pipeline.deploy import boards, stream_quantize
from pipeline.artifacts import atomic_dir, save_config
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
    result = quantize_student(model, calibration, heldout, precisions, check_agreement=q.check_agreement,
                              equalize_alpha=q.equalize_alpha, range_percentile=q.range_percentile)
    budgets = {}
    for precision, info in result.variants.items():
        info["hop_samples"] = hop_samples(model)
        info["sampling_rate"] = float(model.sampling_rate)
        info["macs"] = model.count_macs()
        if live:  # the retraction's confirming curves: one hop of stitch buffer per confirming phase
            info["confirm_stitch_samples"] = live.hop * sum(v > 0 for v in live.confirms.values())
        info["estimated_latency"] = boards.estimate_latency(info["macs"], precision,
                                                            info["hop_samples"] / info["sampling_rate"])
        budgets[precision] = boards.check_budget(board, info, config.board, raise_error=False)
    print(format_variants(result))
    print(format_latency(result))
    for precision, info in result.variants.items():
        if info["reference_picks"] and info["pick_agreement"] < info["agreement_required"]:
            print(f"WARNING: {precision} picks agree with PyTorch {info['pick_agreement']:.3f} < {info['agreement_required']}: "
                  "below the bar for shipping (fine-tune with `make qat`; quantize.check_agreement=true refuses it)")
    chosen = result.variants[q.firmware_precision]
    budget = budgets[q.firmware_precision]
    print(boards.format_budget(budget))
    if budget["overflow"]:
        raise EdgepickError(budget["overflow"])
    out = Path(q.out)
    with atomic_dir(out) as tmp:
        (tmp / "student.onnx").write_bytes(result.onnx_bytes)
        for precision, data in result.flatbuffers.items():
            suffix = "ef16" if precision == "fp16" else "tflite"
            (tmp / f"model_{precision}.{suffix}").write_bytes(data)
        report = {
            "student": str(q.student), "dataset": str(dataset), "calibration_windows": len(calibration),
            "heldout_windows": len(heldout), "onnx_max_error": result.onnx_max_error,
            "keras_max_error": result.keras_max_error, "variants": result.variants, "budgets": budgets,
            "firmware_precision": q.firmware_precision, "board": board.name,
        }
        (tmp / "quantize_report.json").write_text(json.dumps(report, indent=2, default=str))
        save_config(tmp, config)
    c_array.write_firmware(q.firmware_dir, result.flatbuffers[q.firmware_precision], chosen, model.pick_rule, budget,
                           model.norm_eps, live)
    print(f"wrote {out}/ and {q.firmware_dir}/ ({q.firmware_precision}, {chosen['bytes']} bytes, arena {chosen['arena_bytes']} bytes)")
    return result


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
