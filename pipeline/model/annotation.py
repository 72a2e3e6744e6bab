"""Whole traces annotated as station streams by a model's own SeisBench ``annotate`` / ``classify``.

Many traces are annotated in one call: trace ``i`` becomes station ``T<i>`` of network EP in one Stream with a
common start time, and SeisBench groups by station, so the model sees batches of windows from many traces at once
(the same result as one call per trace). :func:`evaluate_picker` is protocol 1 with ``classify`` itself (the
protocol of the reference table in docs/design.md); :class:`Curves` keeps each model's per-trace P and S
probabilities, so the benchmark picks at any threshold with each model's own :class:`~pipeline.model.picking.PickRule`
(protocol 1 at the rule's thresholds is exactly ``classify``) and scores protocol 2 on the same curves.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence

import numpy as np
import obspy

from pipeline.errors import EdgepickError
from pipeline.evaluate.metrics import PHASES, analyst_picks, score_picks
from pipeline.model.picking import PickRule
from pipeline.model.teachers import annotate_blinding, to_distribution

_START = obspy.UTCDateTime(2000, 1, 1)
_NETWORK = "EP"


def traces_to_stream(waveforms: Sequence[np.ndarray], sampling_rate: float, component_order: str,
                     first: int = 0) -> obspy.Stream:
    """Whole traces (components, samples) as one Stream: trace ``first + i`` is station ``T<first + i>`` of network
    EP, all starting at the same time (SeisBench annotates station by station)."""
    if not len(component_order) == 3:
        raise EdgepickError(f"component order must have 3 letters, got {component_order!r}")
    stream = obspy.Stream()
    for i, waveform in enumerate(waveforms):
        waveform = np.asarray(waveform)
        if waveform.ndim != 2 or waveform.shape[0] != len(component_order):
            raise EdgepickError(f"trace {i}: waveform shape {waveform.shape}, want ({len(component_order)}, samples)")
        for channel, component in zip(waveform, component_order):
            stream.append(
                obspy.Trace(
                    np.ascontiguousarray(channel, dtype=np.float32),
                    header={
                        "network": _NETWORK,
                        "station": f"T{first + i}",
                        "location": "",
                        "channel": f"HH{component}",
                        "sampling_rate": float(sampling_rate),
                        "starttime": _START,
                    },
                )
            )
    return stream


def predict_picks(
    model,
    waveforms: Sequence[np.ndarray],
    sampling_rate: float,
    component_order: str,
    threshold: float | None = None,
    batch_size: int = 64,
    **classify_args,
) -> dict[str, list[np.ndarray]]:
    """Run ``model.classify`` on whole traces; per phase, per trace: pick times (s) from the trace start.
    ``threshold``: both phases' (None: a student's own; a SeisBench teacher at PickRule's default, the protocol of
    the reference table). ``classify_args`` override the model's annotate defaults (e.g. ``blinding``)."""
    stream = traces_to_stream(waveforms, sampling_rate, component_order)
    if threshold is None and not hasattr(model, "pick_rule"):
        threshold = PickRule.p_threshold
    if threshold is not None:
        classify_args.update(P_threshold=threshold, S_threshold=threshold)
    output = model.classify(stream, batch_size=batch_size, **classify_args)
    picks: dict[str, list[list[float]]] = {phase: [[] for _ in waveforms] for phase in PHASES}
    for pick in output.picks:
        phase = str(pick.phase).upper()
        if phase not in picks:
            continue
        station = pick.trace_id.split(".")[1]
        picks[phase][int(station[1:])].append(float(pick.peak_time - _START))
    return {phase: [np.asarray(sorted(p)) for p in rows] for phase, rows in picks.items()}


