"""``make calibrate``: the student's P and S trigger thresholds chosen on a dev split and saved with it.

The student's probabilities are not the teacher's: a loss that weights the phase samples (``distill.phase_weight``)
lifts them, a small network flattens them, so one threshold for every student and phase picks too much or too
little. This stage annotates the dev split once with the student (whole traces as station streams, as the
benchmark does), scores every threshold of ``calibrate.thresholds`` per phase by the mean F1 over
``calibrate.tolerances_s``, against the analyst picks of a labelled split or, for unlabelled continuous windows,
against the teacher's picks (the agreement of ``make benchmark``), and writes the best into the student's pick
rule (its SeisBench ``default_args``). ``make quantize`` then writes them into model_config.h and the benchmark
scores with them. With ``calibrate.top_tolerances``, each pick placement (``PickRule.top_tolerance``) is then scored
at the chosen thresholds and the best by the mean F1 over the phases and tolerances is saved too (a causal
student's P curve falls slowly after its peak, so the midpoint at half maximum comes late). Only a dev split
belongs here: settings chosen on the data that is reported are tuned on it. Writes ``calibration.json`` and
``calibration.png`` (F1 against threshold) beside the student.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.evaluate import metrics
from pipeline.artifacts import atomic_file, atomic_write_text
from pipeline.evaluate.dev_split import (best_placement, best_threshold, load_dev, objective, placement_objective,
                                         placement_table, threshold_table)
from pipeline.errors import EdgepickError
from pipeline.model.student import load_student
from pipeline.distill.training import save_model


def run(config) -> dict:
    c = config.calibrate
    if not c.thresholds or not all(0 < t < 1 for t in c.thresholds):
        raise EdgepickError(f"calibrate.thresholds must be values in (0, 1), got {c.thresholds}")
    if not c.tolerances_s or not all(t > 0 for t in c.tolerances_s):
        raise EdgepickError(f"calibrate.tolerances_s must be positive, got {c.tolerances_s}")
    student_path = Path(c.student or config.quantize.student)
    folder, name = _saved_layout(student_path)
    if not all(t < 1 for t in c.top_tolerances):
        raise EdgepickError(f"calibrate.top_tolerances must be < 1 (< 0: the first maximum), got {c.top_tolerances}")
    dev = load_dev(config, c.dataset)
    student = load_student(student_path)
    curves = dev.curves(student, spec=str(student_path))
    table = threshold_table(curves, dev.truth, c.thresholds, c.tolerances_s, dev.labelled)
    before = student.pick_rule
    chosen = _choose(table, dev, before, student_path)
    student.default_args["P_threshold"] = chosen.get("P", before.p_threshold)
    student.default_args["S_threshold"] = chosen.get("S", before.s_threshold)
    placements = []
    if c.top_tolerances:
        placements = placement_table(curves, dev.truth, student.pick_rule, c.top_tolerances, c.tolerances_s,
                                     dev.labelled)
        student.default_args["pick_top_tolerance"] = best_placement(placements, dev.phases)
    student.pick_rule  # the new rule holds (PickRule validates)
    save_model(student, folder, name)
    result = {"student": str(student_path), "dataset": dev.label, "against": dev.against,
              "traces": len(dev.waveforms), "tolerances_s": list(c.tolerances_s),
              "before": {"P": before.p_threshold, "S": before.s_threshold, "top_tolerance": _top(before)},
              "chosen": chosen, "table": table, "placements": placements}
    if placements:
        result["chosen_top_tolerance"] = student.default_args["pick_top_tolerance"]
    atomic_write_text(folder / "calibration.json", json.dumps(result, indent=1) + "\n")
    _plot(result, folder / "calibration.png")
    for phase, threshold in chosen.items():
        old = before.threshold(phase)
        print(f"calibrate: {phase} threshold {old:g} -> {threshold:g} (mean F1 over {', '.join(f'{t:g}' for t in c.tolerances_s)} s "
              f"{objective(table, phase, old):.3f} -> {objective(table, phase, threshold):.3f}) on {result['dataset']}, "
              f"{len(dev.waveforms)} traces, against the {dev.against} picks")
    if placements:
        score = {row["top_tolerance"]: placement_objective(row, dev.phases) for row in placements}
        print("calibrate: pick placement (top tolerance; -1: the first maximum), mean F1 over the phases and "
              "tolerances: " + ", ".join(f"{top:g} {value:.3f}" for top, value in score.items())
              + f"; {_top(before):g} -> {result['chosen_top_tolerance']:g}")
    print(f"calibrate: saved in {folder / name}; written {folder / 'calibration.json'}, {folder / 'calibration.png'}")
    return result


def _top(rule) -> float:
    """A rule's placement as ``pick_top_tolerance`` writes it (-1: the first maximum)."""
    return -1.0 if rule.first_maximum else float(rule.top_tolerance)



def _choose(table: list[dict], dev, before, student_path: Path) -> dict[str, float]:
    """Each phase's threshold of the best objective. A phase that scores F1 0 at every threshold keeps its own (the
    lowest would win by default), said in a line; when every phase does, nothing is saved: one error line."""
    zero = [phase for phase in dev.phases if all(objective(table, phase, row["threshold"]) == 0 for row in table)]
    where = f"on {dev.label} ({len(dev.waveforms)} traces, against the {dev.against} picks)"
    if zero and len(zero) == len(dev.phases):
        raise EdgepickError(f"every threshold of calibrate.thresholds scores F1 0 for {' and '.join(zero)} {where}: "
                            f"nothing to choose; {student_path} keeps its thresholds (P {before.p_threshold:g}, "
                            f"S {before.s_threshold:g})")
    for phase in zero:
        print(f"calibrate: every threshold scores F1 0 for {phase} {where}: its threshold stays "
              f"{before.threshold(phase):g}")
    return {phase: before.threshold(phase) if phase in zero else best_threshold(table, phase) for phase in dev.phases}


def _saved_layout(path: Path) -> tuple[Path, str]:
    """(folder, name) of a student saved by make distill / qat (<folder>/<name>/<name>.json + .pt), the layout
    training.save_model replaces atomically."""
    for candidate in (path / "student", path):
        if (candidate / f"{candidate.name}.json").is_file() and (candidate / f"{candidate.name}.pt").is_file():
            return candidate.parent, candidate.name
    raise EdgepickError(f"calibrate: no student saved by make distill / qat in {path} "
                        f"(want {path}/student/student.json + .pt); run `make distill` first")


def _plot(result: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = [row["threshold"] for row in result["table"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, phase in zip(axes, metrics.PHASES):
        for tolerance in result["tolerances_s"]:
            ax.plot(thresholds, [row[f"{phase}_f1_{tolerance:g}"] for row in result["table"]], "o-", ms=3,
                    label=f"F1 at {tolerance:g} s")
        if phase in result["chosen"]:
            ax.axvline(result["chosen"][phase], color="k", lw=0.8, ls="--", label=f"chosen {result['chosen'][phase]:g}")
        ax.axvline(result["before"][phase], color="0.6", lw=0.8, ls=":", label=f"before {result['before'][phase]:g}")
        ax.set(title=f"{phase} on {Path(result['dataset']).name} against {result['against'].split()[0]} picks",
               xlabel="trigger threshold", ylabel="F1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(target) as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
