"""A dev split students are scored on (``make calibrate``, ``make sweep``, ``study score``): its traces as station
streams and the picks they are scored against, the F1 of each threshold and the objective recipe choices are made
with (the mean F1 over the tolerances, each phase at its best threshold). Only a dev split: a test split or a whole
folder is refused, as it is what gets reported (``study score --split test|all`` alone loads those, with
:func:`load_split`'s ``dev_only=False``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline.evaluate import metrics
from pipeline.model import annotation, runners
from pipeline.errors import EdgepickError
from pipeline.data.traces import load_labelled, resolve_dataset


@dataclasses.dataclass
class DevSplit:
    """A dev split students are scored on: its traces as station streams and the picks they are scored against
    (the analyst's, or for unlabelled continuous windows the teacher's); several splits pool into one."""

    waveforms: list
    rate: float
    order: str
    truth: dict  # phase -> per trace, pick times (s)
    against: str  # "analyst" or "teacher <name>" (pooled: both, joined by " + ")
    label: str  # "path:split" (pooled: joined by ",")
    # phase -> per trace, whether its set has picks of that phase: a set without S picks (deepdenoiser99) is not
    # scored on S, or a pooled split would count its real S arrivals as false picks (default: from ``phases``)
    labelled: dict = dataclasses.field(default_factory=dict)
    # per trace, its first S minus its first P analyst pick (s; NaN without both): the score study's S-P bins
    sp_s: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.labelled:
            phases = self.phases
            self.labelled = {phase: [phase in phases] * len(self.waveforms) for phase in metrics.PHASES}
        if self.sp_s is None:
            self.sp_s = np.full(len(self.waveforms), np.nan)

    @property
    def phases(self) -> list[str]:
        """The phases that have picks to be scored against (deepdenoiser-like sets have no S)."""
        return [phase for phase in metrics.PHASES if any(len(t) for t in self.truth[phase])]

    def curves(self, student, spec: str = "") -> annotation.Curves:
        """``student``'s curves over every whole trace (annotated as the benchmark does)."""
        bench = runners.BenchModel("student", "pytorch", "fp32", [student], spec=spec)
        runners.check_rates([bench], [self.rate])
        return annotation.dataset_curves(bench, self.waveforms, self.rate, self.order)

    def threshold_table(self, student, thresholds, tolerances, spec: str = "") -> list[dict]:
        """:func:`threshold_table` of ``student``'s whole-trace picks (annotated as the benchmark does)."""
        return threshold_table(self.curves(student, spec), self.truth, thresholds, tolerances, self.labelled)


def load_dev(config, spec: str) -> DevSplit:
    """The dev split ``spec`` ("path:split"; several, comma-separated, pool; "" = the dev split of distill.dataset's
    first folder), at most ``calibrate.max_traces`` of each (seeded); a test split or a whole folder is refused (it
    is what gets reported)."""
    parts = [load_split(config, one.strip()) for one in spec.split(",") if one.strip()] or [load_split(config, "")]
    return pool_dev(parts)


def pool_dev(parts: list[DevSplit]) -> DevSplit:
    """One dev split of several (their traces one after the other)."""
    if len({(part.rate, part.order) for part in parts}) > 1:
        raise EdgepickError("dev splits " + ", ".join(f"{p.label} ({p.rate:g} Hz {p.order})" for p in parts)
                            + " differ in sampling rate or component order; re-run the data stage")
    return DevSplit(
        waveforms=[w for part in parts for w in part.waveforms],
        rate=parts[0].rate,
        order=parts[0].order,
        truth={phase: [t for part in parts for t in part.truth[phase]] for phase in metrics.PHASES},
        against=" + ".join(dict.fromkeys(part.against for part in parts)),
        label=",".join(part.label for part in parts),
        labelled={phase: [flag for part in parts for flag in part.labelled[phase]] for phase in metrics.PHASES},
        sp_s=np.concatenate([part.sp_s for part in parts]),
    )


def load_split(config, spec: str, dev_only: bool = True) -> DevSplit:
    """One set ("path:split", or "path" for every trace) as a dev split is scored: at most
    ``calibrate.max_traces`` of its traces (seeded), against its analyst picks inside each trace or, where it has
    none, the teacher's (``teacher.name``). ``dev_only``: a test split or a whole folder is refused (what make
    calibrate and recipe choices take); the score study passes False for the test halves and whole sets it reports."""
    path, split = _dev_split(config, spec, dev_only)
    c = config.calibrate
    waveforms, metadata, rate, order = load_labelled(path, split, c.max_traces, c.seed)
    truth, by_teacher = annotation.reference_picks(waveforms, metadata, rate, order, config.teacher.name,
                                                   n_samples=[w.shape[-1] for w in waveforms])
    against = f"teacher {config.teacher.name}" if by_teacher else "analyst"
    return DevSplit(waveforms, rate, order, truth, against, f"{path}{':' + split if split else ''}",
                    sp_s=metrics.sp_seconds(metadata))


