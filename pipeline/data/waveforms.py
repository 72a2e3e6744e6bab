"""Waveforms as obspy reads them: one miniSEED reader (files skipped and counted by name when unreadable), one
per-channel merge (overlaps merged, gaps split, never interpolated), the gap-free spans where all three
components have data, and one anti-alias resampler. The data sources, the benchmark and the replay tool share
them."""

from __future__ import annotations

import collections
import glob
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import obspy
from obspy import UTCDateTime
from obspy.signal.rotate import rotate2zne

from pipeline.errors import EdgepickError



def resample(waveform: np.ndarray, rate: float, target: float) -> np.ndarray:
    """Resample with an anti-alias filter (obspy): decimation for integer factors, else Fourier resampling."""
    out = []
    for channel in waveform:
        trace = obspy.Trace(np.asarray(channel, dtype=np.float64), header={"sampling_rate": rate})
        factor = rate / target
        if factor > 1 and abs(factor - round(factor)) < 1e-9 and round(factor) <= 16:
            trace.decimate(int(round(factor)), no_filter=False, strict_length=False)
        else:
            trace.resample(target, no_filter=factor <= 1)
        out.append(trace.data)
    length = min(len(c) for c in out)
    return np.stack([c[:length] for c in out])


def read_files(paths: Iterable[Path], unreadable: dict[str, str], **read_args) -> obspy.Stream:
    """Every trace with samples in the waveform files ``paths`` (obspy ``read``, with ``read_args`` such as
    ``format``, ``headonly``, ``starttime``); a file obspy cannot read is recorded in ``unreadable`` (name -> the
    reason, one line) and skipped."""
    stream = obspy.Stream()
    for path in paths:
        try:
            part = obspy.read(str(path), **read_args)
        except Exception as error:  # noqa: BLE001 - not miniSEED, truncated, permissions: obspy raises many kinds
            reason = " ".join(f"{type(error).__name__}: {error}".split())  # one line, cut at a word if long
            unreadable[Path(path).name] = reason if len(reason) <= 200 else reason[:197].rsplit(" ", 1)[0] + "..."
            continue
        stream.extend([t for t in part if t.stats.npts or read_args.get("headonly")])
    return stream


def refuse_unreadable(unreadable: dict[str, str]) -> None:
    """One line naming the first file :func:`read_files` could not read (``unreadable``), if any."""
    if unreadable:
        name, reason = next(iter(unreadable.items()))
        raise EdgepickError(f"cannot read {name}: {reason}")


def merge_channel(traces: obspy.Stream, counts) -> list[obspy.Trace]:
    """Merge one channel's traces (overlaps: method=1) and split at gaps; count what was dropped."""
    rates = collections.Counter()
    for trace in traces:
        rates[trace.stats.sampling_rate] += trace.stats.npts
    rate = rates.most_common(1)[0][0]
    if len(rates) > 1:
        dropped = [t for t in traces if t.stats.sampling_rate != rate]
        counts["traces dropped: second sampling rate on one channel"] += len(dropped)
        traces = obspy.Stream([t for t in traces if t.stats.sampling_rate == rate])
    traces.sort(keys=["starttime"])
    for gap in traces.get_gaps():
        delta = gap[6]
        if delta > 0:
            counts["gaps"] += 1
            counts["gap seconds"] += delta
        elif delta < 0 and -delta <= 1.5 / rate:
            counts["file boundaries with one duplicated sample (merged)"] += 1
        elif delta < 0:
            counts["overlaps merged"] += 1
            counts["overlap seconds"] += -delta
    try:
        traces.merge(method=1, fill_value=None)  # gaps stay masked and are split off below
    except Exception:  # e.g. sub-sample misaligned pieces: keep them unmerged
        counts["channel-days not mergeable (kept as separate pieces)"] += 1
    return list(traces.split())


def station_components(stream: obspy.Stream, counts) -> tuple[dict[str, list[obspy.Trace]], tuple[str, str]] | None:
    """One station's channels merged per component (:func:`merge_channel`) and its horizontals: ("N", "E"), or
    ("1", "2") for unrotated sensors; None (counted) without a vertical and two horizontals."""
    by_component = {component: merge_channel(stream.select(component=component), counts)
                    for component in sorted({t.stats.channel[-1] for t in stream})}
    if {"Z", "N", "E"} <= set(by_component):
        return by_component, ("N", "E")
    if {"Z", "1", "2"} <= set(by_component):
        return by_component, ("1", "2")
    counts[f"station-days without Z + N/E or 1/2 ({''.join(sorted(by_component))})"] += 1
    return None


