"""Student against teacher with the same blinding: protocol 1 (pipeline.model.annotation.predict_picks), each model run twice.

    SEISBENCH_CACHE_ROOT=../shared/seisbench python -m pipeline study blinding \
        --student models/student_qat [--student ...] [--teacher phasenet:okla] [--dataset ../shared/datasets/stead50]

``make benchmark`` scores every model with its own SeisBench defaults: the student blinds 302 samples at each end
of each window (its receptive field, pipeline/model/student.py), SeisBench's PhaseNet blinds nothing. This prints F1 at
0.5 s (threshold 0.3, whole traces as streams) of every model with its own blinding and with the student's, and the
student/teacher ratios under both, so the effect of blinding on the ratio is visible.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.evaluate import metrics
from pipeline.model import annotation, teachers
from pipeline.errors import EdgepickError, run_script
from pipeline.data.traces import load_labelled
from pipeline.model.student import load_student


def f1(model, waveforms, rate, order, truth, threshold, tolerance, **classify_args) -> dict[str, float]:
    picks = annotation.predict_picks(model, waveforms, rate, order, threshold, **classify_args)
    scored = metrics.score_picks(truth, picks, (tolerance,))
    return {phase: round(scored[phase][tolerance]["f1"], 3) for phase in metrics.PHASES}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study blinding", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", action="append", required=True, help="a saved student (repeatable)")
    parser.add_argument("--teacher", default="phasenet:okla", help="one teacher (no ensemble)")
    parser.add_argument("--dataset", default="../shared/datasets/stead50", help="labelled: path or path:split")
    parser.add_argument("--threshold", type=float, default=None,
                        help="P and S threshold of every model (default: each model's own pick rule; teachers 0.3)")
    parser.add_argument("--tolerance", type=float, default=0.5, help="seconds")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    path, _, split = args.dataset.partition(":") if not Path(args.dataset).is_dir() else (args.dataset, "", "")
    waveforms, metadata, rate, order = load_labelled(Path(path), split)
    truth = {phase: [row / rate for row in rows] for phase, rows in metrics.analyst_picks(metadata).items()}
    students = {name: load_student(name) for name in args.student}
    teacher = teachers.load_single_model(args.teacher)
    blindings = {teachers.annotate_blinding(s) for s in students.values()}
    if len(blindings) != 1:
        raise EdgepickError(f"the students blind differently ({sorted(blindings)}); compare them one blinding at a time")
    blinding = blindings.pop()
    score = lambda model, **kw: f1(model, waveforms, rate, order, truth, args.threshold, args.tolerance, **kw)  # noqa: E731
    teacher_own, teacher_blinded = score(teacher), score(teacher, blinding=blinding)
    print(f"{args.dataset}: {len(waveforms)} traces, F1 at {args.tolerance} s, threshold {args.threshold}; "
          f"student blinding {blinding}")
    print(f"  teacher {args.teacher}: own blinding P {teacher_own['P']:.3f} S {teacher_own['S']:.3f}; "
          f"student's blinding P {teacher_blinded['P']:.3f} S {teacher_blinded['S']:.3f}")
    result = {"dataset": args.dataset, "blinding": list(blinding), "teacher": {"own": teacher_own, "blinded": teacher_blinded},
              "students": {}}
    for name, student in students.items():
        own, unblinded = score(student), score(student, blinding=(0, 0))
        ratio = {phase: round(own[phase] / teacher_own[phase], 3) if teacher_own[phase] else None for phase in own}
        same = {phase: round(own[phase] / teacher_blinded[phase], 3) if teacher_blinded[phase] else None for phase in own}
        print(f"  {name}: P {own['P']:.3f} S {own['S']:.3f} (unblinded {unblinded['P']:.3f} / {unblinded['S']:.3f}); "
              f"ratio to the teacher as benchmarked P {ratio['P']} S {ratio['S']}, both blinded P {same['P']} S {same['S']}")
        result["students"][name] = {"f1": own, "f1_unblinded": unblinded, "ratio": ratio, "ratio_same_blinding": same}
    if args.json:
        from pipeline.artifacts import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    run_script(main)  # bad input: one line, exit 2
