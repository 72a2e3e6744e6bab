"""How much a causal (streaming) student's picks depend on where the stream's 64-sample block grid falls (issue 30).

    python -m pipeline study grid_phase --student models/causal_qat [--student ...] \
        [--dataset data/labelled/stead50:dev ...] [--phases 8] [--max-traces 0] [--json out.json]

A streaming student runs on fixed 64-sample blocks from the moment the station starts; where an arrival falls in
its block depends on nothing but that moment. Each labelled trace is streamed ``--phases`` times, its warm-up
(pipeline.model.streaming.warmed_up's) longer by 0, 64 / phases, ... samples, so the same arrival falls at each
grid phase; the picks are the student's own rule on the exact stream scores (what the benchmark's exact rows
score; no S on a trace whose N and E are flat, with ``s_needs_horizontals``), matched to the analyst's at 0.5 and 0.1 s. Printed per student and set: F1 per phase (mean, min, max over
the phases), and at each analyst pick the spread of the student's peak probability within 0.5 s over the phases
(the mean over picks of max - min): 0 for a student whose scores do not depend on the grid.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipeline.data.traces import load_labelled
from pipeline.errors import EdgepickError, run_script
from pipeline.evaluate import metrics
from pipeline.model import components, streaming
from pipeline.model.stream_step import StreamStep, stream_scores
from pipeline.model.student import load_student

DEFAULT_SETS = ("data/labelled/stead50:dev", "data/labelled/obst_obs37:dev", "data/labelled/ncsc100:dev",
                "data/labelled/deepdenoiser99:dev")
TOLERANCES = (0.5, 0.1)
PEAK_WINDOW_S = 0.5


def phase_scores(student, waveform: np.ndarray, shift: int, rate: float, step: StreamStep) -> np.ndarray:
    """The student's exact stream scores (n, 3) over ``waveform`` (3, n) with ``shift`` more samples of warm-up
    before it: the same samples on a block grid ``shift`` samples later."""
    pad = streaming.history(student) + streaming.BLOCK + int(shift)
    return stream_scores(student, streaming.warmup(np.asarray(waveform, dtype=np.float64), pad, rate), step)[pad:]


def study(student, waveforms, truth: dict, rate: float, phases: int) -> dict:
    """F1 per grid phase and the peak spread at the analyst picks, for one student and set."""
    step, rule = StreamStep(student), student.pick_rule
    shifts = [round(k * streaming.BLOCK / phases) for k in range(phases)]
    f1 = {phase: {tol: [] for tol in TOLERANCES} for phase in metrics.PHASES}
    peaks = {phase: [] for phase in metrics.PHASES}  # per phase of the grid: (picks,) peak probabilities
    half = int(PEAK_WINDOW_S * rate)
    for shift in shifts:
        predicted = {phase: [] for phase in metrics.PHASES}
        heights = {phase: [] for phase in metrics.PHASES}
        for i, waveform in enumerate(waveforms):
            scores = phase_scores(student, waveform, shift, rate, step)
            if student.default_args.get("s_needs_horizontals"):  # its rule, over the whole trace
                scores = components.without_s(scores[None], components.horizontals_flat(np.asarray(waveform)[None]))[0]
            picks = rule.picks(np.nan_to_num(scores, nan=0.0), "PS", rate)
            for k, phase in enumerate(metrics.PHASES):
                predicted[phase].append(np.array([p["time"] for p in picks if p["phase"] == phase]))
                for t in truth[phase][i]:
                    centre = int(round(t * rate))
                    segment = scores[max(0, centre - half): centre + half + 1, k]
                    heights[phase].append(float(np.nanmax(segment)) if np.isfinite(segment).any() else 0.0)
        scored = metrics.score_picks(truth, predicted, TOLERANCES)
        for phase in metrics.PHASES:
            for tol in TOLERANCES:
                f1[phase][tol].append(scored[phase][tol]["f1"])
            peaks[phase].append(heights[phase])
    out = {}
    for phase in metrics.PHASES:
        heights = np.asarray(peaks[phase])  # (grid phases, analyst picks)
        row = {f"f1_{tol:g}": {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)),
                               "per_phase": [round(x, 4) for x in v]} for tol, v in f1[phase].items()}
        row["picks"] = int(heights.shape[1]) if heights.ndim == 2 else 0
        row["peak_spread"] = float((heights.max(0) - heights.min(0)).mean()) if row["picks"] else None
        row["peak_mean"] = float(heights.mean()) if row["picks"] else None
        out[phase] = row
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study grid_phase", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", action="append", default=[], help="a saved causal student (repeatable)")
    parser.add_argument("--dataset", action="append", default=[], help="labelled path:split (repeatable)")
    parser.add_argument("--phases", type=int, default=8, help="grid phases tried, evenly over one block")
    parser.add_argument("--max-traces", type=int, default=0, help="a seeded subset of each set (0: all)")
    parser.add_argument("--json", default="", help="write the rows here too")
    args = parser.parse_args(argv)
    if not args.student:
        raise EdgepickError("study grid_phase needs --student (a causal student)")
    if not 1 <= args.phases <= streaming.BLOCK:
        raise EdgepickError(f"--phases must be 1-{streaming.BLOCK}, got {args.phases}")
    students = [(path, load_student(Path(path) / "student" if (Path(path) / "student").is_dir() else path))
                for path in args.student]
    for path, student in students:
        if not student.causal:
            raise EdgepickError(f"{path} is not a causal student: its scores have no block grid")
    rows = []
    for spec in args.dataset or DEFAULT_SETS:
        path, _, split = spec.partition(":")
        waveforms, metadata, rate, _ = load_labelled(Path(path), split, args.max_traces)
        truth = {phase: [row / rate for row in rows_] for phase, rows_ in metrics.analyst_picks(metadata).items()}
        for name, student in students:
            result = study(student, waveforms, truth, rate, args.phases)
            rows.append({"dataset": spec, "student": name, **result})
            for phase, r in result.items():
                if not r["picks"]:
                    continue
                a, b = r["f1_0.5"], r["f1_0.1"]
                print(f"{spec:32} {name:30} {phase}  F1@0.5 {a['mean']:.3f} ({a['min']:.3f}-{a['max']:.3f})  "
                      f"F1@0.1 {b['mean']:.3f} ({b['min']:.3f}-{b['max']:.3f})  peak at the pick {r['peak_mean']:.2f}, "
                      f"spread over phases {r['peak_spread']:.2f}  ({r['picks']} picks)", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    run_script(main, name="study grid_phase")
