"""``miniseed``: the user's continuous 3-component miniSEED (no picks), cut into windows for unlabelled distillation.

* Files: every file under ``miniseed.path`` matching ``miniseed.pattern``. A first pass reads headers only, to know
  which files hold which station and day; then one station-instrument-day is read at a time (memory stays bounded
  for months of data). Unreadable files are skipped and counted by name; an empty folder is an error.
* Per channel: overlaps are merged (obspy ``merge(method=1)``), gaps split the stream, and windows are cut only
  from spans where Z and both horizontals are gap-free. Gaps, overlaps and dropped data are counted.
* Components: Z/N/E, or Z/1/2. With ``miniseed.inventory`` (StationXML) 1/2 are rotated to N/E using the
  channels' azimuth and dip; without it 1/2 are taken as N/E, and every window says which in
  ``trace_horizontal_orientation``.
* Sampling rates may differ between stations: each gap-free span is resampled once to ``data.sampling_rate`` (the
  writer's anti-alias resampler) before cutting, so windows carry no per-window filter edge effects.
* Split groups (``source_id``): overlapping windows (hop < window) of one station must not straddle splits, so
  windows are never cut across a ``group_seconds`` block (aligned to UTC midnight, default one hour) and all windows
  of one block share a group: per station (``group_by: station``, the default) or across all stations
  (``group_by: time``, which also keeps an earthquake recorded at several stations within one split). Windows of
  two groups therefore never share a sample.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import obspy
from obspy import UTCDateTime

from pipeline.config import DataConfig
from pipeline.data import resample
from pipeline.errors import EdgepickError

log = logging.getLogger(__name__)

DAY = 86400.0
RESAMPLE_PAD_S = 10.0  # filter context on each side of a block when resampling
# What the last records() run counted (gaps, overlaps, unreadable files, ...): logged at the end and kept for tests.
last_summary: dict = {}


def records(config: DataConfig) -> tuple[Iterator, int | None, dict]:
    ms = config.miniseed
    _check_settings(config)
    root = Path(ms.path).expanduser() if ms.path else None
    if root is None or not root.exists():
        raise EdgepickError(f"miniseed: folder {ms.path!r} does not exist (set data.miniseed.path)")
    inventory_path = Path(ms.inventory).expanduser() if ms.inventory else None
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.glob(ms.pattern or "**/*") if p.is_file() and p != inventory_path)
    if not files:
        raise EdgepickError(f"miniseed: no files under {root} match {ms.pattern!r}")
    inventory = _read_inventory(inventory_path) if inventory_path else None

    summary: dict = {"files": len(files), "unreadable_files": {}, "counts": collections.Counter()}
    index = _index(files, summary)
    if not index:
        first, reason = next(iter(summary["unreadable_files"].items()))
        raise EdgepickError(f"miniseed: none of the {len(files)} files under {root} is readable miniSEED "
                            f"(e.g. {first}: {reason})")
    window = int(round(ms.window_seconds * config.sampling_rate))
    return _Records(_generate(index, config, inventory, summary), summary), None, {"min_samples": window, "unit": "counts"}


class _Records:
    """The windows, plus what was dropped on the way (``skipped``), which the writer adds to the dataset report."""

    def __init__(self, windows: Iterator, summary: dict):
        self.windows, self.summary = windows, summary

    def __iter__(self):
        return self.windows

    @property
    def skipped(self) -> dict:
        counts = {k: v for k, v in self.summary["counts"].items() if "skipped" in k}
        if self.summary["unreadable_files"]:
            counts["unreadable miniSEED files"] = len(self.summary["unreadable_files"])
        return counts


def _check_settings(config: DataConfig) -> None:
    ms = config.miniseed
    if not (ms.window_seconds > 0 and ms.hop_seconds > 0):
        raise EdgepickError("miniseed: window_seconds and hop_seconds must be positive")
    blocks = DAY / ms.group_seconds if ms.group_seconds > 0 else 0.5
    if abs(blocks - round(blocks)) > 1e-9 or blocks < 1:
        raise EdgepickError(f"miniseed: group_seconds {ms.group_seconds} must divide one day (86400 s)")
    if ms.window_seconds > ms.group_seconds:
        raise EdgepickError("miniseed: window_seconds must not exceed group_seconds (windows never cross a group)")
    if ms.group_by not in ("station", "time"):
        raise EdgepickError(f"miniseed: group_by must be 'station' or 'time', got {ms.group_by!r}")
    if sorted(config.component_order) != sorted("ZNE"):
        raise EdgepickError(f"miniseed: component_order must be a permutation of ZNE, got {config.component_order!r}")


def _read_inventory(path: Path):
    try:
        return obspy.read_inventory(str(path))
    except Exception as error:  # obspy raises many types for bad StationXML
        raise EdgepickError(f"miniseed: cannot read inventory {path} ({type(error).__name__}: {error})") from error


def _index(files: list[Path], summary: dict) -> dict:
    """(net, sta, loc, instrument) -> day (POSIX time of midnight) -> set of files holding data of that day."""
    index: dict = collections.defaultdict(lambda: collections.defaultdict(set))
    for path in files:
        try:
            stream = obspy.read(str(path), format="MSEED", headonly=True)
        except Exception as error:  # not miniSEED, truncated, permission: a counted skip
            summary["unreadable_files"][path.name] = " ".join(f"{type(error).__name__}: {error}".split())[:120]
            continue
        for trace in stream:
            s = trace.stats
            unit = (s.network, s.station, s.location, s.channel[:-1])
            day = UTCDateTime(s.starttime.date)
            while day <= s.endtime:
                index[unit][day.timestamp].add(path)  # UTCDateTime is not hashable
                day += DAY
    if summary["unreadable_files"]:
        names = list(summary["unreadable_files"])
        log.warning("miniseed: %d unreadable file(s) skipped: %s%s", len(names), ", ".join(names[:5]),
                    " ..." if len(names) > 5 else "")
    return index


def _generate(index: dict, config: DataConfig, inventory, summary: dict) -> Iterator:
    counts = summary["counts"]
    global last_summary
    last_summary = summary
    for unit in sorted(index):
        for day in sorted(index[unit]):
            stream = _read_day(unit, UTCDateTime(day), index[unit][day], counts)
            if stream is not None:
                yield from _windows(unit, stream, config, inventory, counts)
    log.warning("miniseed: %s", _summary_line(summary))


def _read_day(unit, day: UTCDateTime, files: set, counts) -> obspy.Stream | None:
    net, sta, loc, inst = unit
    stream = obspy.Stream()
    for path in sorted(files):
        try:
            part = obspy.read(str(path), format="MSEED", starttime=day, endtime=day + DAY)
        except Exception:  # readable headers, unreadable data: counted (the name was seen in the index pass)
            counts["files unreadable on second read"] += 1
            continue
        part = part.select(network=net, station=sta, location=loc, channel=inst + "?")
        stream.extend([t for t in part if t.stats.npts])
    return stream if len(stream) else None


def _merge_channel(traces: obspy.Stream, counts) -> list[obspy.Trace]:
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


def _windows(unit, stream: obspy.Stream, config: DataConfig, inventory, counts) -> Iterator:
    by_component: dict[str, list[obspy.Trace]] = {}
    for component in sorted({t.stats.channel[-1] for t in stream}):
        by_component[component] = _merge_channel(stream.select(component=component), counts)
    if {"Z", "N", "E"} <= set(by_component):
        horizontals, orientation = ("N", "E"), "NE"
    elif {"Z", "1", "2"} <= set(by_component):
        horizontals = ("1", "2")
        orientation = "12 rotated to NE (inventory)" if inventory is not None else "12 taken as NE (not rotated)"
    else:
        counts[f"station-days without Z + N/E or 1/2 ({''.join(sorted(by_component))})"] += 1
        return
    ms = config.miniseed
    target = config.sampling_rate
    for start, end, pieces in _common_spans([by_component[c] for c in ("Z", *horizontals)]):
        rates = {p.stats.sampling_rate for p in pieces}
        if len(rates) > 1:
            counts["spans skipped: components at different sampling rates"] += 1
            continue
        rate = rates.pop()
        if end - start < ms.window_seconds:
            counts["gap-free spans shorter than one window"] += 1
            counts["seconds dropped in spans shorter than one window"] += end - start
            continue
        # One group block at a time keeps memory to about one block of samples, however long the files are.
        block = UTCDateTime(math.floor(start.timestamp / ms.group_seconds) * ms.group_seconds)
        while block <= end:
            block_end = block + ms.group_seconds
            b0, b1 = max(start, block), min(end, block_end)
            block, this_block = block_end, block
            if b1 - b0 + 1 / rate < ms.window_seconds - 1e-6:
                continue
            # The resampler's filter gets RESAMPLE_PAD_S of context on both sides (inside the span); windows are
            # cut from the block only, so no window holds a sample of another block.
            pad = RESAMPLE_PAD_S if abs(rate - target) > 1e-6 else 0.0
            data, first = _aligned(pieces, max(start, b0 - pad), min(end, b1 + pad), rate)
            if horizontals == ("1", "2") and inventory is not None:
                data = _rotate(data, pieces, inventory, b0, counts)
                if data is None:
                    continue
            if abs(rate - target) > 1e-6:
                data = resample(data, rate, target)
            arrays = {"Z": data[0], "N": data[1], "E": data[2]}
            data = np.stack([arrays[c] for c in config.component_order])
            yield from _cut(data, first, b0, this_block, target, rate, unit, orientation, config, counts)


def _common_spans(components: list[list[obspy.Trace]]):
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


def _aligned(pieces: list[obspy.Trace], start: UTCDateTime, end: UTCDateTime, rate: float):
    """The components' samples in [start, end] as one (3, n) float64 array, and the time of its first sample."""
    cut = []
    for piece in pieces:
        i0 = max(int(math.ceil((start - piece.stats.starttime) * rate - 1e-3)), 0)
        i1 = min(int(math.floor((end - piece.stats.starttime) * rate + 1e-3)), piece.stats.npts - 1)
        cut.append(np.asarray(piece.data[i0 : i1 + 1], dtype=np.float64))
    n = min(len(c) for c in cut)
    first = pieces[0].stats.starttime + max(int(math.ceil((start - pieces[0].stats.starttime) * rate - 1e-3)), 0) / rate
    return np.stack([c[:n] for c in cut]), first


