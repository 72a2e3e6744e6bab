"""Data-stage figures: synthetic generation time, training-generator throughput, teacher F1.

    python -m pipeline study data [--traces 2000] [--workers 2] [--teacher phasenet:okla]

Prints the three figures with their targets. Needs the teacher weights (SEISBENCH_CACHE_ROOT) for the F1.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from pipeline.data import datasets, generators
from pipeline.model.annotation import evaluate_picker
from pipeline.config import Config
from pipeline.errors import run_script
from pipeline.data.sources import source_records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to measure throughput")
    parser.add_argument("--in-samples", type=int, default=3001)
    parser.add_argument("--f1-traces", type=int, default=0, help="score the teacher on this many test traces (0: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads 2")

    with tempfile.TemporaryDirectory() as tmp:
        config = Config()
        config.data.synthetic.n_traces = args.traces
        config.data.out = str(Path(tmp) / "synthetic")
        started = time.perf_counter()
        records, total, options = source_records(config.data)
        datasets.write_dataset(records, config.data.out_dir(), config.data, config.data.source, total=total, **options)
        seconds = time.perf_counter() - started
        print(f"synthetic generation: {args.traces} traces in {seconds:.1f} s (target <= 60 s for 2,000)")

        dataset = generators.load_for_training(config.data.out, split="train")
        generator = generators.training_generator(dataset, args.in_samples)
        rate = generators.measure_throughput(generator, seconds=args.seconds, workers=args.workers)
        print(f"training generator: {rate:.0f} windows/s with {args.workers} workers (target >= 2,000)")

        try:
            import seisbench.models as sbm

            teacher = sbm.PhaseNet.from_pretrained("okla")
        except Exception as error:  # no weights offline: say so, the other figures stand
            print(f"teacher F1: skipped, PhaseNet okla not loadable ({type(error).__name__}); set SEISBENCH_CACHE_ROOT")
            return

        test = datasets.open_dataset(config.data.out).get_split("test")
        if args.f1_traces:
            test.filter(test.metadata.index < test.metadata.index[min(args.f1_traces, len(test)) - 1] + 1)
        scores = evaluate_picker(teacher, test, tolerances=(0.1, 0.5))["scores"]  # at the reference threshold
        for tolerance in (0.5, 0.1):
            p, s = (scores[phase][tolerance]["f1"] for phase in "PS")
            print(f"teacher PhaseNet okla on synthetic test split ({len(test)} traces), F1 @{tolerance} s: P {p:.3f}  S {s:.3f}"
                  + ("  (target >= 0.9)" if tolerance == 0.5 else ""))


if __name__ == "__main__":
    run_script(main)  # bad input: one line, exit 2
