"""``make sweep``: distil one student per (temperature, alpha, width) and rank them on a dev split.

Every grid point is an ordinary distillation run (``pipeline.distill.loop.distill``) in its own folder under
``sweep.out``; a finished point is not run again, so a killed sweep resumes where it stopped. Each student is
scored as ``make calibrate`` scores it (pipeline/evaluate/dev_split.py): whole traces of the dev split ``sweep.dataset``
annotated as station streams, against its analyst picks or, on unlabelled real continuous windows (the recipe's
transfer:dev), against the teacher's; each phase at its best threshold of ``calibrate.thresholds`` (the students'
probability scales differ, and calibrate would give each its own), F1 at every tolerance of ``sweep.tolerances_s``.
Runs are ranked on the mean of those F1 (P and S, 0.1 and 0.5 s: onset precision counts as much as detection),
which compares runs of different temperatures and alphas on one scale (their losses do not). The table goes to
``sweep.csv`` / ``sweep.md``, the F1-against-MACs Pareto plot to ``pareto.png``.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
from pathlib import Path

from pipeline.artifacts import atomic_file, atomic_write_text
from pipeline.config import Config
from pipeline.errors import EdgepickError
from pipeline.evaluate.metrics import PHASES
from pipeline.distill import loop as distillation
from pipeline.evaluate import dev_split
from pipeline.model.student import load_student, phasenet_macs

RESULT = "sweep_result.json"


def grid(config: Config) -> list[dict]:
    s = config.sweep
    points = [
        {"temperature": float(t), "alpha": float(a), "base_channels": int(c)}
        for t, a, c in itertools.product(s.temperatures, s.alphas, s.base_channels)
    ]
    if not points:
        raise EdgepickError("sweep grid is empty: set sweep.temperatures, sweep.alphas and sweep.base_channels")
    return points


def run_name(point: dict) -> str:
    return f"T{point['temperature']:g}_a{point['alpha']:g}_c{point['base_channels']}"


def run(config: Config) -> list[dict]:
    out = Path(config.sweep.out)
    tolerances = tuple(float(t) for t in config.sweep.tolerances_s)
    if not tolerances or not all(t > 0 for t in tolerances):
        raise EdgepickError(f"sweep.tolerances_s must be positive, got {config.sweep.tolerances_s}")
    points = grid(config)
    dev = dev_split.load_dev(config, config.sweep.dataset or config.calibrate.dataset)
    phases = dev.phases
    if not phases:
        raise EdgepickError(f"sweep: the dev split {dev.label} holds no P or S pick to rank the students on")
    print(f"sweep: {len(points)} runs, ranked on {dev.label} ({len(dev.waveforms)} traces) against the {dev.against} "
          f"picks, F1 at {', '.join(f'{t:g}' for t in tolerances)} s")
    rows = []
    for point in points:
        folder = out / run_name(point)
        result_path = folder / RESULT
        if result_path.is_file():
            kept = json.loads(result_path.read_text())
            if kept.get("dev") == dev.label and kept.get("tolerances_s") == list(tolerances):
                rows.append(kept)
                print(f"sweep {folder.name}: done before, kept")
                continue
            print(f"sweep {folder.name}: done before, scored on another dev split or tolerances: scored again")
        else:
            point_config = copy.deepcopy(config)
            point_config.distill.temperature = point["temperature"]
            point_config.distill.alpha = point["alpha"]
            point_config.student.base_channels = point["base_channels"]
            point_config.distill.out = str(folder)
            print(f"sweep {folder.name}: distilling")
            distillation.distill(point_config)
        row = _score(point, folder, dev, config.calibrate.thresholds, tolerances)
        atomic_write_text(result_path, json.dumps(row, indent=1) + "\n")
        rows.append(row)
    rows.sort(key=lambda r: -r["dev_f1"])
    _write_table(out, rows, tolerances)
    _plot_pareto(out, rows, tolerances, dev.label)
    print(format_table(rows, tolerances))
    return rows


def _score(point: dict, folder: Path, dev, thresholds, tolerances) -> dict:
    """The sweep's row of the student distilled in ``folder``: its cost, and per phase its best threshold on ``dev``
    and the F1 there at each tolerance; ``dev_f1`` is the mean of those F1."""
    student = load_student(folder / distillation.STUDENT)
    table = dev.threshold_table(student, thresholds, tolerances, spec=str(folder))
    row = {**point, "run": folder.name, "parameters": sum(p.numel() for p in student.parameters()),
           "macs": student.count_macs(), "dev": dev.label, "against": dev.against, "tolerances_s": list(tolerances)}
    row["macs_ratio_to_phasenet"] = row["macs"] / phasenet_macs(student.in_samples)
    f1 = []
    for phase in dev.phases:
        best = dev_split.best_threshold(table, phase)
        chosen = next(r for r in table if r["threshold"] == best)
        row[f"threshold_{phase}"] = best
        for t in tolerances:
            row[f"dev_f1_{phase}_{t:g}"] = chosen[f"{phase}_f1_{t:g}"]
            f1.append(row[f"dev_f1_{phase}_{t:g}"])
    row["dev_f1"] = sum(f1) / len(f1)
    return row


def pareto_front(rows: list[dict]) -> list[dict]:
    """Runs no other run beats on both cost (fewer MACs) and skill (higher dev F1)."""
    front = []
    for row in sorted(rows, key=lambda r: (r["macs"], -r["dev_f1"])):
        if not front or row["dev_f1"] > front[-1]["dev_f1"]:
            front.append(row)
    return front


def format_table(rows: list[dict], tolerances) -> str:
    phases = [phase for phase in PHASES if f"threshold_{phase}" in rows[0]] if rows else []
    f1_heads = [f"{phase} @{t:g} s" for phase in phases for t in tolerances]
    lines = ["| rank | run | T | alpha | width | parameters | MACs/window (of PhaseNet) | thresholds | "
             + " | ".join(f"dev F1 {h}" for h in f1_heads) + " | dev F1 (mean) |",
             "|" + " --- |" * (9 + len(f1_heads))]
    for rank, r in enumerate(rows, 1):
        f1 = " | ".join(f"{r[f'dev_f1_{phase}_{t:g}']:.3f}" for phase in phases for t in tolerances)
        thresholds = " / ".join(f"{phase} {r[f'threshold_{phase}']:g}" for phase in phases)
        lines.append(f"| {rank} | {r['run']} | {r['temperature']:g} | {r['alpha']:g} | {r['base_channels']} | "
                     f"{r['parameters']} | {r['macs'] / 1e6:.2f} M ({100 * r['macs_ratio_to_phasenet']:.1f} %) | "
                     f"{thresholds} | {f1} | {r['dev_f1']:.3f} |")
    return "\n".join(lines)


def _write_table(out: Path, rows: list[dict], tolerances) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "sweep.csv", text.getvalue())
    atomic_write_text(out / "sweep.md", format_table(rows, tolerances) + "\n")


def _plot_pareto(out: Path, rows: list[dict], tolerances, dev: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for alpha in sorted({r["alpha"] for r in rows}):
        chosen = [r for r in rows if r["alpha"] == alpha]
        ax.scatter([r["macs"] / 1e6 for r in chosen], [r["dev_f1"] for r in chosen], label=f"alpha {alpha:g}", alpha=0.8)
    front = pareto_front(rows)
    ax.plot([r["macs"] / 1e6 for r in front], [r["dev_f1"] for r in front], "k--", lw=1, label="Pareto front")
    for r in rows:
        ax.annotate(r["run"], (r["macs"] / 1e6, r["dev_f1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    low, high = min(r["dev_f1"] for r in rows), max(r["dev_f1"] for r in rows)
    if high - low < 0.05:  # a few thousandths apart: no axis zoomed in to make them look far apart
        middle = (low + high) / 2
        ax.set_ylim(middle - 0.03, middle + 0.03)
    ax.set_xlabel("multiply-accumulates per window (M)")
    ax.set_ylabel(f"dev F1, mean of P and S at {' and '.join(f'{t:g}' for t in tolerances)} s")
    ax.set_title(f"sweep: skill on {Path(dev).name} against cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(out / "pareto.png") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
