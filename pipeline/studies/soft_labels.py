"""Measure the soft-label cache against running the teacher on the fly, part by part (``study distill_modes``
measures what the parts add up to: whole distillation epochs in either mode).

    SEISBENCH_CACHE_ROOT=../shared/seisbench python -m pipeline study soft_labels \
        --traces 1000 --threads 2 --out /tmp/softlabel_bench

Every time is given as wall seconds and as process CPU seconds (key suffix `_cpu`): on a shared machine the CPU
seconds of a 1-thread run are the steadier measure.

Builds a dataset of ``--traces`` 60 s traces (stead50's 50 real traces repeated, each copy its own trace) under
``--out``, then reports (JSON on stdout and in ``--out/benchmark.json``):
- cache build seconds per 1,000 traces (PhaseNet okla; EQTransformer elep on ``--eqt-traces`` traces, scaled),
- SeisBench's own ``annotate`` per trace for the same teacher (the unbatched reference),
- cache reads per second (random trace order),
- on-the-fly teacher seconds per 1,000 training windows (PhaseNet: 3001-sample windows; EQTransformer: the
  6000-sample context it needs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import obspy
import torch

from pipeline.config import DataConfig
from pipeline.data.datasets import open_dataset, write_dataset
from pipeline.errors import run_script
from pipeline.distill.soft_label_cache import SoftLabelCache, build_soft_labels
from pipeline.distill.soft_labels import OnTheFlyTeacher
from pipeline.model.teachers import Teacher

STEAD50 = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "stead50"


def records(n: int):
    stead = open_dataset(STEAD50)
    drop = {"index", "trace_chunk", "trace_component_order", "split", "trace_name_original"}
    for i in range(n):
        j = i % len(stead)
        row = stead.metadata.iloc[j]
        metadata = {k: v for k, v in row.items() if k not in drop}
        metadata["trace_name"] = f"{row['trace_name_original']}#{i}"
        metadata["source_id"] = f"copy{i}"
        yield metadata, stead.get_waveforms(j)


CPU: dict[str, float] = {}


def seconds(fn) -> float:
    """Wall seconds of ``fn()``; its process CPU seconds go to CPU["last"] (steadier on a shared machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    CPU["last"] = time.process_time() - cpu
    return time.perf_counter() - start


def record(result: dict, key: str, wall: float, scale: float) -> None:
    result[key] = round(wall * scale, 2)
    result[key + "_cpu"] = round(CPU["last"] * scale, 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study soft_labels", )
    parser.add_argument("--traces", type=int, default=1000)
    parser.add_argument("--eqt-traces", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default="/tmp/softlabel_bench")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    result = {"load_average_at_start": list(os.getloadavg()), "traces": args.traces, "trace_seconds": 60, "threads": args.threads, "batch": args.batch}

    dataset_path = out / "dataset"
    write_dataset(records(args.traces), dataset_path, DataConfig(), "bench", total=args.traces)
    dataset = open_dataset(dataset_path)

    t = seconds(lambda: build_soft_labels(dataset_path, "phasenet:okla", batch_size=args.batch))
    record(result, "phasenet_build_s_per_1000_traces", t, 1000 / args.traces)
    cache = SoftLabelCache.open(dataset_path, "phasenet:okla", build=False)
    result["phasenet_cache_mb"] = round(cache.path.stat().st_size / 1e6, 2)
    t = seconds(lambda: SoftLabelCache.open(dataset_path, "phasenet:okla", build=False))
    result["reopen_s"] = round(t, 3)
    order = np.random.default_rng(0).permutation(len(cache))
    t = seconds(lambda: [cache.labels(int(i)) for i in order])
    result["cache_reads_per_s"] = round(len(order) / t)

    eqt_path = out / "dataset_eqt"
    write_dataset(records(args.eqt_traces), eqt_path, DataConfig(), "bench-eqt", total=args.eqt_traces)
    t = seconds(lambda: build_soft_labels(eqt_path, "eqtransformer:elep", batch_size=args.batch))
    record(result, "eqtransformer_build_s_per_1000_traces", t, 1000 / args.eqt_traces)

    # SeisBench's own annotate, one trace at a time (the reference the batched build reproduces).
    teacher = Teacher("phasenet:okla")
    n_ref = min(100, args.traces)

    def annotate_all():
        for i in range(n_ref):
            w = dataset.get_waveforms(i)
            stream = obspy.Stream(
                [
                    obspy.Trace(w[k].astype(np.float64), header=dict(station="S", channel=f"HH{c}", sampling_rate=100))
                    for k, c in enumerate("ZNE")
                ]
            )
            teacher.model.annotate(stream, batch_size=args.batch)

    record(result, "phasenet_annotate_s_per_1000_traces", seconds(annotate_all), 1000 / n_ref)

    # On the fly: one teacher pass per training window, every epoch.
    rng = np.random.default_rng(1)
    for spec, length in (("phasenet:okla", 3001), ("eqtransformer:elep", 6000)):
        online = OnTheFlyTeacher(spec, batch_size=args.batch)
        n_windows = 512 if spec.startswith("phasenet") else 128
        windows = []
        for _ in range(n_windows):
            w = dataset.get_waveforms(int(rng.integers(len(dataset))))
            start = int(rng.integers(0, w.shape[1] - length + 1))
            windows.append(w[:, start : start + length])
        windows = np.stack(windows)
        t = seconds(lambda: [online.predict(windows[i : i + args.batch]) for i in range(0, n_windows, args.batch)])
        record(result, f"{spec.split(':')[0]}_on_the_fly_s_per_1000_windows_of_{length}", t, 1000 / n_windows)

    result["load_average_at_end"] = list(os.getloadavg())
    text = json.dumps(result, indent=2)
    (out / "benchmark.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    run_script(main)  # bad input: one line, exit 2
