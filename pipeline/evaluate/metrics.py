"""Pick metrics of the benchmark: analyst picks, one-to-one matching within a tolerance, F1 and residuals
(protocol 1), the S-P and SNR breakdowns, and the SeisBench pick-benchmark tasks on fixed windows (protocol 2,
after Münchmeyer et al. 2022, "Which picker fits my data?"). Pure functions of picks, labels and curves.

Protocol 1, matching: each analyst pick is matched to the predicted pick of the same phase on the same trace
nearest to it, if that is within the tolerance; a predicted pick matches at most one analyst pick (on traces with
two events, analyst picks are served in order of their distance to the nearest prediction, closest first).
TP = matched analyst picks, FN = unmatched analyst picks, FP = predicted picks matched to no analyst pick (every
pick on a noise trace is a FP). Residuals: predicted minus analyst, seconds, of the matched picks.

Protocol 2, on ``window_s`` (10 s) windows cut, seeded, from the labelled traces (:func:`protocol2_windows`), each
scored on a model's whole-trace curves inside it (full context, no window-edge effects):
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
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

from pipeline.errors import EdgepickError

PHASES = ("P", "S")
# Analyst picks; the second pair is a second event in the same trace (the synthetic source writes them).
ANALYST_COLUMNS = {
    "P": ("trace_p_arrival_sample", "trace_p2_arrival_sample"),
    "S": ("trace_s_arrival_sample", "trace_s2_arrival_sample"),
}


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


def matched_pairs(truth: np.ndarray, guess: np.ndarray, tolerance: float) -> list[tuple[int, int]]:
    """(analyst index, predicted index) of the picks of one trace and phase that :func:`match_picks` matches: the
    analyst picks served closest first, each to its nearest free prediction within ``tolerance`` (seconds)."""
    truth = np.asarray(truth, dtype=float).ravel()
    guess = np.asarray(guess, dtype=float).ravel()
    if truth.size == 0 or guess.size == 0:
        return []
    free = np.ones(guess.size, dtype=bool)
    distance = np.abs(guess[None, :] - truth[:, None])
    pairs = []
    for a in np.argsort(distance.min(axis=1), kind="stable"):
        candidates = np.where(free, distance[a], np.inf)
        g = int(np.argmin(candidates))
        if candidates[g] <= tolerance + 1e-9:
            free[g] = False
            pairs.append((int(a), g))
    return pairs


# Where each predicted pick lies against the trace's analyst picks (the benchmark's "pick classes"): a matched
# pick is "true"; an unmatched one is placed by the analyst P and S of its trace. The keys, in report order.
PICK_CLASSES = {
    "true": "matched to an analyst pick of its phase (protocol 1)",
    "before_p": "before the trace's first analyst pick (pre-event noise)",
    "p_to_s": "between the first analyst P and the last analyst S (P, P coda, a second event's phases)",
    "after_s": "within late_s after the last analyst S (S coda)",
    "late_coda": "more than late_s after the last analyst S (late coda)",
    "no_s_label": "after P on a trace without an analyst S (cannot be judged)",
    "no_label": "on a trace without analyst picks (noise trace)",
}
FALSE_CLASSES = tuple(c for c in PICK_CLASSES if c not in ("true", "no_s_label"))


def pick_classes(truth: dict[str, Sequence[np.ndarray]], predicted: Sequence[np.ndarray], phase: str,
                 tolerance: float, late_s: float = 5.0) -> list[dict[str, int]]:
    """Per trace, how many of one phase's predicted picks fall in each of :data:`PICK_CLASSES` (seconds throughout).

    ``truth`` holds both phases' analyst picks per trace (the place of a false pick needs P and S); ``predicted`` the
    picks of ``phase``. A pick matched to an analyst pick of ``phase`` within ``tolerance`` (the one-to-one matching
    of :func:`match_picks`) is "true"; an unmatched one is placed against the first analyst pick and the last
    analyst S, with ``tolerance`` of slack at each edge (a false S 0.3 s before the analyst S at 0.5 s counts as
    "p_to_s", not "before_p")."""
    if not late_s > 0:
        raise EdgepickError(f"pick_classes: late_s must be positive, got {late_s}")
    if len(predicted) != len(truth[phase]):
        raise EdgepickError(f"pick_classes: {len(truth[phase])} analyst traces but {len(predicted)} predicted traces")
    rows = []
    for i, guess in enumerate(predicted):
        guess = np.asarray(guess, dtype=float).ravel()
        counts = dict.fromkeys(PICK_CLASSES, 0)
        matched = {g for _, g in matched_pairs(truth[phase][i], guess, tolerance)}
        p_picks = np.asarray(truth["P"][i], dtype=float).ravel()
        s_picks = np.asarray(truth["S"][i], dtype=float).ravel()
        first = min(np.concatenate([p_picks, s_picks]), default=None)
        for g, t in enumerate(guess):
            if g in matched:
                kind = "true"
            elif first is None:
                kind = "no_label"
            elif t < first - tolerance:
                kind = "before_p"
            elif s_picks.size == 0:
                kind = "no_s_label"
            elif t <= s_picks.max() + tolerance:
                kind = "p_to_s"
            elif t <= s_picks.max() + late_s:
                kind = "after_s"
            else:
                kind = "late_coda"
            counts[kind] += 1
        rows.append(counts)
    return rows


def pick_class_records(model, truth: dict, predicted: dict, masks: dict[str, np.ndarray], tolerance: float,
                       late_s: float = 5.0) -> list[dict]:
    """One record per (subset, phase): the counts of :func:`pick_classes` summed over the subset's traces."""
    records = []
    for phase in PHASES:
        per_trace = pick_classes(truth, predicted[phase], phase, tolerance, late_s)
        for name, mask in masks.items():
            counts = {c: int(sum(row[c] for row, keep in zip(per_trace, mask) if keep)) for c in PICK_CLASSES}
            records.append({
                "model": model.name, "runtime": model.runtime, "precision": model.precision, "subset": name,
                "subset_traces": int(np.sum(mask)), "phase": phase, "tolerance_s": float(tolerance),
                "late_s": float(late_s), "n_labels": int(sum(len(r) for r in subset(truth[phase], mask))),
                "classes": counts, "false": int(sum(counts[c] for c in FALSE_CLASSES)),
                "false_ratio_to_teacher": None,
            })
    return records


