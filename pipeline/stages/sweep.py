"""``make sweep``: distil one student per (temperature, alpha, width) and rank them on the dev split.

Every grid point is an ordinary distillation run (``pipeline.stages.distill.run``) in its own folder under
``sweep.out``; a finished point is not run again, so a killed sweep resumes where it stopped. Each student is
scored with the benchmark's whole-trace protocol on the dev split of the first dataset (mean of P and S F1 at
``sweep.tolerance_s``), which ranks runs of different temperatures and alphas on the same scale (their losses do
not). The table goes to ``sweep.csv`` / ``sweep.md``, the F1-against-MACs Pareto plot to ``pareto.png``.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
from pathlib import Path

from pipeline import generators
from pipeline.annotation import evaluate_picker
from pipeline.artifacts import atomic_file, atomic_write_text
from pipeline.config import Config
from pipeline.errors import EdgepickError
from pipeline.stages import distill
from pipeline.student import load_student

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
    first_dataset = config.distill.dataset.split(",")[0].strip()
    dev = generators.load_for_training(first_dataset, split="dev")
    if not generators.phase_columns(dev) or dev.metadata[list(generators.phase_columns(dev))].notna().sum().sum() == 0:
        raise EdgepickError(f"sweep ranks students on analyst picks, but the dev split of {first_dataset} has none")
    rows = []
    for point in grid(config):
        folder = out / run_name(point)
        result_path = folder / RESULT
        if result_path.is_file():
            rows.append(json.loads(result_path.read_text()))
            print(f"sweep {folder.name}: done before, kept")
            continue
        point_config = copy.deepcopy(config)
        point_config.distill.temperature = point["temperature"]
        point_config.distill.alpha = point["alpha"]
        point_config.student.base_channels = point["base_channels"]
        point_config.distill.out = str(folder)
        print(f"sweep {folder.name}: distilling")
        distill.run(point_config)
        student = load_student(folder / distill.STUDENT)
        scores = evaluate_picker(student, dev, tolerances=(config.sweep.tolerance_s,))["scores"]
        tolerance = float(config.sweep.tolerance_s)
        row = {
            **point,
            "run": folder.name,
            "parameters": sum(p.numel() for p in student.parameters()),
            "macs": student.count_macs(),
            "dev_f1_p": scores["P"][tolerance]["f1"],
            "dev_f1_s": scores["S"][tolerance]["f1"],
        }
        row["dev_f1"] = (row["dev_f1_p"] + row["dev_f1_s"]) / 2
        atomic_write_text(result_path, json.dumps(row, indent=1) + "\n")
        rows.append(row)
    rows.sort(key=lambda r: -r["dev_f1"])
    _write_table(out, rows, config.sweep.tolerance_s)
    _plot_pareto(out, rows, config.sweep.tolerance_s)
    print(format_table(rows, config.sweep.tolerance_s))
    return rows


def pareto_front(rows: list[dict]) -> list[dict]:
    """Runs no other run beats on both cost (fewer MACs) and skill (higher dev F1)."""
    front = []
    for row in sorted(rows, key=lambda r: (r["macs"], -r["dev_f1"])):
        if not front or row["dev_f1"] > front[-1]["dev_f1"]:
            front.append(row)
    return front


def format_table(rows: list[dict], tolerance: float) -> str:
    lines = [f"| rank | run | T | alpha | width | parameters | MACs/window | dev F1 P | dev F1 S | dev F1 (@{tolerance:g} s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rank, r in enumerate(rows, 1):
        lines.append(f"| {rank} | {r['run']} | {r['temperature']:g} | {r['alpha']:g} | {r['base_channels']} | "
                     f"{r['parameters']} | {r['macs'] / 1e6:.2f} M | {r['dev_f1_p']:.3f} | {r['dev_f1_s']:.3f} | {r['dev_f1']:.3f} |")
    return "\n".join(lines)


def _write_table(out: Path, rows: list[dict], tolerance: float) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "sweep.csv", text.getvalue())
    atomic_write_text(out / "sweep.md", format_table(rows, tolerance) + "\n")


def _plot_pareto(out: Path, rows: list[dict], tolerance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for alpha in sorted({r["alpha"] for r in rows}):
        chosen = [r for r in rows if r["alpha"] == alpha]
        ax.scatter([r["macs"] / 1e6 for r in chosen], [r["dev_f1"] for r in chosen], label=f"alpha {alpha:g}", alpha=0.8)
    front = pareto_front(rows)
    ax.plot([r["macs"] / 1e6 for r in front], [r["dev_f1"] for r in front], "k--", lw=1, label="Pareto front")
    for r in front:
        ax.annotate(f"T{r['temperature']:g}", (r["macs"] / 1e6, r["dev_f1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("multiply-accumulates per window (M)")
    ax.set_ylabel(f"dev F1, mean of P and S (@{tolerance:g} s)")
    ax.set_title("sweep: skill against cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(out / "pareto.png") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
