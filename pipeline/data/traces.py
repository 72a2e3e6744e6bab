"""The traces a model is scored on: a SeisBench-format folder or one of its splits (``path:split``), or a folder of
continuous miniSEED, as ``make benchmark``, ``make calibrate`` and the studies read them."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import obspy

from pipeline.data import waveforms
from pipeline.data.datasets import hz, open_dataset
from pipeline.errors import EdgepickError


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
    dataset = open_dataset(path, sampling_rate=None, component_order="ZNE")  # SeisBench's default, without its warning
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
