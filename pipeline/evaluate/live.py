"""The live pass: the firmware's live mode on every labelled trace (docs/firmware.md, "Live mode"), the ``live``
section of ``make benchmark``'s report (docs/benchmark.md).

Each trace is annotated after a warm-up by the model's own SeisBench annotate with the live window offsets and
blinding; the live picks, when each is reported and when a retraction line withdraws it come from
:mod:`pipeline.model.picking`, and are scored against the analyst picks beside the exact replay's."""

from __future__ import annotations

import copy
import time
from typing import NamedTuple

import numpy as np

from pipeline.deploy import boards
from pipeline.model import runners, streaming
from pipeline.model.annotation import dataset_curves, model_rule
from pipeline.errors import EdgepickError
from pipeline.evaluate.metrics import PHASES, latency_summary, pick_latencies, score_picks
from pipeline.model.picking import LiveRule, add_reported_samples, live_blinding, live_offsets, mark_retractions
from pipeline.model.student import RECEPTIVE_RADIUS

# The live pass's warm-up: each trace starts after this much of its own beginning, mirrored back and forth (the
# first second of an event trace is pre-event noise; mirrored, it has no step at the joins).
WARMUP_NOISE_S = 1.0


def live_pass(config, models, traces, rate, order, truth, picks, tolerances) -> dict | None:
    """Live and exact F1 and the latency of live picks of the PyTorch student (and the TFLite variants with
    ``live.benchmark_tflite``): the report's ``live`` section (docs/benchmark.md); None without such a model."""
    lv, b = config.live, config.benchmark
    chosen = [m for m in models if m.name == "student" and (m.runtime == "pytorch" or lv.benchmark_tflite)]
    if not chosen:
        return None
    latency_tolerance = max(tolerances)
    student = chosen[0].members[0]
    rule = streaming.live_rule(student) if getattr(student, "causal", False) else lv.rule(student.in_samples)
    rows, seconds = [], {}
    for model in chosen:
        started = time.perf_counter()
        live = live_pick_times(model, traces, rate, order, rule, lv.benchmark_warmup, b.threshold, b.traces_per_call,
                               b.batch_size, live_skip_samples(model, lv.benchmark_warmup))
        seconds[model.label] = round(time.perf_counter() - started, 2)
        print(f"benchmark: {model.label} annotated {len(traces)} traces live in {seconds[model.label]:.1f} s")
        rows += live_rows(model, truth, live, picks[model.label], tolerances, latency_tolerance)
    blinding = {phase: list(rule.blinding(lookahead)) for phase, lookahead in rule.lookaheads.items()}
    return {**rule.to_dict(), "blinding": blinding, "warmup_samples": live_warmup(rule, lv.benchmark_warmup),
            "skipped_start_samples": live_skip_samples(chosen[0], lv.benchmark_warmup),
            "latency_tolerance_s": latency_tolerance, "annotate_seconds": seconds, "rows": rows}


def live_warmup(rule: LiveRule, warmup: bool = True) -> int:
    """The warm-up samples put before each trace: window - hop - the smallest look-ahead, so that every phase's
    curve covers the trace from its first sample (0 without warm-up)."""
    return max(rule.blinding(v)[0] for v in rule.lookaheads.values()) if warmup else 0


def live_skip_samples(model, warmup: bool = True) -> int:
    """The live picks dropped at each trace's start (with the warm-up): the samples the exact replay blinds there,
    the join of warm-up and trace, which is no station's stream. A causal student's stream blinds nothing, yet the
    join is the same: its live picks are scored from where a whole-window student's are (RECEPTIVE_RADIUS), so that
    both live modes are scored on the same span (stead50's tapered trace starts made false S there)."""
    if not warmup:
        return 0
    if getattr(model.members[0], "causal", False):
        return RECEPTIVE_RADIUS
    blinding = model_rule(model).blinding
    return int(blinding[0]) if blinding else 0


class LivePicks(NamedTuple):
    """Per phase, per trace (arrays, seconds from the trace's first sample): the live picks, when each is reported
    and when its retraction line is (NaN: kept; all NaN without a confirming look-ahead)."""

    times: dict
    reported: dict
    retracted: dict

    def kept(self) -> dict:
        """The picks no retraction line withdraws: what a network holds once the stream has passed them."""
        return {phase: [t[np.isnan(r)] for t, r in zip(self.times[phase], self.retracted[phase])] for phase in PHASES}


