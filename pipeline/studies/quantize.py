"""Quantize-stage figures: per variant its ops, bytes, TFLite Micro arena, MACs, pick agreement with
PyTorch and an *estimated* ESP32 / ESP32-S3 latency.

    python -m pipeline study quantize [--student models/student] [--dataset data/synthetic] [--windows 200]
                                         [--base-channels 8 --in-samples 3001] [--json reports/quantize.json]

Without a saved student it benchmarks an untrained default student (sizes, ops, arena and latency are architecture
figures; pick agreement is then meaningless and is reported as such). Without a dataset it uses normalised noise.

Latency estimate: pipeline.deploy.boards.estimate_latency (MACs x cycles per MAC: INT8 on ESP32 / ESP32-C3 from the
instruction count measured in the emulator, `make firmware-sim`, at one cycle per instruction; ESP32-S3 and float
from Espressif's published TFLite Micro person-detection timings; sources in pipeline/deploy/boards.py). Estimates, not
measurements on a board.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from pipeline.deploy import boards
from pipeline.data import generators
from pipeline.deploy.convert import onnx_export, onnx_to_keras, quantize_student, tflite
from pipeline.deploy.convert.chain import format_variants
from pipeline.errors import run_script
from pipeline.data.normalization import normalize_windows
from pipeline.model.student import XiaoNet, hop_samples, load_student, phasenet_macs

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study quantize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default=None, help="a saved student (distill output folder or <name>); default: an untrained default student")
    parser.add_argument("--dataset", default="data/synthetic")
    parser.add_argument("--windows", type=int, default=200, help="calibration windows (and held-out windows)")
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--in-samples", type=int, default=3001)
    parser.add_argument("--board", default="esp32")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    trained = args.student is not None  # a path that does not load is an error, never a silent untrained stand-in
    model = load_student(args.student) if trained else XiaoNet(args.base_channels, args.in_samples).eval()
    samples = model.in_samples
    if Path(args.dataset, "metadata.csv").exists():
        calibration = generators.dataset_windows(args.dataset, "train", args.windows, samples, seed=0)
        heldout = generators.dataset_windows(args.dataset, "test", args.windows, samples, seed=1)
        source = args.dataset
    else:
        rng = np.random.default_rng(0)
        calibration = normalize_windows(rng.normal(size=(args.windows, 3, samples)))
        heldout = normalize_windows(rng.normal(size=(args.windows, 3, samples)))
        source = "normalised noise (no dataset)"
    started = time.perf_counter()
    result = quantize_student(model, calibration, heldout)
    seconds = time.perf_counter() - started
    macs = model.count_macs()
    reference_macs = phasenet_macs(samples)
    print(f"student: {'trained ' + args.student if trained else 'UNTRAINED default (agreement meaningless)'}; "
          f"bc={model.base_channels}, multipliers={model.channel_multipliers}, {samples} samples, "
          f"{model.parameter_count()} parameters")
    print(f"windows: {source}; chain took {seconds:.1f} s")
    print(f"MACs per window: {macs} ({macs / reference_macs:.1%} of PhaseNet's {reference_macs})")
    print(format_variants(result))
    fp16_tflite = tflite.fp16_reference_status(onnx_to_keras.onnx_to_keras(onnx_export.export_onnx(model)))
    print(f"TFLite's own float16-weight .tflite in TFLite Micro: {fp16_tflite} (hence the EPH1 packed FP16 variant)")
    print("cycles per MAC: " + ", ".join(f"{chip}/{kind} {v[0]:.1f} ({v[2]})" for chip, d in boards.CYCLES_PER_MAC.items()
                                         for kind, v in d.items()))
    board = boards.get_board(args.board)
    rows = {}
    for precision, info in result.variants.items():
        info = dict(info, hop_samples=hop_samples(model), sampling_rate=float(model.sampling_rate), macs=macs)
        budget = boards.check_budget(board, info, raise_error=False)
        est = boards.estimate_latency(macs, precision, info["hop_samples"] / info["sampling_rate"])
        line = ", ".join(f"{chip} {e['ms']:.0f} ms (RTF {e['real_time_factor']:.4f})" for chip, e in est.items())
        print(f"{precision:5} est. latency per window: {line}; {args.board}: {budget['overflow'] or 'fits'}")
        rows[precision] = {**info, "estimated_ms": est, "budget": budget}
    if args.json:
        from pipeline.artifacts import atomic_write_text

        atomic_write_text(args.json, json.dumps({"macs": macs, "phasenet_macs": reference_macs, "variants": rows,
                                                 "cycles_per_mac": boards.CYCLES_PER_MAC,
                                                 "trained": trained, "windows": source,
                                                 "tflite_fp16_in_tflm": fp16_tflite}, indent=2, default=str))


if __name__ == "__main__":
    run_script(main)  # bad input: one line, exit 2
