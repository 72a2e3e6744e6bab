"""``make benchmark``: the teacher(s), the PyTorch student and its TFLite Micro FP32 / FP16 / INT8 builds scored on
the same traces, against the analyst picks and against the teacher's; ``reports/`` (:mod:`pipeline.evaluate.report`).

Every model annotates every trace once, whole, as a station stream, with its own SeisBench ``annotate``
(:mod:`pipeline.model.annotation`; the TFLite builds run in the TFLite Micro interpreter inside the student's own
annotate, :mod:`pipeline.model.runners`); picks come from those curves with each model's own pick rule; protocol 1
(F1 at each tolerance), the S-P and SNR breakdowns, the agreement with the teacher, the precision-recall curves
and protocol 2 follow (:mod:`pipeline.evaluate.metrics`), the live pass (:mod:`pipeline.evaluate.live`). A folder of continuous miniSEED (no metadata.csv) has no labels:
agreement with the teacher and picks per hour only. The protocols are written out in docs/benchmark.md.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.evaluate import report as benchmark_report
from pipeline.model import runners
from pipeline.model.annotation import Curves, annotation_curves, dataset_curves, model_rule
from pipeline.artifacts import save_config
from pipeline.errors import EdgepickError
from pipeline.evaluate.live import live_compute, live_pass
from pipeline.evaluate.metrics import (PHASES, add_false_ratios, add_teacher_ratios, analyst_picks, bin_masks,
                                       component_masks, match_picks, parse_snr_db, pick_class_records, pick_records,
                                       pr_curve, protocol2_scores, protocol2_windows, sp_seconds)
from pipeline.model.student import hop_samples
from pipeline.data.traces import load_labelled, read_continuous, resolve_dataset


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
        config.live.rule(student.in_samples)

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