def add_false_ratios(records: list[dict]) -> None:
    """``false_ratio_to_teacher`` of every non-teacher pick-class record: its false picks over the teacher's on the
    same subset and phase (None where the teacher has none)."""
    teacher = {(r["subset"], r["phase"]): r["false"] for r in records if r["model"] == "teacher"}
    for r in records:
        base = teacher.get((r["subset"], r["phase"]))
        if r["model"] != "teacher" and base:
            r["false_ratio_to_teacher"] = r["false"] / base


def pick_latencies(analyst: Sequence[np.ndarray], predicted: Sequence[np.ndarray], reported: Sequence[np.ndarray],
                   tolerance: float) -> np.ndarray:
    """Seconds from each analyst onset to the report of the predicted pick matched to it (``reported[i][g]``: when
    pick ``predicted[i][g]`` came out, seconds on the same clock), over the picks matched within ``tolerance``."""
    out = []
    for truth, guess, when in zip(analyst, predicted, reported):
        out += [float(when[g] - truth[a]) for a, g in matched_pairs(truth, guess, tolerance)]
    return np.asarray(out, dtype=float)


def latency_summary(latencies: np.ndarray) -> dict:
    """Median and 95th percentile (s) of pick latencies and their count (None without any)."""
    latencies = np.asarray(latencies, dtype=float)
    if latencies.size == 0:
        return {"n": 0, "median_s": None, "p95_s": None}
    return {"n": int(latencies.size), "median_s": float(np.median(latencies)),
            "p95_s": float(np.percentile(latencies, 95))}


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


def parse_snr_db(metadata) -> np.ndarray | None:
    """Per trace SNR in dB from ``trace_snr_db``: a number, or STEAD's string of three per-component values
    (``"[56.79 55.9 57.3]"``, averaged over the finite ones); None where the column is absent."""
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


def component_masks(metadata) -> dict[str, np.ndarray]:
    """``{"3 components": mask, "missing components": mask}`` from the data stage's ``trace_dead_channels`` (a
    vertical-only station's trace has N and E flat); none where every trace has all three, or no trace has."""
    if "trace_dead_channels" not in metadata:
        return {}
    full = metadata["trace_dead_channels"].fillna("").astype(str).to_numpy() == ""
    return {"3 components": full, "missing components": ~full} if full.any() and not full.all() else {}


def subset(rows: Sequence, mask: np.ndarray) -> list:
    return [row for row, keep in zip(rows, mask) if keep]


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


def protocol2_scores(curves, windows: dict, window_s: float = 10.0) -> dict:
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


def pick_records(model, reference: str, truth: dict, predicted: dict, masks: dict[str, np.ndarray],
                 tolerances: Sequence[float], thresholds: dict[str, float], hours: float | None) -> list[dict]:
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
                    "tolerance_s": float(tolerance), "threshold": float(thresholds[phase]),
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


def pr_curve(curves, truth: dict, thresholds: Sequence[float], tolerance: float) -> dict:
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
