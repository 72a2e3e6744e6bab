"""SeisBench-format datasets as edgepick writes and reads them: every trace checked and repaired on the way in
(:func:`prepare_trace`), split by event (:func:`event_split`), written atomically with SeisBench's own
``WaveformDataWriter`` (:func:`write_dataset`); every way a folder can be broken turned into one clear error on
the way out (:func:`open_dataset`).

A source is an iterable of ``(metadata, waveform)`` records: ``waveform`` a float array (3, samples) in the
configured component order, ``metadata`` in SeisBench's column names (``trace_sampling_rate_hz``,
``trace_p_arrival_sample``, ``source_id``, ...).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import time
import typing
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import seisbench.data as sbd
from tqdm import tqdm

from pipeline.artifacts import atomic_dir, atomic_write_text
from pipeline.errors import EdgepickError
from pipeline.data.waveforms import resample

log = logging.getLogger(__name__)


class DatasetFormat(typing.Protocol):
    """What a written dataset holds (the data stage passes its ``DataConfig``, which has these)."""

    sampling_rate: float  # every trace is resampled to it (anti-alias filter)
    component_order: str
    min_peak_amplitude: float  # quieter traces are rescaled by a power of ten, recorded per trace
    seed: int  # of the event split
    split_fractions: tuple[float, float, float]  # train, dev, test
    vertical_only: bool  # every component but Z written flat (zero): a single-component station's recording

SPLITS = ("train", "dev", "test")


PICK_COLUMNS = ("trace_p_arrival_sample", "trace_s_arrival_sample")


REQUIRED_COLUMNS = ("trace_name", "trace_sampling_rate_hz")


REPORT_NAME = "edgepick_dataset.json"


Record = tuple[dict, np.ndarray]


class TraceSkipped(Exception):
    """A per-trace problem: the trace is left out, counted and reported, and the run goes on."""


def event_split(event_id: str, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> str:
    """The split of every trace of one event: a seeded hash of the event id, so no event lands in two splits."""
    total = sum(fractions)
    if total <= 0 or any(f < 0 for f in fractions):
        raise EdgepickError(f"split fractions must be non-negative and not all zero, got {fractions}")
    digest = hashlib.sha256(f"{seed}:{event_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions):
        edge += fraction / total
        if u < edge:
            return name
    return SPLITS[-1]


def prepare_trace(metadata: dict, waveform: np.ndarray, config: DatasetFormat, min_samples: int = 0) -> Record:
    """Check one trace and bring it to the target rate and a safe amplitude; raise :class:`TraceSkipped` if unusable."""
    waveform = np.asarray(waveform, dtype=np.float64)
    if waveform.ndim != 2 or waveform.shape[0] != len(config.component_order):
        raise TraceSkipped(f"wrong shape {waveform.shape} (want {len(config.component_order)} channels)")
    if not np.isfinite(waveform).all():
        raise TraceSkipped("NaN or inf samples")
    rate = float(metadata.get("trace_sampling_rate_hz", config.sampling_rate))
    if not rate > 0:
        raise TraceSkipped(f"invalid sampling rate {rate}")
    metadata = dict(metadata)
    if abs(rate - config.sampling_rate) > 1e-6:
        waveform = resample(waveform, rate, config.sampling_rate)
        for column in PICK_COLUMNS:
            value = metadata.get(column)
            if value is not None and not _isnan(value):
                metadata[column] = float(value) * config.sampling_rate / rate
        metadata["trace_original_sampling_rate_hz"] = rate
        metadata["trace_sampling_rate_hz"] = config.sampling_rate
    if waveform.shape[1] < max(min_samples, 1):
        raise TraceSkipped(f"too short ({waveform.shape[1]} samples, need {min_samples})")
    waveform = waveform - waveform.mean(axis=1, keepdims=True)
    if config.vertical_only:  # flat N and E, as SeisBench fills the components a vertical-only station lacks
        waveform[[c != "Z" for c in config.component_order]] = 0.0
    peaks = np.abs(waveform).max(axis=1)
    dead = peaks <= 0
    if dead.all():
        raise TraceSkipped("all channels flat")
    if dead.any():
        metadata["trace_dead_channels"] = "".join(c for c, d in zip(config.component_order, dead) if d)
    peak = float(peaks.max())
    scale = 1.0
    if peak < config.min_peak_amplitude:
        # A power of ten keeps the numbers readable; the scale is recorded so physical units can be restored.
        scale = 10.0 ** math.ceil(-math.log10(peak))
        waveform = waveform * scale
    metadata["trace_amplitude_scale"] = scale
    for column in PICK_COLUMNS:
        value = metadata.get(column)
        if value is not None and not _isnan(value) and not (0 <= float(value) < waveform.shape[1]):
            metadata[column] = np.nan  # a pick outside the trace is no label for it
    return metadata, waveform.astype(np.float32)


def write_dataset(
    records: Iterable[Record],
    out_dir: str | Path,
    config: DatasetFormat,
    source_name: str,
    total: int | None = None,
    min_samples: int = 0,
    measurement: str = "velocity",
    unit: str = "counts",
) -> dict:
    """Check, split and write ``records`` into a SeisBench dataset at ``out_dir``; return the run report."""
    out_dir = Path(out_dir)
    started = time.time()
    skipped: collections.Counter[str] = collections.Counter()
    written = collections.Counter()
    events: dict[str, set] = {s: set() for s in SPLITS}
    with atomic_dir(out_dir) as tmp:
        with sbd.WaveformDataWriter(tmp / "metadata.csv", tmp / "waveforms.hdf5") as writer:
            writer.data_format = {
                "dimension_order": "CW",
                "component_order": config.component_order,
                "sampling_rate": config.sampling_rate,
                "measurement": measurement,
                "unit": unit,
                "instrument_response": "not restored",
            }
            writer._pbar = _Quiet()  # our own progress bar below replaces SeisBench's
            for metadata, waveform in tqdm(records, total=total, desc=f"data[{source_name}]", unit="trace"):
                try:
                    metadata, waveform = prepare_trace(metadata, waveform, config, min_samples)
                except TraceSkipped as reason:
                    skipped[str(reason)] += 1
                    continue
                metadata.setdefault("trace_name_original", metadata.get("trace_name", f"trace{sum(written.values())}"))
                metadata.pop("trace_name", None)
                group = metadata.get("source_id")
                if group is None or _isnan(group) or group == "":
                    group = "trace:" + str(metadata["trace_name_original"])
                split = event_split(str(group), config.seed, config.split_fractions)
                metadata["split"] = split
                written[split] += 1
                events[split].add(str(group))
                writer.add_trace(metadata, waveform)
        # sources may count their own skips (a station without data, a long gap): report them with ours
        for reason, count in dict(getattr(records, "skipped", None) or {}).items():
            skipped[str(reason)] += count
        if not written:
            reasons = "; ".join(f"{n} x {r}" for r, n in skipped.most_common(3)) or "the source yielded none"
            raise EdgepickError(f"no usable trace for {out_dir} ({reasons})")
        report = {
            "source": source_name,
            "traces": sum(written.values()),
            "splits": {s: {"traces": written[s], "events": len(events[s])} for s in SPLITS},
            "skipped": dict(skipped),
            "seed": config.seed,
            "sampling_rate": config.sampling_rate,
            "component_order": config.component_order,
            "seconds": round(time.time() - started, 2),
        }
        atomic_write_text(tmp / REPORT_NAME, json.dumps(report, indent=2) + "\n")
    if skipped:
        log.warning("skipped %d traces: %s", sum(skipped.values()), dict(skipped))
    return report


def open_dataset(path: str | Path, sampling_rate: float | None = 100.0, resample_to: float | None = None,
                 **kwargs) -> sbd.WaveformDataset:
    """Open a SeisBench-format folder, turning every way it can be broken into one clear error. ``sampling_rate``:
    the rate every trace must have (None: any); ``resample_to``: SeisBench's own ``sampling_rate`` (resample on
    read); ``kwargs``: the rest of SeisBench's WaveformDataset arguments."""
    path = Path(path)
    metadata_path = path / "metadata.csv"
    if not path.is_dir():
        raise EdgepickError(f"dataset {path} does not exist (run `make data` first?)")
    if not metadata_path.is_file():
        raise EdgepickError(f"dataset {path} has no metadata.csv")
    try:
        columns = pd.read_csv(metadata_path, nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise EdgepickError(f"dataset {path}: unreadable metadata.csv ({error})") from error
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise EdgepickError(f"dataset {path}: metadata.csv lacks required column(s) {', '.join(missing)}")
    waveform_files = sorted(path.glob("waveforms*.hdf5"))
    if not waveform_files:
        raise EdgepickError(f"dataset {path} has no waveforms.hdf5")
    for waveform_file in waveform_files:
        try:
            with h5py.File(waveform_file, "r") as handle:
                handle.visit(lambda name: None)
        except OSError as error:
            raise EdgepickError(f"dataset {path}: corrupt or truncated HDF5 {waveform_file.name} ({error})") from error
    try:
        dataset = sbd.WaveformDataset(path, sampling_rate=resample_to, **kwargs)
    except Exception as error:  # SeisBench raises a variety of errors for malformed folders
        raise EdgepickError(f"dataset {path}: SeisBench cannot open it ({type(error).__name__}: {error})") from error
    if sampling_rate is not None and len(dataset):
        rates = dataset.metadata["trace_sampling_rate_hz"].unique()
        if len(rates) != 1 or abs(float(rates[0]) - sampling_rate) > 1e-6:
            raise EdgepickError(
                f"dataset {path}: sampling rate {hz(rates)} Hz, expected {hz([sampling_rate])} Hz "
                "(re-run the data stage, which resamples with an anti-alias filter)"
            )
    return dataset


def hz(rates) -> str:
    """Sampling rates as a message shows them: sorted plain numbers ("40, 100"), never numpy reprs."""
    return ", ".join(f"{float(rate):g}" for rate in sorted({float(rate) for rate in rates}))


def one_line(text: object, limit: int = 200) -> str:
    """``text`` (an exception: "Type: message") on one line; past ``limit`` characters it is cut at a word boundary,
    with an ellipsis."""
    if isinstance(text, BaseException):
        text = f"{type(text).__name__}: {text}"
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    if " " in cut and text[limit - 3] != " ":
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + "..."


def _isnan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


class _Quiet:
    def update(self, *args, **kwargs):
        pass

    def close(self):
        pass
