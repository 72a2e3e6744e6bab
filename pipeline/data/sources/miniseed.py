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

from pipeline.data import waveforms
from pipeline.config import DataConfig
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
        for trace in waveforms.read_files([path], summary["unreadable_files"], format="MSEED", headonly=True):
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
    unreadable: dict[str, str] = {}  # readable headers, unreadable data: counted (the name was seen in the index pass)
    stream = waveforms.read_files(sorted(files), unreadable, format="MSEED", starttime=day, endtime=day + DAY)
    counts["files unreadable on second read"] += len(unreadable)
    stream = stream.select(network=net, station=sta, location=loc, channel=inst + "?")
    return stream if len(stream) else None


def _windows(unit, stream: obspy.Stream, config: DataConfig, inventory, counts) -> Iterator:
    components = waveforms.station_components(stream, counts)
    if components is None:
        return
    by_component, horizontals = components
    if horizontals == ("N", "E"):
        orientation = "NE"
    else:
        orientation = "12 rotated to NE (inventory)" if inventory is not None else "12 taken as NE (not rotated)"
    ms = config.miniseed
    target = config.sampling_rate
    for start, end, pieces in waveforms.common_spans([by_component[c] for c in ("Z", *horizontals)]):
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
            data, first = waveforms.aligned(pieces, max(start, b0 - pad), min(end, b1 + pad), rate)
            if horizontals == ("1", "2") and inventory is not None:
                data = waveforms.rotate_zne(data, pieces, inventory, b0, counts)
                if data is None:
                    continue
            if abs(rate - target) > 1e-6:
                data = waveforms.resample(data, rate, target)
            arrays = {"Z": data[0], "N": data[1], "E": data[2]}
            data = np.stack([arrays[c] for c in config.component_order])
            yield from _cut(data, first, b0, this_block, target, rate, unit, orientation, config, counts)


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
