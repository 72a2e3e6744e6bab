"""``seisbench:<Name>`` runs SeisBench's own class offline, on a tiny dataset placed where its cache expects it."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import seisbench
import seisbench.data as sbd

from pipeline.config import DataConfig
from pipeline.data.datasets import write_dataset
from pipeline.data.sources import source_records
from pipeline.errors import EdgepickError
from pipeline.data.sources import seisbench_datasets as benchmark


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private SeisBench cache root (SeisBench reads SEISBENCH_CACHE_ROOT at import: patch its attributes)."""
    root = tmp_path / "sbcache"
    (root / "datasets").mkdir(parents=True)
    monkeypatch.setattr(seisbench, "cache_root", root)
    monkeypatch.setattr(seisbench, "cache_data_root", root / "datasets")
    return root / "datasets"


def build_fake(folder, n_events=12, per_event=3, rate=200.0, order="ENZ", source_id=True, pick_column="trace_Pg",
               seconds=30.0, short_events=(), short_seconds=20.0):
    """A SeisBench-format dataset like ETHZ's (picks in trace_Pg/trace_Sg columns, 200 Hz, own per-trace split);
    the traces of ``short_events`` last ``short_seconds``, the others ``seconds``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with sbd.WaveformDataWriter(folder / "metadata.csv", folder / "waveforms.hdf5") as writer:
        writer.data_format = {"dimension_order": "CW", "component_order": order, "sampling_rate": rate,
                              "measurement": "velocity", "unit": "counts"}
        for e in range(n_events):
            origin = pd.Timestamp("2020-01-01") + pd.Timedelta(hours=e)
            for s in range(per_event):
                n = int((short_seconds if e in short_events else seconds) * rate)
                waveform = rng.normal(size=(3, n)) * 100
                metadata = {
                    "trace_name": f"ev{e}_st{s}",
                    "trace_sampling_rate_hz": rate,
                    f"{pick_column}_arrival_sample": 10 * rate,
                    "trace_Sg_arrival_sample": 15 * rate,
                    "source_origin_time": str(origin),
                    "source_latitude_deg": 46.0 + e / 10,
                    "source_longitude_deg": 8.0,
                    "station_network_code": "CH",
                    "station_code": f"S{s}",
                    "trace_start_time": str(origin),
                    "split": ["train", "dev", "test"][(e * per_event + s) % 3],  # per-trace: leaks events
                }
                if source_id:
                    metadata["source_id"] = f"smi:ch/{e}"
                writer.add_trace(metadata, waveform)


def check_written(out, report):
    dataset = sbd.WaveformDataset(out)
    meta = dataset.metadata
    assert len(meta) == report["traces"]
    groups = meta.groupby("source_id")["split"].nunique()
    assert (groups == 1).all(), "an event landed in two splits"
    return dataset, meta


def test_real_ethz_class_runs_offline(cache, tmp_path):
    build_fake(cache / "ethz")
    config = DataConfig(source="seisbench:ETHZ", out=str(tmp_path / "out"))
    records, total, options = source_records(config)
    assert total == 36
    report = write_dataset(records, config.out, config, config.source, total=total, **options)
    dataset, meta = check_written(config.out, report)
    assert report["traces"] == 36 and not report["skipped"]
    assert (meta["trace_sampling_rate_hz"] == 100).all()
    assert (meta["trace_original_sampling_rate_hz"] == 200).all()
    # the Pg pick at 10 s is now the P pick at sample 1000 of the 100 Hz trace
    assert np.allclose(meta["trace_p_arrival_sample"], 1000) and np.allclose(meta["trace_s_arrival_sample"], 1500)
    assert (meta["trace_p_phase"] == "Pg").all()
    assert set(meta["split_original"]) == {"train", "dev", "test"}
    assert dataset.get_waveforms(0).shape == (3, 3000)
    assert (meta["trace_component_order"] == "ZNE").all()


def test_components_reordered_to_zne(cache, tmp_path):
    folder = cache / "ethz"
    folder.mkdir(parents=True)
    with sbd.WaveformDataWriter(folder / "metadata.csv", folder / "waveforms.hdf5") as writer:
        writer.data_format = {"dimension_order": "CW", "component_order": "ENZ", "sampling_rate": 100.0}
        wave = np.stack([np.full(500, 1.0), np.full(500, 2.0), np.full(500, 3.0)])  # E=1, N=2, Z=3
        wave[:, ::2] *= -1
        writer.add_trace({"trace_name": "t", "trace_sampling_rate_hz": 100.0, "source_id": "a"}, wave)
    config = DataConfig(source="seisbench:ethz", out=str(tmp_path / "out"))
    records, _, _ = source_records(config)
    _, waveform = next(iter(records))
    assert np.allclose(np.abs(waveform).max(axis=1), [3, 2, 1])  # Z, N, E


def test_event_key_fallback_without_source_id(cache, tmp_path):
    build_fake(cache / "ethz", source_id=False)
    config = DataConfig(source="seisbench:ETHZ", out=str(tmp_path / "out"), max_traces=10)
    records, total, options = source_records(config)
    report = write_dataset(records, config.out, config, config.source, total=total, **options)
    _, meta = check_written(config.out, report)
    assert len(meta) == 10 and meta["source_id"].str.startswith("origin:").all()
    assert meta["source_id"].nunique() == 4  # whole events first: 3 + 3 + 3 + 1


def test_max_traces_takes_whole_events_deterministically(cache):
    build_fake(cache / "ethz")
    config = DataConfig(source="seisbench:ETHZ", max_traces=9)
    first = [(m["trace_name"], m["source_id"]) for m, _ in source_records(config)[0]]
    second = [(m["trace_name"], m["source_id"]) for m, _ in source_records(config)[0]]
    assert first == second and len(first) == 9
    assert len({event for _, event in first}) == 3


def test_unknown_name_lists_valid_ones():
    with pytest.raises(EdgepickError, match="STEAD") as info:
        benchmark.resolve_class("NoSuchSet")
    assert "\n" not in str(info.value)
    assert benchmark.resolve_class("INSTANCE").__name__ == "InstanceCounts"
    assert benchmark.resolve_class("txed").__name__ == "TXED"


def test_absent_dataset_is_one_line_naming_the_cache(cache, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(seisbench.util, "download_http", offline)
    with pytest.raises(EdgepickError, match="SEISBENCH_CACHE_ROOT") as info:
        source_records(DataConfig(source="seisbench:STEAD"))
    assert "\n" not in str(info.value) and str(cache / "stead") in str(info.value)


def test_event_key_rules():
    assert benchmark.event_key({"source_id": "ev1", "source_origin_time": "2020-01-01"}) == "ev1"
    a = benchmark.event_key({"source_id": float("nan"), "source_origin_time": "2020-01-01T00:00:00.2",
                             "source_latitude_deg": 36.1234, "source_longitude_deg": -97.5})
    b = benchmark.event_key({"source_origin_time": "2020-01-01T00:00:00.21", "source_latitude_deg": 36.1231,
                             "source_longitude_deg": -97.5})
    assert a == b and a.startswith("origin:")
    noise = benchmark.event_key({"station_network_code": "OK", "station_code": "X",
                                 "trace_start_time": "2020-01-02T03:04"})
    assert noise == "station-day:OK.X:2020-01-02"
    assert benchmark.event_key({}) is None


def test_fallback_reader_gives_the_same_traces(cache, monkeypatch):
    build_fake(cache / "ethz", n_events=3)
    config = DataConfig(source="seisbench:ETHZ")
    fast = list(source_records(config)[0])

    def broken(*args, **kwargs):
        raise RuntimeError("SeisBench internals changed")

    monkeypatch.setattr(benchmark, "_read_batch", broken)
    slow = list(source_records(config)[0])
    assert len(fast) == len(slow) == 9
    for (m1, w1), (m2, w2) in zip(fast, slow):
        assert np.allclose(w1, w2) and m1["trace_p_arrival_sample"] == m2["trace_p_arrival_sample"]
        assert m1["source_id"] == m2["source_id"]


def test_corrupt_hdf5_is_one_line(cache):
    build_fake(cache / "ethz", n_events=2)
    waveforms = cache / "ethz" / "waveforms.hdf5"
    waveforms.write_bytes(waveforms.read_bytes()[:1000])
    with pytest.raises(EdgepickError, match="corrupt or truncated") as info:
        source_records(DataConfig(source="seisbench:ETHZ"))
    assert "\n" not in str(info.value)


def test_real_stead_traces_through_the_stead_class(cache, shared, tmp_path):
    """50 real STEAD traces (../shared/datasets/stead50) where SeisBench's STEAD class expects them."""
    source = shared / "datasets" / "stead50"
    if not (source / "metadata.csv").is_file():
        pytest.skip("../shared/datasets/stead50 is absent")
    (cache / "stead").symlink_to(source, target_is_directory=True)
    config = DataConfig(source="seisbench:STEAD", out=str(tmp_path / "out"))
    records, total, options = source_records(config)
    report = write_dataset(records, config.out, config, config.source, total=total, **options)
    _, meta = check_written(config.out, report)
    assert report["traces"] == total == 50
    assert meta["trace_p_arrival_sample"].notna().all() and meta["trace_s_arrival_sample"].notna().all()


