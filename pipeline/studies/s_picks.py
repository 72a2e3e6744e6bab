"""Where the student's S picks go wrong against the teacher's, on analyst-picked dev halves (issue 28's diagnosis).

    SEISBENCH_CACHE_ROOT=../shared/seisbench python -m pipeline study s_picks --student models/student_qat \
        [--dataset data/labelled/ncsc100:dev ...] [--out reports/s_diagnosis] [--examples 4]

For every set (default: the dev halves of the labelled sets with S picks that ``make labelled`` cut), teacher and
student annotate each whole trace as the benchmark does; printed and written to ``--out``/diagnosis.md (and .json):
the pick classes of ``make benchmark``'s report (true S; false S before P, between P and S, in the S coda, in the late
coda) by S-P bin and by components (vertical-only traces apart), and pipeline.evaluate.s_diagnosis's curve
statistics by S-P, component and SNR bin (how high the true S peak is, how much S probability sits on the P, in the
pre-event noise and in the late coda, against each model's own threshold).
Figures: s_near_<set>.png (near-field traces, three components, every model's curves, analyst picks),
s_false_<set>.png (whole traces where the last student's S is false before P or in the late coda) and
s_summary.png. Only dev halves belong here: what is learnt from them steers the recipe.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipeline.artifacts import atomic_write_bytes, atomic_write_text
from pipeline.data.traces import load_labelled
from pipeline.errors import EdgepickError
from pipeline.evaluate import metrics, s_diagnosis
from pipeline.model import annotation, runners

DEFAULT_SETS = ("data/labelled/ncsc100:dev", "data/labelled/stead50:dev", "data/labelled/obst_obs37:dev")
SP_BINS = (2.0, 5.0)
SNR_BINS = (10.0, 20.0)
TOLERANCE = 0.5


def study_set(spec: str, models: list, examples: int, seed: int) -> tuple[dict, dict, dict]:
    """Pick classes and curve statistics of every model on one dev split; its figures (near-field traces, and
    traces where the last model's S is false in the noise or the late coda)."""
    path, _, split = spec.rpartition(":")
    if not split.startswith("dev"):
        raise EdgepickError(f"{spec}: only a dev split is studied here (its test half is what gets reported)")
    traces, metadata, rate, order = load_labelled(Path(path), split)
    truth = {p: [r / rate for r in rows]
             for p, rows in metrics.analyst_picks(metadata, [w.shape[-1] for w in traces]).items()}
    sp = metrics.sp_seconds(metadata)
    sp_masks = {"all": np.ones(len(traces), bool), **metrics.bin_masks(sp, SP_BINS, "S-P", "s"),
                **metrics.component_masks(metadata)}
    snr_masks = metrics.bin_masks(metrics.parse_snr_db(metadata), SNR_BINS, "SNR", "dB")  # summary bins only
    curves, picks, classes, stats, tables = {}, {}, [], {}, {}
    for model in models:
        c = annotation.dataset_curves(model, traces, rate, order)
        curves[model.label], picks[model.label] = c, c.picks()
        classes += metrics.pick_class_records(model, truth, picks[model.label], sp_masks, TOLERANCE)
        stats[model.label] = s_diagnosis.trace_stats(c, traces, truth)
        tables[model.label] = s_diagnosis.summary(stats[model.label], {**sp_masks, **snr_masks}, c.rule.threshold("S"))
    metrics.add_false_ratios(classes)
    rng = np.random.default_rng(seed)

    def draw(candidates):
        if not candidates:
            return []
        return sorted(rng.choice(candidates, min(examples, len(candidates)), replace=False).tolist())

    # near-field traces, and traces where the last student's S is false in the noise or the late coda (whole trace)
    student_rows = metrics.pick_classes(truth, picks[models[-1].label]["S"], "S", TOLERANCE)
    dead = metadata.get("trace_dead_channels")
    chosen = {"near": (draw(np.flatnonzero(np.isfinite(sp) & (sp < SP_BINS[0])).tolist()), 6.0),
              "false": (draw([i for i, r in enumerate(student_rows) if r["before_p"] + r["late_coda"]]), 60.0)}
    figures = {}
    for kind, (indices, pad) in chosen.items():
        if indices:
            titles = {i: f"{Path(path).name}:{split} trace {i}, S-P {sp[i]:.2f} s"
                      + (f", flat {dead[i]}" if dead is not None and isinstance(dead[i], str) else "") for i in indices}
            figures[kind] = s_diagnosis.figure_traces(traces, order, rate, truth, curves, indices, pad_s=pad,
                                                      titles=titles)
    result = {"set": spec, "traces": len(traces), "pick_classes": classes, "curve_stats": tables,
              "thresholds": {m: c.rule.threshold("S") for m, c in curves.items()}}
    return result, figures, {"stats": stats, "sp": sp}


def class_table(rows: list[dict]) -> str:
    lines = ["| model | subset | labels | true S | before P | P to S | S coda | late coda | noise traces | false | "
             "false / teacher |", "|" + " --- |" * 11]
    for r in rows:
        if r["phase"] != "S":
            continue
        c = r["classes"]
        ratio = "-" if r["false_ratio_to_teacher"] is None else f"{r['false_ratio_to_teacher']:.2f}"
        lines.append(f"| {r['model']} | {r['subset']} | {r['n_labels']} | {c['true']} | {c['before_p']} | "
                     f"{c['p_to_s']} | {c['after_s']} | {c['late_coda']} | {c['no_label']} | {r['false']} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study s_picks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", action="append", required=True, help="a saved student (repeatable)")
    parser.add_argument("--teacher", default="phasenet:okla")
    parser.add_argument("--dataset", action="append", help="a dev split path:split (repeatable)")
    parser.add_argument("--out", default="reports/s_diagnosis")
    parser.add_argument("--examples", type=int, default=4, help="near-field traces drawn per set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    specs = args.dataset or [s for s in DEFAULT_SETS if Path(s.rpartition(":")[0], "metadata.csv").is_file()]
    if not specs:
        raise EdgepickError("no dev split found: run `make labelled` first, or give --dataset path:dev")
    for spec in specs:  # every split is there before any model is loaded
        if not Path(spec.rpartition(":")[0], "metadata.csv").is_file():
            raise EdgepickError(f"{spec}: no dataset there (run `make labelled` first?)")
    students = []
    for path in args.student:
        student = runners.load_student_model(path, say=lambda line: None)  # its absence is our one error line
        if student is None:
            raise EdgepickError(f"no student in {path}")
        student.name = f"student:{Path(path).name}"  # several students side by side
        students.append(student)
    models = [runners.load_teacher(args.teacher), *students]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, pooled_stats, pooled_sp, sections = [], {m.label: [] for m in models}, [], []
    for spec in specs:
        result, figures, raw = study_set(spec, models, args.examples, args.seed)
        results.append(result)
        for label, rows in raw["stats"].items():
            pooled_stats[label] += rows
        pooled_sp.append(raw["sp"])
        name = spec.replace("/", "_").replace(":", "_")
        for kind, figure in figures.items():
            atomic_write_bytes(out / f"s_{kind}_{name}.png", _png(figure))
            plt.close(figure)
        sections += [f"## {spec} ({result['traces']} traces)", "", "S pick classes (tolerance 0.5 s):", "",
                     class_table(result["pick_classes"]), "", "S curve statistics (each model at its own S threshold "
                     + ", ".join(f"{m} {t:g}" for m, t in result["thresholds"].items()) + "):", "",
                     s_diagnosis.format_summary(result["curve_stats"]), ""]
        sections += [f"![{kind} traces](s_{kind}_{name}.png)" for kind in figures] + [""]
    thresholds = {m.label: annotation.model_rule(m).threshold("S") for m in models}
    figure = s_diagnosis.figure_summary(pooled_stats, np.concatenate(pooled_sp), thresholds)
    atomic_write_bytes(out / "s_summary.png", _png(figure))
    plt.close(figure)
    text = "\n".join(["# S picks: student against teacher on the dev halves", "",
                      "Command: `python -m pipeline study s_picks " + " ".join(f"--student {s}" for s in args.student)
                      + "`", "", *sections, "![summary](s_summary.png)", ""])
    atomic_write_text(out / "diagnosis.md", text)
    atomic_write_text(out / "diagnosis.json", json.dumps(results, indent=1, default=float) + "\n")
    print(text)
    print(f"written: {out / 'diagnosis.md'}, {out / 'diagnosis.json'} and the figures beside them")


def _png(fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()
