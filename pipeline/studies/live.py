"""Live against exact picks of one student on labelled data: per dataset and (hop, look-ahead), for P and S, F1 at
0.1 / 0.5 s of the exact replay and of the live mode, and the latency of the live picks (reported time - analyst
onset, picks matched within 0.5 s: median and 95th percentile).

    SEISBENCH_CACHE_ROOT=../shared/seisbench python -m pipeline study live --student models/student_qat \
        [--datasets ../shared/datasets/stead50,data/synthetic:dev,...] [--grid 100:100,50:100,100:50,100:200] \
        [--no-warmup] [--confirm 500,1000] [--json out.json]

The passes are the benchmark's (pipeline/evaluate/live.py): the exact replay is the student's SeisBench
annotate at its own hop and blinding, the live mode the firmware's (docs/firmware.md, "Live mode") computed by the
same annotate with a window every hop and the live blinding, each trace after its warm-up (``live.benchmark_warmup``:
window - hop - look-ahead samples of its first second mirrored; --no-warmup: the traces as they are). A phase's
live picks depend only on its own look-ahead, so one row per (hop, L) and phase says what ``live.p_lookahead_samples``
or ``live.s_lookahead_samples`` = L gives. Choose them on dev splits (``path:dev``), not on the sets you report; a
set without analyst picks (data/transfer:dev, windows of real continuous data) is scored against the teacher's.

``--confirm C[,C...]`` measures the firmware's retraction (``live.p_confirm_samples`` / ``live.s_confirm_samples``)
at each confirming look-ahead C: a live pick is kept if the same windows stacked at look-ahead C have a pick of its
phase within ``--confirm-within`` samples, else it is retracted about C + hop samples later; one that stream never
covers (near a trace's end) is kept (pipeline.model.picking.mark_retractions). Printed: F1 of the kept picks and how many
were retracted. The rows themselves are without retraction.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline.model import annotation, runners, streaming
from pipeline.errors import EdgepickError, run_script
from pipeline.evaluate.metrics import score_picks
from pipeline.model.picking import LiveRule
from pipeline.evaluate import live as live_pass
from pipeline.data.traces import load_labelled
from pipeline.model.student import load_student

TOLERANCES = (0.1, 0.5)


def parse_grid(text: str) -> list[tuple[int, int]]:
    """"100:100,50:100" -> [(100, 100), (50, 100)] (hop, look-ahead in samples)."""
    try:
        return [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item.strip()]
    except ValueError:
        raise EdgepickError(f"--grid wants hop:look-ahead pairs in samples, got {text!r}") from None


def parse_lookaheads(text: str) -> tuple[int, ...]:
    """"500,1000" -> (500, 1000); "" -> ()."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EdgepickError(f"--confirm wants look-aheads in samples, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise EdgepickError(f"--confirm look-aheads must be positive, got {text!r}")
    return values


def labelled_folders(text: str | None) -> list[tuple[Path, str]]:
    """The datasets to score as (folder, split): the given "folder[:split]"s, or every SeisBench-format folder in
    ../shared/datasets (every trace)."""
    if text:
        folders = []
        for item in (p.strip() for p in text.split(",") if p.strip()):
            folder, _, split = item.partition(":")
            folders.append((Path(folder), split))
    else:
        root = Path(__file__).resolve().parents[3] / "shared" / "datasets"
        folders = sorted((p, "") for p in root.glob("*") if (p / "metadata.csv").is_file())
    for folder, _ in folders:
        if not (folder / "metadata.csv").is_file():
            raise EdgepickError(f"dataset {folder} does not exist or holds no metadata.csv")
    if not folders:
        raise EdgepickError("no labelled dataset to score: pass --datasets")
    return folders


def score_dataset(student, folder: Path, split: str, grid, warmup: bool, teacher: str, max_traces: int,
                  confirm: tuple[int, ...] = (), within: int = 50) -> list[dict]:
    """One row per (hop, look-ahead) and phase of one dataset (or one of its splits, at most ``max_traces`` of it,
    seeded), against its analyst picks or, where it has none (windows of continuous data), the ``teacher``'s;
    with ``confirm``, each row also holds the F1 of its picks confirmed at each of those look-aheads."""
    traces, metadata, rate, order = load_labelled(folder, split, max_traces)
    truth, by_teacher = annotation.reference_picks(traces, metadata, rate, order, teacher,
                                                   [w.shape[-1] for w in traces], progress=False)
    against = "teacher" if by_teacher else "analyst"
    model = runners.BenchModel("student", "pytorch", "fp32", [student])
    exact = annotation.dataset_curves(model, traces, rate, order, progress=False).picks()
    rows = []
    skip = live_pass.live_skip_samples(model, warmup)
    annotated: dict = {}  # each (hop, look-ahead) stream annotated once, whether it picks or confirms
    causal = getattr(student, "causal", False)  # its live mode is its stream: one rule, no grid, no retraction
    rules = [streaming.live_rule(student)] if causal else [LiveRule.of(student.in_samples, *g) for g in grid]
    for rule in rules:
        started = time.perf_counter()
        live = live_pass.live_pick_times(model, traces, rate, order, rule, warmup, skip_samples=skip,
                                         annotated=annotated)
        seconds = time.perf_counter() - started
        confirmations = {}
        for c in () if causal else confirm:
            checked = live_pass.live_pick_times(model, traces, rate, order, rule.with_confirm(c, within), warmup,
                                                skip_samples=skip, annotated=annotated)
            kept = checked.kept()
            scores = score_picks(truth, kept, TOLERANCES)
            confirmations[c] = {phase: {"f1": {f"{t:g}": scores[phase][t]["f1"] for t in TOLERANCES},
                                        "retracted": sum(len(a) for a in live.times[phase]) - sum(len(a) for a in kept[phase])}
                                for phase in kept}
        for row in live_pass.live_rows(model, truth, live, exact, TOLERANCES, max(TOLERANCES)):
            row["confirmed"] = {str(c): v[row["phase"]] for c, v in confirmations.items()}
            rows.append({"dataset": folder.name + (f":{split}" if split else ""), "traces": len(traces),
                         "hop": rule.hop, "lookahead": rule.lookaheads[row["phase"]], "against": against,
                         "live_seconds": round(seconds, 1), **row})
    return rows


