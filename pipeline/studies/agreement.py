"""How far can a picker agree with the teacher on continuous data? Agreement (F1 of a model's picks against the
teacher's, the benchmark's continuous-data figure) for the teacher itself on the same data cut one window phase
apart (its own run-to-run ceiling: only where SeisBench's windows fall changes), for a second teacher, and for
students; and each one's recall of the teacher's picks by the teacher's peak probability.

    SEISBENCH_CACHE_ROOT=../shared/seisbench python -m pipeline study agreement \
        [--dataset data/transfer:test] [--teacher phasenet:okla] [--other eqtransformer:elep] [--shift-s 7.5] \
        [--student models/student_qat ...] [--json out.json]

Every model picks by its own rule (annotation.model_rule: a student at its calibrated thresholds, a SeisBench
teacher at 0.3 and its first maximum), whole traces annotated as station streams, as ``make benchmark`` does.
Picks within the first ``--shift-s`` + 0.5 s of each trace are left out for every model, so that the shifted teacher,
which does not see them, is scored on the same span.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipeline.model import runners
from pipeline.model.annotation import dataset_curves
from pipeline.errors import EdgepickError, run_script
from pipeline.evaluate.metrics import PHASES, matched_pairs, score_picks
from pipeline.data.traces import load_labelled

TOLERANCES = (0.1, 0.5)
PEAK_BINS = ((0.3, 0.5), (0.5, 0.7), (0.7, 1.01))  # the teacher's peak probability


def picks_with_peaks(curves, skip_s: float, shift_s: float = 0.0) -> dict[str, list[np.ndarray]]:
    """Per phase, per trace: (time s, peak probability) rows of the curves' picks (Curves.pick_rows), ``shift_s``
    added (a trace cut that much later), the ones before ``skip_s`` dropped."""
    out = {}
    for phase, per_trace in curves.pick_rows().items():
        shifted = [rows + np.array([shift_s, 0.0]) for rows in per_trace]
        out[phase] = [rows[rows[:, 0] >= skip_s] for rows in shifted]
    return out


def times(picks: dict) -> dict[str, list[np.ndarray]]:
    return {phase: [rows[:, 0] for rows in picks[phase]] for phase in PHASES}


def recall_by_peak(reference: dict, candidate: dict, tolerance: float) -> dict[str, list[float | None]]:
    """Per phase and teacher-peak bin: the share of the reference's picks the candidate matches within
    ``tolerance`` (the benchmark's one-to-one matching)."""
    out = {}
    for phase in PHASES:
        found = np.zeros(len(PEAK_BINS))
        total = np.zeros(len(PEAK_BINS))
        for ref, cand in zip(reference[phase], candidate[phase]):
            matched = {a for a, _ in matched_pairs(ref[:, 0], cand[:, 0], tolerance)}
            for k, (lo, hi) in enumerate(PEAK_BINS):
                in_bin = np.flatnonzero((ref[:, 1] >= lo) & (ref[:, 1] < hi))
                total[k] += len(in_bin)
                found[k] += sum(1 for a in in_bin if a in matched)
        out[phase] = [float(f / t) if t else None for f, t in zip(found, total)]
        out[f"{phase}_n"] = total.astype(int).tolist()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study agreement", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="data/transfer:test", help="folder[:split] of windows of continuous data")
    parser.add_argument("--teacher", default="phasenet:okla", help="the reference teacher (teacher.name)")
    parser.add_argument("--other", default="eqtransformer:elep", help="a second teacher scored against it ('' = none)")
    parser.add_argument("--shift-s", type=float, default=7.5, help="the teacher again on each trace cut this much later")
    parser.add_argument("--student", action="append", default=[], help="a saved student (repeatable)")
    parser.add_argument("--max-traces", type=int, default=0, help="a seeded subset (0: all)")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    folder, _, split = args.dataset.partition(":")
    waveforms, _, rate, order = load_labelled(Path(folder), split, args.max_traces)
    shift = int(round(args.shift_s * rate))
    if not 0 < shift < min(w.shape[1] for w in waveforms) - 3001:
        raise EdgepickError(f"--shift-s {args.shift_s} must leave at least one 3001-sample window of each trace")
    skip_s = args.shift_s + 0.5
    teacher = runners.load_teacher(args.teacher)
    reference = picks_with_peaks(dataset_curves(teacher, waveforms, rate, order), skip_s)
    candidates = {f"{args.teacher} on traces cut {args.shift_s:g} s later":
                  picks_with_peaks(dataset_curves(teacher, [w[:, shift:] for w in waveforms], rate, order), skip_s,
                                   args.shift_s)}
    if args.other:
        other = runners.load_teacher(args.other)
        candidates[args.other] = picks_with_peaks(dataset_curves(other, waveforms, rate, order), skip_s)
    for path in args.student:
        model = runners.load_student_model(path)
        if model is None:
            raise EdgepickError(f"student {path} does not exist")
        candidates[f"student {path}"] = picks_with_peaks(dataset_curves(model, waveforms, rate, order), skip_s)

    n_ref = {phase: int(sum(len(r) for r in reference[phase])) for phase in PHASES}
    print(f"agreement with {args.teacher} on {args.dataset}: {len(waveforms)} traces, teacher picks P {n_ref['P']} / "
          f"S {n_ref['S']} (after the first {skip_s:g} s of each trace)")
    bins = ", ".join(f"{lo:g}-{min(hi, 1):g}" for lo, hi in PEAK_BINS)
    print(f"{'model':48} {'P F1@0.1':>8} {'P F1@0.5':>8} {'S F1@0.1':>8} {'S F1@0.5':>8}  recall@0.5 s by teacher peak "
          f"({bins}): P | S")
    rows = []
    for name, picks in candidates.items():
        scored = score_picks(times(reference), times(picks), TOLERANCES)
        by_peak = recall_by_peak(reference, picks, max(TOLERANCES))
        row = {"model": name, **{f"{p}_f1_{t:g}": scored[p][t]["f1"] for p in PHASES for t in TOLERANCES},
               "n_picks": {p: int(sum(len(r) for r in picks[p])) for p in PHASES}, "recall_by_teacher_peak": by_peak}
        rows.append(row)
        cells = " ".join(f"{row[f'{p}_f1_{t:g}']:8.3f}" for p in PHASES for t in TOLERANCES)
        recall = " | ".join(" ".join("-" if v is None else f"{v:.2f}" for v in by_peak[p]) for p in PHASES)
        print(f"{name[:48]:48} {cells}  {recall}")
    print("teacher picks per peak bin: " + " | ".join(f"{p} " + " ".join(str(n) for n in by_peak[f'{p}_n']) for p in PHASES))
    if args.json:
        from pipeline.artifacts import atomic_write_text

        atomic_write_text(args.json, json.dumps({"dataset": args.dataset, "teacher": args.teacher, "rows": rows},
                                                indent=1) + "\n")


if __name__ == "__main__":
    run_script(main)  # bad input: one line, exit 2
