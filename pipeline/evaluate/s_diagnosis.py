"""Where a model's S curve goes wrong, measured against the analyst picks (issue 28's diagnosis).

Per trace with an analyst P and S, on each model's whole-trace curves (:class:`pipeline.annotation.Curves`):

    noise_s   the largest S probability in the pre-event noise (from the annotation's start to P - ``guard_s``)
    noise_p   the same for P
    at_s      the largest S probability within ``near_s`` of the analyst S (how high the true S peak is)
    s_at_p    the largest S probability within ``near_s`` of the analyst P (S probability on the P arrival)
    between   the smallest S probability between P + ``near_s`` and S - ``near_s`` (NaN when they are closer than
              2 ``near_s``): whether the S curve comes down between P and S
    coda_s    the largest S probability more than ``late_s`` after the analyst S (late coda)
    quiet_db  the pre-event noise's peak amplitude against the trace's peak, dB (very negative: quiet noise, which a
              per-window normalisation lifts to the same scale as an event)

:func:`summary` gives, per model and bin (S-P time or SNR), the median of each and the share of traces where the
noise or coda S passes the model's own S threshold (each would be a false S pick), and where the S peak does.
:func:`figure_traces` draws a few traces, three components, with both models' P and S curves and the analyst picks;
:func:`figure_summary` the distributions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.errors import EdgepickError

STATS = ("noise_s", "noise_p", "at_s", "s_at_p", "between", "coda_s", "quiet_db")


def trace_stats(curves, waveforms: Sequence[np.ndarray], truth: dict, guard_s: float = 1.0, near_s: float = 0.5,
                late_s: float = 5.0) -> list[dict]:
    """Per trace: the :data:`STATS` of one model's curves (NaN where the trace has no analyst P and S, or the region
    is empty or not annotated). ``truth``: phase -> per trace, analyst pick times (s from the trace start)."""
    if len(curves) != len(waveforms) or len(truth["P"]) != len(waveforms):
        raise EdgepickError(f"trace_stats: {len(curves)} curves, {len(waveforms)} traces, {len(truth['P'])} label rows")
    rate = curves.rate
    rows = []
    for i, wave in enumerate(waveforms):
        row = dict.fromkeys(STATS, math.nan)
        p, s = np.asarray(truth["P"][i], float), np.asarray(truth["S"][i], float)
        if p.size and s.size:
            p, s = float(p.min()), float(s.max())
            data, start = curves.data[i], curves.start[i]

            def peak(k, t0, t1=None, fn=np.nanmax):  # t1 None: to the end of the annotation
                a = max(int(round(t0 * rate)) - start, 0)
                b = data.shape[1] if t1 is None else min(int(round(t1 * rate)) - start, data.shape[1])
                seg = data[k, a:b] if b > a else np.empty(0)
                return float(fn(seg)) if seg.size and np.isfinite(seg).any() else math.nan

            row["noise_s"] = peak(1, 0.0, p - guard_s)
            row["noise_p"] = peak(0, 0.0, p - guard_s)
            row["at_s"] = peak(1, s - near_s, s + near_s)
            row["s_at_p"] = peak(1, p - near_s, p + near_s)
            if s - p > 2 * near_s:
                row["between"] = peak(1, p + near_s, s - near_s, np.nanmin)
            row["coda_s"] = peak(1, s + late_s)
            wave = np.asarray(wave, float)
            pre = wave[:, : max(int((p - guard_s) * rate), 0)]
            if pre.shape[1] > 10:
                centred = wave - np.median(wave, axis=1, keepdims=True)
                top = np.abs(centred).max()
                noise = np.abs(pre - np.median(pre, axis=1, keepdims=True)).max()
                if top > 0 and noise > 0:
                    row["quiet_db"] = 20 * math.log10(noise / top)
        rows.append(row)
    return rows


def summary(stats: Sequence[dict], masks: dict[str, np.ndarray], s_threshold: float) -> dict[str, dict]:
    """Per bin (``masks``: name -> boolean mask over traces): the count of traces with both picks, the median of
    each stat, and the shares of traces whose noise S / coda S / true-S peak reaches ``s_threshold``."""
    out = {}
    for name, mask in masks.items():
        rows = [r for r, keep in zip(stats, mask) if keep and math.isfinite(r["at_s"])]
        entry = {"traces": len(rows)}
        for key in STATS:
            values = np.array([r[key] for r in rows], float)
            values = values[np.isfinite(values)]
            entry[f"median_{key}"] = float(np.median(values)) if values.size else None
        for key, share in (("noise_s", "noise_s_fires"), ("coda_s", "coda_s_fires"), ("at_s", "s_found")):
            values = np.array([r[key] for r in rows], float)
            values = values[np.isfinite(values)]
            entry[share] = float(np.mean(values >= s_threshold)) if values.size else None
        out[name] = entry
    return out


def format_summary(tables: dict[str, dict[str, dict]]) -> str:
    """``tables``: model label -> :func:`summary`; one markdown table, a row per (bin, model)."""
    lines = ["| bin | model | traces | S peak at S (median) | S found | S at P | S between P and S | "
             "noise S (median) | noise S fires | coda S (median) | coda S fires | noise / peak dB |",
             "|" + " --- |" * 12]

    def f(v, digits=2):
        return "-" if v is None else f"{v:.{digits}f}"

    names = list(dict.fromkeys(name for table in tables.values() for name in table))
    for name in names:
        for model, table in tables.items():
            e = table.get(name)
            if not e or not e["traces"]:
                continue
            lines.append(f"| {name} | {model} | {e['traces']} | {f(e['median_at_s'])} | {f(e['s_found'])} | "
                         f"{f(e['median_s_at_p'])} | {f(e['median_between'])} | {f(e['median_noise_s'])} | "
                         f"{f(e['noise_s_fires'])} | {f(e['median_coda_s'])} | {f(e['coda_s_fires'])} | "
                         f"{f(e['median_quiet_db'], 0)} |")
    return "\n".join(lines)


def figure_traces(waveforms, order: str, rate: float, truth: dict, curves: dict, indices: Sequence[int],
                  pad_s: float = 6.0, titles: dict | None = None):
    """One row per trace: the three components (each scaled to its own peak) and every model's P and S curves
    (``curves``: label -> Curves; solid, dashed, dotted, dash-dotted in order), from ``pad_s`` before the analyst P
    to ``2 pad_s`` after the analyst S (within the trace); analyst picks as shaded bars."""
    import matplotlib.pyplot as plt

    n = len(indices)
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.6 * n), squeeze=False, layout="constrained")
    colors = {"P": "tab:blue", "S": "tab:red"}
    for ax, i in zip(axes[:, 0], indices):
        p, s = float(np.min(truth["P"][i])), float(np.max(truth["S"][i]))
        wave = np.asarray(waveforms[i], float)
        t0, t1 = max(p - pad_s, 0.0), min(s + 2 * pad_s, (wave.shape[1] - 1) / rate)
        t = np.arange(wave.shape[1]) / rate
        keep = (t >= t0) & (t <= t1)
        for k, comp in enumerate(order):
            trace = wave[k] - np.median(wave[k])
            top = np.abs(trace[keep]).max() or 1.0
            ax.plot(t[keep], 1.35 + 0.3 * k + 0.13 * trace[keep] / top, color="0.45", linewidth=0.5)
            ax.text(t0, 1.35 + 0.3 * k, comp, fontsize=7, va="center", ha="right")
        for j, (model, c) in enumerate(curves.items()):
            data = c.data[i]
            tt = (c.start[i] + np.arange(data.shape[1])) / c.rate
            inside = (tt >= t0) & (tt <= t1)
            for k, phase in enumerate("PS"):
                ax.plot(tt[inside], data[k, inside], ("-", "--", ":", "-.")[j % 4], color=colors[phase],
                        linewidth=1.5 if j == 0 else 1.1, label=f"{model} {phase}")
            threshold = c.rule.threshold("S")
            ax.axhline(threshold, color="tab:red", linewidth=0.5, linestyle=":" if j else "-", alpha=0.5)
        for phase in "PS":
            for x in truth[phase][i]:
                ax.axvspan(x - 0.05, x + 0.05, color=colors[phase], alpha=0.25)
        ax.set(xlim=(t0, t1), ylim=(-0.03, 2.1), ylabel="probability")
        ax.set_yticks([0, 0.5, 1.0])
        ax.set_title((titles or {}).get(i, f"trace {i}, S-P {s - p:.2f} s"), fontsize=9)
    axes[0, 0].legend(fontsize=7, ncol=4, loc="upper right")
    axes[-1, 0].set_xlabel("time (s); shaded: analyst P (blue) and S (red); models solid, dashed, dotted in the "
                           "legend's order; thin lines: each model's S threshold")
    return fig


def figure_summary(stats: dict[str, list[dict]], sp: np.ndarray, thresholds: dict[str, float]):
    """Three panels, each model a colour: the S peak at the analyst S against S-P; the pre-event noise's largest S
    probability against how quiet that noise is; the late coda's largest S probability (histogram)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    for j, (model, rows) in enumerate(stats.items()):
        color = f"C{j}"
        at_s = np.array([r["at_s"] for r in rows], float)
        axes[0].scatter(sp, at_s, s=10, color=color, alpha=0.7, label=model)
        quiet = np.array([r["quiet_db"] for r in rows], float)
        noise = np.array([r["noise_s"] for r in rows], float)
        axes[1].scatter(quiet, noise, s=10, color=color, alpha=0.7, label=model)
        coda = np.array([r["coda_s"] for r in rows], float)
        axes[2].hist(coda[np.isfinite(coda)], bins=np.linspace(0, 1, 21), histtype="step", color=color,
                     linewidth=1.4, label=model)
        for ax in axes[:2]:
            ax.axhline(thresholds[model], color=color, linewidth=0.7, linestyle=":")
        axes[2].axvline(thresholds[model], color=color, linewidth=0.7, linestyle=":")
    axes[0].set(xscale="log", xlabel="analyst S-P (s)", ylabel="S probability within 0.5 s of the analyst S",
                title="true S peak against S-P")
    axes[1].set(xlabel="pre-event noise peak / trace peak (dB)", ylabel="largest S probability before P - 1 s",
                title="S probability in pre-event noise")
    axes[2].set(xlabel="largest S probability > 5 s after the analyst S", ylabel="traces", title="S in the late coda")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.title.set_fontsize(9)
    return fig
