"""Students against the teacher on labelled sets: the one scoring study (protocol 1 on each model's annotate curves).

    SEISBENCH_CACHE_ROOT=../shared/seisbench python -m pipeline study score \
        --student models/student_qat [--student models/other_qat ...] [--teacher phasenet:okla] \
        [--split dev|test|all] [--dataset data/labelled/stead50[:dev] ...] \
        [--blinding own[,student,none]] [--threshold 0.3] [--by-sp] [--max-traces N] [--json out.json]

Which traces (--split):
- dev (the default): the dev halves `make labelled` cuts (data/labelled/<set>:dev) and the teacher-picked
  data/transfer:dev, where they exist; a test split or a whole folder is refused. What recipe choices are made with,
  on make calibrate's traces (at most --max-traces 600 of each, seeded).
- test: the test halves (data/labelled/<set>:test, data/transfer:test): what the README reports.
- all: every trace of each set in ../shared/datasets (protocol 1 as the reference figures are published).
--dataset names the sets instead (repeatable): one named without ":split" takes --split's (all: every trace).

For every model (the teacher first), per set and, with several analyst-picked sets, pooled: per phase, F1 at 0.1
and 0.5 s at the model's own thresholds (a student's calibrated ones, a teacher's 0.3; --threshold: every model's),
make calibrate's objective (their mean), the F1 ratio to the teacher, and on dev splits the best threshold of
calibrate's grid and its objective; multiply-accumulates per window. A set without picks of a phase (deepdenoiser99
has no S) is not scored on it. --by-sp: the same F1 by S-P time (< 2, 2-5, >= 5 s; bins of >= 5 traces).
--blinding (comma-separated, a table each): own, each model with its own (make benchmark's: the student blinds its
receptive field at each window end, SeisBench's PhaseNet nothing); student, every model with the students'; none,
no model blinds. Each model annotates each set once per distinct blinding. --json writes every figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.config import Config
from pipeline.errors import EdgepickError, run_script
from pipeline.evaluate import dev_split, metrics
from pipeline.model import annotation, runners, teachers
from pipeline.model.student import count_macs, load_student

TOLERANCES = (0.1, 0.5)
SPLITS = ("dev", "test", "all")
BLINDINGS = ("own", "student", "none")
POOLED = "analyst-picked sets, pooled"
SP_EDGES, SP_MIN_TRACES = (2.0, 5.0), 5
ROOT = Path(__file__).resolve().parents[2]


def default_sets(split: str) -> list[str]:
    """The sets --split scores when no --dataset names them."""
    if split == "all":
        return [str(p.parent) for p in sorted((ROOT.parent / "shared" / "datasets").glob("*/metadata.csv"))]
    folders = sorted(p.parent for p in Path("data/labelled").glob("*/metadata.csv")) + [Path("data/transfer")]
    return [f"{folder}:{split}" for folder in folders if (folder / "metadata.csv").is_file()]


def with_split(spec: str, split: str) -> str:
    """``spec`` with --split's split where it names none (all: every trace)."""
    if split == "all" or (":" in spec and not Path(spec).exists()):
        return spec
    return f"{spec}:{split}"


def macs(model: runners.BenchModel) -> int:
    """Multiply-accumulates per window (the student's own count includes its output filter)."""
    return int(sum(m.count_macs() if hasattr(m, "count_macs") else count_macs(m, (1, len(m.component_order), m.in_samples))
                   for m in model.members))


def blinding_of(model: runners.BenchModel, mode: str, students: tuple[int, int] | None) -> tuple:
    """Each member's (pre, post) blinding under ``mode``."""
    if mode == "own":
        return tuple(teachers.annotate_blinding(m) for m in model.members)
    return tuple((0, 0) if mode == "none" else students for _ in model.members)


def student_blinding(models: list[runners.BenchModel]) -> tuple[int, int] | None:
    """The one blinding every student has (None without students); students that blind differently are refused."""
    found = {teachers.annotate_blinding(m) for model in models if model.name == "student" for m in model.members}
    if len(found) > 1:
        raise EdgepickError(f"the students blind differently ({sorted(found)}); compare them one blinding at a time")
    return found.pop() if found else None