def evaluate_picker(
    model,
    dataset,
    threshold: float | None = None,
    tolerances: Iterable[float] = (0.1, 0.5),
    traces_per_call: int = 64,
    batch_size: int = 64,
    threads: int | None = 2,
) -> dict:
    """Protocol 1 on a SeisBench ``WaveformDataset`` (``threshold`` as in :func:`predict_picks`); returns per-phase
    scores and the run's bookkeeping."""
    import torch

    if len(dataset) == 0:
        raise EdgepickError("evaluate_picker: the dataset holds no trace")
    if threshold is not None and not 0 < threshold < 1:
        raise EdgepickError(f"evaluate_picker: threshold must lie in (0, 1), got {threshold}")
    tolerances = tuple(float(t) for t in tolerances)
    metadata = dataset.metadata
    rates = metadata["trace_sampling_rate_hz"].to_numpy(dtype=float) if "trace_sampling_rate_hz" in metadata else None
    component_order = dataset.component_order
    if threads:
        torch.set_num_threads(threads)
    model.eval()
    started = time.time()
    predicted: dict[str, list[np.ndarray]] = {phase: [] for phase in PHASES}
    n_samples: list[int] = []
    sampling = []
    for start in range(0, len(dataset), traces_per_call):
        idx = range(start, min(start + traces_per_call, len(dataset)))
        waveforms = [dataset.get_waveforms(i) for i in idx]
        chunk_rates = {float(rates[i]) if rates is not None else float(dataset.sampling_rate) for i in idx}
        if len(chunk_rates) != 1:
            # Mixed rates: one call per rate keeps the batching simple.
            for i, w in zip(idx, waveforms):
                r = float(rates[i])
                got = predict_picks(model, [w], r, component_order, threshold, batch_size)
                for phase in PHASES:
                    predicted[phase].extend(got[phase])
                n_samples.append(w.shape[-1])
                sampling.append(r)
            continue
        rate = chunk_rates.pop()
        got = predict_picks(model, waveforms, rate, component_order, threshold, batch_size)
        for phase in PHASES:
            predicted[phase].extend(got[phase])
        n_samples.extend(w.shape[-1] for w in waveforms)
        sampling.extend([rate] * len(waveforms))
    seconds = time.time() - started
    sampling_arr = np.asarray(sampling)
    labelled = analyst_picks(metadata, n_samples)
    analyst_s = {phase: [p / sampling_arr[i] for i, p in enumerate(rows)] for phase, rows in labelled.items()}
    result = score_picks(analyst_s, predicted, tolerances)
    return {
        "scores": result,
        "threshold": threshold,
        "tolerances_s": list(tolerances),
        "traces": len(dataset),
        "analyst_picks": {phase: int(sum(len(r) for r in rows)) for phase, rows in labelled.items()},
        "predicted_picks": {phase: int(sum(len(r) for r in rows)) for phase, rows in predicted.items()},
        "seconds": round(seconds, 2),
    }


# ---------------------------------------------------------------------------------------------------------------
# Curves: every model annotates the same traces once; picks at any threshold and protocol 2 come from them
# ---------------------------------------------------------------------------------------------------------------
class Curves:
    """Per key (trace or station): P and S probability curves on the key's sample grid, NaN where not annotated.

    ``start[i]`` is the sample (at ``rate``) of ``data[i][:, 0]`` counted from the key's reference time (the trace
    start; for continuous data the station's first sample).
    """

    def __init__(self, rate: float, rule: PickRule, start: list[int] | None = None, data: list[np.ndarray] | None = None):
        self.rate = float(rate)
        self.rule = rule  # the model's own pick rule (model_rule)
        self.start = list(start or [])
        self.data = list(data or [])

    def __len__(self) -> int:
        return len(self.data)

    def extend(self, other: "Curves") -> None:
        self.start += other.start
        self.data += other.data

    def window(self, i: int, s0: int, length: int) -> np.ndarray:
        """(2, length) curves of key ``i`` from sample ``s0`` (reference time based), NaN outside the annotation."""
        out = np.full((2, length), np.nan, dtype=np.float32)
        a = s0 - self.start[i]
        lo, hi = max(a, 0), min(a + length, self.data[i].shape[1])
        if hi > lo:
            out[:, lo - a : hi - a] = self.data[i][:, lo:hi]
        return out

    def picks(self, threshold: float | None = None) -> dict[str, list[np.ndarray]]:
        """Per phase, per key: pick times (s from the reference) by the model's rule, both phases at ``threshold``
        where given."""
        return {phase: [rows[:, 0] for rows in per_key] for phase, per_key in self.pick_rows(threshold).items()}

    def pick_rows(self, threshold: float | None = None) -> dict[str, list[np.ndarray]]:
        """:meth:`picks` with each pick's peak probability: per phase, per key, (n, 2) rows of (time s, prob),
        sorted by time."""
        rule = self.rule.with_threshold(threshold)
        out: dict[str, list[np.ndarray]] = {phase: [] for phase in PHASES}
        for start, data in zip(self.start, self.data):
            rows: dict[str, list[tuple[float, float]]] = {phase: [] for phase in PHASES}
            for a, b in _finite_runs(np.isfinite(data).all(axis=0)):
                if b - a < 3:
                    continue
                for pick in rule.picks(data[:, a:b], "".join(PHASES)):
                    rows[pick["phase"]].append(((start + a + pick["sample"]) / self.rate, pick["prob"]))
            for phase in PHASES:
                out[phase].append(np.asarray(sorted(rows[phase]), dtype=float).reshape(-1, 2))
        return out


