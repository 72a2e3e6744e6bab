"""``make benchmark``: the teacher(s), the PyTorch student and its TFLite Micro FP32 / FP16 / INT8 builds scored on
the same traces, against the analyst picks and against the teacher's; ``reports/`` (:mod:`pipeline.report`).

Every model annotates every trace once, whole, as a station stream, with its own SeisBench ``annotate``
(:mod:`pipeline.annotation`; the TFLite builds run in the TFLite Micro interpreter inside the student's own
annotate, :mod:`pipeline.runners`); picks come from those curves with each model's own pick rule; protocol 1
(F1 at each tolerance), the S-P and SNR breakdowns, the agreement with the teacher, the precision-recall curves
and protocol 2 follow (:mod:`pipeline.metrics`). A folder of continuous miniSEED (no metadata.csv) has no labels:
agreement with the teacher and picks per hour only. The protocols are written out in docs/benchmark.md.
"""

from __future__ import annotations

import collections
import copy
import re
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import obspy
import torch
from tqdm import tqdm

from pipeline import boards, runners, waveforms
from pipeline import report as benchmark_report
from pipeline.annotation import Curves, annotation_curves, dataset_curves, model_rule
from pipeline.artifacts import save_config
from pipeline.datasets import hz, open_dataset
from pipeline.errors import EdgepickError
from pipeline.metrics import (PHASES, add_false_ratios, add_teacher_ratios, analyst_picks, bin_masks,
                              component_masks, latency_summary, match_picks, parse_snr_db, pick_class_records, pick_latencies,
                              pick_records, pr_curve, protocol2_scores, protocol2_windows, score_picks, sp_seconds)
from pipeline.picking import (add_reported_samples, confirm_lookaheads, live_blinding, live_offsets,
                              mark_retractions, phase_lookaheads)
from pipeline.student import hop_samples

# The live pass's warm-up: each trace starts after this much of its own beginning, mirrored back and forth (the
# first second of an event trace is pre-event noise; mirrored, it has no step at the joins).
WARMUP_NOISE_S = 1.0


def resolve_dataset(config, spec: str | None = None) -> tuple[Path, str]:
    """(folder, split) of ``spec`` (default ``benchmark.dataset``): "" = data stage test split, "path" = all,
    "path:split" = one."""
    spec = (config.benchmark.dataset if spec is None else spec).strip()
    if not spec:
        return config.data.out_dir(), "test"
    if Path(spec).exists() or ":" not in spec:
        return Path(spec), ""
    path, _, split = spec.rpartition(":")
    return Path(path), split


def load_labelled(path: Path, split: str, max_traces: int = 0, seed: int = 0):
    """(waveforms, metadata, rate, component order) of a SeisBench-format folder or one of its splits."""
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
        raise EdgepickError(f"dataset {path} mixes sampling rates {hz(rates)} Hz; re-run the data stage")
    traces = [np.asarray(dataset.get_waveforms(i), dtype=np.float32) for i in range(len(dataset))]
    bad = [i for i, w in enumerate(traces) if w.ndim != 2 or w.shape[0] != 3]
    if bad:
        raise EdgepickError(f"dataset {path}: trace {bad[0]} has shape {traces[bad[0]].shape}, want (3, samples)")
    return traces, dataset.metadata.reset_index(drop=True), float(rates[0]), dataset.component_order


