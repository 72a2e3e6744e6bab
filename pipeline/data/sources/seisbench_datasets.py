"""``seisbench:<Name>``: any SeisBench benchmark dataset (TXED, STEAD, INSTANCE, ETHZ, ...), streamed trace by trace;
``seisbench:<folder>``: any SeisBench-format folder (metadata.csv + waveforms.hdf5), such as ../shared/datasets/stead50,
re-split by event (``data.split_fractions`` 0,0.5,0.5 cuts a labelled set into a dev half to tune on and a test half
to report).

SeisBench itself opens the dataset: from its cache (``SEISBENCH_CACHE_ROOT``, default ``~/.seisbench``) or, when it is
not there, by downloading it. SeisBench resamples and reorders the components on read (``sampling_rate``,
``component_order``) and rewrites every ``*_sample`` column to the new rate, as ``get_sample`` does. The dataset's own
split is kept as ``split_original``; the writer assigns ours by event (``source_id``, see :func:`event_key`).

The helpers here (:func:`stream_dataset`, :func:`event_key`, :func:`select_indices`, :func:`normalise_picks`) are also
used by :mod:`pipeline.data.sources.okla`.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from pipeline.config import DataConfig
from pipeline.data.datasets import one_line, open_dataset
from pipeline.errors import EdgepickError

log = logging.getLogger(__name__)

# Names people use for datasets whose SeisBench class is called differently.
ALIASES = {"INSTANCE": "InstanceCounts", "AQ2009": "AQ2009Counts", "ISC_EHB": "ISC_EHB_DepthPhases"}
# First-arrival phase labels, in SeisBench's ``trace_<phase>_arrival_sample`` columns (depth phases such as pP are not).
P_PHASES = ("P", "p", "P1", "Pg", "Pn", "Pb", "Pup", "P0")
S_PHASES = ("S", "s", "S1", "Sg", "Sn", "Sb", "S0")
# Columns of the source dataset that describe its storage, not the trace: dropped, or renamed so ours win.
DROP_COLUMNS = ("index", "trace_chunk", "trace_source_sampling_rate_hz", "trace_dt_s")
BATCH = 128


def benchmark_classes() -> dict[str, type]:
    import seisbench.data as sbd

    return {
        name: cls
        for name, cls in vars(sbd).items()
        if inspect.isclass(cls)
        and issubclass(cls, sbd.WaveformBenchmarkDataset)
        and not inspect.isabstract(cls)
        and "Dummy" not in name
    }


def resolve_class(name: str) -> type:
    """The SeisBench class for ``name`` (case-insensitive, with a few aliases such as INSTANCE -> InstanceCounts)."""
    classes = benchmark_classes()
    wanted = ALIASES.get(name.upper(), name)
    for candidate, cls in classes.items():
        if candidate.lower() == wanted.lower():
            return cls
    some = ", ".join(sorted(classes)[:40])
    raise EdgepickError(f"unknown SeisBench dataset {name!r}; SeisBench has: {some} (and INSTANCE -> InstanceCounts)")


def open_benchmark(cls: type, config: DataConfig):
    """Instantiate ``cls`` through SeisBench (cache or download); any failure becomes one EdgepickError line."""
    import seisbench

    try:
        where = Path(cls._path_internal())  # where SeisBench itself looks (cache_data_root / name)
    except AttributeError:
        where = Path(seisbench.cache_data_root) / cls.__name__.lower()
    for waveform_file in sorted(Path(where).glob("waveforms*.hdf5")):
        try:
            with h5py.File(waveform_file, "r") as handle:
                handle["data"]
        except (OSError, KeyError) as error:
            raise EdgepickError(
                f"seisbench:{cls.__name__}: corrupt or truncated HDF5 {waveform_file} ({type(error).__name__}: "
                f"{one_line(str(error), 200)}); delete it to let SeisBench download it again"
            ) from error
    try:
        dataset = cls(
            sampling_rate=config.sampling_rate,
            component_order=config.component_order,
            dimension_order="NCW",
            cache=None,  # stream: never hold the waveforms in memory
        )
    except Exception as error:  # network errors, missing files, corrupt HDF5: SeisBench raises all kinds
        reason = one_line(error, 300)
        raise EdgepickError(
            f"seisbench:{cls.__name__}: cannot open it from the SeisBench cache ({where}) nor download it ({reason}); "
            f"put metadata.csv + waveforms.hdf5 there or point SEISBENCH_CACHE_ROOT at a cache that holds them"
        ) from error
    return dataset


def open_folder(path: Path, config: DataConfig):
    """A SeisBench-format folder through SeisBench's own WaveformDataset (resampled and reordered on read, like the
    benchmark classes); a broken folder is one EdgepickError line (:func:`pipeline.data.datasets.open_dataset`)."""
    return open_dataset(path, sampling_rate=None, component_order=config.component_order, dimension_order="NCW",
                        cache=None, resample_to=config.sampling_rate)


def records(config: DataConfig, name: str) -> tuple[Iterator, int, dict]:
    folder = config.seisbench_folder()
    if folder is not None:
        dataset, label = open_folder(folder, config), folder.name
    else:
        cls = resolve_class(name)
        dataset, label = open_benchmark(cls, config), cls.__name__
    metadata = dataset.metadata
    if "trace_name" not in metadata.columns:
        raise EdgepickError(f"seisbench:{label}: metadata has no trace_name column")
    keys = [event_key(row) for row in _key_rows(metadata)]
    indices = select_indices(keys, config.max_traces, config.seed)
    data_format = dataset.data_format
    options = {
        "measurement": str(data_format.get("measurement", "velocity")),
        "unit": str(data_format.get("unit", "counts")),
    }
    return stream_dataset(dataset, indices, keys, config, label), len(indices), options


def _key_rows(metadata: pd.DataFrame) -> Iterator[dict]:
    columns = [c for c in KEY_COLUMNS if c in metadata.columns]
    if not columns:
        return iter([{}] * len(metadata))
    return iter(metadata[columns].to_dict("records"))


# source_id when the dataset has it; else origin time + epicentre (identical on every trace of one event, as the
# datasets copy them from the catalogue); traces without source information (noise) are grouped by station and day
# so that overlapping windows of one station cannot straddle splits.
KEY_COLUMNS = (
    "source_id",
    "source_origin_time",
    "source_latitude_deg",
    "source_longitude_deg",
    "station_network_code",
    "station_code",
    "trace_start_time",
)


def event_key(row: dict) -> str | None:
    """The split group of one trace: an event id, a derived event key, or a station-day for noise; None if nothing."""
    source_id = row.get("source_id")
    if _present(source_id):
        return str(source_id)
    origin = row.get("source_origin_time")
    lat, lon = row.get("source_latitude_deg"), row.get("source_longitude_deg")
    if _present(origin) and _present(lat) and _present(lon):
        origin = pd.Timestamp(origin)
        return f"origin:{origin.round('1s').isoformat()}:{float(lat):.2f}:{float(lon):.2f}"
    station = ".".join(str(row.get(c, "")) for c in ("station_network_code", "station_code"))
    start = row.get("trace_start_time")
    if station != "." and _present(start):
        try:
            return f"station-day:{station}:{pd.Timestamp(start).date().isoformat()}"
        except (ValueError, TypeError):
            pass
    return None


def select_indices(keys: list, max_traces: int, seed: int) -> list[int]:
    """All traces, or about ``max_traces`` of them taking whole events in a seeded random order (sorted for I/O)."""
    n = len(keys)
    if not max_traces or max_traces >= n:
        return list(range(n))
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key if key is not None else f"trace:{i}", []).append(i)
    order = list(groups)
    rng = np.random.default_rng(seed)
    rng.shuffle(order)
    chosen: list[int] = []
    for key in order:
        if len(chosen) >= max_traces:
            break
        chosen.extend(groups[key][: max_traces - len(chosen)])
    return sorted(chosen)


def normalise_picks(metadata: dict) -> dict:
    """Fill ``trace_p_arrival_sample`` / ``trace_s_arrival_sample`` from the earliest first-arrival pick column."""
    for column, phases in (("trace_p_arrival_sample", P_PHASES), ("trace_s_arrival_sample", S_PHASES)):
        if _present(metadata.get(column)):
            continue
        best, best_phase = math.nan, ""
        for phase in phases:
            value = metadata.get(f"trace_{phase}_arrival_sample")
            if _present(value) and not (float(value) >= best):
                best, best_phase = float(value), phase
        metadata[column] = best
        if best_phase:
            metadata[column.replace("arrival_sample", "phase")] = best_phase
    return metadata


def stream_dataset(dataset, indices: list[int], keys: list, config: DataConfig, name: str) -> Iterator:
    """Yield ``(metadata, waveform)`` for ``indices`` of a SeisBench dataset, reading ``BATCH`` traces per file open."""
    metadata_frame = dataset.metadata
    failed = 0
    for start in range(0, len(indices), BATCH):
        batch = indices[start : start + BATCH]
        try:
            samples = _read_batch(dataset, metadata_frame.iloc[batch].to_dict("records"))
        except Exception as error:  # a corrupt block: fall back to one trace at a time to keep the rest
            log.debug("batch read failed (%s); reading traces one by one", error)
            samples = []
            for i in batch:
                try:
                    waveform, row = dataset.get_sample(i)
                    samples.append((row, waveform))
                except Exception as single_error:  # one unreadable trace is a counted skip
                    failed += 1
                    if failed <= 3:
                        trace_name = metadata_frame.iloc[i].get("trace_name")
                        log.warning("%s: cannot read trace %s (%s)", name, trace_name, single_error)
                    samples.append(None)
        for i, sample in zip(batch, samples):
            if sample is None:
                continue
            row, waveform = sample
            yield _normalise(row, keys[i], waveform, dataset, config, name), waveform
    if failed:
        log.warning("%s: %d unreadable traces left out", name, failed)


def _read_batch(dataset, rows: list[dict]) -> list[tuple[dict, np.ndarray]]:
    """Read several traces with one HDF5 open, resampled and reordered by SeisBench (its ``get_sample`` path).

    Uses two SeisBench internals (0.12) to avoid one file open per trace; any failure falls back to ``get_sample``.
    """
    rates = []
    rows = [dict(row) for row in rows]
    for row in rows:
        # Rewrites *_sample columns and trace_sampling_rate_hz to the target rate, as get_sample does.
        dataset._get_sample_unify_sampling_rate(row, None)
        rates.append(row["trace_source_sampling_rate_hz"])
    load = {k: [row[k] for row in rows] for k in ("trace_name", "trace_chunk", "trace_component_order")}
    load["trace_source_sampling_rate_hz"] = [float(np.asarray(r)) for r in rates]
    waveforms = dataset._get_waveforms_from_load_metadata(load, dataset.sampling_rate, pack=False)
    return [(row, np.asarray(w)) for row, w in zip(rows, waveforms)]


def _normalise(row: dict, key: str | None, waveform: np.ndarray, dataset, config: DataConfig, name: str) -> dict:
    metadata = {}
    for column, value in row.items():
        if column in DROP_COLUMNS:
            continue
        if isinstance(value, np.ndarray):
            value = value.item() if value.size == 1 else value.tolist()
        metadata[column] = value
    source_rate = float(np.asarray(row.get("trace_source_sampling_rate_hz", config.sampling_rate)))
    if abs(source_rate - config.sampling_rate) > 1e-6:
        metadata["trace_original_sampling_rate_hz"] = source_rate
    metadata["trace_sampling_rate_hz"] = float(dataset.sampling_rate or source_rate)
    metadata["trace_component_order"] = config.component_order  # SeisBench reordered the components on read
    metadata["trace_npts"] = int(waveform.shape[-1])
    if "split" in metadata:
        metadata["split_original"] = metadata.pop("split")
    metadata["source_id"] = key
    metadata["source_dataset"] = name
    return normalise_picks(metadata)


def _present(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    if value is pd.NaT:
        return False
    return str(value).strip() not in ("", "nan", "NaN", "None", "NaT")