def _rotate(data: np.ndarray, pieces, inventory, when: UTCDateTime, counts):
    from obspy.signal.rotate import rotate2zne

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


def _cut(data, first: UTCDateTime, t: UTCDateTime, block: UTCDateTime, target: float, rate: float, unit, orientation,
         config: DataConfig, counts):
    """Windows from ``t`` on, every hop, inside ``block``; ``data`` starts at ``first`` and may extend beyond."""
    net, sta, loc, inst = unit
    ms = config.miniseed
    length = int(round(ms.window_seconds * target))
    hop = ms.hop_seconds
    block_end = block + ms.group_seconds
    group = block.strftime("%Y-%m-%dT%H:%M:%S")
    if ms.group_by == "station":
        group = f"{net}.{sta}.{loc}:{group}"
    t = max(t, first)
    while True:
        i0 = max(int(math.ceil((t - first) * target - 1e-6)), 0)  # the first sample at or after t
        if i0 + length > data.shape[1]:
            break
        start_time = first + i0 / target
        if start_time + (length - 1) / target >= block_end - 1e-6:
            break  # the window's last sample would lie in the next block
        metadata = {
            "trace_name": f"{net}.{sta}.{loc}.{inst}_{start_time.strftime('%Y%m%dT%H%M%S.%f')}",
            "trace_start_time": start_time.isoformat(),
            "station_network_code": net,
            "station_code": sta,
            "station_location_code": loc,
            "trace_channel": inst,
            "trace_sampling_rate_hz": target,
            "trace_component_order": config.component_order,
            "trace_horizontal_orientation": orientation,
            "trace_category": "continuous",
            "trace_p_arrival_sample": np.nan,
            "trace_s_arrival_sample": np.nan,
            "source_id": group,
        }
        if abs(rate - target) > 1e-6:
            metadata["trace_original_sampling_rate_hz"] = rate
        counts["windows"] += 1
        yield metadata, data[:, i0 : i0 + length]
        t = t + hop


def _summary_line(summary: dict) -> str:
    counts = summary["counts"]
    parts = [f"{counts.get('windows', 0)} windows from {summary['files']} files"]
    for key, value in counts.items():
        if key != "windows":
            parts.append(f"{key}: {round(value, 2) if isinstance(value, float) else value}")
    if summary["unreadable_files"]:
        parts.append(f"unreadable files: {len(summary['unreadable_files'])}")
    return "; ".join(parts)