def live_pick_times(model, traces, rate, order, live_rule: LiveRule, warmup=True, threshold=None, traces_per_call=64,
                    batch_size=64, skip_samples: int = 0, annotated: dict | None = None) -> LivePicks:
    """The picks the firmware's live mode (``live_rule``) makes on each trace, when each is reported and, with a
    confirming look-ahead, when each retracted one is withdrawn (pipeline.model.picking.live_stream_picks, computed by
    the model's own SeisBench annotate, once per distinct look-ahead). Each trace is annotated after its warm-up
    (:func:`warmup_padded`, :func:`live_warmup`, picks on it and in the trace's first ``skip_samples`` dropped)
    and cut after its last live window, so that SeisBench adds no last window ending at the trace's end.
    ``annotated``: a dict shared by calls on the same model and traces, so that a stream already annotated (same
    hop, warm-up, look-ahead and threshold) is not annotated again (the live look-ahead of one call is often the
    confirming one of another, or the same with another confirmation)."""
    n, hop, lookaheads, confirms = live_rule.in_samples, live_rule.hop, live_rule.lookaheads, live_rule.confirms
    if model.members[0].in_samples != n:
        raise EdgepickError(f"live pass: the live rule is for {n}-sample windows, {model.label}'s are "
                            f"{model.members[0].in_samples}")
    pad = live_warmup(live_rule, warmup)
    padded = [warmup_padded(w, pad, rate) for w in traces]
    kept = [i for i, w in enumerate(padded) if w.shape[1] >= n]  # a shorter one has no window: no live picks
    spans = [live_windows_span(padded[i], n, hop) for i in kept]
    annotated = {} if annotated is None else annotated

    def picks_at(value: int) -> list[list[dict]]:
        """Each kept trace's picks (every phase) on the curves stacked at look-ahead ``value``, on its padded grid."""
        key = (hop, pad, value, threshold)
        if key not in annotated:
            curves = dataset_curves(live_model(model, live_rule, value), spans, rate, order, traces_per_call, batch_size)
            rule = curves.rule.with_threshold(threshold)
            annotated[key] = [
                [] if curves.data[k].shape[1] < 3  # nothing annotated (as Curves.picks, no run shorter than 3 samples)
                else [dict(p, sample=p["sample"] + start, on=p["on"] + start, off=p["off"] + start)
                      for p in rule.picks(curves.data[k], "".join(PHASES))]
                for k, start in enumerate(curves.start)]
        return annotated[key]

    out = LivePicks(*({phase: [np.zeros(0)] * len(traces) for phase in PHASES} for _ in range(3)))
    for k, i in enumerate(kept):
        length = padded[i].shape[1]
        live = add_reported_samples(
            [p for phase in PHASES for p in picks_at(lookaheads[phase])[k] if p["phase"] == phase], length, live_rule)
        confirming = [p for phase in PHASES if confirms[phase]
                      for p in picks_at(confirms[phase])[k] if p["phase"] == phase]
        live = mark_retractions(live, confirming, length, live_rule)
        for phase in PHASES:
            mine = sorted((p for p in live if p["phase"] == phase and p["sample"] >= pad + skip_samples),
                          key=lambda p: p["sample"])
            out.times[phase][i] = np.asarray([(p["sample"] - pad) / rate for p in mine], dtype=float)
            out.reported[phase][i] = np.asarray([(p["reported"] - pad) / rate for p in mine], dtype=float)
            out.retracted[phase][i] = np.asarray([np.nan if p["retracted"] is None else (p["retracted"] - pad) / rate
                                                  for p in mine], dtype=float)
    return out


def live_model(model, rule: LiveRule, lookahead: int):
    """A benchmark model whose members annotate as the live firmware: a window every ``rule.hop``, the live
    blinding at ``lookahead`` (copies sharing the weights; their ``default_args`` are what SeisBench's annotate
    starts from)."""
    hop = rule.hop
    members = []
    for member in model.members:
        live = copy.copy(member)
        live.default_args = dict(member.default_args, overlap=int(member.in_samples - hop),
                                 blinding=live_blinding(member.in_samples, hop, lookahead))
        members.append(live)
    return runners.BenchModel(model.name, model.runtime, model.precision, members, list(model.weights), model.spec,
                              model.flatbuffer, model.device_bytes, list(model.notes))


