"""``okla``: a local copy of the Oklahoma OKLA_1Mil_120s_Ver_3 dataset, or the OKLAD merged files it is built from.

Two layouts are read, both strictly read-only and streamed trace by trace (waveforms.hdf5 is 152.8 GB):

* SeisBench format (``metadata.csv`` + ``waveforms.hdf5``; 120 s at 100 Hz, ZNE, CW, counts), opened with
  :class:`OKLA1Mil120sV3`. This is what the Hy-X/seisbench-demos fork's ``OKLA_1Mil_120s_Ver_3`` class leaves in
  the SeisBench cache (``<cache>/datasets/okla_1mil_120s_ver_3``), which is also where we look when no path is set.
* The OKLAD merged files that fork converts from (``merge.csv`` + ``merge.hdf5``): STEAD-style, i.e. the CSV uses
  STEAD's column names (``p_arrival_sample``, ``receiver_code``, ...), and ``merge.hdf5`` holds one dataset per
  ``trace_name`` under the group ``data``, shaped (samples, 3) in E, N, Z order at 100 Hz. We rename the columns
  to SeisBench's and reorder the components, as that fork's conversion does, but write through our own writer.

The dataset's own split is a per-trace random draw without a seed (one event lands in train and test), so it is
kept only as ``split_original``; the writer splits by event. The event key is ``source_id`` when the file has it;
otherwise it is derived from ``source_origin_time`` (rounded to 1 s) + ``source_latitude_deg`` /
``source_longitude_deg`` (0.01 deg), which every trace of one catalogue event shares (see
:func:`pipeline.data.sources.seisbench_datasets.event_key`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import seisbench
import seisbench.data as sbd

from pipeline.config import DataConfig
from pipeline.data.datasets import one_line
from pipeline.errors import EdgepickError
from pipeline.data.sources.seisbench_datasets import event_key, normalise_picks, select_indices, stream_dataset

log = logging.getLogger(__name__)

NAME = "OKLA_1Mil_120s_Ver_3"
REQUIRED_COLUMNS = ("trace_name", "trace_p_arrival_sample", "trace_s_arrival_sample")
EVENT_COLUMNS = ("source_origin_time", "source_latitude_deg", "source_longitude_deg")
MERGED_RATE = 100.0  # the merged files carry no rate column; the fork declares 100 Hz
MERGED_ORDER = "ENZ"  # STEAD's storage order, which the fork reverses to ZNE

# STEAD / OKLAD merged column -> SeisBench column (STEAD's documented names; same mapping as SeisBench's STEAD class).
STEAD_COLUMNS = {
    "p_arrival_sample": "trace_p_arrival_sample",
    "p_status": "trace_p_status",
    "p_weight": "trace_p_weight",
    "p_travel_sec": "path_p_travel_sec",
    "s_arrival_sample": "trace_s_arrival_sample",
    "s_status": "trace_s_status",
    "s_weight": "trace_s_weight",
    "s_travel_sec": "path_s_travel_sec",
    "back_azimuth_deg": "path_back_azimuth_deg",
    "snr_db": "trace_snr_db",
    "coda_end_sample": "trace_coda_end_sample",
    "network_code": "station_network_code",
    "receiver_code": "station_code",
    "receiver_type": "trace_channel",
    "receiver_latitude": "station_latitude_deg",
    "receiver_longitude": "station_longitude_deg",
    "receiver_elevation_m": "station_elevation_m",
    "source_latitude": "source_latitude_deg",
    "source_longitude": "source_longitude_deg",
}


class OKLA1Mil120sV3(sbd.WaveformDataset):
    """OKLA_1Mil_120s_Ver_3 from a local SeisBench-format folder (no download: OGS distributes it on request).

    Checks the folder first so that a missing path, missing columns or a corrupt HDF5 are one clear error.
    """

    def __init__(self, path: str | Path, **kwargs):
        path = Path(path)
        check_seisbench_folder(path)
        kwargs.setdefault("name", NAME)
        try:
            super().__init__(path, **kwargs)
        except Exception as error:  # malformed folders raise all kinds
            raise EdgepickError(f"okla: SeisBench cannot open {path} ({_one_line(error)})") from error


def locate(config: DataConfig) -> Path:
    """config.okla.path, else $OKLA_PATH, else the fork's SeisBench cache folder."""
    raw = config.okla.path or os.environ.get("OKLA_PATH", "")
    if raw:
        path = Path(raw).expanduser()
        if not path.exists():
            raise EdgepickError(f"okla: {path} does not exist (set data.okla.path or OKLA_PATH to a local copy)")
        return path
    cached = Path(seisbench.cache_data_root) / NAME.lower()
    if (cached / "metadata.csv").is_file():
        return cached
    raise EdgepickError(
        f"okla: no path given and no {NAME} in the SeisBench cache ({cached}); set data.okla.path or OKLA_PATH to "
        "the folder with metadata.csv + waveforms.hdf5 or merge.csv + merge.hdf5 (the dataset is distributed by the "
        "Oklahoma Geological Survey, no public download)"
    )


def records(config: DataConfig) -> tuple[Iterator, int, dict]:
    path = locate(config)
    cap = min([c for c in (config.max_traces, config.okla.max_traces) if c > 0], default=0)
    if path.is_file() and path.name in ("metadata.csv", "waveforms.hdf5"):
        path = path.parent
    merged = _merged_files(path)
    if merged:
        return _merged_records(*merged, config, cap)
    dataset = OKLA1Mil120sV3(
        path, sampling_rate=config.sampling_rate, component_order=config.component_order,
        dimension_order="NCW", cache=None,
    )
    keys = _event_keys(dataset.metadata, path)
    indices = select_indices(keys, cap, config.seed)
    options = {"measurement": str(dataset.data_format.get("measurement", "velocity")),
               "unit": str(dataset.data_format.get("unit", "counts"))}
    return stream_dataset(dataset, indices, keys, config, NAME), len(indices), options


