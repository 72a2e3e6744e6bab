"""``miniseed``: continuous miniSEED built here (a gap, an overlap, 100 and 200 Hz, Z/N/E and Z/1/2), cut into
windows."""

import numpy as np
import obspy
import pytest
import seisbench.data as sbd
from obspy import UTCDateTime
from obspy.core.inventory import Channel, Inventory, Network, Station

from pipeline.config import DataConfig
from pipeline.data.datasets import write_dataset
from pipeline.data.sources import source_records
from pipeline.errors import EdgepickError
from pipeline.data.sources import miniseed as continuous

T0 = UTCDateTime("2020-01-01T00:00:00")


def signal(component, n, rate, offset=0):
    """A deterministic signal: its value at absolute sample i is known, so merged data can be checked."""
    i = np.arange(offset, offset + n)
    scale = {"Z": 1000, "N": 2000, "E": 3000, "1": 2000, "2": 3000}[component]
    return (scale * np.sin(2 * np.pi * i / (rate * 7.3))).astype(np.int32)


def write(path, net, sta, channel, rate, start_s, seconds):
    n = int(seconds * rate)
    offset = int(round(start_s * rate))
    trace = obspy.Trace(signal(channel[-1], n, rate, offset),
                        header={"network": net, "station": sta, "location": "00", "channel": channel,
                                "sampling_rate": rate, "starttime": T0 + start_s})
    trace.write(str(path), format="MSEED")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "mseed"
    (root / "A").mkdir(parents=True)
    (root / "B").mkdir()
    # station A, 100 Hz, Z/N/E, 600 s: Z in two files overlapping by 30 s, N with a 60 s gap at 200-260 s
    write(root / "A/Z1.mseed", "XX", "A", "HHZ", 100.0, 0, 330)
    write(root / "A/Z2.mseed", "XX", "A", "HHZ", 100.0, 300, 300)
    write(root / "A/N1.mseed", "XX", "A", "HHN", 100.0, 0, 200)
    write(root / "A/N2.mseed", "XX", "A", "HHN", 100.0, 260, 340)
    write(root / "A/E.mseed", "XX", "A", "HHE", 100.0, 0, 600)
    # station B, 200 Hz, Z/1/2, 300 s
    for channel in ("HHZ", "HH1", "HH2"):
        write(root / f"B/{channel}.mseed", "XX", "B", channel, 200.0, 0, 300)
    (root / "B/notes.txt").write_text("not miniSEED")
    return root


def config_for(root, tmp_path, **miniseed):
    config = DataConfig(source="miniseed", out=str(tmp_path / "out"))
    config.miniseed.path = str(root)
    config.miniseed.window_seconds = 60.0
    config.miniseed.hop_seconds = 30.0
    config.miniseed.group_seconds = 300.0
    for key, value in miniseed.items():
        setattr(config.miniseed, key, value)
    return config


def test_windows_gaps_overlaps_rates(folder, tmp_path):
    config = config_for(folder, tmp_path)
    records, total, options = source_records(config)
    items = list(records)
    by_station = {}
    for metadata, waveform in items:
        by_station.setdefault(metadata["station_code"], []).append((metadata, waveform))
        assert waveform.shape == (3, 6000)
    # A: gap-free Z+N+E spans are 0-200 s and 260-600 s; windows never cross the 300 s group blocks
    starts_a = [round(UTCDateTime(m["trace_start_time"]) - T0) for m, _ in by_station["A"]]
    assert starts_a == [0, 30, 60, 90, 120, 300, 330, 360, 390, 420, 450, 480, 510, 540]
    # the merged overlap (Z over 300-330 s) and the gap are exact: the data is the original signal
    for metadata, waveform in by_station["A"]:
        offset = int(round((UTCDateTime(metadata["trace_start_time"]) - T0) * 100))
        assert np.array_equal(waveform[0], signal("Z", 6000, 100.0, offset))
        assert np.array_equal(waveform[1], signal("N", 6000, 100.0, offset))
    # B: 200 Hz resampled once per span to 100 Hz, 1/2 taken as N/E and said so
    assert len(by_station["B"]) == 9
    metadata = by_station["B"][0][0]
    assert metadata["trace_original_sampling_rate_hz"] == 200.0 and metadata["trace_sampling_rate_hz"] == 100.0
    assert metadata["trace_horizontal_orientation"] == "12 taken as NE (not rotated)"
    assert np.isnan(metadata["trace_p_arrival_sample"]) and metadata["trace_category"] == "continuous"
    counts = continuous.last_summary["counts"]
    assert counts["gaps"] == 1 and counts["gap seconds"] == pytest.approx(60, abs=0.02)
    assert counts["overlaps merged"] == 1 and counts["overlap seconds"] == pytest.approx(30, abs=0.02)
    assert list(continuous.last_summary["unreadable_files"]) == ["notes.txt"]
    assert options["min_samples"] == 6000 and total is None


def test_written_dataset_groups_never_overlap_across_splits(folder, tmp_path):
    config = config_for(folder, tmp_path)
    records, total, options = source_records(config)
    report = write_dataset(records, config.out, config, config.source, total=total, **options)
    meta = sbd.WaveformDataset(config.out).metadata
    assert len(meta) == report["traces"] == 23
    assert report["skipped"] == {"unreadable miniSEED files": 1}  # notes.txt, reported with the dataset
    assert (meta.groupby("source_id")["split"].nunique() == 1).all()
    assert meta["source_id"].nunique() == 3  # A 00:00, A 00:05, B 00:00
    # windows of different groups never share a sample
    for _, station in meta.groupby("station_code"):
        times = [(UTCDateTime(t), g) for t, g in zip(station["trace_start_time"], station["source_id"])]
        for t1, g1 in times:
            for t2, g2 in times:
                if g1 != g2:
                    assert abs(t1 - t2) >= 60
    assert {"station_network_code", "station_location_code", "trace_start_time"} <= set(meta.columns)