def score_curves(curves: annotation.Curves, part: dev_split.DevSplit, threshold: float | None = None, grid=(),
                 by_sp: bool = False) -> dict:
    """One model on one set from its curves: per phase the set has picks of, the threshold (the model's own, or
    ``threshold``), F1 at each tolerance there and the objective (their mean); with ``grid``, the best threshold
    of grid + the own ones and its objective; with ``by_sp``, "by_sp": per S-P bin of >= 5 traces, its traces and
    each phase's F1 at the same thresholds."""
    rule = curves.rule.with_threshold(threshold)
    mine = {phase: rule.threshold(phase) for phase in part.phases}
    table = dev_split.threshold_table(curves, part.truth, sorted(set(grid) | set(mine.values())), TOLERANCES,
                                      part.labelled)
    out: dict = {}
    for phase, own in mine.items():
        row = next(r for r in table if r["threshold"] == own)
        out[phase] = {"threshold": own, **{f"f1_{t:g}": row[f"{phase}_f1_{t:g}"] for t in TOLERANCES},
                      "objective": dev_split.objective(table, phase, own)}
        if grid:
            best = dev_split.best_threshold(table, phase)
            out[phase].update(best_threshold=best, best_objective=dev_split.objective(table, phase, best))
    if by_sp:
        out["by_sp"] = {}
        for name, mask in metrics.bin_masks(part.sp_s, SP_EDGES, "S-P", "s").items():
            if mask.sum() < SP_MIN_TRACES:
                continue
            sub = annotation.Curves(curves.rate, curves.rule, metrics.subset(curves.start, mask),
                                    metrics.subset(curves.data, mask))
            truth = {p: metrics.subset(part.truth[p], mask) for p in metrics.PHASES}
            labelled = {p: metrics.subset(part.labelled[p], mask) for p in metrics.PHASES}
            rows = dev_split.threshold_table(sub, truth, sorted(set(mine.values())), TOLERANCES, labelled)
            out["by_sp"][name] = {"traces": int(mask.sum()), **{
                phase: {f"f1_{t:g}": next(r for r in rows if r["threshold"] == own)[f"{phase}_f1_{t:g}"]
                        for t in TOLERANCES} for phase, own in mine.items()}}
    return out


def score_report(models: list[runners.BenchModel], parts: list[dev_split.DevSplit], blindings=("own",),
                 threshold: float | None = None, grid=(), by_sp: bool = False, progress: bool = True) -> dict:
    """blinding -> model spec -> set label -> :func:`score_curves`, each set on its own and, with several
    analyst-picked sets of one sampling rate and component order, pooled (:data:`POOLED`). A model annotates a set
    once per distinct blinding of its members."""
    runners.check_rates(models, [part.rate for part in parts])
    analyst = [part for part in parts if part.against == "analyst"]
    pooled = dev_split.pool_dev(analyst) if len(analyst) > 1 and len({(p.rate, p.order) for p in analyst}) == 1 else None
    students = student_blinding(models)
    report: dict = {}
    done: dict = {}  # (model spec, blinding) -> per set, curves
    for mode in blindings:
        if mode == "student" and students is None:
            raise EdgepickError("--blinding student needs a student")
        report[mode] = {}
        for model in models:
            blinding = blinding_of(model, mode, students)
            key = (model.spec, blinding)
            if key not in done:
                args = {} if mode == "own" else {"blinding": blinding[0]}
                done[key] = [annotation.dataset_curves(model, part.waveforms, part.rate, part.order,
                                                       progress=progress, **args) for part in parts]
            rows = report[mode][model.spec] = {}
            for part, curves in zip(parts, done[key]):
                rows[part.label] = score_curves(curves, part, threshold, grid, by_sp)
            if pooled is not None:
                curves = annotation.Curves(done[key][0].rate, done[key][0].rule)
                for part, part_curves in zip(parts, done[key]):
                    if part.against == "analyst":
                        curves.extend(part_curves)
                rows[POOLED] = score_curves(curves, pooled, threshold, grid, by_sp)
        add_ratios(report[mode])
    return report


def add_ratios(per_model: dict) -> None:
    """Each model's F1 over the first model's (the teacher's), per set, phase and tolerance ("ratio_0.5"; None
    where the teacher's F1 is 0)."""
    first = next(iter(per_model.values()))
    for rows in per_model.values():
        for label, phases in rows.items():
            for phase in metrics.PHASES:
                if phase in phases:
                    ref = first[label][phase]
                    phases[phase].update({f"ratio_{t:g}": phases[phase][f"f1_{t:g}"] / ref[f"f1_{t:g}"]
                                          if ref[f"f1_{t:g}"] else None for t in TOLERANCES})


def set_sizes(parts: list[dev_split.DevSplit]) -> dict:
    """Traces per set label, and pooled."""
    sizes = {part.label: len(part.waveforms) for part in parts}
    sizes[POOLED] = sum(len(part.waveforms) for part in parts if part.against == "analyst")
    return sizes


