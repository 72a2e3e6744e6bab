"""Students (and the teacher) scored on dev splits only: the figures a recipe choice is made on.

    SEISBENCH_CACHE_ROOT=../shared/seisbench python -m pipeline study dev \
        --student models/student_qat [--student models/other_qat ...] \
        [--dev data/labelled/stead50:dev --dev data/labelled/obst_obs37:dev ...] [--json out.json]

Default --dev: the analyst-picked dev halves that ``make labelled`` cuts from ../shared/datasets (their test halves
are what gets reported) and the teacher-picked data/transfer:dev, where they exist. For every model, per dev split
and pooled over the analyst-picked ones: F1 per phase at 0.1 and 0.5 s at the model's own thresholds (a student's
calibrated ones, the teacher's 0.3), and make calibrate's objective (the mean of those F1) at the model's own and at
its best threshold. A set without picks of a phase (deepdenoiser99 has no S) is not scored on it, pooled or not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.model import annotation, runners
from pipeline.config import Config
from pipeline.errors import EdgepickError, run_script
from pipeline.evaluate.metrics import PHASES
from pipeline.evaluate import dev_split
from pipeline.model.student import load_student

TOLERANCES = (0.1, 0.5)
DEFAULT_DEV = ("data/labelled/stead50:dev", "data/labelled/deepdenoiser99:dev", "data/labelled/obst_obs37:dev",
               "data/labelled/ncsc100:dev", "data/transfer:dev")


def score(model, dev: dev_split.DevSplit, curves: annotation.Curves, thresholds) -> dict:
    """Per phase: F1 at each tolerance and the objective at the model's own threshold; the best threshold and its
    objective."""
    own = annotation.model_rule(model)
    grid = sorted(set(thresholds) | {own.p_threshold, own.s_threshold})
    table = dev_split.threshold_table(curves, dev.truth, grid, TOLERANCES, dev.labelled)
    out = {}
    for phase in dev.phases:
        mine = own.threshold(phase)
        row = next(r for r in table if r["threshold"] == mine)
        best = dev_split.best_threshold(table, phase)
        out[phase] = {"threshold": mine, **{f"f1_{t:g}": row[f"{phase}_f1_{t:g}"] for t in TOLERANCES},
                      "objective": dev_split.objective(table, phase, mine),
                      "best_threshold": best, "best_objective": dev_split.objective(table, phase, best)}
    return out


def dev_report(models, parts: list[dev_split.DevSplit], thresholds) -> dict:
    """model spec -> dev split label -> :func:`score`, each split on its own and, with several analyst-picked
    ones, pooled ("analyst dev, pooled"): the figures recipe choices are made with."""
    analyst = [part for part in parts if part.against == "analyst"]
    report: dict = {}
    for model in models:
        runners.check_rates([model], [parts[0].rate])
        name = model.spec
        report[name] = {}
        curves = []
        for part in parts:
            curves.append(annotation.dataset_curves(model, part.waveforms, part.rate, part.order))
            report[name][part.label] = score(model, part, curves[-1], thresholds)
        if len(analyst) > 1:
            pooled = annotation.Curves(curves[0].rate, curves[0].rule)
            for part, part_curves in zip(parts, curves):
                if part.against == "analyst":
                    pooled.extend(part_curves)
            report[name]["analyst dev, pooled"] = score(model, dev_split.pool_dev(analyst), pooled, thresholds)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study dev", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", action="append", required=True, help="a saved student (repeatable)")
    parser.add_argument("--teacher", default="phasenet:okla")
    parser.add_argument("--dev", action="append", help="a dev split path:split (repeatable)")
    parser.add_argument("--max-traces", type=int, default=600, help="a seeded subset of each split (0: all)")
    parser.add_argument("--json", help="write all figures here")
    args = parser.parse_args(argv)
    specs = args.dev or [s for s in DEFAULT_DEV if Path(s.rpartition(":")[0], "metadata.csv").is_file()]
    if not specs:
        raise EdgepickError("no dev split: run `make labelled` (and `make recipe`'s data) or pass --dev path:dev")

    # load_student: a missing or broken student is one error line (load_student_model would skip it), before any
    # dev split is annotated
    students = [runners.BenchModel("student", "pytorch", "fp32", [load_student(path)], spec=path)
                for path in args.student]
    config = Config()
    config.teacher.name = args.teacher
    config.calibrate.max_traces = args.max_traces
    parts = [dev_split.load_dev(config, spec) for spec in specs]  # a test split is refused here
    analyst = [part for part in parts if part.against == "analyst"]
    models = [runners.load_teacher(args.teacher)] + students
    thresholds = config.calibrate.thresholds

    report = dev_report(models, parts, thresholds)
    sizes = {part.label: len(part.waveforms) for part in parts}
    sizes["analyst dev, pooled"] = sum(len(part.waveforms) for part in analyst)
    print(f"\n{'model':28} {'dev split':42} {'traces':>6}  " + "  ".join(
        f"{p} thr F1@0.1 F1@0.5 obj (best thr obj)" for p in PHASES))
    for name, rows in report.items():
        for label, phases in rows.items():
            cells = []
            for phase in PHASES:
                s = phases.get(phase)
                cells.append(f"{'-':>33}" if s is None else
                             f"{s['threshold']:4.2f} {s['f1_0.1']:6.3f} {s['f1_0.5']:6.3f} {s['objective']:5.3f} "
                             f"({s['best_threshold']:4.2f} {s['best_objective']:5.3f})")
            print(f"{name[-28:]:28} {label[-42:]:42} {sizes[label]:6d}  " + "  ".join(cells))
    if args.json:
        from pipeline.artifacts import atomic_write_text

        atomic_write_text(args.json, json.dumps({"traces": sizes, "results": report}, indent=1) + "\n")


if __name__ == "__main__":
    run_script(main)  # bad input: one line, exit 2