def warmup_padded(waveform: np.ndarray, samples: int, rate: float) -> np.ndarray:
    """``waveform`` (components, n) after ``samples`` samples of its own first second mirrored back and forth: a
    station that had been streaming before the trace (continuous at the join)."""
    return streaming.warmup(waveform, samples, rate, WARMUP_NOISE_S)


def live_windows_span(waveform: np.ndarray, in_samples: int, hop: int) -> np.ndarray:
    """``waveform`` up to the end of its last live window (the live firmware uses no sample after it)."""
    offsets = live_offsets(waveform.shape[1], in_samples, hop)
    return waveform[:, : int(offsets[-1]) + in_samples] if len(offsets) else waveform[:, :0]


def live_rows(model, truth, live: LivePicks, exact_times, tolerances, latency_tolerance) -> list[dict]:
    """Per phase: F1 at each tolerance live (as first reported), live after the retractions (what stays) and exact;
    the latency (reported time - analyst onset) of the live picks matched within ``latency_tolerance``: median, 95th
    percentile, count; and how many picks were retracted, with the median delay of a retraction line after its
    pick's sample."""
    kept = live.kept()
    live_scores, exact_scores = score_picks(truth, live.times, tolerances), score_picks(truth, exact_times, tolerances)
    kept_scores = score_picks(truth, kept, tolerances)
    rows = []
    for phase in PHASES:
        latency = latency_summary(pick_latencies(truth[phase], live.times[phase], live.reported[phase],
                                                 latency_tolerance))
        delays = np.concatenate([r - t for t, r in zip(live.times[phase], live.retracted[phase])] or [np.zeros(0)])
        delays = delays[~np.isnan(delays)]
        rows.append({"model": model.name, "runtime": model.runtime, "precision": model.precision, "phase": phase,
                     "n_labels": int(sum(len(t) for t in truth[phase])),
                     "n_picks_live": int(sum(len(t) for t in live.times[phase])),
                     "n_retracted": int(len(delays)),
                     "retract_delay_median_s": float(np.median(delays)) if len(delays) else None,
                     "f1_live": {f"{t:g}": live_scores[phase][t]["f1"] for t in tolerances},
                     "f1_kept": {f"{t:g}": kept_scores[phase][t]["f1"] for t in tolerances},
                     "f1_exact": {f"{t:g}": exact_scores[phase][t]["f1"] for t in tolerances},
                     "latency_median_s": latency["median_s"], "latency_p95_s": latency["p95_s"],
                     "latency_n": latency["n"]})
    return rows


def live_compute(cost_rows: list[dict], rate: float, hop: int, exact_hop: int | None = None) -> list[dict]:
    """Per TFLite model and board with a per-window estimate (pipeline.deploy.boards.estimate_latency, the models table's
    ``*_latency_ms_est``): what the live mode costs per second of data: windows (rate / hop), the real-time factor
    (windows/s x per-window time; the exact replay's at ``exact_hop`` beside it) and the instructions (cycles at the
    estimate's cycles per MAC: for INT8 on ESP32 / ESP32-C3 the emulator's instructions, one cycle each)."""
    rows = []
    for row in cost_rows:
        if row["runtime"] != "tflm" or not row.get("macs_per_window"):
            continue
        for chip, est in boards.estimate_latency(row["macs_per_window"], row["precision"], hop / rate).items():
            rows.append({"model": row["model"], "runtime": row["runtime"], "precision": row["precision"], "board": chip,
                         "ms_per_window_est": est["ms"], "windows_per_s": rate / hop,
                         "real_time_factor_est": est["ms"] / 1e3 * rate / hop,
                         "real_time_factor_exact_est": est["ms"] / 1e3 * rate / exact_hop if exact_hop else None,
                         "instructions_per_s_est": row["macs_per_window"] * est["cycles_per_mac"] * rate / hop,
                         "source": est["source"]})
    return rows