def print_report(report: dict, sizes: dict, costs: dict | None = None, threshold: float | None = None) -> None:
    """One table per blinding: a row per model and set, its F1 at 0.5 s over the first model's (the teacher's)."""
    for mode, per_model in report.items():
        print(f"\n== blinding: {mode}; thresholds: {threshold if threshold is not None else 'each model its own'}")
        print(f"{'model':28} {'set':40} {'traces':>6} {'MACs':>7}  " + "  ".join(
            f"{p} thr F1@0.1 F1@0.5  obj (best thr obj) ratio@0.5" for p in metrics.PHASES))
        for name, rows in per_model.items():
            for label, phases in rows.items():
                cells = []
                for phase in metrics.PHASES:
                    s = phases.get(phase)
                    if s is None:
                        cells.append(f"{'-':>49}")
                        continue
                    best = f"({s['best_threshold']:4.2f} {s['best_objective']:5.3f})" if "best_threshold" in s else f"{'':12}"
                    ratio = f"{s['ratio_0.5']:9.3f}" if s["ratio_0.5"] is not None else f"{'-':>9}"
                    cells.append(f"{s['threshold']:4.2f} {s['f1_0.1']:6.3f} {s['f1_0.5']:6.3f} {s['objective']:5.3f} "
                                 f"{best} {ratio}")
                cost = f"{costs[name] / 1e6:5.2f} M" if costs else f"{'':7}"
                print(f"{name[-28:]:28} {label[-40:]:40} {sizes[label]:6d} {cost}  " + "  ".join(cells))
                for bin_name, b in phases.get("by_sp", {}).items():
                    print(f"{'':28}   {bin_name} ({b['traces']} traces): " + "; ".join(
                        f"{p} F1@0.1 {b[p]['f1_0.1']:.3f} F1@0.5 {b[p]['f1_0.5']:.3f}" for p in metrics.PHASES if p in b))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", action="append", required=True, help="a saved student (repeatable)")
    parser.add_argument("--teacher", default="phasenet:okla")
    parser.add_argument("--split", choices=SPLITS, default="dev", help="dev halves (default), test halves, all traces")
    parser.add_argument("--dataset", action="append", help="a set: path or path:split (repeatable)")
    parser.add_argument("--blinding", default="own", help=f"comma-separated, of {', '.join(BLINDINGS)} (default own)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="P and S threshold of every model (default: each model's own pick rule; teachers 0.3)")
    parser.add_argument("--by-sp", action="store_true", help="F1 by S-P time too")
    parser.add_argument("--max-traces", type=int, default=None,
                        help="a seeded subset of each set (default: 600 on dev splits, as make calibrate; 0: all)")
    parser.add_argument("--json", help="write all figures here")
    args = parser.parse_args(argv)
    blindings = [b.strip() for b in args.blinding.split(",") if b.strip()]
    if not blindings or any(b not in BLINDINGS for b in blindings):
        raise EdgepickError(f"--blinding {args.blinding}: name one or more of {', '.join(BLINDINGS)}")
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise EdgepickError(f"--threshold must lie in (0, 1), got {args.threshold}")
    specs = [with_split(spec, args.split) for spec in args.dataset] if args.dataset else default_sets(args.split)
    if not specs:
        raise EdgepickError(f"no set to score: run `make labelled` (or pass --dataset path:{args.split})")

    # load_student: a missing or broken student is one error line, before any set is read or the teacher loaded
    students = [runners.BenchModel("student", "pytorch", "fp32", [load_student(path)], spec=path) for path in args.student]
    config = Config()
    config.teacher.name = args.teacher
    config.calibrate.max_traces = args.max_traces if args.max_traces is not None else (600 if args.split == "dev" else 0)
    parts = [dev_split.load_split(config, spec, dev_only=args.split == "dev") for spec in specs]
    models = [runners.load_teacher(args.teacher)] + students
    grid = config.calibrate.thresholds if args.split == "dev" else ()

    report = score_report(models, parts, blindings, args.threshold, grid, args.by_sp)
    sizes = set_sizes(parts)
    costs = {model.spec: macs(model) for model in models}
    print_report(report, sizes, costs, args.threshold)
    if args.json:
        from pipeline.artifacts import atomic_write_text

        out = {"split": args.split, "threshold": args.threshold, "traces": sizes, "macs_per_window": costs,
               "blinding": {mode: {m.spec: [list(b) for b in blinding_of(m, mode, student_blinding(models))]
                                   for m in models} for mode in blindings},
               "results": report}
        atomic_write_text(args.json, json.dumps(out, indent=1, default=float) + "\n")


if __name__ == "__main__":
    run_script(main)  # bad input: one line, exit 2