def _finite_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of the runs of True in ``mask`` (SeisBench annotates each gap-free segment on its own)."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def annotation_curves(model, stream: obspy.Stream, keys: Sequence[str], refs: Sequence[obspy.UTCDateTime],
                      batch_size: int = 64, **annotate_args) -> Curves:
    """``model.annotate(stream)`` of every member of a :class:`pipeline.model.runners.BenchModel`, as Curves
    over ``keys`` ("NET.STA.LOC"); an ensemble mixes its members' (P, S, noise) distributions by weight.
    ``annotate_args`` override every member's annotate defaults (``blinding``: the curves' rule records it)."""
    rate = model.sampling_rate
    per_member = []
    for member in model.members:
        annotations = member.annotate(stream, batch_size=batch_size, **annotate_args)
        grouped: dict[str, list] = {}
        for trace in annotations:
            key = f"{trace.stats.network}.{trace.stats.station}.{trace.stats.location}"
            grouped.setdefault(key, []).append(trace)
        per_member.append(grouped)
    curves = Curves(rate, _curves_rule(model, annotate_args))
    for key, ref in zip(keys, refs):
        pieces = [(m, tr, int(round((tr.stats.starttime - ref) * rate))) for m, g in enumerate(per_member)
                  for tr in g.get(key, [])]
        if not pieces:
            curves.start.append(0)
            curves.data.append(np.full((2, 0), np.nan, dtype=np.float32))
            continue
        lo = min(s for _, _, s in pieces)
        hi = max(s + tr.stats.npts for _, tr, s in pieces)
        grids = []
        for m, member in enumerate(model.members):
            labels = [str(label) for label in member.labels]
            grid = np.full((len(labels), hi - lo), np.nan, dtype=np.float32)
            for mm, tr, s in pieces:
                label = tr.stats.channel.rsplit("_", 1)[-1]
                if mm == m and label in labels:
                    grid[labels.index(label), s - lo : s - lo + tr.stats.npts] = tr.data
            if model.ensemble:
                grid = to_distribution(grid.T, labels)[:2]
            else:
                missing = [p for p in PHASES if p not in labels]
                if missing:
                    raise EdgepickError(f"{model.label} has no {'/'.join(missing)} output (labels {labels})")
                grid = grid[[labels.index(p) for p in PHASES]]
            grids.append(grid)
        if model.ensemble:
            weights = np.asarray(model.weights, dtype=np.float32)[:, None, None]
            stack = np.stack(grids)
            have = np.isfinite(stack)
            total = np.where(have, weights, 0).sum(axis=0)
            mixed = np.where(have, stack * weights, 0).sum(axis=0) / np.where(total > 0, total, 1)
            grids = [np.where(total > 0, mixed, np.nan).astype(np.float32)]
        curves.start.append(lo)
        curves.data.append(grids[0])
    return curves


def model_rule(model) -> PickRule:
    """The pick rule a benchmark model (:class:`pipeline.model.runners.BenchModel`) is scored with: the student's own
    (saved with it); for a SeisBench teacher, SeisBench's first maximum with its own blinding at PickRule's
    default thresholds (the protocol of the reference table); for an ensemble, no blinding of its own."""
    member = model.members[0]
    if len(model.members) == 1 and hasattr(member, "pick_rule"):
        return member.pick_rule
    blinding = annotate_blinding(member) if len(model.members) == 1 else None
    return PickRule(top_tolerance=None, blinding=blinding)


def _curves_rule(model, annotate_args: dict) -> PickRule:
    """:func:`model_rule`, with the blinding the annotate call overrides."""
    rule = model_rule(model)
    if "blinding" in annotate_args:
        rule = dataclasses.replace(rule, blinding=tuple(annotate_args["blinding"]))
    return rule


def reference_picks(waveforms: Sequence[np.ndarray], metadata, rate: float, component_order: str, teacher: str,
                    n_samples: Sequence[int] | None = None, progress: bool = True) -> tuple[dict, bool]:
    """The picks a set is scored against, per phase and trace in seconds from its first sample: its analyst picks
    (``n_samples``: drop those outside each trace), or, where it has none (windows of continuous data), the picks
    of the teacher named ``teacher`` (runners.load_teacher) on its whole traces; and whether they are the teacher's."""
    truth = {phase: [row / rate for row in rows] for phase, rows in analyst_picks(metadata, n_samples).items()}
    if any(len(t) for rows in truth.values() for t in rows):
        return truth, False
    from pipeline.model import runners  # loads torch and the teachers: only where a set is unlabelled

    return dataset_curves(runners.load_teacher(teacher), waveforms, rate, component_order, progress=progress).picks(), True


def dataset_curves(model, waveforms: Sequence[np.ndarray], rate: float, component_order: str,
                   traces_per_call: int = 64, batch_size: int = 64, progress: bool = True, **annotate_args) -> Curves:
    """Curves of every whole trace (station ``T<i>``), annotated ``traces_per_call`` traces per call
    (``annotate_args`` as in :func:`annotation_curves`)."""
    from tqdm import tqdm

    curves = Curves(model.sampling_rate, _curves_rule(model, annotate_args))
    starts = range(0, len(waveforms), traces_per_call)
    for start in tqdm(starts, desc=f"{model.label:24}", unit="call", disable=not progress, leave=False):
        chunk = waveforms[start : start + traces_per_call]
        stream = traces_to_stream(chunk, rate, component_order, first=start)
        keys = [f"{_NETWORK}.T{start + i}." for i in range(len(chunk))]
        curves.extend(annotation_curves(model, stream, keys, [_START] * len(chunk), batch_size, **annotate_args))
    return curves
