"""The benchmark stage: how well a picker finds the labelled P and S arrivals of a SeisBench-format dataset.

Protocol 1 (whole-trace picking, the protocol of the reference table in NOTES.md):

1. Every trace of the dataset is annotated whole, as one station stream (an obspy Stream of its three
   components with the trace's sampling rate), by the model's own SeisBench ``classify`` with
   ``P_threshold = S_threshold = threshold``. Many traces are annotated in one call: each trace becomes its own
   station (``EP.T<n>.``) in a shared Stream with a common start time, and SeisBench groups by station, so the
   model sees batches of windows from many traces at once. The result is the same as one call per trace.
2. Each analyst (labelled) pick is matched to the predicted pick of the same phase on the same trace nearest to it,
   if that is within the tolerance. A predicted pick matches at most one analyst pick: on traces with two events,
   analyst picks are served in order of their distance to the nearest prediction (closest first).
3. TP = matched analyst picks, FN = unmatched analyst picks, FP = predicted picks matched to no analyst pick
   (every pick on a noise trace is a FP). Precision = TP / (TP + FP), recall = TP / (TP + FN),
   F1 = 2 P R / (P + R). Residuals (predicted minus analyst, seconds) of the matched picks give mean, std and MAE.

Analyst picks are read from ``trace_p_arrival_sample`` / ``trace_s_arrival_sample`` and, where present, the second
event's ``trace_p2_arrival_sample`` / ``trace_s2_arrival_sample`` (the synthetic source writes them).

The stage (``make benchmark`` / ``python -m pipeline benchmark``, :func:`run`) scores every model of
:mod:`pipeline.benchmark_models` (teacher(s), PyTorch student, TFLite Micro FP32 / FP16 / INT8) on the same traces:

* Each model annotates every trace once (``annotate`` of its SeisBench model, as ``classify`` does), giving per-trace
  P and S probability curves (:class:`Curves`). Picks at any threshold come from those curves with
  :func:`pipeline.flash.reference_picks`, each model's own pick rule on arrays (trigger on at the threshold, off at
  half; the pick at the peak for teachers, as SeisBench's ``picks_from_annotations``, at the centre of the peak's
  top for the student, :func:`pick_rule`): protocol 1 above at ``benchmark.threshold`` is exactly ``classify``,
  and the precision-recall curves sweep the threshold over the same curves.
* Agreement: protocol 1 again with the teacher's picks (same threshold) as the reference instead of the analyst's.
* Breakdowns: F1 on the traces of each S-P bin (first S minus first P, ``benchmark.sp_bins_s``) and each SNR bin
  (``trace_snr_db``, a number or STEAD's string of three per-component values, averaged; ``benchmark.snr_bins_db``);
  traces without the needed labels (noise traces) are in no bin.
* Protocol 2, after the SeisBench pick benchmark (Münchmeyer et al. 2022, "Which picker fits my data?"), on
  ``benchmark.window_s`` (10 s) windows cut, seeded by ``benchmark.seed``, from the labelled traces. The models see
  the whole trace (the curves above: full context, no window-edge effects) and each window is scored on the curves
  inside it:
    - task 1, event detection: a positive window per trace with picks, its first pick at a uniformly drawn position
      between 1 s and window - 1 s; a negative window per trace without picks (uniform position) and, where the
      first pick leaves room, the window ending 1 s before it (pre-event noise). Score: the largest P or S
      probability in the window. Metric: ROC-AUC (Mann-Whitney, ties count one half).
    - task 2, phase identification: per labelled pick a window holding it at a uniform position in [1 s, window -
      1 s] and no other labelled pick. Score: max P - max S in the window. Metric: Matthews correlation coefficient
      for "P" = score > 0 (``mcc``) and at the best threshold on the scores (``mcc_best``, an optimistic bound: no
      dev set tunes it).
    - task 3, onset regression: per labelled pick the same kind of window (other picks allowed); the prediction is
      the time of the largest probability of the labelled phase in the window. Metrics: RMSE and MAE of predicted
      minus analyst (s), and the share within 0.1 s / 0.5 s.
* Continuous miniSEED (a folder without metadata.csv): no labels, so only agreement with the teacher and picks per
  hour are reported (the report says so).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import obspy

from pipeline.errors import EdgepickError

PHASES = ("P", "S")
ANALYST_COLUMNS = {
    "P": ("trace_p_arrival_sample", "trace_p2_arrival_sample"),
    "S": ("trace_s_arrival_sample", "trace_s2_arrival_sample"),
}
_START = obspy.UTCDateTime(2000, 1, 1)
_NETWORK = "EP"


def analyst_picks(metadata, n_samples: Sequence[int] | None = None) -> dict[str, list[np.ndarray]]:
    """Per phase, per trace: the labelled pick samples (float array, NaNs and out-of-trace picks dropped)."""
    out: dict[str, list[np.ndarray]] = {}
    n = len(metadata)
    for phase, columns in ANALYST_COLUMNS.items():
        present = [c for c in columns if c in metadata.columns]
        values = (
            np.stack([metadata[c].to_numpy(dtype=float) for c in present], axis=1)
            if present
            else np.full((n, 0), np.nan)
        )
        rows = []
        for i in range(n):
            row = values[i][np.isfinite(values[i])]
            if n_samples is not None:
                row = row[(row >= 0) & (row < n_samples[i])]
            rows.append(row)
        out[phase] = rows
    return out


def match_picks(
    analyst: Sequence[np.ndarray], predicted: Sequence[np.ndarray], tolerance: float
) -> tuple[int, int, int, np.ndarray]:
    """Match one phase's picks trace by trace (all values in seconds).

    ``analyst[i]`` and ``predicted[i]`` are the pick times on trace ``i``. Returns (TP, FP, FN, residuals of the
    matched picks, predicted minus analyst).
    """
    if len(analyst) != len(predicted):
        raise EdgepickError(f"match_picks: {len(analyst)} analyst traces but {len(predicted)} predicted traces")
    if not tolerance > 0:
        raise EdgepickError(f"match_picks: tolerance must be positive, got {tolerance}")
    tp = fp = fn = 0
    residuals: list[float] = []
    for truth, guess in zip(analyst, predicted):
        truth = np.asarray(truth, dtype=float).ravel()
        guess = np.asarray(guess, dtype=float).ravel()
        if guess.size == 0:
            fn += truth.size
            continue
        if truth.size == 0:
            fp += guess.size
            continue
        free = np.ones(guess.size, dtype=bool)
        distance = np.abs(guess[None, :] - truth[:, None])
        order = np.argsort(distance.min(axis=1), kind="stable")
        matched = 0
        for a in order:
            candidates = np.where(free, distance[a], np.inf)
            g = int(np.argmin(candidates))
            if candidates[g] <= tolerance + 1e-9:
                free[g] = False
                matched += 1
                residuals.append(float(guess[g] - truth[a]))
        tp += matched
        fn += truth.size - matched
        fp += guess.size - matched
    return tp, fp, fn, np.asarray(residuals, dtype=float)


def scores(tp: int, fp: int, fn: int, residuals: np.ndarray) -> dict:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    residuals = np.asarray(residuals, dtype=float)
    have = residuals.size > 0
    return {
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "residual_mean_s": float(residuals.mean()) if have else math.nan,
        "residual_std_s": float(residuals.std()) if have else math.nan,
        "residual_mae_s": float(np.abs(residuals).mean()) if have else math.nan,
    }


def score_picks(
    analyst: dict[str, Sequence[np.ndarray]],
    predicted: dict[str, Sequence[np.ndarray]],
    tolerances: Iterable[float] = (0.1, 0.5),
) -> dict:
    """``{phase: {tolerance: scores}}`` for pick times in seconds, per phase and per trace."""
    result: dict = {}
    for phase in PHASES:
        result[phase] = {}
        for tolerance in tolerances:
            tp, fp, fn, residuals = match_picks(analyst[phase], predicted[phase], float(tolerance))
            result[phase][float(tolerance)] = scores(tp, fp, fn, residuals)
    return result


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
    threshold: float = 0.3,
    batch_size: int = 64,
    **classify_args,
) -> dict[str, list[np.ndarray]]:
    """Run ``model.classify`` on whole traces; per phase, per trace: pick times (s) from the trace start.
    ``classify_args`` override the model's annotate defaults (e.g. ``blinding``)."""
    stream = traces_to_stream(waveforms, sampling_rate, component_order)
    output = model.classify(stream, P_threshold=threshold, S_threshold=threshold, batch_size=batch_size, **classify_args)
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
    threshold: float = 0.3,
    tolerances: Iterable[float] = (0.1, 0.5),
    traces_per_call: int = 64,
    batch_size: int = 64,
    threads: int | None = 2,
) -> dict:
    """Protocol 1 on a SeisBench ``WaveformDataset``; returns per-phase scores and the run's bookkeeping."""
    import torch

    if len(dataset) == 0:
        raise EdgepickError("evaluate_picker: the dataset holds no trace")
    if not 0 < threshold < 1:
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