def threshold_table(curves: annotation.Curves, truth: dict, thresholds, tolerances,
                    labelled: dict | None = None) -> list[dict]:
    """One row per threshold: F1 (and precision, recall) per phase and tolerance of the curves' picks at it; the
    picks of a trace whose set has no picks of a phase (``labelled``) are not scored on that phase."""
    return [{"threshold": float(t), **_scores(curves.picks(float(t)), truth, tolerances, labelled)} for t in thresholds]


def placement_table(curves: annotation.Curves, truth: dict, rule, top_tolerances, tolerances,
                    labelled: dict | None = None) -> list[dict]:
    """One row per pick placement (``PickRule.top_tolerance``; < 0: the first maximum) at ``rule``'s thresholds:
    F1 (and precision, recall) per phase and tolerance, as :func:`threshold_table`'s rows."""
    rows = []
    for top in top_tolerances:
        placement = dataclasses.replace(rule, top_tolerance=None if top < 0 else float(top))
        placed = annotation.Curves(curves.rate, placement, curves.start, curves.data)  # the same curves
        rows.append({"top_tolerance": float(top), **_scores(placed.picks(), truth, tolerances, labelled)})
    return rows


def _scores(picks: dict, truth: dict, tolerances, labelled: dict | None) -> dict:
    """F1, precision and recall per phase and tolerance; the picks of a trace whose set has no picks of a phase
    (``labelled``) are not scored on that phase."""
    if labelled:
        picks = {phase: [trace if labelled[phase][i] else trace[:0] for i, trace in enumerate(per_trace)]
                 for phase, per_trace in picks.items()}
    scored = metrics.score_picks(truth, picks, tuple(float(t) for t in tolerances))
    row = {}
    for phase in metrics.PHASES:
        for tolerance in tolerances:
            s = scored[phase][float(tolerance)]
            row[f"{phase}_f1_{tolerance:g}"] = s["f1"]
            row[f"{phase}_precision_{tolerance:g}"] = s["precision"]
            row[f"{phase}_recall_{tolerance:g}"] = s["recall"]
    return row


def best_threshold(table: list[dict], phase: str) -> float:
    """The threshold of the highest mean F1 over the tolerances (the lowest of equal ones: it loses no recall)."""
    ordered = sorted(table, key=lambda row: row["threshold"])
    return ordered[int(np.argmax([_objective_row(row, phase) for row in ordered]))]["threshold"]


def placement_objective(row: dict, phases) -> float:
    """A :func:`placement_table` row's objective: the mean over ``phases`` of each phase's mean F1 over the
    tolerances."""
    return float(np.mean([_objective_row(row, phase) for phase in phases]))


def best_placement(table: list[dict], phases) -> float:
    """The placement (``top_tolerance``) of the highest :func:`placement_objective` (the first of equal ones)."""
    return table[int(np.argmax([placement_objective(row, phases) for row in table]))]["top_tolerance"]


def _objective_row(row: dict, phase: str) -> float:
    values = [v for k, v in row.items() if k.startswith(f"{phase}_f1_")]
    return float(np.mean(values))


def objective(table: list[dict], phase: str, threshold: float) -> float:
    """The objective at ``threshold``, or at the nearest threshold of the table."""
    row = min(table, key=lambda r: abs(r["threshold"] - threshold))
    return _objective_row(row, phase)


def _dev_split(config, spec: str, dev_only: bool = True) -> tuple[Path, str]:
    if not spec:
        first = next((p.strip() for p in config.distill.dataset.split(",") if p.strip()), "")
        if not first:
            raise EdgepickError("no dev split: distill.dataset is empty; name one (path:dev)")
        spec = f"{first}:dev"
    path, split = resolve_dataset(config, spec)
    if not (path / "metadata.csv").is_file():
        raise EdgepickError(f"dev split {spec}: {path} is not a SeisBench-format folder (no metadata.csv)")
    if dev_only and split in ("", "test"):
        raise EdgepickError(f"dev split {spec}: tune on a dev split (path:dev), not on "
                            f"{'every trace' if not split else 'the test split'}, which the benchmark reports")
    return path, split
