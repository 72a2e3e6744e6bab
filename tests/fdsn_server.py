"""A real FDSN web service on loopback for the tests: fixture QuakeML, StationXML and miniSEED made with obspy.

``FdsnFixture`` builds three Oklahoma-like events with P/S picks and five stations of network OK (plus one of a
network the source is not configured for), with continuous synthetic waveforms in which every P arrival is a step
on the vertical and every S arrival a step on the true north component:

* OK.AAA  HH ZNE 100 Hz; the second event's window of HHE holds an overlap (a repeated second of data)
* OK.BBB  HH Z12 100 Hz, components 1/2 at azimuths 30/120 degrees, plus BH ZNE 40 Hz (the lower rate loses);
          no S pick
* OK.CCC  EH ZNE 200 Hz (resampled by the writer) with a 0.3 s gap in EHN after the first event's P
* OK.DDD  HH ZNE 100 Hz with a 5 s gap across the first event's P on HHZ (that trace is skipped)
* OK.EEE  picks but no waveforms (HTTP 204 from dataselect)
* XX.ZZZ  picks of a network the source does not ask for

The first and third events come with their picks in the list query; the second has picks only in its detail
query (``eventid=``), like USGS. :class:`FdsnServer` serves them on ``http://127.0.0.1:<port>`` under
``/fdsnws/<service>/1/`` with WADLs, counts requests per service and records when each query arrived.
"""

from __future__ import annotations

import collections
import contextlib
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import obspy
from obspy import UTCDateTime
from obspy.clients.fdsn.header import DEFAULT_PARAMETERS, DEFAULT_TYPES, OPTIONAL_PARAMETERS
from obspy.core.event import (
    Arrival,
    Catalog,
    Event,
    Magnitude,
    Origin,
    Pick,
    ResourceIdentifier,
    WaveformStreamID,
)
from obspy.core.inventory import Channel, Inventory, Network, Station

T0 = UTCDateTime("2016-09-03T01:00:00")
DATA_START = T0 - 60
DATA_SECONDS = 600
EVENTS = ("ev1", "ev2", "ev3")
EVENT_OFFSETS = {"ev1": 0.0, "ev2": 200.0, "ev3": 400.0}
# station -> (network, [(band, rate, {code: (azimuth, dip)})], latitude, longitude, P delay s, S delay s or None)
STATIONS = {
    "AAA": ("OK", [("HH", 100.0, {"Z": (0, -90), "N": (0, 0), "E": (90, 0)})], 36.10, -97.40, 3.004, 5.213),
    "BBB": (
        "OK",
        [
            ("HH", 100.0, {"Z": (0, -90), "1": (30, 0), "2": (120, 0)}),
            ("BH", 40.0, {"Z": (0, -90), "N": (0, 0), "E": (90, 0)}),
        ],
        36.30,
        -97.20,
        4.137,
        None,
    ),
    "CCC": ("OK", [("EH", 200.0, {"Z": (0, -90), "N": (0, 0), "E": (90, 0)})], 35.80, -97.90, 6.0025, 10.0),
    "DDD": ("OK", [("HH", 100.0, {"Z": (0, -90), "N": (0, 0), "E": (90, 0)})], 36.50, -97.00, 2.5, 4.3),
    "EEE": ("OK", [("HH", 100.0, {"Z": (0, -90), "N": (0, 0), "E": (90, 0)})], 35.50, -98.00, 3.0, 5.0),
    "ZZZ": ("XX", [("HH", 100.0, {"Z": (0, -90), "N": (0, 0), "E": (90, 0)})], 36.00, -97.00, 2.0, 3.5),
}
NO_WAVEFORMS = {"EEE"}
EVENT_LAT, EVENT_LON, EVENT_DEPTH_M = 36.0, -97.5, 5000.0


def event_uri(name: str) -> str:
    return f"quakeml:test.local/fdsnws/event/1/query?eventid={name}&format=quakeml"


def pick_times(name: str) -> dict[str, tuple[UTCDateTime, UTCDateTime | None]]:
    """station -> (P time, S time or None) for one event; each event shifts the delays a little."""
    origin = T0 + EVENT_OFFSETS[name]
    shift = 0.1 * EVENTS.index(name)
    out = {}
    for station, (_, _, _, _, p, s) in STATIONS.items():
        out[station] = (origin + p + shift, origin + s + shift if s is not None else None)
    return out