def format_scores(result: dict) -> str:
    """A compact table of F1 / precision / recall / residuals per phase and tolerance."""
    lines = ["phase  tol_s  F1     prec   recall  res_mean  res_std  MAE"]
    for phase, by_tol in result["scores"].items():
        for tolerance, s in by_tol.items():
            lines.append(
                f"{phase:5}  {tolerance:5.2f}  {s['f1']:.3f}  {s['precision']:.3f}  {s['recall']:.3f}   "
                f"{s['residual_mean_s']:+.3f}    {s['residual_std_s']:.3f}   {s['residual_mae_s']:.3f}"
            )
    return "\n".join(lines)


# ===============================================================================================================
# The stage: every model annotates the same traces once; picks, agreement, breakdowns and protocol 2 from the curves
# ===============================================================================================================
class Curves:
    """Per key (trace or station): P and S probability curves on the key's sample grid, NaN where not annotated.

    ``start[i]`` is the sample (at ``rate``) of ``data[i][:, 0]`` counted from the key's reference time (the trace
    start; for continuous data the station's first sample).
    """

    def __init__(self, rate: float, start: list[int] | None = None, data: list[np.ndarray] | None = None,
                 top_tolerance: float | None = None):
        self.rate = float(rate)
        self.top_tolerance = top_tolerance  # the model's pick rule: None, SeisBench's first maximum (teachers)
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

    def picks(self, threshold: float) -> dict[str, list[np.ndarray]]:
        """Per phase, per key: pick times (s from the reference) of SeisBench's trigger at ``threshold``."""
        from pipeline.flash import reference_picks

        out: dict[str, list[np.ndarray]] = {phase: [] for phase in PHASES}
        for start, data in zip(self.start, self.data):
            times: dict[str, list[float]] = {phase: [] for phase in PHASES}
            for a, b in _finite_runs(np.isfinite(data).all(axis=0)):
                if b - a < 3:
                    continue
                for pick in reference_picks(data[:, a:b], threshold, "".join(PHASES), top_tolerance=self.top_tolerance):
                    times[pick["phase"]].append((start + a + pick["sample"]) / self.rate)
            for phase in PHASES:
                out[phase].append(np.asarray(sorted(times[phase]), dtype=float))
        return out


