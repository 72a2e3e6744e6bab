"""The benchmark stage's outputs: ``benchmark.json`` (schema in docs/benchmark.md), ``benchmark.md`` and the
figures (``benchmark_residuals.png``, ``benchmark_pr.png``, ``benchmark_examples.png``), each written atomically."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from pipeline.artifacts import atomic_write_bytes, atomic_write_text
from pipeline.model.picking import PickRule, describe

SCHEMA = "edgepick-benchmark/1"
PHASES = ("P", "S")
FIGURES = {"residuals": "benchmark_residuals.png", "pr": "benchmark_pr.png", "examples": "benchmark_examples.png"}


def pick_rule_text(model: dict) -> str:
    """A model's pick rule as the report's "pick" column: its thresholds, where in a triggered segment the pick
    goes and how many samples its annotate leaves out at each window's ends (pipeline.model.picking.PickRule)."""
    top = model.get("pick_top_tolerance")
    thresholds = model.get("thresholds") or {}
    rule = PickRule(top_tolerance=top, blinding=model.get("blinding"))
    text = describe(rule)
    if thresholds:
        text = f"P {thresholds['P']:g} / S {thresholds['S']:g}; " + text
    return text


def _clean(value):
    """JSON-safe: NaN / inf -> null, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def label(row: dict) -> str:
    return f"{row['model']} {row['runtime']}-{row['precision']}"


def _f(value, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _n(value) -> str:
    return "-" if value is None else f"{value:,}"


# ---------------------------------------------------------------------------------------------------- markdown
def markdown(report: dict) -> str:
    d, s = report["dataset"], report["settings"]
    records = report["records"]
    lines = [
        f"# Benchmark: {d['path']}{':' + d['split'] if d.get('split') else ''}",
        "",
        f"{d['kind']} data, {d['traces']} {'stations' if d['kind'] == 'continuous' else 'traces'}, "
        f"{d['hours']:.2f} station-hours"
        + (f", {d['labels']['P']} P and {d['labels']['S']} S analyst picks" if d.get("labels") else "")
        + f". Teacher `{s['teacher']}`, student `{s['student']}`, TFLite variants `{s['tflite']}`. "
        + ("Thresholds: each model's own (the pick column)" if s["threshold"] is None else f"Threshold {s['threshold']}")
        + f", tolerances {', '.join(f'{t:g}' for t in s['tolerances_s'])} s, seed {s['seed']}. "
        "Protocols: docs/benchmark.md. Created " + report["created"] + ".",
        "",
    ]
    if d.get("agreement_only"):
        lines += ["**Agreement-only report: the data holds no analyst picks.** Figures below compare every model with "
                  "the teacher's picks (same threshold) and count picks per hour.", ""]
    for note in report["notes"]:
        lines.append(f"- {note}")
    if report["notes"]:
        lines.append("")

    lines += ["## Models and costs", "",
              "| model | params | MACs / window | flatbuffer B | arena B | host ms / window | ESP32 est. ms | ESP32-C3 est. ms "
              "| ESP32-S3 est. ms | annotate s | pick | notes |", "|" + " --- |" * 12]
    for m in report["models"]:
        lines.append(
            f"| {label(m)} | {_n(m['parameters'])} | {_n(m['macs_per_window'])} | {_n(m['flatbuffer_bytes'])} | "
            f"{_n(m['arena_bytes'])} | {_f(m['host_latency_ms'], 2)} | {_f(m['esp32_latency_ms_est'], 0)} | "
            f"{_f(m.get('esp32c3_latency_ms_est'), 0)} | {_f(m['esp32s3_latency_ms_est'], 0)} | {_f(m['annotate_seconds'], 1)} | {pick_rule_text(m)} | "
            f"{'; '.join(m['notes'])} |")
    lines += ["", "ESP32 figures are estimates (MACs x cycles per MAC, pipeline/deploy/boards.py, as `make quantize` prints): INT8 "
              "on ESP32 and ESP32-C3 from the instruction count measured in the emulator (`make firmware-sim`, ESP-NN "
              "C kernels) at one cycle per instruction; ESP32-S3 and float from Espressif's person-detection timings.", ""]

    def table(rows, title, ratio=True):
        out = [title, "", "| model | phase | tol s | precision | recall | F1 |" + (" F1 / teacher |" if ratio else "")
               + " res. mean s | res. std s | MAE s | labels | picks |",
               "|" + " --- |" * (12 if ratio else 11)]
        for r in rows:
            out.append(
                f"| {label(r)} | {r['phase']} | {r['tolerance_s']:g} | {_f(r['pick_precision'])} | {_f(r['recall'])} | "
                f"**{_f(r['f1'])}** |" + (f" {_f(r['f1_ratio_to_teacher'])} |" if ratio else "")
                + f" {_f(r['residual_mean_s'], 3, True)} | {_f(r['residual_std_s'])} | {_f(r['residual_mae_s'])} | "
                f"{r['n_labels']} | {r['n_picks']} |")
        return out + [""]

    analyst = [r for r in records if r["reference"] == "analyst" and r["subset"] == "all"]
    if analyst:
        lines += table(analyst, "## Protocol 1: picks against the analyst labels (whole traces, nearest pick)")
    agreement = [r for r in records if r["reference"] == "teacher" and r["subset"] == "all"]
    if agreement:
        lines += table(agreement, "## Agreement with the teacher (the teacher's picks as the reference)", ratio=False)
        lines += ["| model | P picks / hour | S picks / hour |", "| --- | --- | --- |"]
        seen = []
        for r in agreement:
            if label(r) not in seen:
                seen.append(label(r))
                per = {x["phase"]: x["picks_per_hour"] for x in agreement if label(x) == label(r)}
                lines.append(f"| {label(r)} | {_f(per.get('P'), 1)} | {_f(per.get('S'), 1)} |")
        lines.append("")

    subsets = [name for name in dict.fromkeys(r["subset"] for r in records if r["reference"] == "analyst") if name != "all"]
    if subsets:
        tol = max(s["tolerances_s"])
        counts = {r["subset"]: r["subset_traces"] for r in records if r["subset"] in subsets}
        lines += [f"## F1 by S-P time, components and SNR (P / S, tolerance {tol:g} s)", "",
                  "| model | " + " | ".join(f"{name} ({counts[name]} tr.)" for name in subsets) + " |",
                  "|" + " --- |" * (len(subsets) + 1)]
        for key in dict.fromkeys(label(r) for r in records if r["reference"] == "analyst"):
            cells = []
            for name in subsets:
                f1 = {r["phase"]: r["f1"] for r in records if label(r) == key and r["subset"] == name
                      and r["reference"] == "analyst" and r["tolerance_s"] == tol}
                cells.append(f"{_f(f1.get('P'))} / {_f(f1.get('S'))}")
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")

    if report.get("pick_classes"):
        lines += pick_class_markdown(report)

    if report["protocol2"]:
        lines += [f"## Protocol 2: SeisBench pick-benchmark tasks ({s['window_s']:g} s windows)", "",
                  "| model | detection ROC-AUC | phase MCC | phase MCC (best thr.) | P onset RMSE s | P MAE s | "
                  "S onset RMSE s | S MAE s | P within 0.1 s | S within 0.1 s |", "|" + " --- |" * 10]
        for p in report["protocol2"]:
            det, ph = p.get("detection", {}), p.get("phase", {})
            op, os_ = p.get("onset_P", {}), p.get("onset_S", {})
            lines.append(
                f"| {label(p)} | {_f(det.get('auc'))} | {_f(ph.get('mcc'))} | {_f(ph.get('mcc_best'))} | "
                f"{_f(op.get('rmse_s'))} | {_f(op.get('mae_s'))} | {_f(os_.get('rmse_s'))} | {_f(os_.get('mae_s'))} | "
                f"{_f(op.get('within_0.1_s'))} | {_f(os_.get('within_0.1_s'))} |")
        first = report["protocol2"][0]
        lines += ["", "Windows: detection {} ({} with an event), phase identification {}, onset P {} / S {}.".format(
            first.get("detection", {}).get("n_windows", 0), first.get("detection", {}).get("n_positive", 0),
            first.get("phase", {}).get("n_windows", 0), first.get("onset_P", {}).get("n_windows", 0),
            first.get("onset_S", {}).get("n_windows", 0)), ""]

    if report.get("live"):
        lines += live_markdown(report["live"])

    figures = [f"![{name}]({path})" for name, path in report.get("figures", {}).items()]
    if figures:
        lines += ["## Figures", ""] + figures + [""]
    return "\n".join(lines)


def pick_class_markdown(report: dict) -> list[str]:
    """Where each model's picks lie against the analyst P and S, by S-P bin (metrics.PICK_CLASSES): true picks, and
    the false ones before P, between P and S, in the S coda and in the late coda."""
    rows = report["pick_classes"]
    first = rows[0]
    late = first["late_s"]
    lines = [f"## Pick classes (tolerance {first['tolerance_s']:g} s): where each pick lies against the analyst P and S",
             "",
             f"false = before P + between P and S + within {late:g} s after S + more than {late:g} s after S + on "
             "noise traces; picks after P on a trace without an analyst S are not judged (no S label).", "",
             "| model | phase | subset | traces | labels | true | before P | P to S | S to S+"
             f"{late:g} s | > S+{late:g} s | noise traces | no S label | false | false / teacher |",
             "|" + " --- |" * 14]
    for r in sorted(rows, key=lambda r: (r["phase"] != "S", r["subset"] != "all", r["subset"])):
        c = r["classes"]
        lines.append(f"| {label(r)} | {r['phase']} | {r['subset']} | {r['subset_traces']} | {r['n_labels']} | "
                     f"{c['true']} | {c['before_p']} | {c['p_to_s']} | {c['after_s']} | {c['late_coda']} | "
                     f"{c['no_label']} | {c['no_s_label']} | **{r['false']}** | {_f(r['false_ratio_to_teacher'], 2)} |")
    return lines + [""]


def live_markdown(live: dict) -> list[str]:
    """The "Live picks" section: live and exact F1 and the latency of live picks per model and phase, and what the
    live mode costs per second of data on each board with an estimate."""
    tols = sorted(live["rows"][0]["f1_live"], key=float) if live["rows"] else []
    lookahead, blinding = live["lookahead_samples"], live["blinding"]
    warmup = (f"each trace after {live['warmup_samples']} samples of its first second mirrored (picks on them dropped)"
              if live["warmup_samples"] else "the traces as they are (no pick in the first window - hop - look-ahead "
              "samples)")
    if live.get("skipped_start_samples"):
        warmup += (f", live picks in its first {live['skipped_start_samples']} samples (the span a whole-window "
                   "student's exact replay blinds) dropped")
    confirm = live.get("confirm_samples") or {}
    retraction = ("; a live pick the same windows at look-ahead " + ", ".join(f"{p} {v}" for p, v in confirm.items())
                  + f" samples have no pick within {live.get('confirm_within_samples')} samples of is retracted "
                  "(\"kept\": the picks left after the retractions)") if any(confirm.values()) else ""
    lines = [f"## Live picks (hop {live['hop_samples']}, look-ahead " + ", ".join(f"{p} {v}" for p, v in lookahead.items())
             + " samples)", "",
             "The firmware's live mode (docs/firmware.md): a window every hop, blinding "
             + ", ".join(f"{p} {pre} / {post}" for p, (pre, post) in blinding.items()) + f"; {warmup}{retraction}. "
             f"Latency: reported time - analyst onset, picks matched within {live['latency_tolerance_s']:g} s.", "",
             "| model | phase | " + " | ".join(f"F1 live / kept / exact @{t} s" for t in tols)
             + " | latency median s | latency p95 s | matched | retracted (median delay s) | annotate live s |",
             "|" + " --- |" * (7 + len(tols))]
    for r in live["rows"]:
        cells = " | ".join(f"{_f(r['f1_live'][t])} / {_f(r.get('f1_kept', {}).get(t))} / {_f(r['f1_exact'][t])}"
                           for t in tols)
        retracted = f"{r.get('n_retracted', 0)} ({_f(r.get('retract_delay_median_s'), 1)})"
        lines.append(f"| {label(r)} | {r['phase']} | {cells} | {_f(r['latency_median_s'], 2)} | "
                     f"{_f(r['latency_p95_s'], 2)} | {r['latency_n']} | {retracted} | "
                     f"{_f(live['annotate_seconds'].get(label(r)), 1)} |")
    if live.get("compute"):
        lines += ["", "| model | board | est. ms / window | windows / s | real-time factor live (exact) est. | "
                      "instructions / s est. |", "|" + " --- |" * 6]
        for c in live["compute"]:
            lines.append(f"| {label(c)} | {c['board']} | {_f(c['ms_per_window_est'], 0)} | {_f(c['windows_per_s'], 2)} | "
                         f"{_f(c['real_time_factor_est'], 3)} ({_f(c['real_time_factor_exact_est'], 3)}) | "
                         f"{c['instructions_per_s_est'] / 1e6:,.0f} M |")
        lines += ["", "Estimates (pipeline/deploy/boards.py): instructions are cycles at the estimate's cycles per MAC (INT8 on "
                  "ESP32 / ESP32-C3: the emulator's instruction count, one cycle each); a real-time factor above 1 "
                  "does not keep up."]
    return lines + [""]


def summary(report: dict) -> str:
    """The few lines printed at the end of the stage."""
    tols = sorted(report["settings"]["tolerances_s"])
    reference = "teacher" if report["dataset"].get("agreement_only") else "analyst"
    head = f"{'model':24} " + " ".join(f"{f'{p} F1@{t:g}':>15}" for t in reversed(tols) for p in PHASES)
    lines = [f"benchmark ({reference} reference, {report['dataset']['traces']} traces/stations):", head]
    for row in report["models"]:
        cells = []
        for t in reversed(tols):
            for phase in PHASES:
                r = next((r for r in report["records"] if label(r) == label(row) and r["reference"] == reference
                          and r["subset"] == "all" and r["phase"] == phase and r["tolerance_s"] == t), None)
                text = _f(r["f1"]) if r and r["n_labels"] else "-"  # no labels of the phase: no F1
                if r and r.get("f1_ratio_to_teacher") is not None:
                    text += f" ({r['f1_ratio_to_teacher']:.2f}x)"
                cells.append(f"{text:>15}")
        lines.append(f"{label(row):24} " + " ".join(cells))
    live = report.get("live")
    for r in (live or {}).get("rows", []):
        f1 = " ".join(f"F1@{t} {_f(r['f1_live'][t])} (kept {_f(r.get('f1_kept', {}).get(t))}, exact "
                      f"{_f(r['f1_exact'][t])})" for t in sorted(r["f1_live"], key=float))
        lines.append(f"live {label(r)} {r['phase']}: {f1}; latency median {_f(r['latency_median_s'], 2)} s, "
                     f"p95 {_f(r['latency_p95_s'], 2)} s ({r['latency_n']} picks); {r.get('n_retracted', 0)} retracted")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- figures
class Examples:
    """What the example-trace figure needs: a few seeded traces with both P and S labels and every model's curves."""

    def __init__(self, waveforms, component_order, rate, truth, curves, count=3, seed=0):
        self.rate, self.curves = rate, curves
        if truth is None:
            candidates = list(range(len(waveforms)))
        else:
            candidates = [i for i in range(len(waveforms)) if len(truth["P"][i]) and len(truth["S"][i])]
        rng = np.random.default_rng(seed)
        self.indices = sorted(rng.choice(candidates, min(count, len(candidates)), replace=False).tolist()) if candidates else []
        z = component_order.index("Z") if "Z" in component_order else 0
        self.traces = {i: waveforms[i][z] for i in self.indices}
        self.truth = {i: {p: truth[p][i] for p in PHASES} if truth else {} for i in self.indices}


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def figure_residuals(report, residuals: dict):
    import matplotlib.pyplot as plt

    tol = max(report["settings"]["tolerances_s"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=False)
    bins = np.linspace(-tol, tol, 41)
    for ax, phase in zip(axes, PHASES):
        for key, values in residuals.items():
            if key[1] == phase and len(values):
                ax.hist(values, bins=bins, histtype="step", linewidth=1.4, label=f"{key[0]} (n={len(values)})")
        ax.set(title=f"{phase}: predicted - analyst (matched within {tol:g} s)", xlabel="residual (s)", ylabel="picks")
        ax.axvline(0, color="k", linewidth=0.5)
    axes[0].legend(fontsize=7)
    return fig


def figure_pr(report):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, phase in zip(axes, PHASES):
        for row in report["pr_curves"]:
            curve = row[phase]
            keep = [k for k, p in enumerate(curve["pick_precision"]) if p is not None]  # thresholds with picks
            if not keep:
                continue
            line, = ax.plot([curve["recall"][k] for k in keep], [curve["pick_precision"][k] for k in keep],
                            marker=".", markersize=3, label=label(row))
            operating = row["operating_threshold"][phase]
            k = min(keep, key=lambda j: abs(curve["thresholds"][j] - operating))
            ax.plot(curve["recall"][k], curve["pick_precision"][k], "o", color=line.get_color(), markersize=7,
                    markerfacecolor="none")
        ax.set(title=f"{phase} precision-recall (threshold 0.05-0.95, ring: each model's own; tol "
                     f"{report['pr_curves'][0]['tolerance_s']:g} s)", xlabel="recall", ylabel="precision",
               xlim=(0, 1.02), ylim=(0, 1.02))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    return fig


def figure_examples(examples: Examples, models):
    import matplotlib.pyplot as plt

    shown = [m for m in models if m.runtime == "pytorch" or m.precision == "int8"]
    n = len(examples.indices)
    fig, axes = plt.subplots(n, 1, figsize=(12, 2.8 * n), squeeze=False, layout="constrained")
    styles = {"teacher": "-", "student": "--"}
    for ax, i in zip(axes[:, 0], examples.indices):
        wave = examples.traces[i]
        t = np.arange(len(wave)) / examples.rate
        peak = np.abs(wave - wave.mean()).max() or 1.0
        ax.plot(t, 0.5 + 0.5 * (wave - wave.mean()) / peak, color="0.6", linewidth=0.5, label="Z (normalised)")
        colors = {"P": "tab:blue", "S": "tab:red"}
        for m in shown:
            c = examples.curves[m.label]
            data = c.data[i]
            tt = (c.start[i] + np.arange(data.shape[1])) / c.rate
            width = 1.6 if m.runtime == "pytorch" and m.name == "teacher" else 1.0
            style = styles.get(m.name, "-") if m.runtime == "pytorch" else ":"
            for k, phase in enumerate(PHASES):
                ax.plot(tt, data[k], style, color=colors[phase], linewidth=width,
                        alpha=1.0 if m.name == "teacher" else 0.8, label=f"{m.label} {phase}")
        for phase, times in examples.truth[i].items():
            for x in times:
                ax.axvline(x, color=colors[phase], linewidth=2, alpha=0.3)
        ax.set(ylim=(-0.05, 1.05), xlim=(0, t[-1]), ylabel="probability", title=f"trace {i}")
        ax.title.set_fontsize(9)
    axes[-1, 0].set_xlabel("time (s); shaded bars: analyst picks; solid teacher, dashed PyTorch student, dotted INT8")
    axes[0, 0].legend(fontsize=6, ncol=4, loc="upper left")
    return fig


# ----------------------------------------------------------------------------------------------------- writing
def write(out: str | Path, report: dict, residuals: dict, examples: Examples | None, models) -> dict[str, Path]:
    """benchmark.json, benchmark.md and the PNGs into ``out``, each file atomically. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    if residuals:
        figures["residuals"] = figure_residuals(report, {(k[0], k[1]): v for k, v in residuals.items()})
    if report["pr_curves"]:
        figures["pr"] = figure_pr(report)
    if examples is not None and examples.indices:
        figures["examples"] = figure_examples(examples, models)
    written = {}
    report["figures"] = {}
    for name, fig in figures.items():
        path = out / FIGURES[name]
        atomic_write_bytes(path, _png(fig))
        plt.close(fig)
        report["figures"][name] = FIGURES[name]
        written[name] = path
    atomic_write_text(out / "benchmark.json", json.dumps(_clean(report), indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / "benchmark.md", markdown(_clean(report)) + "\n")
    written["json"], written["md"] = out / "benchmark.json", out / "benchmark.md"
    return written
