"""The synthetic Oklahoma-like source: determinism, format, physics sanity, and a dataset split by event."""

import numpy as np
import pandas as pd
import pytest

from pipeline.config import DataConfig
from pipeline.errors import EdgepickError
from pipeline.data.sources import synthetic

COLUMNS = (
    "trace_name",
    "source_id",
    "source_origin_time",
    "source_latitude",
    "source_longitude",
    "source_depth_km",
    "source_magnitude",
    "source_distance_km",
    "station_network_code",
    "station_code",
    "trace_start_time",
    "trace_sampling_rate_hz",
    "trace_p_arrival_sample",
    "trace_s_arrival_sample",
    "trace_p_status",
    "trace_s_status",
    "trace_category",
    "trace_snr_db",
    "trace_p2_arrival_sample",
    "trace_s2_arrival_sample",
)


def make(n=80, seed=42, **synthetic_options):
    config = DataConfig(seed=seed)
    config.synthetic.n_traces = n
    for key, value in synthetic_options.items():
        setattr(config.synthetic, key, value)
    return config


@pytest.fixture(scope="module")
def batch():
    config = make(n=120, double_event_fraction=0.25)
    records = list(synthetic.records(config))
    return config, pd.DataFrame([m for m, _ in records]), [w for _, w in records]


def test_deterministic_from_seed():
    a = list(synthetic.records(make(n=12)))
    b = list(synthetic.records(make(n=12)))
    c = list(synthetic.records(make(n=12, seed=7)))
    assert all(np.array_equal(wa, wb) for (_, wa), (_, wb) in zip(a, b))
    assert [m["trace_name"] for m, _ in a] == [m["trace_name"] for m, _ in b]
    assert not all(np.array_equal(wa, wc) for (_, wa), (_, wc) in zip(a, c))


def test_shapes_and_columns(batch):
    config, meta, waves = batch
    assert len(waves) == config.synthetic.n_traces
    samples = int(config.synthetic.trace_seconds * config.sampling_rate)
    for w in waves:
        assert w.dtype == np.float32 and w.shape == (3, samples) and np.isfinite(w).all()
    for column in COLUMNS:
        assert column in meta.columns, column
    assert (meta.trace_sampling_rate_hz == 100.0).all()
    assert set(meta.trace_category) == {"earthquake_local", "noise"}
    assert meta.trace_name.is_unique


def test_picks_are_ordered_and_inside(batch):
    config, meta, waves = batch
    quakes = meta[meta.trace_category == "earthquake_local"]
    samples = waves[0].shape[1]
    assert (quakes.trace_p_arrival_sample < quakes.trace_s_arrival_sample).all()
    assert (quakes.trace_p_arrival_sample > 0).all() and (quakes.trace_s_arrival_sample < samples).all()
    assert quakes.source_distance_km.between(config.synthetic.distance_km_min, config.synthetic.distance_km_max).all()
    assert quakes.trace_snr_db.between(config.synthetic.snr_db_min, config.synthetic.snr_db_max).all()
    assert (quakes.trace_p_status == "synthetic").all()
    # several stations per event, so the by-event split matters
    assert quakes.source_id.value_counts().max() > 1


def test_noise_traces_have_no_picks(batch):
    _, meta, _ = batch
    noise = meta[meta.trace_category == "noise"]
    assert len(noise) > 0
    for column in ("trace_p_arrival_sample", "trace_s_arrival_sample", "trace_p2_arrival_sample"):
        assert noise[column].isna().all()


def test_two_event_traces(batch):
    _, meta, _ = batch
    double = meta[meta.trace_p2_arrival_sample.notna()]
    assert len(double) > 0
    assert (double.trace_p2_arrival_sample > double.trace_p_arrival_sample).all()
    s2 = double.trace_s2_arrival_sample.dropna()
    assert (s2 > double.loc[s2.index, "trace_p2_arrival_sample"]).all()


def test_p_on_vertical_s_on_horizontals(batch):
    """Energy in the 1.5 s after each onset: P mostly on Z, S mostly on N and E (component order ZNE)."""
    _, meta, waves = batch
    p_ratio, s_ratio = [], []
    for i, row in meta.iterrows():
        if row.trace_category != "earthquake_local" or row.trace_snr_db < 15:
            continue
        p, s = int(row.trace_p_arrival_sample), int(row.trace_s_arrival_sample)
        energy_p = (waves[i][:, p : p + 150].astype(float) ** 2).mean(axis=1)
        energy_s = (waves[i][:, s : s + 150].astype(float) ** 2).mean(axis=1)
        p_ratio.append(energy_p[0] / energy_p[1:].mean())
        s_ratio.append(energy_s[0] / energy_s[1:].mean())
    assert len(p_ratio) > 20
    assert np.median(p_ratio) > 1.5
    assert np.median(s_ratio) < 0.6


def test_first_arrivals_are_physical():
    depth = np.full(4, 5.0)
    distance = np.array([5.0, 20.0, 50.0, 100.0])
    tp, pp = synthetic.first_arrivals(depth, distance, "P")
    ts, _ = synthetic.first_arrivals(depth, distance, "S")
    assert (np.diff(tp) > 0).all() and (ts > tp).all()
    # upper-crust Pg speed: between the 5.0 km/s top layer and the 8.15 km/s mantle
    assert 5.5 < (distance[-1] - distance[-2]) / (tp[-1] - tp[-2]) < 8.2
    assert (pp > 0).all() and (pp < 1 / 5.0).all()
    with pytest.raises(EdgepickError):
        synthetic.first_arrivals(np.array([-1.0]), np.array([10.0]), "P")


def test_bad_config_raises():
    with pytest.raises(EdgepickError):
        list(synthetic.records(make(n=5, noise_fraction=1.5)))
    with pytest.raises(EdgepickError):
        list(synthetic.records(make(n=5, snr_db_min=10.0, snr_db_max=0.0)))


def test_written_dataset_opens_and_splits_by_event(tmp_path):
    import seisbench.data as sbd

    from pipeline.data.datasets import write_dataset

    config = make(n=60)
    config.out = str(tmp_path / "synthetic")
    report = write_dataset(synthetic.records(config), config.out_dir(), config, "synthetic", total=60)
    assert report["traces"] == 60
    dataset = sbd.WaveformDataset(config.out_dir())
    assert len(dataset) == 60
    assert dataset.get_waveforms(0).shape == (3, 6000)
    meta = dataset.metadata
    quakes = meta[meta.trace_category == "earthquake_local"]
    splits_per_event = quakes.groupby("source_id")["split"].nunique()
    assert (splits_per_event == 1).all()
    assert quakes.source_id.nunique() < len(quakes)