def _finite_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of the runs of True in ``mask`` (SeisBench annotates each gap-free segment on its own)."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def annotation_curves(model, stream: obspy.Stream, keys: Sequence[str], refs: Sequence[obspy.UTCDateTime],
                      batch_size: int = 64) -> Curves:
    """``model.annotate(stream)`` of every member of a :class:`pipeline.benchmark_models.BenchModel`, as Curves
    over ``keys`` ("NET.STA.LOC"); an ensemble mixes its members' (P, S, noise) distributions by weight."""
    from pipeline.teachers import to_distribution

    rate = model.sampling_rate
    per_member = []
    for member in model.members:
        annotations = member.annotate(stream, batch_size=batch_size)
        grouped: dict[str, list] = {}
        for trace in annotations:
            key = f"{trace.stats.network}.{trace.stats.station}.{trace.stats.location}"
            grouped.setdefault(key, []).append(trace)
        per_member.append(grouped)
    curves = Curves(rate, top_tolerance=pick_rule(model))
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


def pick_rule(model) -> float | None:
    """The top tolerance of the model's own picker (the student's ``pick_top_tolerance``: the centre of the peak's
    top, :func:`pipeline.student.peak_index`), or None for SeisBench's first maximum (teachers, ensembles)."""
    tolerance = getattr(model.members[0], "pick_top_tolerance", None) if len(model.members) == 1 else None
    return None if tolerance is None or tolerance < 0 else float(tolerance)


def blinding(model) -> list[int] | None:
    """The samples each member's annotate leaves out at each window's (start, end) (SeisBench's ``blinding``: the
    student's default is its receptive field, SeisBench's PhaseNet has none); None for an ensemble."""
    if len(model.members) != 1:
        return None
    from pipeline.teachers import annotate_blinding

    return list(annotate_blinding(model.members[0]))


