"""``make data``: every source ends as a SeisBench-format dataset split by event (:mod:`pipeline.data.datasets`).

Sources (``data.source``): ``synthetic`` (the embedded default, no network), ``okla`` (a local copy of the Oklahoma
OKLA_1Mil_120s_Ver_3 dataset), ``seisbench:<Name>`` (any SeisBench dataset), ``fdsn`` (events with picks and
waveforms from FDSN services) and ``miniseed`` (the user's continuous recordings, unlabelled). Bad traces are
repaired, or skipped and counted per reason in ``edgepick_dataset.json``.
"""

from __future__ import annotations

from pipeline.artifacts import save_config
from pipeline.config import Config, DataConfig
from pipeline.data.datasets import SPLITS, open_dataset, write_dataset
from pipeline.data.sources import DATASET_LENGTH_SOURCES, source_records


def run(config: Config) -> dict:
    records, total, options = source_records(config.data)
    if config.data.source.startswith(DATASET_LENGTH_SOURCES):
        # Shorter traces are skipped here and counted per reason in the report, not refused later by distillation.
        options["min_samples"] = max(int(options.get("min_samples", 0)), int(config.student.in_samples))
    out_dir = config.data.out_dir()
    report = write_dataset(records, out_dir, config.data, config.data.source, total=total, **options)
    open_dataset(out_dir, config.data.sampling_rate)  # what we wrote must open
    save_config(out_dir, config)
    splits = ", ".join(f"{s} {v['traces']} traces / {v['events']} events" for s, v in report["splits"].items())
    print(f"wrote {out_dir}: {report['traces']} traces ({splits}) in {report['seconds']} s")
    if report["skipped"]:
        print("skipped: " + "; ".join(f"{n} x {reason}" for reason, n in report["skipped"].items()))
    warning = empty_split_warning(report, config.data)
    if warning:
        print(warning)
    return report


def empty_split_warning(report: dict, config: DataConfig) -> str:
    """One line naming the splits the dataset left empty and what to do; "" when every split has traces.

    Not an error: the dataset still benchmarks as a whole (``benchmark.dataset=<folder>``), but distillation needs
    train and dev traces, and the benchmark and quantization read the test split by default."""
    # a split whose fraction is 0 was asked to be empty (0,0.5,0.5 makes dev and test halves of a labelled set)
    asked = dict(zip(SPLITS, (float(f) for f in config.split_fractions)))
    empty = [name for name, split in report["splits"].items() if not split["traces"] and asked.get(name, 1.0) > 0]
    if not empty:
        return ""
    out = config.out_dir()
    groups = sum(split["events"] for split in report["splits"].values())
    miniseed = config.source == "miniseed"
    kind = "groups" if miniseed else "events"
    fractions = ", ".join(f"{float(f):g}" for f in config.split_fractions)
    settings = "set a shorter data.miniseed.group_seconds, " if miniseed else ""
    names = " and ".join(repr(name) for name in empty)
    needs = []
    if {"train", "dev"} & set(empty):
        needs.append("distillation needs train and dev traces")
    if "test" in empty:
        needs.append("quantization and the benchmark read the test split")
    return (
        f"warning: {'splits' if len(empty) > 1 else 'split'} {names} of {out} {'are' if len(empty) > 1 else 'is'} "
        f"empty ({report['traces']} traces in {groups} {kind}, each {kind[:-1]} whole in one split); "
        f"{', '.join(needs)}. Add data (more {kind}), {settings}or change data.split_fractions (now {fractions} for "
        f"train, dev, test); benchmark.dataset={out} benchmarks every trace as it is"
    )
