"""Quantize-stage figures (issue 5): per variant its ops, bytes, TFLite Micro arena, MACs, pick agreement with
PyTorch and an *estimated* ESP32 / ESP32-S3 latency.

    python scripts/benchmark_quantize.py [--student models/student] [--dataset data/synthetic] [--windows 200]
                                         [--base-channels 8 --in-samples 3001] [--json reports/quantize.json]

Without a saved student it benchmarks an untrained default student (sizes, ops, arena and latency are architecture
figures; pick agreement is then meaningless and is reported as such). Without a dataset it uses normalised noise.

Latency estimate = MACs x cycles-per-MAC / 240 MHz. Cycles per MAC are derived from Espressif's published TFLite Micro
person-detection timings (int8 MobileNet v1 0.25, 96x96x1; github.com/espressif/esp-tflite-micro README, "ESP-NN
integration": ESP32 4084 ms without / 380 ms with ESP-NN, ESP32-S3 2300 ms / 54 ms, both 240 MHz) and that model's
MACs (MobileNet v1 0.25 at 224x224: 41 M mult-adds, Howard et al. 2017, Table 7; scaled by (96/224)^2 = 7.5 M).
They are estimates, not measurements: our 1-D layers have 8-32 channels and use SIMD less well than MobileNet, so the
ESP-NN column is optimistic; element-wise ops (HARD_SWISH, ADD, PAD, SOFTMAX) are not counted. No FP32 figure is
published: FP32 uses the reference-kernel (no ESP-NN) rate as a rough stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import boards  # noqa: E402
from pipeline import quantize as Q  # noqa: E402
from pipeline.student import XiaoNet, load_student, normalize_windows, phasenet_macs  # noqa: E402

PERSON_DETECTION_MACS = 41e6 * (96 / 224) ** 2
CLOCK_HZ = 240e6
PUBLISHED_MS = {  # (chip, kernels) -> person detection int8 latency in ms
    ("esp32", "esp-nn"): 380.0,
    ("esp32", "reference"): 4084.0,
    ("esp32s3", "esp-nn"): 54.0,
    ("esp32s3", "reference"): 2300.0,
}
CYCLES_PER_MAC = {key: ms / 1000 * CLOCK_HZ / PERSON_DETECTION_MACS for key, ms in PUBLISHED_MS.items()}


def estimate_ms(macs: int, chip: str, precision: str) -> dict[str, float]:
    kernels = ("esp-nn", "reference") if precision == "int8" else ("reference",)
    return {k: macs * CYCLES_PER_MAC[(chip, k)] / CLOCK_HZ * 1000 for k in kernels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default=None, help="a saved student (distill output folder or <name>); default: an untrained default student")
    parser.add_argument("--dataset", default="data/synthetic")
    parser.add_argument("--windows", type=int, default=200, help="calibration windows (and held-out windows)")
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--in-samples", type=int, default=3001)
    parser.add_argument("--board", default="esp32")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    trained = args.student is not None  # a path that does not load is an error, never a silent untrained stand-in
    model = load_student(args.student) if trained else XiaoNet(args.base_channels, args.in_samples).eval()
    samples = model.in_samples
    if Path(args.dataset, "metadata.csv").exists():
        calibration = Q.dataset_windows(args.dataset, "train", args.windows, samples, seed=0)
        heldout = Q.dataset_windows(args.dataset, "test", args.windows, samples, seed=1)
        source = args.dataset
    else:
        rng = np.random.default_rng(0)
        calibration = normalize_windows(rng.normal(size=(args.windows, 3, samples)))
        heldout = normalize_windows(rng.normal(size=(args.windows, 3, samples)))
        source = "normalised noise (no dataset)"
    started = time.perf_counter()
    result = Q.quantize_student(model, calibration, heldout)
    seconds = time.perf_counter() - started
    macs = model.count_macs()
    reference_macs = phasenet_macs(samples)
    print(f"student: {'trained ' + args.student if trained else 'UNTRAINED default (agreement meaningless)'}; "
          f"bc={model.base_channels}, multipliers={model.channel_multipliers}, {samples} samples, "
          f"{model.parameter_count()} parameters")
    print(f"windows: {source}; chain took {seconds:.1f} s")
    print(f"MACs per window: {macs} ({macs / reference_macs:.1%} of PhaseNet's {reference_macs})")
    print(Q.format_variants(result))
    fp16_tflite = Q.fp16_reference_status(Q.onnx_to_keras(Q.export_onnx(model)))
    print(f"TFLite's own float16-weight .tflite in TFLite Micro: {fp16_tflite} (hence the EPH1 packed FP16 variant)")
    print("cycles per MAC (derived): " + ", ".join(f"{c}/{k} {v:.1f}" for (c, k), v in CYCLES_PER_MAC.items()))
    board = boards.get_board(args.board)
    rows = {}
    for precision, info in result.variants.items():
        info = dict(info, hop_samples=Q.hop_samples(model), sampling_rate=float(model.sampling_rate), macs=macs)
        budget = boards.check_budget(board, info, raise_error=False)
        est = {chip: estimate_ms(macs, chip, precision) for chip in ("esp32", "esp32s3")}
        line = ", ".join(f"{chip} {k} {ms:.0f} ms" for chip, d in est.items() for k, ms in d.items())
        print(f"{precision:5} est. latency per window: {line}; {args.board}: {budget['overflow'] or 'fits'}")
        rows[precision] = {**info, "estimated_ms": est, "budget": budget}
    if args.json:
        from pipeline.artifacts import atomic_write_text

        atomic_write_text(args.json, json.dumps({"macs": macs, "phasenet_macs": reference_macs, "variants": rows,
                                                 "cycles_per_mac": {f"{c}/{k}": v for (c, k), v in CYCLES_PER_MAC.items()},
                                                 "trained": trained, "windows": source,
                                                 "tflite_fp16_in_tflm": fp16_tflite}, indent=2, default=str))


if __name__ == "__main__":
    main()
