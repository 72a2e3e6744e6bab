"""Student against teacher on labelled data, protocol 1 (pipeline.model.annotation.evaluate_picker).

    python -m pipeline study student --student models/student/student \
        [--student models/student_hard/student ...] [--teacher phasenet:okla] \
        [--dataset ../shared/datasets/stead50] [--dataset data/synthetic:test]

For each dataset (``path`` or ``path:split``): F1 of the teacher and of every student for P and S at 0.1 and
0.5 s (threshold 0.3), the student/teacher F1 ratio, F1 by S-P time (< 2 s, 2-5 s, > 5 s) and the cost of each
model in multiply-accumulates per window. Writes the same as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from pipeline.data import datasets
from pipeline.evaluate import metrics
from pipeline.model import teachers
from pipeline.model.annotation import evaluate_picker
from pipeline.errors import run_script
from pipeline.model.student import count_macs, load_student

SP_BINS = ((0.0, 2.0, "S-P < 2 s"), (2.0, 5.0, "S-P 2-5 s"), (5.0, np.inf, "S-P > 5 s"))


def open_split(spec: str):
    path, _, split = spec.partition(":") if not os.path.isdir(spec) else (spec, "", "")
    dataset = datasets.open_dataset(path, sampling_rate=None, component_order="ZNE")
    if split:
        dataset = dataset.get_split(split)
    return dataset


def evaluate(model, dataset, threshold: float) -> dict:
    result = {"all": evaluate_picker(model, dataset, threshold=threshold)["scores"]}
    sp = metrics.sp_seconds(dataset.metadata)
    for low, high, name in SP_BINS:
        mask = (sp >= low) & (sp < high)
        if mask.sum() >= 5:
            subset = dataset.copy()
            subset.filter(mask, inplace=True)
            result[name] = evaluate_picker(model, subset, threshold=threshold)["scores"]
            result[name]["traces"] = int(mask.sum())
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study student", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", action="append", required=True, help="a saved student (repeatable)")
    parser.add_argument("--teacher", default="phasenet:okla")
    parser.add_argument("--dataset", action="append", help="path or path:split (repeatable)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="P and S threshold of every model (default: each model's own pick rule; teachers 0.3)")
    parser.add_argument("--json", help="write all figures here")
    args = parser.parse_args(argv)
    datasets = args.dataset or [str(Path(__file__).resolve().parents[3] / "shared" / "datasets" / "stead50")]

    students = {path: load_student(path) for path in args.student}
    opened = {spec: open_split(spec) for spec in datasets}  # bad paths are refused before the teacher is loaded
    models = {args.teacher: teachers.load_single_model(args.teacher), **students}
    macs = {name: model.count_macs() if hasattr(model, "count_macs") else count_macs(model, (1, 3, model.in_samples))
            for name, model in models.items()}
    teacher_macs = macs[args.teacher]

    report = {}
    for spec, dataset in opened.items():
        print(f"\n== {spec}: {len(dataset)} traces, threshold {args.threshold}")
        results = {name: evaluate(model, dataset, args.threshold) for name, model in models.items()}
        report[spec] = results
        teacher = results[args.teacher]["all"]
        print(f"{'model':40} {'MACs/window':>12} {'P F1@0.5':>9} {'S F1@0.5':>9} {'P F1@0.1':>9} {'S F1@0.1':>9}  ratio P/S @0.5")
        for name, result in results.items():
            s = result["all"]
            ratio = f"{s['P'][0.5]['f1'] / max(teacher['P'][0.5]['f1'], 1e-9):.3f} / {s['S'][0.5]['f1'] / max(teacher['S'][0.5]['f1'], 1e-9):.3f}"
            print(f"{name[-40:]:40} {macs[name] / 1e6:9.2f} M {s['P'][0.5]['f1']:9.3f} {s['S'][0.5]['f1']:9.3f} "
                  f"{s['P'][0.1]['f1']:9.3f} {s['S'][0.1]['f1']:9.3f}  {ratio}  ({macs[name] / teacher_macs:.1%} of teacher MACs)")
        for _, _, bin_name in SP_BINS:
            rows = [(name, r[bin_name]) for name, r in results.items() if bin_name in r]
            if rows:
                print(f"  {bin_name} ({rows[0][1]['traces']} traces): " + "; ".join(
                    f"{name[-24:]} P {r['P'][0.5]['f1']:.3f} S {r['S'][0.5]['f1']:.3f}" for name, r in rows))
    if args.json:
        from pipeline.artifacts import atomic_write_text

        atomic_write_text(args.json, json.dumps({"macs": macs, "results": report}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    run_script(main)  # bad input: one line, exit 2
