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
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

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


def predict_picks(
    model,
    waveforms: Sequence[np.ndarray],
    sampling_rate: float,
    component_order: str,
    threshold: float = 0.3,
    batch_size: int = 64,
) -> dict[str, list[np.ndarray]]:
    """Run ``model.classify`` on whole traces; per phase, per trace: pick times (s) from the trace start."""
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
                        "station": f"T{i}",
                        "location": "",
                        "channel": f"HH{component}",
                        "sampling_rate": float(sampling_rate),
                        "starttime": _START,
                    },
                )
            )
    output = model.classify(stream, P_threshold=threshold, S_threshold=threshold, batch_size=batch_size)
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