def format_rows(rows: list[dict]) -> str:
    def f(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    lines = [f"{'dataset':22} {'vs':7} {'traces':>6} {'hop':>4} {'L':>4} {'phase':5} {'F1@0.1 live/exact':>18} "
             f"{'F1@0.5 live/exact':>18} {'labels':>6} {'lat. median s':>13} {'lat. p95 s':>10} {'matched':>7} {'live s':>7}"]
    for r in rows:
        if r["n_labels"] == 0:
            continue  # a phase the dataset has no analyst picks of
        lines.append(f"{r['dataset']:22} {r['against']:7} {r['traces']:6d} {r['hop']:4d} {r['lookahead']:4d} {r['phase']:5} "
                     f"{f(r['f1_live']['0.1']) + ' / ' + f(r['f1_exact']['0.1']):>18} "
                     f"{f(r['f1_live']['0.5']) + ' / ' + f(r['f1_exact']['0.5']):>18} {r['n_labels']:6d} "
                     f"{f(r['latency_median_s'], 2):>13} {f(r['latency_p95_s'], 2):>10} {r['latency_n']:7d} "
                     f"{r['live_seconds']:7.1f}")
    confirmed_rows = [r for r in rows if r.get("confirmed") and r["n_labels"]]
    if confirmed_rows:
        lines.append(f"\nkept if confirmed at look-ahead C: {'dataset':22} {'hop':>4} {'L':>4} {'phase':5} {'C':>5} "
                     f"{'F1@0.1':>7} {'F1@0.5':>7} {'retracted':>9}")
        for r in confirmed_rows:
            for c, v in r["confirmed"].items():
                lines.append(f"{'':34} {r['dataset']:22} {r['hop']:4d} {r['lookahead']:4d} {r['phase']:5} {c:>5} "
                             f"{f(v['f1']['0.1']):>7} {f(v['f1']['0.5']):>7} {v['retracted']:9d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study live", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="a saved student")
    parser.add_argument("--datasets", help="comma-separated SeisBench-format folder[:split]s (default: ../shared/datasets/*)")
    parser.add_argument("--grid", default="100:100,50:100,100:50,100:200", help="hop:look-ahead pairs (samples)")
    parser.add_argument("--no-warmup", action="store_true", help="score the traces without the live warm-up")
    parser.add_argument("--teacher", default="phasenet:okla", help="scored against its picks where a set has no labels")
    parser.add_argument("--max-traces", type=int, default=0, help="a seeded subset of each set (0: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--confirm", default="", help="confirming look-aheads (samples) to measure, e.g. 500,1000")
    parser.add_argument("--confirm-within", type=int, default=50, help="a confirming pick this close keeps a live one")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    grid = parse_grid(args.grid)
    folders = labelled_folders(args.datasets)
    student = load_student(args.student)
    confirm = parse_lookaheads(args.confirm)
    for hop, lookahead in () if student.causal else grid:  # what does not fit is refused before any annotate
        for c in (0, *confirm):
            LiveRule.of(student.in_samples, hop, lookahead, c, args.confirm_within)
    rows = []
    for folder, split in folders:
        rows += score_dataset(student, folder, split, grid, not args.no_warmup, args.teacher, args.max_traces,
                              confirm, args.confirm_within)
    mode = ("its stream, a block every hop, L = each phase's delay; --grid and --confirm do not apply" if student.causal
            else "a window every hop, look-ahead L samples")
    print(f"student {args.student}: live ({mode}{', warm-up' if not args.no_warmup else ''}) against exact replay; "
          f"latency = reported - analyst onset, picks within {max(TOLERANCES)} s")
    print(format_rows(rows))
    if args.json:
        from pipeline.artifacts import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    run_script(main)  # bad input: one line, exit 2
