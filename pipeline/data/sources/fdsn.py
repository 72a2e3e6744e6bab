"""Events with P/S picks from an FDSN event service and their waveforms from an FDSN data centre.

``records(config)`` returns ``(iterator, total, writer_options)`` for :func:`pipeline.data.datasets.write_dataset`:

1. The event service (``fdsn.event_client``: a name such as ``USGS`` or a base URL) is asked for the events in
   the configured time window, latitude/longitude box and magnitude range, with their arrivals where the service
   offers them. An event that comes without picks (USGS's list query, for instance) is fetched again on its own by
   event id, which is where USGS puts the picks of its contributing networks.
2. For every station of the configured networks with a P pick (phase hints P, Pg, Pn, Pb, P*; S likewise), the
   station service gives the channel orientations and coordinates, and the dataselect service the waveform window
   ``[P - seconds_before_p, P - seconds_before_p + trace_seconds]``. Gaps up to ``max_gap_seconds`` are filled by
   interpolation, longer ones skip the trace (or fall back to the next band); the band with the highest sampling
   rate that has three components wins; components are rotated to ZNE with the inventory's azimuths and dips.

Every response is cached on disk (``fdsn.cache``, by default ``.fdsn_cache`` beside the output folder), written
atomically, HTTP 204 "no data" included, so a killed run re-run asks only for what it lacks. Requests are spaced
to ``requests_per_second``. A failed request for one trace is a counted skip; an event service that cannot be
reached, or a waveform service that cannot be reached at all, is one :class:`EdgepickError`.
"""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import obspy
from obspy import UTCDateTime
from obspy.signal.rotate import rotate2zne
from tqdm import tqdm

from pipeline.config import DataConfig, FdsnConfig
from pipeline.errors import EdgepickError
from pipeline.data.sources.fdsn_client import RateLimiter, RequestFailed, Service, client_url, one_line

log = logging.getLogger(__name__)

CACHE_NAME = ".fdsn_cache"
PHASE = re.compile(r"([PpSs])([gGnNbB*])?")
STANDARD_ORIENTATION = {"Z": (0.0, -90.0), "N": (0.0, 0.0), "E": (90.0, 0.0)}


class _Skip(Exception):
    """One trace (or one event) cannot be made; the reason is counted."""


@dataclass
class Job:
    """One trace to make: an event and a station with a P pick (and maybe an S pick)."""

    event: object  # obspy Event
    event_id: str
    network: str
    station: str
    p_pick: object
    s_pick: object | None


def records(config: DataConfig) -> tuple[Iterator[tuple[dict, np.ndarray]], int, dict]:
    fdsn = config.fdsn
    cache_dir = Path(fdsn.cache) if fdsn.cache else config.out_dir().parent / CACHE_NAME
    source = FdsnSource(config, cache_dir)
    jobs = source.jobs()
    total = len(jobs) if not config.max_traces else min(len(jobs), config.max_traces)
    min_samples = max(1, int(fdsn.trace_seconds * config.sampling_rate * 0.99))
    return Records(source, jobs), total, {"min_samples": min_samples}


class Records:
    """The iterator :func:`records` returns; ``skipped`` counts what the source left out (event or trace) and why,
    ``source`` holds the services with their request and cache-hit counts."""

    def __init__(self, source: "FdsnSource", jobs: list[Job]):
        self.source, self.jobs = source, jobs
        self.skipped = source.skipped
        self._iterator = source.iterate(jobs)

    def __iter__(self) -> "Records":
        return self

    def __next__(self) -> tuple[dict, np.ndarray]:
        return next(self._iterator)

    def close(self) -> None:
        self._iterator.close()


