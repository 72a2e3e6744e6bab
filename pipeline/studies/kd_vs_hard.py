"""Distillation against hard labels alone: the same student, data, epochs and seed; only the loss differs.

    SEISBENCH_CACHE_ROOT=../shared/seisbench python -m pipeline study kd_vs_hard \
        [--dataset data/synthetic_near] [--epochs 10] [--windows 8000] [--out models/kd_vs_hard] \
        [--eval ../shared/datasets/stead50 --eval data/synthetic_near:test]

Trains two students with ``pipeline.distill.loop.distill`` from one config: ``kd`` with the config's temperature and alpha
(default T 4, alpha 1: the teacher's soft targets only) and ``hard`` with alpha 0 (cross-entropy with the
dataset's probabilistic labels only). The training set must be labelled. Each run is resumable (``--out`` keeps
both; a finished run is not trained again). Then both, and the teacher, are scored on every ``--eval`` set (every
trace of a folder, or one split) by ``study score``'s function (pipeline/studies/score.py): F1 for P and S at 0.1 /
0.5 s at each model's own thresholds, their ratio to the teacher's, and by S-P time. Prints its table; ``--json``
writes every figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.config import Config
from pipeline.distill import loop as distillation
from pipeline.distill import training
from pipeline.errors import run_script
from pipeline.evaluate import dev_split
from pipeline.model import runners
from pipeline.model.student import load_student
from pipeline.studies import score

ROOT = Path(__file__).resolve().parents[2]


def train(args, alpha: float, out: Path) -> Path:
    """One run of ``pipeline.distill.loop.distill``; resumes an interrupted run, returns at once for a finished one."""
    config = Config.load(None, args.set)
    config.distill.dataset = args.dataset
    config.distill.epochs = args.epochs
    config.distill.windows_per_epoch = args.windows
    config.distill.patience = args.epochs + 1  # no early stop: both runs see the same number of epochs
    config.distill.alpha = alpha
    config.distill.out = str(out)
    config.distill.resume = (out / training.CHECKPOINT).exists()
    distillation.distill(config)
    return out / distillation.STUDENT / distillation.STUDENT


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study kd_vs_hard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="data/synthetic_near", help="labelled training data (both runs)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--windows", type=int, default=8000, help="training windows per epoch")
    parser.add_argument("--out", default="models/kd_vs_hard")
    parser.add_argument("--eval", action="append", help="path or path:split to score on (repeatable)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="P and S threshold of every model (default: each model's own pick rule; teachers 0.3)")
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (both runs)")
    args = parser.parse_args(argv)
    evals = args.eval or [str(ROOT.parent / "shared" / "datasets" / "stead50"), f"{args.dataset}:test"]

    config = Config.load(None, args.set)
    config.calibrate.max_traces = 0  # every trace of each set
    parts = [dev_split.load_split(config, spec, dev_only=False) for spec in evals]  # refused before any training
    kd_alpha = config.distill.alpha if config.distill.alpha > 0 else 1.0
    out = Path(args.out)
    hard = train(args, 0.0, out / "hard")  # first: distill refuses data without picks before any training
    runs = {f"kd (T {config.distill.temperature:g}, alpha {kd_alpha:g})": train(args, kd_alpha, out / "kd"),
            "hard labels (alpha 0)": hard}
    models = [runners.load_teacher(config.teacher.name)]
    models[0].spec = f"teacher {config.teacher.name}"
    models += [runners.BenchModel("student", "pytorch", "fp32", [load_student(path)], spec=name) for name, path in runs.items()]
    results = score.score_report(models, parts, threshold=args.threshold, by_sp=True)["own"]
    sizes = score.set_sizes(parts)
    print(f"\nstudents trained {args.epochs} epochs x {args.windows} windows on {args.dataset}")
    score.print_report({"own": results}, sizes, threshold=args.threshold)
    report = {"dataset": args.dataset, "epochs": args.epochs, "windows_per_epoch": args.windows, "traces": sizes,
              "results": results}
    if args.json:
        from pipeline.artifacts import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    run_script(main)  # bad input (unlabelled data, missing teacher weights): one line, exit 2