def test_group_by_time_spans_stations(folder, tmp_path):
    config = config_for(folder, tmp_path, group_by="time")
    groups = {m["source_id"] for m, _ in source_records(config)[0]}
    assert groups == {"2020-01-01T00:00:00", "2020-01-01T00:05:00"}


def test_inventory_rotates_12(folder, tmp_path):
    # channel 1 points east, channel 2 north: rotation must swap them into N/E
    channels = [Channel(code, "00", 0, 0, 0, 0, azimuth=az, dip=dip, sample_rate=200.0)
                for code, az, dip in (("HHZ", 0, -90), ("HH1", 90, 0), ("HH2", 0, 0))]
    inventory = Inventory(networks=[Network("XX", stations=[Station("B", 0, 0, 0, channels=channels)])], source="t")
    path = tmp_path / "inv.xml"
    inventory.write(str(path), format="STATIONXML")
    config = config_for(folder / "B", tmp_path, inventory=str(path))
    metadata, waveform = next(iter(source_records(config)[0]))
    assert metadata["trace_horizontal_orientation"] == "12 rotated to NE (inventory)"
    plain = config_for(folder / "B", tmp_path)
    _, unrotated = next(iter(source_records(plain)[0]))
    assert np.allclose(waveform[1], unrotated[2], atol=1e-3) and np.allclose(waveform[2], unrotated[1], atol=1e-3)


def test_empty_or_unreadable_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgepickError, match="no files"):
        source_records(config_for(tmp_path / "empty", tmp_path))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk/a.mseed").write_bytes(b"\x00" * 100)
    with pytest.raises(EdgepickError, match="none of the 1 files") as info:
        source_records(config_for(tmp_path / "junk", tmp_path))
    assert "\n" not in str(info.value)
    with pytest.raises(EdgepickError, match="does not exist"):
        source_records(config_for(tmp_path / "nowhere", tmp_path))
    with pytest.raises(EdgepickError, match="divide one day"):
        source_records(config_for(tmp_path / "empty", tmp_path, group_seconds=7000.0))


def test_sub_sample_offset_across_midnight(tmp_path):
    """Samples off the second grid, data crossing midnight: windows stay inside their block, none is empty."""
    root = tmp_path / "c"
    root.mkdir()
    for channel in ("HHZ", "HHN", "HHE"):
        write(root / f"{channel}.mseed", "XX", "C", channel, 100.0, -0.002, 400)
    config = config_for(root, tmp_path)
    items = list(source_records(config)[0])
    starts = [UTCDateTime(m["trace_start_time"]) - T0 for m, _ in items]
    assert [round(s, 3) for s in starts] == [0.008, 30.008, 60.008, 90.008, 120.008, 150.008, 180.008, 210.008,
                                            240.008, 300.008, 330.008]
    for metadata, waveform in items:
        assert waveform.shape == (3, 6000)
        block = UTCDateTime(metadata["source_id"].split(":", 1)[1])
        start = UTCDateTime(metadata["trace_start_time"])
        assert block <= start and start + 5999 / 100 < block + config.miniseed.group_seconds


def test_two_station_hours_warn_of_empty_splits(tmp_path, capsys):
    """Two station-hours are two split groups: written all the same, with one warning naming the empty split(s)."""
    from pipeline.config import Config
    from pipeline.stages import data

    root = tmp_path / "hours"
    root.mkdir()
    for sta in ("A", "B"):
        for channel in ("HHZ", "HHN", "HHE"):
            write(root / f"{sta}.{channel}.mseed", "XX", sta, channel, 100.0, 0, 3600)
    config = Config()
    config.data = config_for(root, tmp_path, hop_seconds=60.0, group_seconds=3600.0)
    report = data.run(config)
    assert report["traces"] == 120 and sum(split["events"] for split in report["splits"].values()) == 2
    empty = [name for name, split in report["splits"].items() if not split["traces"]]
    assert "dev" in empty or "test" in empty
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    for name in ("train", "dev", "test"):
        assert (repr(name) in warnings[0]) == (name in empty)
    assert "2 groups" in warnings[0] and "data.miniseed.group_seconds" in warnings[0]
    assert "data.split_fractions" in warnings[0]


def test_unreadable_reason_is_whole_or_cut_at_a_word(tmp_path, monkeypatch):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk/a.mseed").write_bytes(b"\x00" * 100)
    with pytest.raises(EdgepickError, match="none of the 1 files") as info:
        source_records(config_for(tmp_path / "junk", tmp_path))
    # obspy's reason fits on one line: kept whole, not cut mid-word at 120 characters
    assert str(info.value).endswith("The passed buffer or file contains only 100.)")

    from pipeline.data import waveforms

    words = " ".join(f"word{i}" for i in range(100))

    def failing(*args, **kwargs):
        raise ValueError(words)

    monkeypatch.setattr(waveforms.obspy, "read", failing)
    unreadable = {}
    waveforms.read_files([tmp_path / "junk/a.mseed"], unreadable)
    reason = unreadable["a.mseed"]
    assert len(reason) <= 200 and reason.endswith("...") and "\n" not in reason
    kept = reason[: -len("...")]
    assert f"ValueError: {words}".startswith(kept) and f"ValueError: {words}"[len(kept)] == " "  # a whole word
