"""The soft-label cache: a teacher's per-sample (P, S, noise) distributions over whole traces, computed once per
dataset (:func:`build_soft_labels`) and read back, a trace or a window at a time (:class:`SoftLabelCache`).

``<dataset>/soft_labels/<model>-<weights>.hdf5``, one file per teacher (an ensemble reads its members' files and
mixes them, :class:`EnsembleSoftLabels`, so changing member weights recomputes nothing). Layout: ``labels``
float16 (3, total samples), chunked, uncompressed by default (soft labels compress only ~1.6x with lzf and random
reads get ~4x slower; ``compression="lzf"`` trades), traces concatenated in dataset row order; ``offsets`` int64
(n_traces + 1); ``trace_name`` (the dataset's unique SeisBench trace names). Attributes key it: teacher spec,
weights version, :data:`LABEL_VERSION` and the dataset fingerprint (sha256 of metadata.csv plus size and mtime of
every waveforms*.hdf5). A build writes ``<name>.hdf5.partial``, records ``n_done`` after every flushed chunk and
is renamed onto ``<name>.hdf5`` only when complete: a killed build resumes at ``n_done``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np

from pipeline.data.datasets import hz, open_dataset
from pipeline.errors import EdgepickError
from pipeline.model.teachers import Teacher, TeacherMember, local_weights_version, parse_teacher_spec, to_distribution

log = logging.getLogger(__name__)

#: Bump when the stitching or the mapping to (P, S, noise) changes: every cache built before is then stale.
LABEL_VERSION = 1
CACHE_DIR_NAME = "soft_labels"
CHUNK_SAMPLES = 32768
TRACES_PER_FLUSH = 256


def dataset_fingerprint(dataset_path: str | Path) -> str:
    """sha256 of metadata.csv plus name, size and mtime of every waveforms*.hdf5: changes when the data does."""
    path = Path(dataset_path)
    digest = hashlib.sha256()
    try:
        with open(path / "metadata.csv", "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        for waveform_file in sorted(path.glob("waveforms*.hdf5")):
            stat = waveform_file.stat()
            digest.update(f"|{waveform_file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    except OSError as error:
        raise EdgepickError(f"dataset {path}: cannot fingerprint it ({error})") from error
    return digest.hexdigest()


def cache_path(dataset_path: str | Path, member: TeacherMember, cache_dir: str | Path | None = None) -> Path:
    folder = Path(cache_dir) if cache_dir else Path(dataset_path) / CACHE_DIR_NAME
    return folder / f"{member.key}.hdf5"


def _expected_header(member: TeacherMember, weights_version: str | None, fingerprint: str) -> dict:
    header = {"teacher": member.spec, "label_version": LABEL_VERSION, "fingerprint": fingerprint}
    if weights_version is not None:
        header["weights_version"] = str(weights_version)
    return header


def _header_matches(attrs, expected: dict) -> bool:
    for key, value in expected.items():
        if key not in attrs:
            return False
        stored = attrs[key]
        if isinstance(stored, bytes):
            stored = stored.decode()
        if isinstance(value, int):
            if int(stored) != value:
                return False
        elif str(stored) != str(value):
            return False
    return True


def _dataset_rate_and_order(dataset) -> tuple[float, str]:
    rates = dataset.metadata["trace_sampling_rate_hz"].unique() if len(dataset) else [100.0]
    if len(rates) != 1:
        raise EdgepickError(f"dataset {dataset.path}: mixed sampling rates {hz(rates)} Hz; re-run the data stage")
    return float(rates[0]), str(dataset.component_order)


def build_soft_labels(
    dataset_path: str | Path,
    teacher_spec: str,
    batch_size: int = 64,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    traces_per_flush: int = TRACES_PER_FLUSH,
    progress: bool = True,
    max_traces: int | None = None,
    compression: str | None = None,
) -> list[Path]:
    """Build (or resume, or keep) the soft-label cache of every member of ``teacher_spec``; return the files.

    ``max_traces`` stops after that many traces in total have been done, leaving a resumable partial file
    (used by the tests to simulate a killed build).
    """
    members = parse_teacher_spec(teacher_spec)
    fingerprint = dataset_fingerprint(dataset_path)
    paths = []
    for member in members:
        paths.append(
            _build_member(
                dataset_path,
                member,
                fingerprint,
                batch_size,
                device,
                cache_dir,
                traces_per_flush,
                progress,
                max_traces,
                compression,
            )
        )
    return paths


def _build_member(
    dataset_path, member, fingerprint, batch_size, device, cache_dir, traces_per_flush, progress, max_traces, compression=None
):
    from tqdm import tqdm

    final = cache_path(dataset_path, member, cache_dir)
    if _is_current(final, member, fingerprint):
        return final
    teacher = Teacher(member, device=device, batch_size=batch_size)
    dataset = open_dataset(dataset_path, sampling_rate=None)
    rate, order = _dataset_rate_and_order(dataset)
    teacher.check_data(rate, order)
    header = _expected_header(member, teacher.weights_version, fingerprint)
    n_traces = len(dataset)
    names = dataset.metadata["trace_name"].astype(str).tolist()
    if len(set(names)) != len(names):
        raise EdgepickError(f"dataset {dataset_path}: trace_name is not unique; the cache cannot key traces by it")
    partial = final.with_name(final.name + ".partial")
    final.parent.mkdir(parents=True, exist_ok=True)
    handle = _open_partial(partial, header, names, compression)
    started = time.time()
    try:
        n_done = int(handle.attrs["n_done"])
        if n_done:
            log.info("resuming %s at trace %d of %d", partial, n_done, n_traces)
        labels, offsets = handle["labels"], handle["offsets"]
        bar = tqdm(
            total=n_traces, initial=n_done, desc=f"soft labels[{member.spec}]", unit="trace", disable=not progress
        )
        position = int(offsets[n_done])
        padded = int(handle.attrs.get("padded_traces", 0))
        while n_done < n_traces:
            if max_traces is not None and n_done >= max_traces:
                break
            stop = min(n_traces, n_done + traces_per_flush)
            if max_traces is not None:
                stop = min(stop, max_traces)
            waveforms = [np.asarray(dataset.get_waveforms(i), dtype=np.float32) for i in range(n_done, stop)]
            raw, n_padded = teacher.predict_raw(waveforms, order)
            dists = [to_distribution(r, teacher.labels) for r in raw]
            block = np.concatenate(dists, axis=1).astype(np.float16)
            labels.resize((3, position + block.shape[1]))
            labels[:, position : position + block.shape[1]] = block
            ends = position + np.cumsum([d.shape[1] for d in dists])
            offsets.resize((stop + 1,))
            offsets[n_done + 1 : stop + 1] = ends
            position = int(ends[-1])
            padded += n_padded
            handle.flush()  # data first, then the counter that says it is there
            handle.attrs["n_done"] = stop
            handle.attrs["padded_traces"] = padded
            handle.flush()
            bar.update(stop - n_done)
            n_done = stop
        bar.close()
        complete = n_done >= n_traces
        if complete:
            handle.attrs["complete"] = True
            handle.attrs["build_seconds"] = float(handle.attrs.get("build_seconds", 0.0)) + time.time() - started
            if padded:
                log.warning("%s: %d traces shorter than the teacher window were zero-padded", member.spec, padded)
        else:
            handle.attrs["build_seconds"] = float(handle.attrs.get("build_seconds", 0.0)) + time.time() - started
    finally:
        handle.close()
    if complete:
        os.replace(partial, final)
        return final
    return partial


def _open_partial(partial: Path, header: dict, names: list[str], compression: str | None = None) -> h5py.File:
    """A partial cache to continue (same header and traces) or a fresh one."""
    if partial.is_file():
        try:
            handle = h5py.File(partial, "r+")
            same = (
                _header_matches(handle.attrs, header)
                and int(handle.attrs.get("n_traces", -1)) == len(names)
                and "offsets" in handle
                and len(handle["offsets"]) >= int(handle.attrs["n_done"]) + 1
            )
            if same:
                n_done = int(handle.attrs["n_done"])
                # Drop anything written after the last recorded flush.
                handle["offsets"].resize((n_done + 1,))
                handle["labels"].resize((3, int(handle["offsets"][n_done])))
                return handle
            handle.close()
        except (OSError, KeyError, ValueError) as error:
            log.warning("partial soft-label cache %s is unusable (%s); starting over", partial, error)
        partial.unlink()
    handle = h5py.File(partial, "w")
    handle.create_dataset(
        "labels",
        shape=(3, 0),
        maxshape=(3, None),
        dtype=np.float16,
        chunks=(3, CHUNK_SAMPLES),
        compression=compression,
    )
    handle.create_dataset("offsets", shape=(1,), maxshape=(None,), dtype=np.int64, data=[0])
    handle.create_dataset("trace_name", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
    for key, value in header.items():
        handle.attrs[key] = value
    handle.attrs["n_traces"] = len(names)
    handle.attrs["n_done"] = 0
    handle.attrs["complete"] = False
    handle.attrs["phases"] = "PSN"
    handle.flush()
    return handle


class SoftLabelCache:
    """Read access to one teacher's complete soft-label cache (or, via :meth:`open`, an ensemble of them)."""

    def __init__(self, path: str | Path, weight: float = 1.0):
        self.path = Path(path)
        self.weight = weight
        self._pid = None
        self._file = self._labels = self._memory = None
        handle = self._handle()
        if not handle.attrs.get("complete"):
            raise EdgepickError(f"soft-label cache {self.path} is incomplete; run build_soft_labels again")
        self.offsets = handle["offsets"][()]
        self.teacher = str(handle.attrs["teacher"])
        self._names: dict[str, int] | None = None

    def _handle(self) -> h5py.File:
        """The open file, reopened in each process (DataLoader workers must not share an HDF5 handle)."""
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r", rdcc_nbytes=64 << 20)
                self._labels = self._file["labels"]
            except (OSError, KeyError) as error:
                raise EdgepickError(f"soft-label cache {self.path} is unreadable ({error})") from error
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = state["_labels"] = None
        return state

    @classmethod
    def open(
        cls,
        dataset_path: str | Path,
        teacher_spec: str,
        build: bool = True,
        cache_dir: str | Path | None = None,
        batch_size: int = 64,
        device: str | None = None,
        progress: bool = True,
    ) -> "SoftLabelCache | EnsembleSoftLabels":
        """The cache of ``teacher_spec`` for the dataset: reused if current, else built (or EdgepickError if not build).

        Current = complete, same teacher spec, :data:`LABEL_VERSION`, dataset fingerprint and weights version (the
        newest in the local SeisBench cache; where the weights are not available locally, a cache that matches
        the rest is used as it is). ``labels(index)`` takes the row index of the whole dataset as written (not of
        a filtered split: use ``labels_by_name`` / :class:`CropSoftLabels` there).
        """
        members = parse_teacher_spec(teacher_spec)
        fingerprint = dataset_fingerprint(dataset_path)
        caches = []
        for member in members:
            path = cache_path(dataset_path, member, cache_dir)
            if not _is_current(path, member, fingerprint):
                if not build:
                    raise EdgepickError(
                        f"no current soft-label cache for {member.spec} at {path} (missing, stale or incomplete); "
                        "build it with build_soft_labels"
                    )
                path = _build_member(
                    dataset_path, member, fingerprint, batch_size, device, cache_dir, TRACES_PER_FLUSH, progress, None
                )
            caches.append(cls(path, member.weight))
        if len(caches) == 1:
            return caches[0]
        return EnsembleSoftLabels(caches)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def trace_names(self) -> dict[str, int]:
        if self._names is None:
            names = self._handle()["trace_name"].asstr()[()]
            self._names = {name: i for i, name in enumerate(names)}
        return self._names

    def index_of(self, trace_name: str) -> int:
        try:
            return self.trace_names[str(trace_name)]
        except KeyError:
            raise EdgepickError(f"trace {trace_name!r} is not in soft-label cache {self.path}") from None

    def labels(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float16 (3, n_samples) P, S, noise of dataset row ``index``, aligned with ``get_waveforms(index)``;
        ``start``/``stop``: only those samples of it (only they are read: from memory after :meth:`preload`, else
        from the file)."""
        if self._memory is not None:
            source = self._memory
        else:
            self._handle()
            source = self._labels
        return _trace_span(source, self.offsets, index, start, stop, self.trace_length(index))

    def all_labels(self) -> np.ndarray:
        """float16 (3, total samples): every trace's labels, concatenated in row order (``offsets``), read at once."""
        return self._handle()["labels"][()]

    def preload(self) -> "SoftLabelCache":
        """Hold all labels in memory (float16: half the size of the float32 waveforms that training holds), so a
        training window's target is a slice instead of an HDF5 read (~90 us, a fifth of a cached window's cost).
        Read-only, so no caller can write into it through a slice. DataLoader workers share it when forked (Linux's
        default); a spawned worker gets its own copy."""
        self._memory = _read_only(self.all_labels())
        return self

    def trace_length(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise EdgepickError(f"trace index {index} outside soft-label cache {self.path} ({len(self)} traces)")
        return int(self.offsets[index + 1] - self.offsets[index])

    def labels_by_name(self, trace_name: str) -> np.ndarray:
        return self.labels(self.index_of(trace_name))

    @property
    def attrs(self) -> dict:
        return dict(self._handle().attrs)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._labels = None


def _trace_span(source, offsets: np.ndarray, index: int, start: int, stop: int | None, length: int) -> np.ndarray:
    """Samples [start, stop) (stop clipped to ``length``) of trace ``index`` in ``source``, (3, total samples) of
    traces concatenated at ``offsets`` (an array in memory or the HDF5 dataset)."""
    if start < 0:
        raise EdgepickError(f"soft labels from sample {start}: a trace starts at 0 (soft_label_window pads before it)")
    stop = length if stop is None else min(stop, length)
    first = int(offsets[index])
    return source[:, first + start : first + max(stop, start)]


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _is_current(path: Path, member: TeacherMember, fingerprint: str) -> bool:
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as handle:
            return bool(handle.attrs.get("complete")) and _header_matches(
                handle.attrs, _expected_header(member, local_weights_version(member), fingerprint)
            )
    except OSError:
        return False


class EnsembleSoftLabels:
    """The weighted mean of member caches' distributions, mixed on read; the same API as SoftLabelCache."""

    def __init__(self, caches: list[SoftLabelCache]):
        self.caches = caches
        lengths = {len(c) for c in caches}
        if len(lengths) != 1 or any(not np.array_equal(c.offsets, caches[0].offsets) for c in caches):
            raise EdgepickError("ensemble members' soft-label caches do not cover the same traces")
        self.teacher = "+".join(f"{c.teacher}*{c.weight:g}" for c in caches)
        self.offsets = caches[0].offsets
        self._memory = None

    def __len__(self) -> int:
        return len(self.caches[0])

    def index_of(self, trace_name: str) -> int:
        return self.caches[0].index_of(trace_name)

    def preload(self) -> "EnsembleSoftLabels":
        """The mixture of all traces in memory, mixed once (the same numbers as mixing on each read)."""
        mixed = None
        for c in self.caches:
            labels = c.weight * c.all_labels().astype(np.float32)
            mixed = labels if mixed is None else mixed + labels
        self._memory = _read_only(mixed.astype(np.float16))
        return self

    def labels(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        if self._memory is not None:
            return _trace_span(self._memory, self.offsets, index, start, stop, self.trace_length(index))
        mixed = sum(c.weight * c.labels(index, start, stop).astype(np.float32) for c in self.caches)
        return mixed.astype(np.float16)

    def trace_length(self, index: int) -> int:
        return self.caches[0].trace_length(index)

    def labels_by_name(self, trace_name: str) -> np.ndarray:
        return self.labels(self.index_of(trace_name))

    def close(self) -> None:
        for c in self.caches:
            c.close()
