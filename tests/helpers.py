"""Data and settings several test files build on: small labelled datasets with P and S onsets, their unlabelled
twin, a tiny distillation config (fixtures are in conftest.py)."""

import numpy as np

from pipeline.config import Config, DataConfig
from pipeline.data.datasets import write_dataset


def make_records(n_events=12, stations=3, samples=6000, rate=100.0, seed=0):
    """Events seen at several stations: a P and an S onset in noise."""
    rng = np.random.default_rng(seed)
    for event in range(n_events):
        for station in range(stations):
            n = int(samples * rate / 100.0)
            p = int(rng.integers(1000, 3000) * rate / 100.0)
            s = p + int(rng.integers(200, 1500) * rate / 100.0)
            x = rng.normal(0, 1, (3, n))
            x[:, p:] += rng.normal(0, 8, (3, n - p)) * np.exp(-np.arange(n - p) / (3 * rate))
            x[1:, s:] += rng.normal(0, 20, (2, n - s)) * np.exp(-np.arange(n - s) / (4 * rate))
            yield (
                {
                    "trace_name": f"ev{event}.st{station}",
                    "source_id": f"ev{event}",
                    "station_code": f"ST{station}",
                    "trace_sampling_rate_hz": rate,
                    "trace_p_arrival_sample": float(p),
                    "trace_s_arrival_sample": float(s),
                    "trace_category": "earthquake_local",
                },
                x,
            )


def unlabelled_dataset(path):
    """The records of :func:`make_records` without their picks, written to ``path``."""
    records = []
    for metadata, waveform in make_records(n_events=10, stations=1):
        metadata["trace_p_arrival_sample"] = metadata["trace_s_arrival_sample"] = np.nan
        records.append((metadata, waveform))
    write_dataset(iter(records), path, DataConfig(), "test")
    return path


def tiny_config(dataset, out, **distill_overrides):
    config = Config()
    config.student.base_channels = 2
    config.student.in_samples = 1001
    config.distill.dataset = str(dataset)
    config.distill.out = str(out)
    config.distill.alpha = 0.0  # hard labels: no teacher needed
    config.distill.epochs = 2
    config.distill.windows_per_epoch = 64
    config.distill.batch_size = 16
    config.distill.workers = 0
    for key, value in distill_overrides.items():
        setattr(config.distill, key, value)
    return config
