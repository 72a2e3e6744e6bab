"""Where in a triggered segment the pick goes, measured on real analyst picks at 0.1 and 0.5 s (issue 15).

    SEISBENCH_CACHE_ROOT=../shared/seisbench python -m pipeline study pick_rules \
        --student models/student_qat [--tflite models/tflite] [--teacher phasenet:okla] \
        [--dataset ../shared/datasets/stead50 ...] [--threshold 0.3]

Every model annotates every trace of each labelled set once (whole traces as station streams, as ``make
benchmark`` does; the curves are cached under ``--cache``), then each placement below picks the same triggered
segments (on at the threshold, off at half of it):

- ``first-max``: the first maximum (SeisBench's ``classify``);
- ``mid-half``: the midpoint of the contiguous samples >= half the maximum (the student's rule today);
- ``parabola``: the first maximum moved to the vertex of the parabola through it and its two neighbours;
- ``centroid``: the probability-weighted mean time of the contiguous samples >= half the maximum.

A set without analyst picks (a split of continuous data) is scored against the teacher's picks (first maximum):
the agreement of ``make benchmark``. It prints F1 at each tolerance and the residuals (pick - analyst, matched within 0.5 s) per model, set and
placement. The figures are diagnosis (choosing a rule here would tune on the reported sets): the rule a student
is shipped with is chosen on a dev split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.evaluate import metrics
from pipeline.model import annotation, runners
from pipeline.errors import EdgepickError, run_script
from pipeline.data.traces import load_labelled


def first_max(segment: np.ndarray) -> float:
    return float(np.argmax(segment))


def _half_run(segment: np.ndarray) -> tuple[int, int]:
    i = int(np.argmax(segment))
    level = segment[i] * 0.5
    lo, hi = i, i
    while lo > 0 and segment[lo - 1] >= level:
        lo -= 1
    while hi + 1 < len(segment) and segment[hi + 1] >= level:
        hi += 1
    return lo, hi


def mid_half(segment: np.ndarray) -> float:
    lo, hi = _half_run(segment)
    return float(lo + (hi - lo) // 2)


def parabola(segment: np.ndarray) -> float:
    i = int(np.argmax(segment))
    if i == 0 or i == len(segment) - 1:
        return float(i)
    a, b, c = (float(v) for v in segment[i - 1 : i + 2])
    curvature = a - 2 * b + c
    return float(i) if curvature >= 0 else i + 0.5 * (a - c) / curvature


def centroid(segment: np.ndarray) -> float:
    lo, hi = _half_run(segment)
    weights = segment[lo : hi + 1].astype(float)
    return float(lo + (weights * np.arange(hi - lo + 1)).sum() / weights.sum())


PLACEMENTS = {"first-max": first_max, "mid-half": mid_half, "parabola": parabola, "centroid": centroid}


def place_picks(curves: annotation.Curves, thresholds: dict[str, float], place) -> dict[str, list[np.ndarray]]:
    """Per phase, per trace: pick times (s) of every triggered segment, placed by ``place``."""
    from obspy.signal.trigger import trigger_onset

    out: dict[str, list[np.ndarray]] = {phase: [] for phase in metrics.PHASES}
    for start, data in zip(curves.start, curves.data):
        times: dict[str, list[float]] = {phase: [] for phase in metrics.PHASES}
        for a, b in annotation._finite_runs(np.isfinite(data).all(axis=0)):
            if b - a < 3:
                continue
            for k, phase in enumerate(metrics.PHASES):
                curve = data[k, a:b]
                for s0, s1 in trigger_onset(curve, thresholds[phase], thresholds[phase] / 2):
                    times[phase].append((start + a + s0 + place(curve[s0 : s1 + 1])) / curves.rate)
        for phase in metrics.PHASES:
            out[phase].append(np.asarray(sorted(times[phase]), dtype=float))
    return out


def cached_curves(model, key: str, waveforms, rate, order, cache: Path) -> annotation.Curves:
    path = cache / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        stored = np.load(path, allow_pickle=False)
        n = int(stored["n"])
        return annotation.Curves(rate, annotation.model_rule(model), list(stored["start"]),
                                 [stored[f"c{i}"] for i in range(n)])
    curves = annotation.dataset_curves(model, waveforms, rate, order)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, n=len(curves), start=np.asarray(curves.start), **{f"c{i}": d for i, d in enumerate(curves.data)})
    tmp.replace(path)
    return curves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study pick_rules", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", action="append", default=[], help="a saved student (repeatable)")
    parser.add_argument("--tflite", action="append", default=[], help="a quantize output folder: its INT8 build")
    parser.add_argument("--teacher", default="phasenet:okla")
    parser.add_argument("--dataset", action="append", default=[],
                        help="labelled set, path or path:split (default: every set in ../shared/datasets)")
    parser.add_argument("--threshold", type=float, default=0.3, help="P and S trigger threshold of every model")
    parser.add_argument("--max-traces", type=int, default=0, help="a seeded subset of each set (0: all)")
    parser.add_argument("--cache", default="reports/pick-rules/curves")
    parser.add_argument("--json", default="reports/pick-rules/pick_rules.json")
    args = parser.parse_args(argv)
    datasets = args.dataset or sorted(str(p.parent) for p in Path("../shared/datasets").glob("*/metadata.csv"))
    if not datasets:
        raise EdgepickError("no labelled dataset: pass --dataset")
    models = [(args.teacher, runners.load_teacher(args.teacher))]
    for path in args.student:
        models.append((path, runners.load_student_model(path)))
    for folder in args.tflite:
        student = runners.load_student_model(args.student[0]).members[0] if args.student else None
        for variant in runners.tflite_variants(folder, student, ("int8",)):
            models.append((f"{folder}/int8", variant))
    thresholds = {phase: args.threshold for phase in metrics.PHASES}
    results = []
    for spec in datasets:
        path, _, split = spec.partition(":") if not Path(spec).is_dir() else (spec, "", "")
        waveforms, metadata, rate, order = load_labelled(Path(path), split, args.max_traces)
        truth = {phase: [row / rate for row in rows] for phase, rows in metrics.analyst_picks(metadata).items()}
        against = "analyst"
        curves_of = {}
        for name, model in models:
            source = Path(name.removesuffix("/int8"))
            stamp = source.stat().st_mtime_ns if source.exists() else 0
            curves_of[name] = cached_curves(model, f"{name}|{stamp}|{spec}|{args.max_traces}", waveforms, rate, order,
                                            Path(args.cache))
        if not any(len(t) for rows in truth.values() for t in rows):  # unlabelled: agreement with the teacher
            truth, against = place_picks(curves_of[args.teacher], thresholds, first_max), "teacher"
        print(f"\n{spec}: {len(waveforms)} traces against {against} picks; F1 P / S at 0.1 s and 0.5 s; residual "
              f"mean, std (s) P / S, matched within 0.5 s; threshold {args.threshold}")
        for name, model in models:
            curves = curves_of[name]
            for placement, place in PLACEMENTS.items():
                picks = place_picks(curves, thresholds, place)
                scored = metrics.score_picks(truth, picks, (0.1, 0.5))
                row = {"dataset": spec, "model": name, "placement": placement, "against": against}
                cells = []
                for tol in (0.1, 0.5):
                    for phase in metrics.PHASES:
                        have = any(len(t) for t in truth[phase])
                        row[f"{phase}_f1_{tol}"] = scored[phase][tol]["f1"] if have else None
                    cells.append(" / ".join("-" if row[f"{p}_f1_{tol}"] is None else f"{row[f'{p}_f1_{tol}']:.3f}"
                                            for p in metrics.PHASES))
                for phase in metrics.PHASES:
                    row[f"{phase}_residual_mean_s"] = scored[phase][0.5]["residual_mean_s"]
                    row[f"{phase}_residual_std_s"] = scored[phase][0.5]["residual_std_s"]
                residual = " / ".join(f"{row[f'{p}_residual_mean_s']:+.3f}, {row[f'{p}_residual_std_s']:.3f}"
                                      for p in metrics.PHASES)
                print(f"  {name[-34:]:34} {placement:9}  @0.1 {cells[0]:13}  @0.5 {cells[1]:13}  residual {residual}")
                results.append(row)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    run_script(main)  # bad input: one line, exit 2
