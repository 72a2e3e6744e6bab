"""The FDSN source against a real HTTP server on loopback (tests/fdsn_server.py) through obspy's own client."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import seisbench.data as sbd

from pipeline.stages import data
from pipeline.config import Config
from pipeline.data.datasets import REPORT_NAME, write_dataset
from pipeline.errors import EdgepickError
from pipeline.data.sources import fdsn, fdsn_client
try:  # pytest puts tests/ on sys.path (no __init__.py there)
    from fdsn_server import STATIONS, FdsnFixture, FdsnServer, closed_port_url, event_uri
except ImportError:  # tests/ as a package
    from tests.fdsn_server import STATIONS, FdsnFixture, FdsnServer, closed_port_url, event_uri

BEFORE_P = 5.0
SECONDS = 20.0
RATE_LIMIT = 25.0
# traces the fixture allows: 3 events x AAA, BBB, CCC, DDD minus DDD of ev1 (long gap); EEE has no data, XX.ZZZ
# is not asked for
EXPECTED_TRACES = 3 * 4 - 1


@pytest.fixture(scope="module")
def server():
    with FdsnServer(FdsnFixture()) as running:
        yield running


@pytest.fixture
def config(server, tmp_path):
    config = Config.load(
        overrides=[
            "data.source=fdsn",
            f"data.out={tmp_path / 'fdsn'}",
            f"data.fdsn.event_client={server.url}",
            f"data.fdsn.waveform_client={server.url}",
            "data.fdsn.networks=OK",
            f"data.fdsn.seconds_before_p={BEFORE_P}",
            f"data.fdsn.trace_seconds={SECONDS}",
            f"data.fdsn.requests_per_second={RATE_LIMIT}",
            "data.fdsn.timeout_s=10",
            "data.fdsn.starttime=2016-09-03T00:00:00",
            "data.fdsn.endtime=2016-09-04T00:00:00",
        ]
    )
    server.reset()
    return config


def assert_rate(times, jitter=0.03):
    """Any k+1 queries, as the server saw them arrive, span at least k intervals (less one arrival's jitter)."""
    times = np.sort(np.asarray(times))
    assert len(times) >= 2
    index = np.arange(len(times))
    span = times[None, :] - times[:, None]
    needed = (index[None, :] - index[:, None]) / RATE_LIMIT - jitter
    assert (span[index[:, None] < index[None, :]] >= needed[index[:, None] < index[None, :]]).all()


def run(config, out=None):
    records, total, options = fdsn.records(config.data)
    report = write_dataset(records, out or config.data.out_dir(), config.data, "fdsn", total=total, **options)
    return report, total


def test_writes_picks_where_the_fixture_put_them(config, server):
    _, total, _ = data.source_records(config.data)
    assert total == 3 * 5  # stations of network OK with a P pick, EEE included (it fails later)
    report = data.run(config)  # the data stage itself: source, writer, and the check that the result opens
    assert report["traces"] == EXPECTED_TRACES
    dataset = sbd.WaveformDataset(config.data.out_dir(), sampling_rate=100, component_order="ZNE")
    meta = dataset.metadata
    assert len(meta) == EXPECTED_TRACES
    assert set(meta["station_code"]) == {"AAA", "BBB", "CCC", "DDD"}
    assert (meta["trace_sampling_rate_hz"] == 100).all()
    assert set(meta["trace_category"]) == {"earthquake_local"}
    expected = FdsnFixture.expected_picks(None)
    for _, row in meta.iterrows():
        p_time, s_time = expected[(row["source_id"], row["station_code"])]
        assert abs(row["trace_p_arrival_sample"] - BEFORE_P * 100) <= 1.0
        start = p_time - BEFORE_P
        if s_time is None:
            assert math.isnan(row["trace_s_arrival_sample"])
        else:
            assert abs(row["trace_s_arrival_sample"] - (s_time - start) * 100) <= 1.0
            assert row["trace_s_status"] == "automatic"
        assert row["trace_p_status"] == "manual"  # the manual pick beats the later automatic one
        assert abs(row["source_latitude_deg"] - 36.0) < 1e-6 and abs(row["source_depth_km"] - 5.0) < 1e-6
        assert abs(row["station_latitude_deg"] - STATIONS[row["station_code"]][2]) < 1e-6
    # the band with the highest rate wins: BBB's HH (100 Hz) over BH (40 Hz); CCC's 200 Hz EH is resampled
    assert set(meta.loc[meta["station_code"] == "BBB", "trace_channel"]) == {"HH"}
    ccc = meta[meta["station_code"] == "CCC"]
    assert set(ccc["trace_channel"]) == {"EH"} and (ccc["trace_original_sampling_rate_hz"] == 200).all()
    # the waveforms: the P step on Z sits at the P sample (100 Hz stations, no resampling); BBB's Z12 rotated to
    # ZNE puts the S step on N and nothing on E
    for index in np.flatnonzero(meta["station_code"].isin(["AAA", "BBB", "DDD"]).to_numpy()):
        waveform = dataset.get_waveforms(int(index))
        row = meta.iloc[index]
        step = int(np.argmax(np.diff(waveform[0]))) + 1
        assert abs(step - row["trace_p_arrival_sample"]) <= 1.0
        if row["station_code"] == "BBB":
            north, east = waveform[1], waveform[2]
            assert np.ptp(north) > 500 and np.ptp(east) < 100
    # split by event: every event's traces in one split
    for _, group in meta.groupby("source_id"):
        assert group["split"].nunique() == 1
    assert set(meta["source_id"]) == {event_uri(n) for n in ("ev1", "ev2", "ev3")}
    saved = json.loads((config.data.out_dir() / REPORT_NAME).read_text())
    assert saved["traces"] == EXPECTED_TRACES


def test_resumes_from_the_cache_and_respects_the_rate(config, server):
    # a run killed after two traces
    records, _, _ = fdsn.records(config.data)
    taken = [next(records), next(records)]
    records.close()
    assert len(taken) == 2
    first_waveforms = server.counts["dataselect/query"]
    assert 2 <= first_waveforms <= 3
    # the rate limit held for every query so far
    assert_rate(server.query_times)
    # the re-run asks only for what the killed run lacks
    server.reset()
    report, _ = run(config)
    assert report["traces"] == EXPECTED_TRACES
    assert server.counts["event/query"] == 0
    assert server.counts["dataselect/query"] == 3 * 5 - first_waveforms
    assert_rate(server.query_times)
    # and a third run asks for nothing at all: not even the service discovery
    server.reset()
    report, _ = run(config, out=config.data.out_dir().with_name("again"))
    assert report["traces"] == EXPECTED_TRACES
    assert sum(server.counts.values()) == 0


def test_counts_skips(config, server):
    records, _, _ = fdsn.records(config.data)
    made = list(records)
    assert len(made) == EXPECTED_TRACES
    assert records.skipped["no waveform data"] == 3  # OK.EEE: HTTP 204
    assert records.skipped["gap longer than data.fdsn.max_gap_seconds"] == 1  # OK.DDD, first event
    assert sum(records.skipped.values()) == 4
    for metadata, waveform in made:
        assert waveform.shape[0] == 3 and np.isfinite(waveform).all()
        assert metadata["station_network_code"] == "OK"


def test_unreachable_event_service_is_one_error(config):
    config.data.fdsn.event_client = closed_port_url()
    with pytest.raises(EdgepickError, match="unreachable"):
        fdsn.records(config.data)


def test_unreachable_waveform_service_is_one_error(config):
    config.data.fdsn.waveform_client = closed_port_url()
    with pytest.raises(EdgepickError, match="waveform service .* unreachable"):
        run(config)
    assert not config.data.out_dir().exists()


def test_rate_limiter_spaces_calls():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    limiter = fdsn_client.RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.wait()
    assert now[0] == pytest.approx(1.0) and len(slept) == 4
    free = fdsn_client.RateLimiter(0)
    free.wait()
    free.wait()


def test_event_query_ids():
    class Event:
        def __init__(self, uri, extra=None):
            self.resource_id = uri
            self.extra = extra or {}

    usgs = "quakeml:earthquake.usgs.gov/fdsnws/event/1/query?eventid=us10006jxs&format=quakeml"
    assert fdsn._event_query_id(Event(usgs)) == "us10006jxs"
    extra = {"eventid": {"value": "61240591"}, "eventsource": {"value": "ok"}}
    assert fdsn._event_query_id(Event("quakeml:x/event/abc", extra)) == "ok61240591"
    assert fdsn._event_query_id(Event("smi:local/event/12345")) == "12345"
    assert fdsn_client.client_url("IRIS") == "EARTHSCOPE"


def test_falls_back_when_the_event_service_refuses_includearrivals(config, server):
    server.reject_includearrivals = True
    report, _ = run(config)
    assert report["traces"] == EXPECTED_TRACES
    # list and detail queries were each refused once and asked again without includearrivals
    assert server.counts["event/query"] == 4


def test_bad_settings_are_one_error(config):
    config.data.fdsn.seconds_before_p = config.data.fdsn.trace_seconds
    with pytest.raises(EdgepickError, match="trace_seconds"):
        fdsn.records(config.data)
    config.data.fdsn.seconds_before_p = 1.0
    config.data.fdsn.starttime = "not a time"
    with pytest.raises(EdgepickError, match="starttime"):
        fdsn.records(config.data)