def test_data_stage_skips_traces_shorter_than_the_student_window(cache, tmp_path, capsys):
    """20 s traces (2000 samples at 100 Hz) cannot hold the student's 3001-sample window: the data stage skips and
    counts them, instead of distillation refusing the whole dataset later."""
    import json

    from pipeline.config import Config
    from pipeline.data.datasets import REPORT_NAME
    from pipeline.stages import data

    build_fake(cache / "ethz", seconds=40.0, short_events=(0, 5))
    config = Config()
    config.data = DataConfig(source="seisbench:ETHZ", out=str(tmp_path / "out"))
    report = data.run(config)
    assert config.student.in_samples == 3001
    assert report["traces"] == 30
    assert report["skipped"] == {"too short (2000 samples, need 3001)": 6}
    assert json.loads((tmp_path / "out" / REPORT_NAME).read_text())["skipped"] == report["skipped"]
    meta = sbd.WaveformDataset(tmp_path / "out").metadata
    assert len(meta) == 30 and (meta["trace_npts"] >= 3001).all()
    assert "6 x too short (2000 samples, need 3001)" in capsys.readouterr().out


def test_a_folder_is_split_into_dev_and_test_halves_by_event(tmp_path, capsys):
    """``seisbench:<folder>`` (a labelled set such as ../shared/datasets/stead50) with data.split_fractions 0,0.5,0.5:
    every event whole in the dev or the test half, resampled like the classes, and no empty-split warning for the
    train split nobody asked for."""
    from pipeline.config import Config
    from pipeline.stages import data

    build_fake(tmp_path / "labelled", n_events=20, seconds=40.0)
    config = Config()
    config.data = DataConfig(source=f"seisbench:{tmp_path / 'labelled'}", out=str(tmp_path / "out"),
                             split_fractions=(0.0, 0.5, 0.5))
    report = data.run(config)
    _, meta = check_written(tmp_path / "out", report)
    assert report["traces"] == 60 and set(meta["split"]) == {"dev", "test"}
    assert 5 <= meta.groupby("split")["source_id"].nunique().min()  # both halves hold events
    assert (meta["trace_sampling_rate_hz"] == 100).all() and np.allclose(meta["trace_p_arrival_sample"], 1000)
    assert (meta["source_dataset"] == "labelled").all()
    assert DataConfig(source=f"seisbench:{tmp_path / 'labelled'}").out_dir() == Path("data/labelled")
    assert "warning" not in capsys.readouterr().out
    again = tmp_path / "again"
    config.data.out = str(again)
    data.run(config)
    assert list(sbd.WaveformDataset(again).metadata["split"]) == list(meta["split"])  # seeded: the same halves


def test_a_broken_folder_is_one_line(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metadata.csv").write_text("trace_name,trace_sampling_rate_hz\na,100\n")
    with pytest.raises(EdgepickError, match="no waveforms.hdf5") as info:
        source_records(DataConfig(source=f"seisbench:{tmp_path / 'broken'}"))
    assert "\n" not in str(info.value)