class FdsnSource:
    def __init__(self, config: DataConfig, cache_dir: Path):
        fdsn: FdsnConfig = config.fdsn
        if fdsn.trace_seconds <= 0 or fdsn.seconds_before_p < 0 or fdsn.seconds_before_p >= fdsn.trace_seconds:
            raise EdgepickError("data.fdsn needs trace_seconds > seconds_before_p >= 0")
        self.config, self.fdsn = config, fdsn
        self.cache_dir = Path(cache_dir)
        limiter = RateLimiter(fdsn.requests_per_second)  # one limit for all services together
        self.events = Service(fdsn.event_client, "event", self.cache_dir, limiter, fdsn.timeout_s)
        if client_url(fdsn.waveform_client) == client_url(fdsn.event_client):
            self.waveforms = self.events
        else:
            self.waveforms = Service(fdsn.waveform_client, "waveform", self.cache_dir, limiter, fdsn.timeout_s)
        self.networks = {n.strip() for n in fdsn.networks.split(",") if n.strip() and n.strip() != "*"}
        self.bands = [c.strip()[:2] for c in fdsn.channels.split(",") if c.strip()]
        self.skipped: collections.Counter[str] = collections.Counter()
        self._inventories: dict[tuple[str, str], object] = {}

    # -- events and picks -------------------------------------------------------------------------------------

    def _event_query(self, params: dict) -> bytes | None:
        """An event query with arrivals, asked again without them if the service refuses the parameter."""
        try:
            return self.events.fetch("event", {**params, "includearrivals": True})
        except RequestFailed as failed:
            if "BadRequest" not in type(failed.error).__name__:
                raise
        return self.events.fetch("event", params)

    def jobs(self) -> list[Job]:
        fdsn = self.fdsn
        params = {
            "starttime": _time(fdsn.starttime, "starttime"),
            "endtime": _time(fdsn.endtime, "endtime"),
            "minlatitude": fdsn.minlatitude,
            "maxlatitude": fdsn.maxlatitude,
            "minlongitude": fdsn.minlongitude,
            "maxlongitude": fdsn.maxlongitude,
            "minmagnitude": fdsn.minmagnitude,
            "orderby": "time-asc",
        }
        if fdsn.max_events > 0:
            params["limit"] = int(fdsn.max_events)
        try:
            data = self._event_query(params)
        except RequestFailed as failed:
            raise EdgepickError(
                f"FDSN event query to {self.events.name} failed: {one_line(failed.error)}"
            ) from failed.error
        if data is None:
            raise EdgepickError(f"FDSN event service {self.events.name}: no events match data.fdsn's window")
        catalog = _read_events(data, f"event list from {self.events.name}")
        events = list(catalog)[: fdsn.max_events] if fdsn.max_events > 0 else list(catalog)
        jobs: list[Job] = []
        kept = []
        for event in events:
            if event.event_type in (None, "earthquake", "induced or triggered event"):
                kept.append(event)
            else:
                self.skipped[f"event type {event.event_type}"] += 1
        events = kept
        need_detail = [e for e in events if not e.picks]
        detailed = {}
        for event in tqdm(need_detail, desc="fdsn[event picks]", unit="event", disable=not need_detail):
            try:
                detailed[id(event)] = self._detail(event)
            except _Skip as reason:
                self.skipped[str(reason)] += 1
        for event in events:
            event_id = str(event.resource_id)
            full = detailed.get(id(event), event)
            if not full.picks:
                self.skipped["event without picks"] += 1
                continue
            if full.preferred_origin() is None and not full.origins:
                self.skipped["event without origin"] += 1
                continue
            for (network, station), picks in sorted(self._station_picks(full).items()):
                if "P" not in picks:
                    self.skipped["station with an S pick but no P pick"] += 1
                    continue
                jobs.append(Job(full, event_id, network, station, picks["P"], picks.get("S")))
        log.info("fdsn: %d events, %d station picks with P", len(events), len(jobs))
        return jobs

    def _detail(self, event) -> object:
        event_id = _event_query_id(event)
        if not event_id:
            raise _Skip("event without a usable event id")
        try:
            data = self._event_query({"eventid": event_id})
        except RequestFailed as failed:
            raise _Skip(f"event detail request failed ({type(failed.error).__name__})") from None
        if data is None:
            raise _Skip("event detail: no data")
        try:
            catalog = _read_events(data, f"event {event_id}")
        except EdgepickError as error:
            raise _Skip("event detail: unreadable QuakeML") from error
        return catalog[0] if len(catalog) else event

    def _station_picks(self, event) -> dict[tuple[str, str], dict[str, object]]:
        """The best P and S pick of each station of the configured networks (manual first, then earliest)."""
        phase_of: dict[str, str] = {}
        origins = [event.preferred_origin()] if event.preferred_origin() is not None else []
        for origin in origins + list(event.origins):
            for arrival in origin.arrivals:
                if arrival.pick_id is not None and arrival.phase:
                    phase_of.setdefault(str(arrival.pick_id), arrival.phase)
        chosen: dict[tuple[str, str], dict[str, object]] = collections.defaultdict(dict)
        for pick in event.picks:
            hint = pick.phase_hint or phase_of.get(str(pick.resource_id)) or ""
            match = PHASE.fullmatch(hint.strip())
            wid = pick.waveform_id
            if match is None or wid is None or not wid.network_code or not wid.station_code or pick.time is None:
                continue
            if self.networks and wid.network_code not in self.networks:
                continue
            kind = match.group(1).upper()
            key = (wid.network_code, wid.station_code)
            rank = (pick.evaluation_mode != "manual", pick.time)
            old = chosen[key].get(kind)
            if old is None or rank < (old.evaluation_mode != "manual", old.time):
                chosen[key][kind] = pick
        return {k: v for k, v in chosen.items() if v}

    # -- traces -----------------------------------------------------------------------------------------------

    def iterate(self, jobs: list[Job]) -> Iterator[tuple[dict, np.ndarray]]:
        made = 0
        try:
            for job in jobs:
                if self.config.max_traces and made >= self.config.max_traces:
                    break
                try:
                    record = self.make(job)
                except _Skip as reason:
                    self.skipped[str(reason)] += 1
                    continue
                made += 1
                yield record
        finally:
            if self.skipped:
                reasons = "; ".join(f"{n} x {r}" for r, n in self.skipped.items())
                log.warning("fdsn: skipped %d: %s", sum(self.skipped.values()), reasons)
            log.info(
                "fdsn: %d requests sent, %d answered from the cache %s",
                self.events.requests + (self.waveforms.requests if self.waveforms is not self.events else 0),
                self.events.cache_hits + (self.waveforms.cache_hits if self.waveforms is not self.events else 0),
                self.cache_dir,
            )

    def inventory(self, network: str, station: str):
        key = (network, station)
        if key not in self._inventories:
            params = {
                "network": network,
                "station": station,
                "level": "channel",
                "starttime": _time(self.fdsn.starttime, "starttime"),
                "endtime": _time(self.fdsn.endtime, "endtime"),
            }
            try:
                data = self.waveforms.fetch("station", params)
            except RequestFailed as failed:
                raise _Skip(f"station request failed ({type(failed.error).__name__})") from None
            inventory = None
            if data:
                try:
                    inventory = obspy.read_inventory(io.BytesIO(data), format="STATIONXML")
                except Exception:  # noqa: BLE001 - any parse failure is a skip of this station
                    inventory = None
            self._inventories[key] = inventory
        if self._inventories[key] is None:
            raise _Skip("no station metadata")
        return self._inventories[key]

    def make(self, job: Job) -> tuple[dict, np.ndarray]:
        fdsn = self.fdsn
        inventory = self.inventory(job.network, job.station)
        start = job.p_pick.time - fdsn.seconds_before_p
        end = start + fdsn.trace_seconds
        params = {
            "network": job.network,
            "station": job.station,
            "location": "*",
            "channel": fdsn.channels,
            "starttime": start,
            "endtime": end,
        }
        try:
            data = self.waveforms.fetch("dataselect", params)
        except RequestFailed as failed:
            raise _Skip(f"waveform request failed ({type(failed.error).__name__})") from None
        if not data:
            raise _Skip("no waveform data")
        try:
            stream = obspy.read(io.BytesIO(data), format="MSEED")
        except Exception:  # noqa: BLE001
            raise _Skip("unreadable miniSEED") from None
        pick_location = job.p_pick.waveform_id.location_code
        reasons = []
        for (location, band), traces in self._groups(stream, pick_location):
            try:
                first, rate, components = self._assemble(traces, start, inventory)
            except _Skip as reason:
                reasons.append(str(reason))
                continue
            break
        else:
            raise _Skip(reasons[0] if reasons else "no three-component channel group")
        coordinates = _station_coordinates(inventory, job.network, job.station, start)
        if coordinates is None:
            raise _Skip("no station coordinates")
        waveform = np.stack([components[c] for c in self.config.component_order])
        return self._metadata(job, first, rate, location, band, coordinates), waveform

    def _groups(self, stream, pick_location):
        """Channel groups (location, band) with three components, best first: highest rate, configured order."""
        groups: dict[tuple[str, str], list] = collections.defaultdict(list)
        for trace in stream:
            groups[(trace.stats.location, trace.stats.channel[:2])].append(trace)
        ranked = []
        for (location, band), traces in groups.items():
            codes = {t.stats.channel[2:] for t in traces}
            if len(codes) < 3:
                continue
            rate = max(t.stats.sampling_rate for t in traces)
            order = self.bands.index(band) if band in self.bands else len(self.bands)
            ranked.append(((-rate, order, location != (pick_location or ""), location), (location, band), traces))
        if not ranked:
            raise _Skip("fewer than three components")
        return [(key, traces) for _, key, traces in sorted(ranked, key=lambda r: r[0])]

    def _assemble(self, traces, start: UTCDateTime, inventory):
        """Merge, trim, fill short gaps and rotate one channel group; return (first sample time, rate, ZNE dict)."""
        by_channel: dict[str, list] = collections.defaultdict(list)
        for trace in traces:
            by_channel[trace.id].append(trace)
        rates = {t.stats.sampling_rate for t in traces}
        if len(rates) != 1:
            raise _Skip("components with different sampling rates")
        rate = rates.pop()
        npts = int(round(self.fdsn.trace_seconds * rate))
        max_gap = int(math.floor(self.fdsn.max_gap_seconds * rate))
        channels = []
        first = None
        for seed_id in sorted(by_channel, key=_component_rank):
            stream = obspy.Stream([t.copy() for t in by_channel[seed_id]])
            try:
                stream.merge(method=1, fill_value=None)
            except Exception:  # noqa: BLE001 - obspy refuses to merge inconsistent traces
                raise _Skip("traces that cannot be merged") from None
            trace = stream[0]
            trace.trim(start, start + (npts - 1) / rate, pad=True, fill_value=None, nearest_sample=True)
            if first is None:
                first = trace.stats.starttime
            elif abs(trace.stats.starttime - first) > 0.5 / rate:
                raise _Skip("components not aligned in time")
            values = np.ma.masked_invalid(np.ma.asarray(trace.data, dtype=np.float64))
            if len(values) < npts:
                values = np.ma.concatenate([values, np.ma.masked_all(npts - len(values))])
            values = values[:npts]
            channels.append((seed_id, _fill_gaps(values, max_gap)))
        if len(channels) != 3:
            raise _Skip(f"{len(channels)} components, not three")
        arguments = []
        for seed_id, values in channels:
            arguments += [values, *_orientation(inventory, seed_id, first)]
        try:
            z, n, e = rotate2zne(*arguments)
        except ValueError:  # the inventory's orientations are not linearly independent
            raise _Skip("channel orientations that cannot be rotated to ZNE") from None
        return first, rate, {"Z": z, "N": n, "E": e}

    def _metadata(self, job: Job, first, rate, location, band, coordinates) -> dict:
        event = job.event
        origin = event.preferred_origin() or event.origins[0]
        magnitude = event.preferred_magnitude() or (event.magnitudes[0] if event.magnitudes else None)
        s_sample = np.nan
        if job.s_pick is not None:
            s_sample = float(job.s_pick.time - first) * rate
        latitude, longitude, elevation = coordinates
        metadata = {
            "trace_name": f"{_short_id(job.event_id)}_{job.network}.{job.station}.{location}.{band}",
            "source_id": job.event_id,
            "source_origin_time": str(origin.time),
            "source_latitude_deg": origin.latitude,
            "source_longitude_deg": origin.longitude,
            "source_depth_km": origin.depth / 1000.0 if origin.depth is not None else np.nan,
            "source_magnitude": magnitude.mag if magnitude is not None else np.nan,
            "source_magnitude_type": (magnitude.magnitude_type or "") if magnitude is not None else "",
            "station_network_code": job.network,
            "station_code": job.station,
            "station_location_code": location,
            "station_latitude_deg": latitude,
            "station_longitude_deg": longitude,
            "station_elevation_m": elevation,
            "trace_channel": band,
            "trace_start_time": str(first),
            "trace_sampling_rate_hz": rate,
            "trace_p_arrival_sample": float(job.p_pick.time - first) * rate,
            "trace_p_status": job.p_pick.evaluation_mode or "",
            "trace_s_arrival_sample": s_sample,
            "trace_s_status": (job.s_pick.evaluation_mode or "") if job.s_pick is not None else "",
            "trace_category": "earthquake_local",
        }
        if origin.latitude is not None and latitude is not None:
            from obspy.geodetics import gps2dist_azimuth

            distance, _, back_azimuth = gps2dist_azimuth(origin.latitude, origin.longitude, latitude, longitude)
            metadata["path_ep_distance_km"] = distance / 1000.0
            metadata["path_back_azimuth_deg"] = back_azimuth
        return metadata