def dataset_curves(model, waveforms: Sequence[np.ndarray], rate: float, component_order: str,
                   traces_per_call: int = 64, batch_size: int = 64, progress: bool = True) -> Curves:
    """Curves of every whole trace (station ``T<i>``), annotated ``traces_per_call`` traces per call."""
    from tqdm import tqdm

    curves = Curves(model.sampling_rate, top_tolerance=pick_rule(model))
    starts = range(0, len(waveforms), traces_per_call)
    for start in tqdm(starts, desc=f"{model.label:24}", unit="call", disable=not progress, leave=False):
        chunk = waveforms[start : start + traces_per_call]
        stream = traces_to_stream(chunk, rate, component_order, first=start)
        keys = [f"{_NETWORK}.T{start + i}." for i in range(len(chunk))]
        curves.extend(annotation_curves(model, stream, keys, [_START] * len(chunk), batch_size))
    return curves


# ------------------------------------------------------------------------------------------------- breakdowns
def parse_snr_db(metadata) -> np.ndarray | None:
    """Per trace SNR in dB from ``trace_snr_db``: a number, or STEAD's string of three per-component values
    (``"[56.79 55.9 57.3]"``, averaged over the finite ones); None where the column is absent."""
    import re

    if "trace_snr_db" not in metadata:
        return None
    out = []
    for value in metadata["trace_snr_db"].tolist():
        if isinstance(value, str):
            numbers = [float(v) for v in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", value)]
            numbers = [v for v in numbers if math.isfinite(v)]
            out.append(float(np.mean(numbers)) if numbers else math.nan)
        else:
            try:
                out.append(float(value))
            except (TypeError, ValueError):
                out.append(math.nan)
    return np.asarray(out, dtype=float)


def sp_seconds(metadata) -> np.ndarray:
    """First S minus first P (s) per trace; NaN without both."""
    needed = ("trace_p_arrival_sample", "trace_s_arrival_sample", "trace_sampling_rate_hz")
    if any(c not in metadata for c in needed):
        return np.full(len(metadata), np.nan)
    m = metadata
    return (m[needed[1]].to_numpy(float) - m[needed[0]].to_numpy(float)) / m[needed[2]].to_numpy(float)


def bin_masks(values: np.ndarray | None, edges: Sequence[float], name: str, unit: str) -> dict[str, np.ndarray]:
    """``{subset name: mask}`` for bins cut at ``edges`` (lowest open below, highest open above); NaN in no bin."""
    if values is None or not np.isfinite(values).any():
        return {}
    bounds = [-math.inf, *sorted(float(e) for e in edges), math.inf]
    masks = {}
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        label = (f"{name} < {hi:g} {unit}" if lo == -math.inf else f"{name} >= {lo:g} {unit}" if hi == math.inf
                 else f"{name} {lo:g}-{hi:g} {unit}")
        mask = np.isfinite(values) & (values >= lo) & (values < hi)
        if mask.any():  # an empty bin has no F1 to show
            masks[label] = mask
    return masks


def subset(rows: Sequence, mask: np.ndarray) -> list:
    return [row for row, keep in zip(rows, mask) if keep]


# -------------------------------------------------------------------------------------------------- protocol 2
def roc_auc(labels: np.ndarray, scores_: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties count one half); None with one class only."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=bool)
    scores_ = np.asarray(scores_, dtype=float)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores_)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mcc(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Matthews correlation coefficient of two boolean arrays (0 where undefined)."""
    truth, predicted = np.asarray(truth, bool), np.asarray(predicted, bool)
    tp = float((truth & predicted).sum())
    tn = float((~truth & ~predicted).sum())
    fp = float((~truth & predicted).sum())
    fn = float((truth & ~predicted).sum())
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def best_mcc(truth: np.ndarray, scores_: np.ndarray) -> tuple[float, float]:
    """(best MCC over thresholds "positive = score > t", that t)."""
    scores_ = np.asarray(scores_, dtype=float)
    if scores_.size == 0:
        return 0.0, 0.0
    candidates = np.unique(np.concatenate([[-np.inf], scores_]))
    values = [mcc(truth, scores_ > t) for t in candidates]
    k = int(np.argmax(values))
    return float(values[k]), float(candidates[k])


def protocol2_windows(labels_s: dict[str, Sequence[np.ndarray]], durations_s: Sequence[float],
                      window_s: float = 10.0, seed: int = 0, margin_s: float = 1.0) -> dict:
    """The seeded evaluation windows of protocol 2 (module doc); all times in s from the trace start.

    Returns ``{"detection": [(trace, t0, label)], "phase": [(trace, t0, phase, pick time, alone)]}``.
    """
    rng = np.random.default_rng(seed)
    detection, phase_windows = [], []
    for i, duration in enumerate(durations_s):
        if duration < window_s:
            continue
        picks = sorted((float(t), phase) for phase in PHASES for t in labels_s[phase][i])
        if picks:
            first = picks[0][0]
            lo, hi = max(0.0, first - (window_s - margin_s)), min(duration - window_s, first - margin_s)
            if hi >= lo:
                detection.append((i, float(rng.uniform(lo, hi)), 1))
            if first - margin_s - window_s >= 0:
                detection.append((i, first - margin_s - window_s, 0))
        else:
            detection.append((i, float(rng.uniform(0.0, duration - window_s)), 0))
        for k, (t, phase) in enumerate(picks):
            lo, hi = max(0.0, t - (window_s - margin_s)), min(duration - window_s, t - margin_s)
            if hi < lo:
                continue
            t0 = float(rng.uniform(lo, hi))
            alone = not any(t0 <= u < t0 + window_s for j, (u, _) in enumerate(picks) if j != k)
            phase_windows.append((i, t0, phase, t, alone))
    return {"detection": detection, "phase": phase_windows}


def protocol2_scores(curves: Curves, windows: dict, window_s: float = 10.0) -> dict:
    """Task 1 ROC-AUC, task 2 MCC, task 3 RMSE / MAE of one model's curves on the protocol-2 windows."""
    rate = curves.rate
    length = int(round(window_s * rate))

    def cut(i, t0):
        return curves.window(i, int(round(t0 * rate)), length)

    result: dict = {}
    det = windows["detection"]
    if det:
        det_scores = np.array([np.nan_to_num(np.nanmax(np.nan_to_num(cut(i, t0), nan=0.0)), nan=0.0)
                               for i, t0, _ in det])
        det_labels = np.array([label for _, _, label in det], dtype=bool)
        result["detection"] = {"auc": roc_auc(det_labels, det_scores), "n_windows": len(det),
                               "n_positive": int(det_labels.sum())}
    alone = [w for w in windows["phase"] if w[4]]
    if alone:
        diffs, truth = [], []
        for i, t0, phase, _, _ in alone:
            seg = np.nan_to_num(cut(i, t0), nan=0.0)
            diffs.append(float(seg[0].max() - seg[1].max()))
            truth.append(phase == "P")
        diffs, truth = np.asarray(diffs), np.asarray(truth, dtype=bool)
        best, threshold = best_mcc(truth, diffs)
        result["phase"] = {"mcc": mcc(truth, diffs > 0), "mcc_best": best, "mcc_best_threshold": threshold,
                           "n_windows": len(alone), "n_p": int(truth.sum())}
    for phase in PHASES:
        rows = [w for w in windows["phase"] if w[2] == phase]
        if not rows:
            continue
        residuals = []
        for i, t0, _, t, _ in rows:
            seg = cut(i, t0)[PHASES.index(phase)]
            if not np.isfinite(seg).any():
                residuals.append(math.nan)
                continue
            residuals.append((int(round(t0 * rate)) + int(np.nanargmax(seg))) / rate - t)  # the window's own grid
        residuals = np.asarray(residuals, dtype=float)
        ok = residuals[np.isfinite(residuals)]
        result[f"onset_{phase}"] = {
            "rmse_s": float(np.sqrt(np.mean(ok**2))) if ok.size else None,
            "mae_s": float(np.mean(np.abs(ok))) if ok.size else None,
            "within_0.1_s": float(np.mean(np.abs(ok) <= 0.1)) if ok.size else None,
            "within_0.5_s": float(np.mean(np.abs(ok) <= 0.5)) if ok.size else None,
            "n_windows": int(len(rows)),
        }
    return result


# ------------------------------------------------------------------------------------------------- the records
def pick_records(model, reference: str, truth: dict, predicted: dict, masks: dict[str, np.ndarray],
                 tolerances: Sequence[float], threshold: float, hours: float | None) -> list[dict]:
    """One record per (subset, phase, tolerance): protocol-1 scores of ``predicted`` against ``truth``."""
    records = []
    for name, mask in masks.items():
        for phase in PHASES:
            t, p = subset(truth[phase], mask), subset(predicted[phase], mask)
            n_picks = int(sum(len(r) for r in p))
            for tolerance in tolerances:
                s = scores(*match_picks(t, p, float(tolerance)))
                records.append({
                    "model": model.name, "runtime": model.runtime, "precision": model.precision,
                    "reference": reference, "subset": name, "subset_traces": int(np.sum(mask)), "phase": phase,
                    "tolerance_s": float(tolerance), "threshold": float(threshold),
                    "n_labels": int(sum(len(r) for r in t)), "n_picks": n_picks,
                    "tp": s["tp"], "fp": s["fp"], "fn": s["fn"], "pick_precision": s["precision"],
                    "recall": s["recall"], "f1": s["f1"], "f1_ratio_to_teacher": None,
                    "residual_mean_s": s["residual_mean_s"], "residual_std_s": s["residual_std_s"],
                    "residual_mae_s": s["residual_mae_s"],
                    "picks_per_hour": n_picks / hours if hours and name == "all" else None,
                })
    return records


def add_teacher_ratios(records: list[dict]) -> None:
    """``f1_ratio_to_teacher`` of every non-teacher record scored against the analyst picks."""
    key = ("reference", "subset", "phase", "tolerance_s")
    teacher = {tuple(r[k] for k in key): r["f1"] for r in records if r["model"] == "teacher"}
    for r in records:
        f1 = teacher.get(tuple(r[k] for k in key))
        if r["model"] != "teacher" and r["reference"] == "analyst" and f1:
            r["f1_ratio_to_teacher"] = r["f1"] / f1


def pr_curve(curves: Curves, truth: dict, thresholds: Sequence[float], tolerance: float) -> dict:
    """Per phase: pick precision and recall at each threshold (protocol 1 at ``tolerance``)."""
    out = {phase: {"thresholds": [float(t) for t in thresholds], "pick_precision": [], "recall": []}
           for phase in PHASES}
    for threshold in thresholds:
        predicted = curves.picks(float(threshold))
        for phase in PHASES:
            s = scores(*match_picks(truth[phase], predicted[phase], tolerance))
            out[phase]["pick_precision"].append(s["precision"] if s["tp"] + s["fp"] else None)  # no picks: undefined
            out[phase]["recall"].append(s["recall"])
    return out


# -------------------------------------------------------------------------------------------------- the inputs
def resolve_dataset(config) -> tuple[Path, str]:
    """(folder, split) of ``benchmark.dataset``: "" = data stage test split, "path" = all, "path:split" = one."""
    spec = config.benchmark.dataset.strip()
    if not spec:
        return config.data.out_dir(), "test"
    if Path(spec).exists() or ":" not in spec:
        return Path(spec), ""
    path, _, split = spec.rpartition(":")
    return Path(path), split


def load_labelled(path: Path, split: str, max_traces: int = 0, seed: int = 0):
    """(waveforms, metadata, rate, component order) of a SeisBench-format folder or one of its splits."""
    from pipeline.data import open_dataset

    dataset = open_dataset(path, sampling_rate=None)
    if split:
        if "split" not in dataset.metadata.columns:
            raise EdgepickError(f"dataset {path} has no split column; pass DATASET={path} to use every trace")
        dataset = dataset.get_split(split)
    if len(dataset) == 0:
        raise EdgepickError(f"dataset {path}{':' + split if split else ''} holds no trace")
    if max_traces and len(dataset) > max_traces:
        keep = np.zeros(len(dataset), dtype=bool)
        keep[np.random.default_rng(seed).choice(len(dataset), max_traces, replace=False)] = True
        dataset.filter(keep, inplace=True)
    rates = dataset.metadata["trace_sampling_rate_hz"].to_numpy(dtype=float)
    if len(np.unique(rates)) != 1:
        raise EdgepickError(f"dataset {path} mixes sampling rates {sorted(set(rates))} Hz; re-run the data stage")
    waveforms = [np.asarray(dataset.get_waveforms(i), dtype=np.float32) for i in range(len(dataset))]
    bad = [i for i, w in enumerate(waveforms) if w.ndim != 2 or w.shape[0] != 3]
    if bad:
        raise EdgepickError(f"dataset {path}: trace {bad[0]} has shape {waveforms[bad[0]].shape}, want (3, samples)")
    return waveforms, dataset.metadata.reset_index(drop=True), float(rates[0]), dataset.component_order


def read_continuous(folder: Path, say=print) -> tuple[obspy.Stream, list[str], list, float]:
    """Every readable miniSEED file under ``folder`` merged per channel (Z/1/2 taken as Z/N/E): (stream, station
    keys, their first sample times, station-hours covered by the vertical)."""
    stream, unreadable = obspy.Stream(), 0
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in files:
        try:
            stream += obspy.read(str(path))
        except Exception:  # noqa: BLE001 - obspy raises many kinds for non-seismic files
            unreadable += 1
    if unreadable:
        say(f"benchmark: {unreadable} of {len(files)} files under {folder} are not readable waveforms (skipped)")
    for trace in stream:
        trace.stats.channel = trace.stats.channel[:-1] + {"1": "N", "2": "E"}.get(trace.stats.channel[-1:], trace.stats.channel[-1:])
    stream = obspy.Stream([tr for tr in stream if tr.stats.channel[-1:] in "ZNE" and tr.stats.npts])
    if not len(stream):
        raise EdgepickError(f"{folder} holds neither metadata.csv nor readable Z/N/E miniSEED: nothing to benchmark")
    stream.merge(method=1)
    stream = stream.split()
    keys = sorted({f"{tr.stats.network}.{tr.stats.station}.{tr.stats.location}" for tr in stream})
    refs, hours = [], 0.0
    for key in keys:
        net, sta, loc = key.split(".")
        mine = stream.select(network=net, station=sta, location=loc)
        refs.append(min(tr.stats.starttime for tr in mine))
        hours += sum(tr.stats.npts / tr.stats.sampling_rate for tr in mine if tr.stats.channel.endswith("Z")) / 3600
    return stream, keys, refs, hours


def load_models(config, say=print) -> tuple[list, object]:
    """[teacher, PyTorch student, TFLite variants...] (missing student / variants skipped) and the student model."""
    from pipeline import benchmark_models as bm

    models = [bm.load_teacher(config.teacher.name)]
    student = bm.load_student_model(config.quantize.student, say)
    student_model = student.members[0] if student else None
    if student:
        models.append(student)
    bad = [p for p in config.benchmark.precisions if p not in bm.VARIANT_FILES]
    if bad:
        raise EdgepickError(f"benchmark.precisions: unknown {bad}; use {', '.join(bm.VARIANT_FILES)}")
    variants = bm.tflite_variants(config.quantize.out, student_model, config.benchmark.precisions, say)
    if student_model is not None and variants:
        reference = next((v for v in variants if v.precision == "fp32"), variants[0])
        diff = bm.matches_student(reference, student_model)
        limit = 1e-3 if reference.precision == "fp32" else 0.1
        if diff > limit:
            note = (f"the TFLite files in {config.quantize.out} were not converted from {config.quantize.student} "
                    f"({reference.precision} differs from it by up to {diff:.3f} in probability)")
            say(f"benchmark: WARNING: {note}")
            for v in variants:
                v.notes.append("NOT from the PyTorch student benchmarked here")
    return models + variants, student_model


# ---------------------------------------------------------------------------------------------------- the stage
def run(config) -> dict:
    """``make benchmark``: score every model, write reports/benchmark.{md,json} and the figures."""
    import torch

    from pipeline import benchmark_models as bm
    from pipeline import benchmark_report

    b = config.benchmark
    if not 0 < b.threshold < 1:
        raise EdgepickError(f"benchmark.threshold must lie in (0, 1), got {b.threshold}")
    if not b.tolerances_s or any(not t > 0 for t in b.tolerances_s):
        raise EdgepickError(f"benchmark.tolerances_s must be positive, got {b.tolerances_s}")
    if not b.window_s > 2:
        raise EdgepickError(f"benchmark.window_s must exceed 2 s, got {b.window_s}")
    if b.threads:
        torch.set_num_threads(int(b.threads))
    path, split = resolve_dataset(config)
    if not path.is_dir():
        raise EdgepickError(f"dataset {path} does not exist (run `make data` first?)")
    continuous = not (path / "metadata.csv").exists()
    tolerances = tuple(float(t) for t in b.tolerances_s)
    if continuous:
        stream, keys, refs, hours = read_continuous(path)
        rates = {tr.stats.sampling_rate for tr in stream}
        source = {"path": str(path), "split": None, "kind": "continuous", "traces": len(keys), "hours": hours}
    else:
        waveforms, metadata, rate, order = load_labelled(path, split, b.max_traces, b.seed)
        rates = {rate}
        hours = sum(w.shape[-1] for w in waveforms) / rate / 3600
        source = {"path": str(path), "split": split or None, "kind": "labelled", "traces": len(waveforms),
                  "hours": hours, "sampling_rate": rate}
    models, student = load_models(config)
    bm.check_rates(models, rates)

    curves: dict[str, Curves] = {}
    annotate_seconds = {}
    for model in models:
        started = time.perf_counter()
        if continuous:
            from tqdm import tqdm

            curves[model.label] = Curves(model.sampling_rate, top_tolerance=pick_rule(model))
            for key, ref in tqdm(list(zip(keys, refs)), desc=f"{model.label:24}", unit="station", leave=False):
                net, sta, loc = key.split(".")
                part = stream.select(network=net, station=sta, location=loc)
                curves[model.label].extend(annotation_curves(model, part, [key], [ref], b.batch_size))
        else:
            curves[model.label] = dataset_curves(model, waveforms, rate, order, b.traces_per_call, b.batch_size)
        annotate_seconds[model.label] = round(time.perf_counter() - started, 2)
        print(f"benchmark: {model.label} annotated {source['traces']} {'stations' if continuous else 'traces'} "
              f"in {annotate_seconds[model.label]:.1f} s")
    picks = {label: c.picks(b.threshold) for label, c in curves.items()}
    teacher = models[0]
    all_mask = {"all": np.ones(source["traces"], dtype=bool)}

    records, protocol2, pr_curves, residuals = [], [], [], {}
    if continuous:
        truth = None
        notes = ["continuous miniSEED without picks: agreement with the teacher and picks per hour only "
                 "(no analyst labels, so no precision/recall against analysts and no protocol 2)"]
    else:
        n_samples = [w.shape[-1] for w in waveforms]
        labelled = analyst_picks(metadata, n_samples)
        truth = {phase: [p / rate for p in rows] for phase, rows in labelled.items()}
        source["labels"] = {phase: int(sum(len(r) for r in rows)) for phase, rows in truth.items()}
        notes = []
        if not any(source["labels"].values()):
            truth = None
            notes.append("the dataset holds no P or S labels: agreement with the teacher and picks per hour only")
    source["agreement_only"] = truth is None
    if truth is not None:
        masks = dict(all_mask)
        masks.update(bin_masks(sp_seconds(metadata), b.sp_bins_s, "S-P", "s"))
        masks.update(bin_masks(parse_snr_db(metadata), b.snr_bins_db, "SNR", "dB"))
        windows = protocol2_windows(truth, [n / rate for n in n_samples], b.window_s, b.seed)
        thresholds = np.linspace(0.05, 0.95, max(2, int(b.pr_thresholds)))
        for model in models:
            c = curves[model.label]
            records += pick_records(model, "analyst", truth, picks[model.label], masks, tolerances, b.threshold, hours)
            protocol2.append({"model": model.name, "runtime": model.runtime, "precision": model.precision,
                              **protocol2_scores(c, windows, b.window_s)})
            pr_curves.append({"model": model.name, "runtime": model.runtime, "precision": model.precision,
                              "tolerance_s": max(tolerances), **pr_curve(c, truth, thresholds, max(tolerances))})
            for phase in PHASES:
                residuals[(model.label, phase)] = match_picks(truth[phase], picks[model.label][phase], max(tolerances))[3]
    teacher_picks = picks[teacher.label]
    for model in models[1:]:
        records += pick_records(model, "teacher", teacher_picks, picks[model.label], all_mask, tolerances,
                                b.threshold, hours)
    if truth is None:  # picks per hour of the teacher itself
        records += pick_records(teacher, "teacher", teacher_picks, teacher_picks, all_mask, tolerances,
                                b.threshold, hours)
    add_teacher_ratios(records)

    cost_rows = []
    for model in models:
        cost_rows.append({"model": model.name, "runtime": model.runtime, "precision": model.precision,
                          "spec": model.spec, "notes": model.notes, "annotate_seconds": annotate_seconds[model.label],
                          "pick_top_tolerance": pick_rule(model), "blinding": blinding(model),
                          **bm.costs(model, student, b.latency_repeats)})
    report = {
        "schema": benchmark_report.SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": source,
        "settings": {"threshold": b.threshold, "tolerances_s": list(tolerances), "window_s": b.window_s,
                     "seed": b.seed, "sp_bins_s": list(b.sp_bins_s), "snr_bins_db": list(b.snr_bins_db),
                     "teacher": config.teacher.name, "student": config.quantize.student,
                     "tflite": config.quantize.out},
        "notes": notes,
        "models": cost_rows,
        "records": records,
        "protocol2": protocol2,
        "pr_curves": pr_curves,
    }
    examples = None
    if not continuous:
        examples = benchmark_report.Examples(waveforms, order, rate, truth, curves, b.example_traces, b.seed)
    benchmark_report.write(b.out, report, residuals, examples, models)
    print(benchmark_report.summary(report))
    return report
