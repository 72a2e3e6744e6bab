"""``okla``: the OKLA_1Mil_120s_Ver_3 SeisBench folder and the OKLAD merged files, on tiny fakes built here."""

import h5py
import numpy as np
import pandas as pd
import pytest
import seisbench.data as sbd

from pipeline.config import DataConfig
from pipeline.data.datasets import write_dataset
from pipeline.data.sources import source_records
from pipeline.errors import EdgepickError
from pipeline.data.sources import okla

RATE = 100.0
SAMPLES = 12000  # 120 s


def fake_okla(folder, n_events=10, per_event=4, source_id=True, drop=(), short_events=(), short_samples=2500):
    """OKLA_1Mil_120s_Ver_3-like: 120 s, 100 Hz, ZNE, CW, counts, P near sample 6000, per-trace own split; the
    traces of ``short_events`` hold ``short_samples`` samples (P and S at 1000 and 1400)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    with sbd.WaveformDataWriter(folder / "metadata.csv", folder / "waveforms.hdf5") as writer:
        writer.data_format = {"dimension_order": "CW", "component_order": "ZNE", "sampling_rate": RATE,
                              "measurement": "velocity", "unit": "counts", "instrument_response": "not restituted"}
        for e in range(n_events):
            for s in range(per_event):
                row = {
                    "trace_name": f"OK.S{s}_{e}",
                    "trace_sampling_rate_hz": RATE,
                    "trace_p_arrival_sample": 6000 + s,
                    "trace_s_arrival_sample": 6400 + s,
                    "trace_p_status": "manual",
                    "trace_s_status": "manual",
                    "trace_category": "earthquake_local",
                    "source_magnitude": 1.5 + e / 10,
                    "source_origin_time": f"2019-05-0{1 + e % 9}T0{e % 10}:00:00.{e}",
                    "source_latitude_deg": 36.0 + e / 100,
                    "source_longitude_deg": -97.5,
                    "station_network_code": "OK",
                    "station_code": f"S{s}",
                    "split": ["train", "dev", "test", "train"][s],
                }
                if source_id:
                    row["source_id"] = f"ok{e:04d}"
                for column in drop:
                    row.pop(column, None)
                samples = SAMPLES
                if e in short_events:
                    samples = short_samples
                    row["trace_p_arrival_sample"], row["trace_s_arrival_sample"] = 1000 + s, 1400 + s
                writer.add_trace(row, (rng.normal(size=(3, samples)) * 1000).astype(np.int32))
    return folder


def fake_merged(folder, n_events=6, per_event=3):
    """The OKLAD merged layout: merge.csv (STEAD column names) + merge.hdf5 (data/<trace_name>, samples x ENZ)."""
    folder.mkdir(parents=True)
    rows = []
    with h5py.File(folder / "merge.hdf5", "w") as handle:
        data = handle.create_group("data")
        for e in range(n_events):
            for s in range(per_event):
                name = f"S{s}.OK_2019{e:04d}_EV"
                enz = np.zeros((SAMPLES, 3), dtype=np.float32)
                enz[:, 0], enz[:, 1], enz[:, 2] = 1.0, 2.0, 3.0  # E=1, N=2, Z=3
                enz[::2] *= -1
                data.create_dataset(name, data=enz)
                rows.append({
                    "network_code": "OK", "receiver_code": f"S{s}", "receiver_type": "HH",
                    "p_arrival_sample": 6000, "s_arrival_sample": 6300.0, "p_status": "manual", "s_status": "manual",
                    "source_id": f"ev{e}", "source_origin_time": f"2019-01-01 0{e}:00:00",
                    "source_latitude": 36.0, "source_longitude": -97.0, "source_magnitude": 2.0,
                    "trace_category": "earthquake_local", "trace_name": name,
                })
    pd.DataFrame(rows).to_csv(folder / "merge.csv", index=False)
    return folder


def write_and_check(config, tmp_path):
    records, total, options = source_records(config)
    out = tmp_path / "out"
    report = write_dataset(records, out, config, config.source, total=total, **options)
    meta = sbd.WaveformDataset(out).metadata
    assert len(meta) == report["traces"] == total
    assert (meta.groupby("source_id")["split"].nunique() == 1).all(), "an event landed in two splits"
    return report, meta


def test_seisbench_folder_split_by_event(tmp_path):
    folder = fake_okla(tmp_path / "okla")
    config = DataConfig(source="okla", seed=3)
    config.okla.path = str(folder)
    report, meta = write_and_check(config, tmp_path)
    assert report["traces"] == 40 and not report["skipped"]
    assert meta["source_id"].nunique() == 10
    assert set(meta["split_original"]) == {"train", "dev", "test"}
    assert (meta["trace_npts"] == SAMPLES).all() and (meta["trace_p_arrival_sample"] >= 6000).all()
    assert {"trace_p_status", "trace_category", "source_magnitude"} <= set(meta.columns)


def test_opens_as_seisbench_class(tmp_path):
    folder = fake_okla(tmp_path / "okla", n_events=2)
    dataset = okla.OKLA1Mil120sV3(folder, sampling_rate=100)
    assert len(dataset) == 8 and dataset.name == "OKLA_1Mil_120s_Ver_3"
    assert dataset.get_waveforms(0).shape == (3, SAMPLES)


def test_event_key_derived_without_source_id(tmp_path):
    folder = fake_okla(tmp_path / "okla", source_id=False)
    config = DataConfig(source="okla")
    config.okla.path = str(folder)
    _, meta = write_and_check(config, tmp_path)
    assert meta["source_id"].str.startswith("origin:").all() and meta["source_id"].nunique() == 10


def test_max_traces_caps_and_keeps_events_whole(tmp_path):
    folder = fake_okla(tmp_path / "okla")
    config = DataConfig(source="okla", max_traces=12)
    config.okla.path = str(folder)
    report, meta = write_and_check(config, tmp_path)
    assert report["traces"] == 12 and meta["source_id"].nunique() == 3
    config.okla.max_traces = 5  # the smaller cap wins
    assert source_records(config)[1] == 5


def test_merged_layout_renamed_and_reordered(tmp_path):
    folder = fake_merged(tmp_path / "merged")
    config = DataConfig(source="okla")
    config.okla.path = str(folder)
    metadata, waveform = next(iter(source_records(config)[0]))
    assert waveform.shape == (3, SAMPLES)
    assert np.allclose(np.abs(waveform).max(axis=1), [3, 2, 1])  # Z, N, E
    assert metadata["trace_p_arrival_sample"] == 6000 and metadata["station_code"] == "S0"
    assert metadata["trace_sampling_rate_hz"] == 100.0
    report, meta = write_and_check(config, tmp_path)
    assert report["traces"] == 18 and meta["source_id"].nunique() == 6
    # the merged csv itself is accepted as the path too
    config.okla.path = str(folder / "merge.csv")
    assert source_records(config)[1] == 18


def test_missing_path_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("OKLA_PATH", raising=False)
    config = DataConfig(source="okla")
    config.okla.path = str(tmp_path / "nowhere")
    with pytest.raises(EdgepickError, match="does not exist"):
        source_records(config)
    (tmp_path / "empty").mkdir()
    config.okla.path = str(tmp_path / "empty")
    with pytest.raises(EdgepickError, match="metadata.csv"):
        source_records(config)


def test_missing_columns_is_one_line(tmp_path):
    folder = fake_okla(tmp_path / "okla", n_events=1, drop=("trace_s_arrival_sample",))
    config = DataConfig(source="okla")
    config.okla.path = str(folder)
    with pytest.raises(EdgepickError, match="trace_s_arrival_sample") as info:
        source_records(config)
    assert "\n" not in str(info.value)
    folder = fake_okla(tmp_path / "okla2", n_events=1, source_id=False, drop=("source_origin_time",))
    config.okla.path = str(folder)
    with pytest.raises(EdgepickError, match="cannot split by event"):
        source_records(config)


def test_corrupt_hdf5_is_one_line(tmp_path):
    folder = fake_okla(tmp_path / "okla", n_events=1)
    (folder / "waveforms.hdf5").write_bytes((folder / "waveforms.hdf5").read_bytes()[:2000])
    config = DataConfig(source="okla")
    config.okla.path = str(folder)
    with pytest.raises(EdgepickError, match="corrupt or truncated HDF5") as info:
        source_records(config)
    assert "\n" not in str(info.value)


def test_found_in_the_seisbench_cache_without_a_path(tmp_path, monkeypatch):
    """Where the Hy-X fork's OKLA_1Mil_120s_Ver_3 class leaves it: <cache>/datasets/okla_1mil_120s_ver_3."""
    import seisbench

    monkeypatch.delenv("OKLA_PATH", raising=False)
    monkeypatch.setattr(seisbench, "cache_data_root", tmp_path / "datasets")
    fake_okla(tmp_path / "datasets" / "okla_1mil_120s_ver_3", n_events=2)
    config = DataConfig(source="okla")
    config.okla.path = ""
    assert source_records(config)[1] == 8