# -- helpers ---------------------------------------------------------------------------------------------------


def _time(text: str, name: str) -> UTCDateTime:
    try:
        return UTCDateTime(text)
    except Exception as error:  # noqa: BLE001
        raise EdgepickError(f"data.fdsn.{name}: cannot read {text!r} as a time") from error


def _read_events(data: bytes, what: str):
    try:
        return obspy.read_events(io.BytesIO(data), format="QUAKEML")
    except Exception as error:  # noqa: BLE001
        raise EdgepickError(f"{what}: not readable QuakeML ({one_line(error)})") from error


def _event_query_id(event) -> str:
    """The id to ask an event service for one event: USGS's ``eventid=`` in the resource id, its catalog
    attributes, or the last part of the resource id."""
    text = str(event.resource_id)
    match = re.search(r"eventid=([^&]+)", text)
    if match:
        return match.group(1)
    extra = getattr(event, "extra", None) or {}
    if "eventid" in extra:
        source = extra.get("eventsource", {}).get("value", "")
        return f"{source}{extra['eventid'].get('value', '')}"
    return re.split(r"[/=]", text.rstrip("/"))[-1]


def _short_id(event_id: str) -> str:
    tail = re.split(r"[/=:&?]", event_id.rstrip("/"))
    tail = [t for t in tail if t and t not in ("quakeml", "format")]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", tail[-1] if tail else "event")[-40:]
    return f"{name}-{hashlib.sha256(event_id.encode()).hexdigest()[:6]}"


