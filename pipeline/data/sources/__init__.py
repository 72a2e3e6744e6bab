"""Data sources. Each module exposes ``records(config: DataConfig)`` yielding ``(metadata, waveform)`` pairs
(written by :func:`pipeline.data.datasets.write_dataset`), or returning ``(iterator, total, writer_options)`` where noted;
:func:`source_records` picks the configured one."""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.config import DataConfig
from pipeline.data.datasets import Record
from pipeline.errors import EdgepickError


def source_records(config: DataConfig) -> tuple[Iterator[Record], int | None, dict]:
    """The records of the configured source, their count if known, and writer options."""
    source = config.source
    if source == "synthetic":
        from pipeline.data.sources import synthetic

        return synthetic.records(config), config.synthetic.n_traces, {}
    if source == "okla":
        from pipeline.data.sources import okla

        return okla.records(config)
    if source.startswith("seisbench:"):
        from pipeline.data.sources import seisbench_datasets

        return seisbench_datasets.records(config, source.split(":", 1)[1])
    if source == "fdsn":
        from pipeline.data.sources import fdsn

        return fdsn.records(config)
    if source == "miniseed":
        from pipeline.data.sources import miniseed

        return miniseed.records(config)
    raise EdgepickError(f"unknown data source {source!r}; use synthetic, okla, seisbench:<Name>, fdsn or miniseed")


# Sources whose trace length is the dataset's, not a setting: their traces must hold one student window
# (distillation and the benchmark cut windows of student.in_samples from every trace and refuse shorter ones).
# synthetic, fdsn and miniseed cut traces of a configured length and set their own minimum.
DATASET_LENGTH_SOURCES = ("okla", "seisbench:")