def read_continuous(folder: Path, say=print) -> tuple[obspy.Stream, list[str], list, float]:
    """Every readable miniSEED file under ``folder`` merged per channel (Z/1/2 taken as Z/N/E): (stream, station
    keys, their first sample times, station-hours covered by the vertical)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    unreadable: dict[str, str] = {}
    stream = waveforms.read_files(files, unreadable)
    if unreadable:
        say(f"benchmark: {len(unreadable)} of {len(files)} files under {folder} are not readable waveforms (skipped)")
    for trace in stream:
        trace.stats.channel = trace.stats.channel[:-1] + {"1": "N", "2": "E"}.get(trace.stats.channel[-1:], trace.stats.channel[-1:])
    stream = obspy.Stream([tr for tr in stream if tr.stats.channel[-1:] in "ZNE"])
    if not len(stream):
        raise EdgepickError(f"{folder} holds neither metadata.csv nor readable Z/N/E miniSEED: nothing to benchmark")
    counts = collections.Counter()  # gaps split the channel, overlaps are merged
    stream = obspy.Stream([piece for trace_id in sorted({tr.id for tr in stream})
                           for piece in waveforms.merge_channel(stream.select(id=trace_id), counts)])
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
    models = [runners.load_teacher(config.teacher.name)]
    student = runners.load_student_model(config.quantize.student, say)
    student_model = student.members[0] if student else None
    if student:
        models.append(student)
    bad = [p for p in config.benchmark.precisions if p not in runners.VARIANT_FILES]
    if bad:
        raise EdgepickError(f"benchmark.precisions: unknown {bad}; use {', '.join(runners.VARIANT_FILES)}")
    variants = runners.tflite_variants(config.quantize.out, student_model, config.benchmark.precisions, say)
    if student_model is not None and variants:
        reference = next((v for v in variants if v.precision == "fp32"), variants[0])
        diff = runners.matches_student(reference, student_model)
        limit = 1e-3 if reference.precision == "fp32" else 0.1
        if diff > limit:
            note = (f"the TFLite files in {config.quantize.out} were not converted from {config.quantize.student} "
                    f"({reference.precision} differs from it by up to {diff:.3f} in probability)")
            say(f"benchmark: WARNING: {note}")
            for v in variants:
                v.notes.append("NOT from the PyTorch student benchmarked here")
    return models + variants, student_model


def run(config) -> dict:
    b = config.benchmark
    if b.threshold is not None and not 0 < b.threshold < 1:
        raise EdgepickError(f"benchmark.threshold must lie in (0, 1), got {b.threshold}")
    if not b.tolerances_s or any(not t > 0 for t in b.tolerances_s):
        raise EdgepickError(f"benchmark.tolerances_s must be positive, got {b.tolerances_s}")
    if not b.window_s > 2:
        raise EdgepickError(f"benchmark.window_s must exceed 2 s, got {b.window_s}")
    if not b.late_coda_s > 0:
        raise EdgepickError(f"benchmark.late_coda_s must be positive, got {b.late_coda_s}")
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
        traces, metadata, rate, order = load_labelled(path, split, b.max_traces, b.seed)
        rates = {rate}
        hours = sum(w.shape[-1] for w in traces) / rate / 3600
        source = {"path": str(path), "split": split or None, "kind": "labelled", "traces": len(traces),
                  "hours": hours, "sampling_rate": rate}
    models, student = load_models(config)
    runners.check_rates(models, rates)
    if config.live.benchmark and student is not None:  # a live hop that does not fit: refused before any annotate
        config.live.check(student.in_samples)

    curves: dict[str, Curves] = {}
    annotate_seconds = {}
    for model in models:
        started = time.perf_counter()
        if continuous:
            curves[model.label] = Curves(model.sampling_rate, model_rule(model))
            for key, ref in tqdm(list(zip(keys, refs)), desc=f"{model.label:24}", unit="station", leave=False):
                net, sta, loc = key.split(".")
                part = stream.select(network=net, station=sta, location=loc)
                curves[model.label].extend(annotation_curves(model, part, [key], [ref], b.batch_size))
        else:
            curves[model.label] = dataset_curves(model, traces, rate, order, b.traces_per_call, b.batch_size)
        annotate_seconds[model.label] = round(time.perf_counter() - started, 2)
        print(f"benchmark: {model.label} annotated {source['traces']} {'stations' if continuous else 'traces'} "
              f"in {annotate_seconds[model.label]:.1f} s")
    rules = {label: c.rule.with_threshold(b.threshold) for label, c in curves.items()}  # each model's own, or b's
    picks = {label: c.picks(b.threshold) for label, c in curves.items()}
    teacher = models[0]
    all_mask = {"all": np.ones(source["traces"], dtype=bool)}

    records, protocol2, pr_curves, residuals, classes = [], [], [], {}, []
    if continuous:
        truth = None
        notes = ["continuous miniSEED without picks: agreement with the teacher and picks per hour only "
                 "(no analyst labels, so no precision/recall against analysts and no protocol 2)"]
    else:
        n_samples = [w.shape[-1] for w in traces]
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
        class_masks = {**bin_masks(sp_seconds(metadata), b.sp_bins_s, "S-P", "s"), **component_masks(metadata)}
        masks.update(class_masks)
        masks.update(bin_masks(parse_snr_db(metadata), b.snr_bins_db, "SNR", "dB"))
        windows = protocol2_windows(truth, [n / rate for n in n_samples], b.window_s, b.seed)
        thresholds = np.linspace(0.05, 0.95, max(2, int(b.pr_thresholds)))
        for model in models:
            c = curves[model.label]
            records += pick_records(model, "analyst", truth, picks[model.label], masks, tolerances,
                                    _thresholds(rules[model.label]), hours)
            protocol2.append({"model": model.name, "runtime": model.runtime, "precision": model.precision,
                              **protocol2_scores(c, windows, b.window_s)})
            pr_curves.append({"model": model.name, "runtime": model.runtime, "precision": model.precision,
                              "tolerance_s": max(tolerances), "operating_threshold": _thresholds(rules[model.label]),
                              **pr_curve(c, truth, thresholds, max(tolerances))})
            for phase in PHASES:
                residuals[(model.label, phase)] = match_picks(truth[phase], picks[model.label][phase], max(tolerances))[3]
            classes += pick_class_records(model, truth, picks[model.label], {**all_mask, **class_masks},
                                          max(tolerances), b.late_coda_s)
        add_false_ratios(classes)
    teacher_picks = picks[teacher.label]
    for model in models[1:]:
        records += pick_records(model, "teacher", teacher_picks, picks[model.label], all_mask, tolerances,
                                _thresholds(rules[model.label]), hours)
    if truth is None:  # picks per hour of the teacher itself
        records += pick_records(teacher, "teacher", teacher_picks, teacher_picks, all_mask, tolerances,
                                _thresholds(rules[teacher.label]), hours)
    add_teacher_ratios(records)
    live = None
    if config.live.benchmark and truth is not None:
        live = live_pass(config, models, traces, rate, order, truth, picks, tolerances)

    cost_rows = []
    for model in models:
        cost_rows.append({"model": model.name, "runtime": model.runtime, "precision": model.precision,
                          "spec": model.spec, "notes": model.notes, "annotate_seconds": annotate_seconds[model.label],
                          **_rule_fields(rules[model.label]),
                          **runners.costs(model, student, b.latency_repeats)})
    report = {
        "schema": benchmark_report.SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": source,
        "settings": {"threshold": b.threshold, "tolerances_s": list(tolerances), "window_s": b.window_s,
                     "seed": b.seed, "sp_bins_s": list(b.sp_bins_s), "snr_bins_db": list(b.snr_bins_db),
                     "late_coda_s": b.late_coda_s,
                     "teacher": config.teacher.name, "student": config.quantize.student,
                     "tflite": config.quantize.out},
        "notes": notes,
        "models": cost_rows,
        "records": records,
        "protocol2": protocol2,
        "pr_curves": pr_curves,
        "pick_classes": classes,
    }
    if live is not None:
        live["compute"] = live_compute(cost_rows, rate, live["hop_samples"],
                                       hop_samples(student) if student is not None else None)
        report["live"] = live
    examples = None
    if not continuous:
        examples = benchmark_report.Examples(traces, order, rate, truth, curves, b.example_traces, b.seed)
    folder = report_folder(config, path, split)
    if (folder / "benchmark.json").exists():
        print(f"benchmark: replacing the earlier report of the same dataset and student in {folder}")
    benchmark_report.write(folder, report, residuals, examples, models)
    save_config(folder, config)
    print(benchmark_report.summary(report))
    print(f"report: {folder / 'benchmark.md'} (and benchmark.json, the figures)")
    report["folder"] = str(folder)
    return report


# ---------------------------------------------------------------------------------------------------------------
# The live pass: the firmware's live mode on every labelled trace (docs/firmware.md, "Live mode")
# ---------------------------------------------------------------------------------------------------------------
def live_pass(config, models, traces, rate, order, truth, picks, tolerances) -> dict | None:
    """Live and exact F1 and the latency of live picks of the PyTorch student (and the TFLite variants with
    ``live.benchmark_tflite``): the report's ``live`` section (docs/benchmark.md); None without such a model."""
    lv, b = config.live, config.benchmark
    chosen = [m for m in models if m.name == "student" and (m.runtime == "pytorch" or lv.benchmark_tflite)]
    if not chosen:
        return None
    latency_tolerance = max(tolerances)
    rows, seconds = [], {}
    for model in chosen:
        started = time.perf_counter()
        live = live_pick_times(model, traces, rate, order, lv.hop_samples, lv.lookaheads(), lv.benchmark_warmup,
                               b.threshold, b.traces_per_call, b.batch_size,
                               live_skip_samples(model, lv.benchmark_warmup), lv.confirms(),
                               lv.confirm_within_samples)
        seconds[model.label] = round(time.perf_counter() - started, 2)
        print(f"benchmark: {model.label} annotated {len(traces)} traces live in {seconds[model.label]:.1f} s")
        rows += live_rows(model, truth, live, picks[model.label], tolerances, latency_tolerance)
    n = chosen[0].members[0].in_samples
    blinding = {phase: list(live_blinding(n, lv.hop_samples, lookahead)) for phase, lookahead in lv.lookaheads().items()}
    return {"hop_samples": int(lv.hop_samples), "lookahead_samples": {k: int(v) for k, v in lv.lookaheads().items()},
            "confirm_samples": {k: int(v) for k, v in lv.confirms().items()},
            "confirm_within_samples": int(lv.confirm_within_samples), "blinding": blinding,
            "warmup_samples": live_warmup(n, lv.hop_samples, lv.lookaheads(), lv.benchmark_warmup),
            "skipped_start_samples": live_skip_samples(chosen[0], lv.benchmark_warmup),
            "latency_tolerance_s": latency_tolerance, "annotate_seconds": seconds, "rows": rows}