def _component_rank(seed_id: str) -> int:
    return "Z3N1E2".find(seed_id[-1]) if seed_id[-1] in "Z3N1E2" else 9


def _fill_gaps(values: np.ma.MaskedArray, max_gap: int) -> np.ndarray:
    """Linear interpolation across masked runs up to ``max_gap`` samples; a longer run skips the trace."""
    mask = np.ma.getmaskarray(values)
    data = np.ma.getdata(values).astype(np.float64)
    if not mask.any():
        return data
    if mask.all():
        raise _Skip("no samples in the window")
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    longest = int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())
    if longest > max_gap:
        raise _Skip("gap longer than data.fdsn.max_gap_seconds")
    index = np.arange(len(data))
    data[mask] = np.interp(index[mask], index[~mask], data[~mask])
    return data


def _orientation(inventory, seed_id: str, when) -> tuple[float, float]:
    try:
        found = inventory.get_orientation(seed_id, when)
        azimuth, dip = found["azimuth"], found["dip"]
        if azimuth is not None and dip is not None:
            return float(azimuth), float(dip)
    except Exception:  # noqa: BLE001 - a channel the inventory does not describe
        pass
    code = seed_id[-1]
    if code in STANDARD_ORIENTATION:
        return STANDARD_ORIENTATION[code]
    raise _Skip("no orientation for a non-ZNE channel")


def _station_coordinates(inventory, network: str, station: str, when):
    for net in inventory.select(network=network, station=station):
        for sta in net:
            if sta.start_date is not None and sta.start_date > when:
                continue
            if sta.end_date is not None and sta.end_date < when:
                continue
            if sta.latitude is None or sta.longitude is None:
                continue
            return float(sta.latitude), float(sta.longitude), float(sta.elevation or 0.0)
    return None
