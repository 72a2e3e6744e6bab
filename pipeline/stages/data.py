"""``make data``: every source ends as a SeisBench-format dataset split by event (:mod:`pipeline.datasets`).

Sources (``data.source``): ``synthetic`` (the embedded default, no network), ``okla`` (a local copy of the Oklahoma
OKLA_1Mil_120s_Ver_3 dataset), ``seisbench:<Name>`` (any SeisBench dataset), ``fdsn`` (events with picks and
waveforms from FDSN services) and ``miniseed`` (the user's continuous recordings, unlabelled). Bad traces are
repaired, or skipped and counted per reason in ``edgepick_dataset.json``.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.artifacts import save_config
from pipeline.config import Config, DataConfig
from pipeline.datasets import Record, open_dataset, write_dataset
from pipeline.errors import EdgepickError


def source_records(config: DataConfig) -> tuple[Iterator[Record], int | None, dict]:
    """The records of the configured source, their count if known, and writer options."""
    source = config.source
    if source == "synthetic":
        from pipeline.sources import synthetic

        return synthetic.records(config), config.synthetic.n_traces, {}
    if source == "okla":
        from pipeline.sources import okla

        return okla.records(config)
    if source.startswith("seisbench:"):
        from pipeline.sources import seisbench_datasets

        return seisbench_datasets.records(config, source.split(":", 1)[1])
    if source == "fdsn":
        from pipeline.sources import fdsn

        return fdsn.records(config)
    if source == "miniseed":
        from pipeline.sources import miniseed

        return miniseed.records(config)
    raise EdgepickError(f"unknown data source {source!r}; use synthetic, okla, seisbench:<Name>, fdsn or miniseed")


def run(config: Config) -> dict:
    records, total, options = source_records(config.data)
    out_dir = config.data.out_dir()
    report = write_dataset(records, out_dir, config.data, config.data.source, total=total, **options)
    open_dataset(out_dir, config.data.sampling_rate)  # what we wrote must open
    save_config(out_dir, config)
    splits = ", ".join(f"{s} {v['traces']} traces / {v['events']} events" for s, v in report["splits"].items())
    print(f"wrote {out_dir}: {report['traces']} traces ({splits}) in {report['seconds']} s")
    if report["skipped"]:
        print("skipped: " + "; ".join(f"{n} x {reason}" for reason, n in report["skipped"].items()))
    return report