def live_warmup(in_samples: int, hop: int, lookahead, warmup: bool = True) -> int:
    """The warm-up samples put before each trace: window - hop - the smallest look-ahead, so that every phase's
    curve covers the trace from its first sample (0 without warm-up)."""
    return max(live_blinding(in_samples, hop, v)[0] for v in phase_lookaheads(lookahead).values()) if warmup else 0


def live_skip_samples(model, warmup: bool = True) -> int:
    """The live picks dropped at each trace's start (with the warm-up): the samples the exact replay blinds there."""
    blinding = model_rule(model).blinding
    return int(blinding[0]) if warmup and blinding else 0


class LivePicks(NamedTuple):
    """Per phase, per trace (arrays, seconds from the trace's first sample): the live picks, when each is reported
    and when its retraction line is (NaN: kept; all NaN without a confirming look-ahead)."""

    times: dict
    reported: dict
    retracted: dict

    def kept(self) -> dict:
        """The picks no retraction line withdraws: what a network holds once the stream has passed them."""
        return {phase: [t[np.isnan(r)] for t, r in zip(self.times[phase], self.retracted[phase])] for phase in PHASES}


def live_pick_times(model, traces, rate, order, hop, lookahead, warmup=True, threshold=None, traces_per_call=64,
                    batch_size=64, skip_samples: int = 0, confirm=0, confirm_within: int = 50,
                    annotated: dict | None = None) -> LivePicks:
    """The picks the firmware's live mode makes on each trace, when each is reported and, with ``confirm`` (the
    confirming look-ahead, one for every phase or one per phase, 0: none), when each retracted one is withdrawn
    (pipeline.picking.live_stream_picks, computed by the model's own SeisBench annotate, once per distinct
    look-ahead: ``lookahead`` is one for every phase or one per phase). Each trace is annotated after its warm-up
    (:func:`warmup_padded`, :func:`live_warmup`, picks on it and in the trace's first ``skip_samples`` dropped)
    and cut after its last live window, so that SeisBench adds no last window ending at the trace's end.
    ``annotated``: a dict shared by calls on the same model and traces, so that a stream already annotated (same
    hop, warm-up, look-ahead and threshold) is not annotated again (the live look-ahead of one call is often the
    confirming one of another, or the same with another confirmation)."""
    n = model.members[0].in_samples
    lookaheads = phase_lookaheads(lookahead)
    confirms = confirm_lookaheads(confirm, lookaheads, n, hop)
    pad = live_warmup(n, hop, lookaheads, warmup)
    padded = [warmup_padded(w, pad, rate) for w in traces]
    kept = [i for i, w in enumerate(padded) if w.shape[1] >= n]  # a shorter one has no window: no live picks
    spans = [live_windows_span(padded[i], n, hop) for i in kept]
    annotated = {} if annotated is None else annotated

    def picks_at(value: int) -> list[list[dict]]:
        """Each kept trace's picks (every phase) on the curves stacked at look-ahead ``value``, on its padded grid."""
        key = (hop, pad, value, threshold)
        if key not in annotated:
            curves = dataset_curves(live_model(model, hop, value), spans, rate, order, traces_per_call, batch_size)
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
            [p for phase in PHASES for p in picks_at(lookaheads[phase])[k] if p["phase"] == phase],
            length, n, hop, lookaheads)
        confirming = [p for phase in PHASES if confirms[phase]
                      for p in picks_at(confirms[phase])[k] if p["phase"] == phase]
        live = mark_retractions(live, confirming, length, n, hop, confirms, confirm_within)
        for phase in PHASES:
            mine = sorted((p for p in live if p["phase"] == phase and p["sample"] >= pad + skip_samples),
                          key=lambda p: p["sample"])
            out.times[phase][i] = np.asarray([(p["sample"] - pad) / rate for p in mine], dtype=float)
            out.reported[phase][i] = np.asarray([(p["reported"] - pad) / rate for p in mine], dtype=float)
            out.retracted[phase][i] = np.asarray([np.nan if p["retracted"] is None else (p["retracted"] - pad) / rate
                                                  for p in mine], dtype=float)
    return out