class FdsnFixture:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.inventories = {station: self._inventory(station) for station in STATIONS}
        self.streams = {station: self._stream(station) for station in STATIONS if station not in NO_WAVEFORMS}
        self.list_catalog = self._catalog(with_picks={"ev1", "ev3"})
        self.detail = {name: self._catalog(with_picks={name}, only=name) for name in EVENTS}

    # events --------------------------------------------------------------------------------------------------
    def _event(self, name: str, with_picks: bool) -> Event:
        origin_time = T0 + EVENT_OFFSETS[name]
        origin = Origin(
            resource_id=ResourceIdentifier(f"smi:test.local/origin/{name}"),
            time=origin_time,
            latitude=EVENT_LAT,
            longitude=EVENT_LON,
            depth=EVENT_DEPTH_M,
        )
        magnitude = Magnitude(
            resource_id=ResourceIdentifier(f"smi:test.local/magnitude/{name}"),
            mag=3.0 + EVENTS.index(name) * 0.2,
            magnitude_type="ML",
            origin_id=origin.resource_id,
        )
        event = Event(resource_id=ResourceIdentifier(event_uri(name)), event_type="earthquake")
        event.origins.append(origin)
        event.magnitudes.append(magnitude)
        event.preferred_origin_id = origin.resource_id.id
        event.preferred_magnitude_id = magnitude.resource_id.id
        if with_picks:
            for station, (p_time, s_time) in pick_times(name).items():
                network = STATIONS[station][0]
                band = STATIONS[station][1][0][0]
                for phase, when, hint in (("Pg", p_time, None if station == "AAA" else "P"), ("Sg", s_time, "Sg")):
                    if when is None:
                        continue
                    pick = Pick(
                        resource_id=ResourceIdentifier(f"smi:test.local/pick/{name}/{station}/{phase}"),
                        time=when,
                        waveform_id=WaveformStreamID(network, station, "", f"{band}Z"),
                        phase_hint=hint,  # AAA's P pick has no hint: its phase comes from the arrival
                        evaluation_mode="manual" if phase == "Pg" else "automatic",
                    )
                    event.picks.append(pick)
                    origin.arrivals.append(
                        Arrival(
                            resource_id=ResourceIdentifier(f"smi:test.local/arrival/{name}/{station}/{phase}"),
                            pick_id=pick.resource_id,
                            phase=phase,
                        )
                    )
            # an automatic P pick later than the manual one, which must not win
            p_time = pick_times(name)["AAA"][0]
            event.picks.append(
                Pick(
                    resource_id=ResourceIdentifier(f"smi:test.local/pick/{name}/AAA/late"),
                    time=p_time + 0.7,
                    waveform_id=WaveformStreamID("OK", "AAA", "", "HHZ"),
                    phase_hint="P",
                    evaluation_mode="automatic",
                )
            )
        return event

    def _catalog(self, with_picks: set[str], only: str | None = None) -> bytes:
        catalog = Catalog(events=[self._event(n, n in with_picks) for n in EVENTS if only in (None, n)])
        buffer = io.BytesIO()
        catalog.write(buffer, format="QUAKEML")
        return buffer.getvalue()

    def expected_picks(self) -> dict[tuple[str, str], tuple[UTCDateTime, UTCDateTime | None]]:
        """(event uri, station) -> (P, S) for the traces the source should write."""
        out = {}
        for name in EVENTS:
            for station, times in pick_times(name).items():
                out[(event_uri(name), station)] = times
        return out

    # stations ------------------------------------------------------------------------------------------------
    def _inventory(self, station: str) -> bytes:
        network, bands, latitude, longitude, _, _ = STATIONS[station]
        channels = []
        for band, rate, codes in bands:
            for code, (azimuth, dip) in codes.items():
                channels.append(
                    Channel(
                        code=band + code,
                        location_code="",
                        latitude=latitude,
                        longitude=longitude,
                        elevation=300.0,
                        depth=0.0,
                        azimuth=azimuth,
                        dip=dip,
                        sample_rate=rate,
                        start_date=UTCDateTime("2010-01-01"),
                    )
                )
        inventory = Inventory(
            networks=[
                Network(
                    code=network,
                    stations=[
                        Station(
                            code=station,
                            latitude=latitude,
                            longitude=longitude,
                            elevation=300.0,
                            channels=channels,
                            start_date=UTCDateTime("2010-01-01"),
                        )
                    ],
                )
            ],
            source="edgepick tests",
        )
        buffer = io.BytesIO()
        inventory.write(buffer, format="STATIONXML")
        return buffer.getvalue()

    # waveforms -----------------------------------------------------------------------------------------------
    def _stream(self, station: str) -> obspy.Stream:
        network, bands, *_ = STATIONS[station]
        traces = []
        for band, rate, codes in bands:
            npts = int(DATA_SECONDS * rate)
            times = np.arange(npts) / rate
            vertical = self.rng.normal(0, 5.0, npts)
            north = self.rng.normal(0, 5.0, npts)
            east = self.rng.normal(0, 5.0, npts)
            for name in EVENTS:
                p_time, s_time = pick_times(name)[station]
                vertical += 1000.0 * (times >= p_time - DATA_START)
                # an S wave on the true north component (BBB has no S pick, but still an S wave)
                north += 800.0 * (times >= (s_time or p_time + 2.5) - DATA_START)
            for code, (azimuth, dip) in codes.items():
                if code == "Z":
                    data = vertical
                else:
                    rad = np.radians(azimuth)
                    data = north * np.cos(rad) + east * np.sin(rad)
                header = {
                    "network": network,
                    "station": station,
                    "location": "",
                    "channel": band + code,
                    "sampling_rate": rate,
                    "starttime": DATA_START,
                }
                traces.append(obspy.Trace(data.astype(np.float32), header=header))
        stream = obspy.Stream(traces)
        if station == "CCC":
            self._cut(stream, "EHN", pick_times("ev1")["CCC"][0] + 1.0, 0.3)
        if station == "DDD":
            self._cut(stream, "HHZ", pick_times("ev1")["DDD"][0] - 3.0, 5.0)
        if station == "AAA":
            p_time = pick_times("ev2")["AAA"][0]
            extra = stream.select(channel="HHE")[0].slice(p_time + 2.0, p_time + 3.0).copy()
            stream.append(extra)  # overlapping (identical) data
        return stream

    @staticmethod
    def _cut(stream: obspy.Stream, channel: str, start: UTCDateTime, seconds: float) -> None:
        trace = stream.select(channel=channel)[0]
        before = trace.slice(trace.stats.starttime, start - trace.stats.delta / 2).copy()
        after = trace.slice(start + seconds, trace.stats.endtime).copy()
        stream.remove(trace)
        stream.extend([before, after])

    def dataselect(self, query: dict[str, str]) -> bytes | None:
        station = query.get("station", "")
        if station not in self.streams or STATIONS[station][0] != query.get("network"):
            return None
        start, end = UTCDateTime(query["starttime"]), UTCDateTime(query["endtime"])
        selected = obspy.Stream()
        for pattern in query.get("channel", "*").split(","):
            selected += self.streams[station].select(channel=pattern)
        selected = selected.slice(start, end)
        selected.traces = [t for t in selected if t.stats.npts]
        if not selected:
            return None
        buffer = io.BytesIO()
        selected.write(buffer, format="MSEED", reclen=512)
        return buffer.getvalue()