def common_spans(components: list[list[obspy.Trace]]):
    """Time spans where every component has gap-free data: (start, end, one piece per component)."""
    spans = [(t.stats.starttime, t.stats.endtime, [t]) for t in components[0]]
    for pieces in components[1:]:
        joined = []
        for a0, a1, kept in spans:
            for piece in pieces:
                b0, b1 = piece.stats.starttime, piece.stats.endtime
                start, end = max(a0, b0), min(a1, b1)
                if end > start:
                    joined.append((start, end, kept + [piece]))
        spans = joined
    return sorted(spans, key=lambda span: span[0])


def aligned(pieces: list[obspy.Trace], start: UTCDateTime, end: UTCDateTime, rate: float):
    """The components' samples in [start, end] as one (3, n) float64 array, and the time of its first sample."""
    cut = []
    for piece in pieces:
        i0 = max(int(math.ceil((start - piece.stats.starttime) * rate - 1e-3)), 0)
        i1 = min(int(math.floor((end - piece.stats.starttime) * rate + 1e-3)), piece.stats.npts - 1)
        cut.append(np.asarray(piece.data[i0 : i1 + 1], dtype=np.float64))
    n = min(len(c) for c in cut)
    first = pieces[0].stats.starttime + max(int(math.ceil((start - pieces[0].stats.starttime) * rate - 1e-3)), 0) / rate
    return np.stack([c[:n] for c in cut]), first


def rotate_zne(data: np.ndarray, pieces, inventory, when: UTCDateTime, counts):
    try:
        angles = [inventory.get_orientation(p.id, when) for p in pieces]
    except Exception:  # channel absent from the inventory
        counts["spans skipped: channel not in inventory"] += 1
        return None
    args = []
    for row, angle in zip(data, angles):
        args += [row, angle["azimuth"], angle["dip"]]
    z, n, e = rotate2zne(*args)
    return np.stack([z, n, e])


def station_segments(path: str | Path, station: str | None = None, sampling_rate: float = 100.0,
                     station_option: str = "replay --station") -> tuple[list[tuple[int, np.ndarray]], float]:
    """One station of a miniSEED file (or a glob pattern of files) as gap-free segments at ``sampling_rate``: ([(first sample index, (3, m) Z, N,
    E float32)], start time in epoch seconds). Read, merged and resampled as the data stage does
    (:mod:`pipeline.data.waveforms`): overlaps merged, gaps never interpolated (the device hears of them as a jump in the
    sample index), horizontals N/E or 1/2 taken as N/E. A file of several stations is refused, naming
    ``station_option``, the caller's way to pick one."""
    paths = sorted(glob.glob(str(path))) or [str(path)]  # a pattern for one file per channel, e.g. "NET.STA.*.mseed"
    unreadable: dict[str, str] = {}
    stream = read_files(paths, unreadable)
    refuse_unreadable(unreadable)
    if station:
        parts = station.split(".")
        stream = stream.select(network=parts[0], station=parts[1]) if len(parts) > 1 else stream.select(station=parts[0])
    stations = sorted({(tr.stats.network, tr.stats.station) for tr in stream})
    if not stations:
        raise EdgepickError(f"{path}: no traces{' for ' + station if station else ''}")
    if len(stations) > 1:
        raise EdgepickError(f"{path} holds {len(stations)} stations ({', '.join('.'.join(s) for s in stations[:5])}): pick one ({station_option})")
    counts = collections.Counter()
    components = station_components(stream, counts)
    if components is None:
        raise EdgepickError(f"{path}: no Z and N/E or 1/2 components (channels: {', '.join(tr.stats.channel for tr in stream)})")
    by_component, horizontals = components
    spans = common_spans([by_component[c] for c in ("Z", *horizontals)])
    if not spans:
        raise EdgepickError(f"{path}: the three components do not overlap in time")
    t0 = spans[0][0]
    segments = []
    for start, end, pieces in spans:
        rate = pieces[0].stats.sampling_rate
        data, first = aligned(pieces, start, end, rate)
        if abs(rate - sampling_rate) > 1e-6:
            data = resample(data, rate, sampling_rate)
        segments.append((int(round((first - t0) * sampling_rate)), data.astype(np.float32)))
    return segments, float(t0.timestamp)