def check_seisbench_folder(path: Path) -> None:
    if not path.is_dir():
        raise EdgepickError(f"okla: {path} is not a folder with metadata.csv + waveforms.hdf5")
    metadata, waveforms = path / "metadata.csv", path / "waveforms.hdf5"
    for needed in (metadata, waveforms):
        if not needed.is_file():
            raise EdgepickError(f"okla: {path} has no {needed.name} (expected metadata.csv + waveforms.hdf5, "
                                "or the OKLAD merge.csv + merge.hdf5)")
    _check_columns(_read_header(metadata), metadata, renamed=False)
    _check_hdf5(waveforms)


def _merged_files(path: Path) -> tuple[Path, Path] | None:
    """(csv, hdf5) of the OKLAD merged layout, given its folder or either file; None for the SeisBench layout."""
    if path.is_file():
        csv, hdf5 = path.with_suffix(".csv"), path.with_suffix(".hdf5")
    elif path.is_dir() and not (path / "metadata.csv").exists() and (path / "merge.csv").exists():
        csv, hdf5 = path / "merge.csv", path / "merge.hdf5"
    else:
        return None
    for needed in (csv, hdf5):
        if not needed.is_file():
            raise EdgepickError(f"okla: {needed} is missing (the OKLAD merged layout is a .csv + .hdf5 pair)")
    return csv, hdf5


def _merged_records(csv: Path, hdf5: Path, config: DataConfig, cap: int) -> tuple[Iterator, int, dict]:
    _check_columns(_read_header(csv), csv, renamed=True)
    _check_hdf5(hdf5)
    try:
        metadata = pd.read_csv(csv, low_memory=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise EdgepickError(f"okla: unreadable {csv} ({_one_line(error)})") from error
    metadata = metadata.rename(columns=STEAD_COLUMNS)
    keys = _event_keys(metadata, csv)
    indices = select_indices(keys, cap, config.seed)
    return _stream_merged(metadata, hdf5, indices, keys, config), len(indices), {"unit": "counts"}


def _stream_merged(metadata: pd.DataFrame, hdf5: Path, indices: list[int], keys: list, config: DataConfig):
    mapping = [MERGED_ORDER.index(c) for c in config.component_order]
    failed = 0
    with h5py.File(hdf5, "r") as handle:
        group = handle["data"]
        for i in indices:
            row = metadata.iloc[i].to_dict()
            name = str(row["trace_name"])
            try:
                waveform = np.asarray(group[name][()], dtype=np.float32)
            except (KeyError, OSError) as error:
                failed += 1
                if failed <= 3:
                    log.warning("okla: cannot read trace %s from %s (%s)", name, hdf5.name, _one_line(error))
                continue
            if waveform.ndim == 2 and waveform.shape[1] == 3 and waveform.shape[0] != 3:
                waveform = waveform.T  # STEAD stores (samples, components)
            if waveform.ndim == 2 and waveform.shape[0] == 3:
                waveform = waveform[mapping]
            row = {k: v for k, v in row.items() if not _blank(v)}
            if "split" in row:
                row["split_original"] = row.pop("split")
            row.setdefault("trace_sampling_rate_hz", MERGED_RATE)
            row["trace_component_order"] = config.component_order
            row["source_id"] = keys[i]
            row["source_dataset"] = "OKLAD-merged"
            yield normalise_picks(row), waveform
    if failed:
        log.warning("okla: %d traces missing or unreadable in %s were left out", failed, hdf5)


def _event_keys(metadata: pd.DataFrame, where: Path) -> list:
    if "source_id" not in metadata.columns and not all(c in metadata.columns for c in EVENT_COLUMNS):
        raise EdgepickError(f"okla: {where} has neither source_id nor {', '.join(EVENT_COLUMNS)}: "
                            "cannot split by event")
    columns = [c for c in ("source_id", *EVENT_COLUMNS, "station_network_code", "station_code", "trace_start_time")
               if c in metadata.columns]
    return [event_key(row) for row in metadata[columns].to_dict("records")]


def _read_header(csv: Path) -> list[str]:
    try:
        return list(pd.read_csv(csv, nrows=0).columns)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise EdgepickError(f"okla: unreadable {csv} ({_one_line(error)})") from error


def _check_columns(columns: list[str], where: Path, renamed: bool) -> None:
    if renamed:
        columns = [STEAD_COLUMNS.get(c, c) for c in columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        stead = {v: k for k, v in STEAD_COLUMNS.items()}
        names = [f"{c} (STEAD: {stead[c]})" if renamed and c in stead else c for c in missing]
        raise EdgepickError(f"okla: {where} lacks column(s) {', '.join(names)}")
    if "source_id" not in columns and not all(c in columns for c in EVENT_COLUMNS):
        raise EdgepickError(f"okla: {where} has neither source_id nor {', '.join(EVENT_COLUMNS)}: "
                            "cannot split by event")


def _check_hdf5(path: Path) -> None:
    try:
        with h5py.File(path, "r") as handle:
            if "data" not in handle:
                raise EdgepickError(f"okla: {path} has no 'data' group (not a SeisBench/STEAD waveform file)")
    except OSError as error:
        raise EdgepickError(f"okla: corrupt or truncated HDF5 {path} ({_one_line(error)})") from error


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _one_line(error: BaseException) -> str:
    return one_line(error, 300)