def data_stage(folder, tmp_path, **data):
    from pipeline.config import Config

    config = Config()
    config.data = DataConfig(source="okla", out=str(tmp_path / "out"), **data)
    config.data.okla.path = str(folder)
    return config


def test_data_stage_skips_traces_shorter_than_the_student_window(tmp_path):
    """OKLA traces cut short (2500 samples) cannot hold the student's 3001-sample window: skipped and counted."""
    import json

    from pipeline.data.datasets import REPORT_NAME
    from pipeline.stages import data

    folder = fake_okla(tmp_path / "okla", short_events=(2, 7))
    report = data.run(data_stage(folder, tmp_path))
    assert report["traces"] == 32
    assert report["skipped"] == {"too short (2500 samples, need 3001)": 8}
    assert json.loads((tmp_path / "out" / REPORT_NAME).read_text())["skipped"] == report["skipped"]
    meta = sbd.WaveformDataset(tmp_path / "out").metadata
    assert (meta["trace_npts"] == SAMPLES).all() and meta["source_id"].nunique() == 8


def test_data_stage_warns_of_empty_splits(tmp_path, capsys):
    """Two events fill at most two splits: the data stage writes them and says which split is empty and what to do."""
    from pipeline.stages import data

    folder = fake_okla(tmp_path / "okla", n_events=2)
    report = data.run(data_stage(folder, tmp_path))
    empty = [name for name, split in report["splits"].items() if not split["traces"]]
    assert empty and report["traces"] == 8
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    for name in ("train", "dev", "test"):
        assert (repr(name) in warnings[0]) == (name in empty)
    assert "empty" in warnings[0] and "data.split_fractions" in warnings[0] and "more events" in warnings[0]
    assert sbd.WaveformDataset(tmp_path / "out").metadata.shape[0] == 8  # written all the same


def test_data_stage_is_quiet_when_every_split_has_traces(tmp_path, capsys):
    from pipeline.stages import data

    folder = fake_okla(tmp_path / "okla", n_events=10)
    report = data.run(data_stage(folder, tmp_path, seed=3))
    assert all(split["traces"] for split in report["splits"].values())
    assert "warning:" not in capsys.readouterr().out