def wadl(service: str, base: str) -> bytes:
    kinds = {"UTCDateTime": "xs:dateTime", "float": "xs:double", "int": "xs:int", "bool": "xs:boolean"}
    params = []
    for name in DEFAULT_PARAMETERS[service] + OPTIONAL_PARAMETERS[service]:
        kind = kinds.get(DEFAULT_TYPES.get(name, str).__name__, "xs:string")
        params.append(f'<param name="{name}" style="query" type="{kind}"/>')
    return (
        '<?xml version="1.0"?>\n<application xmlns="http://wadl.dev.java.net/2009/02" '
        'xmlns:xs="http://www.w3.org/2001/XMLSchema">'
        f'<resources base="{base}/fdsnws/{service}/1/"><resource path="query">'
        f'<method id="query" name="GET"><request>{"".join(params)}</request>'
        '<response status="200"><representation mediaType="application/xml"/></response>'
        "</method></resource></resources></application>\n"
    ).encode()


class FdsnServer:
    """``with FdsnServer(fixture) as server:`` serves on ``server.url`` until the block ends."""

    def __init__(self, fixture: FdsnFixture):
        self.fixture = fixture
        self.counts: collections.Counter[str] = collections.Counter()
        self.query_times: list[float] = []
        self.reject_includearrivals = False  # answer 400 to includearrivals=true, as some event services do
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                parsed = urlparse(self.path)
                parts = parsed.path.strip("/").split("/")
                query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
                if len(parts) != 4 or parts[0] != "fdsnws" or parts[2] != "1":
                    return self._send(404, b"not found")
                service, resource = parts[1], parts[3]
                with outer.lock:
                    outer.counts[f"{service}/{resource}"] += 1
                    if resource == "query":
                        outer.query_times.append(time.monotonic())
                if resource == "application.wadl" and service in ("event", "station", "dataselect"):
                    return self._send(200, wadl(service, outer.url), "application/xml")
                if resource == "version":
                    return self._send(200, b"1.2.0", "text/plain")
                if resource != "query":
                    return self._send(404, b"not found")
                if outer.reject_includearrivals and query.get("includearrivals") == "true":
                    return self._send(400, b"Bad request: includearrivals is not supported")
                body = outer.answer(service, query)
                if body is None:
                    return self._send(204, b"")
                return self._send(200, body, "application/octet-stream")

            def _send(self, code: int, body: bytes, kind: str = "text/plain"):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def answer(self, service: str, query: dict[str, str]) -> bytes | None:
        fixture = self.fixture
        if service == "event":
            if "eventid" in query:
                return fixture.detail.get(query["eventid"])
            return fixture.list_catalog
        if service == "station":
            station = query.get("station", "")
            if station in STATIONS and STATIONS[station][0] == query.get("network"):
                return fixture.inventories[station]
            return None
        if service == "dataselect":
            return fixture.dataselect(query)
        return None

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.query_times.clear()
            self.reject_includearrivals = False

    def __enter__(self) -> "FdsnServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused at once)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