def live_model(model, hop: int, lookahead: int):
    """A benchmark model whose members annotate as the live firmware: a window every ``hop``, the live blinding
    (copies sharing the weights; their ``default_args`` are what SeisBench's annotate starts from)."""
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
    if samples <= 0:
        return waveform
    head = waveform[:, : max(1, int(round(WARMUP_NOISE_S * rate)))]
    before = np.pad(head, ((0, 0), (samples, 0)), mode="symmetric")[:, :samples]
    return np.concatenate([before, waveform], axis=1)


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
    """Per TFLite model and board with a per-window estimate (pipeline.boards.estimate_latency, the models table's
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


def report_folder(config, dataset: Path, split: str) -> Path:
    """``benchmark.out / benchmark.name``, the name by default made of the dataset, its split and the student."""
    b = config.benchmark
    if b.name:
        return Path(b.out) / b.name
    data = dataset.resolve().name + (f"_{split}" if split else "")
    student = Path(config.quantize.student).name or "student"
    return Path(b.out) / re.sub(r"[^A-Za-z0-9_.-]", "_", f"{data}__{student}")


def _thresholds(rule) -> dict[str, float]:
    return {"P": rule.p_threshold, "S": rule.s_threshold}


def _rule_fields(rule) -> dict:
    """A model's pick rule in the report (``models[]``): thresholds, pick placement (null: the first maximum),
    blinding (null: none of its own, an ensemble)."""
    return {"thresholds": _thresholds(rule), "pick_top_tolerance": None if rule.first_maximum else rule.top_tolerance,
            "blinding": list(rule.blinding) if rule.blinding is not None else None}
