"""The soft labels: a teacher's per-sample (P, S, noise) distributions over whole traces, cached once per dataset,
and what distillation reads its target from (:class:`TrainingTargets`: the cache, or the teacher on the fly).

The cache (:func:`build_soft_labels`, :class:`SoftLabelCache`)
    ``<dataset>/soft_labels/<model>-<weights>.hdf5``, one file per teacher (an ensemble reads its members' files and
    mixes them, so changing member weights recomputes nothing). Layout: ``labels`` float16 (3, total samples),
    chunked, uncompressed by default (soft labels compress only ~1.6x with lzf and random reads get ~4x slower;
    ``compression="lzf"`` trades), traces concatenated in dataset row order; ``offsets`` int64 (n_traces + 1);
    ``trace_name`` (the dataset's unique SeisBench trace names). Attributes key it: teacher spec, weights version,
    :data:`LABEL_VERSION` and the dataset fingerprint (sha256 of metadata.csv plus size and mtime of every
    waveforms*.hdf5). A build writes ``<name>.hdf5.partial``, records ``n_done`` after every flushed chunk and is
    renamed onto ``<name>.hdf5`` only when complete: a killed build resumes at ``n_done``.

Training (:class:`TrainingTargets`)
    Cache mode: ``SoftLabelOrigin(cache)`` before the windowing of a SeisBench generator chain and
    ``CropSoftLabels(cache)`` after it (:mod:`pipeline.generators`) read the cached target over exactly the
    window's samples. On the fly (``teacher.mode=on-the-fly``): ``StashTrace`` and ``TeacherContext`` at the same
    places carry each window's whole-trace context, and :meth:`OnTheFlyTeacher.targets` runs the teacher on a
    batch's context, giving the cache's target with no cache on disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np

from pipeline import generators
from pipeline.datasets import open_dataset
from pipeline.errors import EdgepickError
from pipeline.teachers import Teacher, TeacherMember, local_weights_version, parse_teacher_spec, to_distribution

log = logging.getLogger(__name__)

#: Bump when the stitching or the mapping to (P, S, noise) changes: every cache built before is then stale.
LABEL_VERSION = 1
CACHE_DIR_NAME = "soft_labels"
CHUNK_SAMPLES = 32768
TRACES_PER_FLUSH = 256
MODES = ("cache", "on-the-fly")


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
        raise EdgepickError(f"dataset {dataset.path}: mixed sampling rates {sorted(rates)}; re-run the data stage")
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


class OnTheFlyTeacher:
    """The same (P, S, noise) target as the cache, computed for a batch of windows, with no cache on disk.

    ``predict(windows, context)``: ``windows`` (batch, 3, samples) in ``component_order`` are each treated as a whole
    trace (same path as the cache: filter, teacher windows, stitching, mapping, ensemble mean); the result is cut by
    ``context`` samples at both ends. For a target that equals the cache, pass windows with enough context: the
    teacher's window needs ``in_samples`` samples (PhaseNet 3001, EQTransformer 6000) and edge effects decay inside it.

    In training (``teacher.mode=on-the-fly``): :meth:`wrap_chain` adds the context to a generator chain (each student
    window travels with the whole-trace teacher windows that overlap it) and :meth:`targets` turns a batch into the
    target the cache would give on that window, to float rounding (the cache stores float16).
    """

    def __init__(self, spec: str, device: str | None = None, batch_size: int = 256):
        self.members = parse_teacher_spec(spec)
        self.teachers = [Teacher(m, device=device, batch_size=batch_size) for m in self.members]

    @property
    def min_samples(self) -> int:
        return max(t.in_samples for t in self.teachers)

    def predict(self, windows: np.ndarray, context: int = 0, component_order: str = "ZNE") -> np.ndarray:
        windows = np.asarray(windows)
        if windows.ndim != 3 or windows.shape[1] != 3:
            raise EdgepickError(f"OnTheFlyTeacher wants windows (batch, 3, samples), got {windows.shape}")
        if context < 0 or 2 * context >= windows.shape[-1]:
            raise EdgepickError(f"context {context} leaves nothing of windows of {windows.shape[-1]} samples")
        mixed = None
        for member, teacher in zip(self.members, self.teachers):
            dist = np.stack(teacher.predict_traces(list(windows), component_order)) * member.weight
            mixed = dist if mixed is None else mixed + dist
        end = windows.shape[-1] - context
        return mixed[:, :, context:end].astype(np.float32)

    __call__ = predict

    # ------------------------------------------------------- training: the cache's target, computed per batch
    def check_data(self, sampling_rate: float, component_order: str) -> None:
        for teacher in self.teachers:
            teacher.check_data(sampling_rate, component_order)

    def steps(self, window: int, component_order: str = "ZNE") -> tuple[list, list]:
        """The generator steps that carry each training window's teacher context: :class:`~pipeline.generators.
        StashTrace` before the windowing, :class:`~pipeline.generators.TeacherContext` right after it (before
        augmentation and normalisation, which the teacher must not see; the cache's CropSoftLabels goes there)."""
        context = generators.TeacherContext([t.input for t in self.teachers], window, component_order)
        return [generators.StashTrace()], [context]

    def targets(self, batch: dict) -> np.ndarray:
        """float32 (batch, 3, window) P, S, noise for a batch from a :meth:`wrap_chain` generator: the teacher runs
        on the whole-trace windows that overlap each student window (its context), they are stitched as for the
        cache and the student's window is cropped out; samples past the trace end are noise, as in the cache path."""
        mixed = None
        for i, (member, teacher) in enumerate(zip(self.members, self.teachers)):
            context = np.asarray(batch[f"teacher_context_{i}"])
            offsets = np.asarray(batch[f"teacher_offsets_{i}"])
            crops = np.asarray(batch[f"teacher_crop_{i}"])
            plans = [row[row >= 0] for row in offsets]
            windows = np.concatenate(
                [np.stack([context[b, :, o : o + teacher.in_samples] for o in plan]) for b, plan in enumerate(plans)]
            )
            raw = teacher._forward(windows)
            window = int(crops[0, 2])
            out = np.zeros((len(plans), 3, window), dtype=np.float32)
            out[:, 2] = 1.0  # past the trace end: noise
            start = 0
            for b, plan in enumerate(plans):
                stitched = teacher._stitch(raw[start : start + len(plan)], plan, int(plan[-1]) + teacher.in_samples)
                start += len(plan)
                first, valid = int(crops[b, 0]), int(crops[b, 1])
                out[b, :, :valid] = to_distribution(stitched[first : first + valid], teacher.labels)
            mixed = member.weight * out if mixed is None else mixed + member.weight * out
        return mixed


class TrainingTargets:
    """Where distillation's teacher target comes from, behind one object for the training loop: the soft-label
    cache of each dataset folder (``mode="cache"``: built once, held in memory, cut with each window) or the teacher
    on every batch (``mode="on-the-fly"``, on ``device``: the same target, no cache on disk)."""

    def __init__(self, spec: str, mode: str = "cache", device: str | None = None, batch_size: int = 64,
                 cache_dir: str | Path | None = None):
        if mode not in MODES:
            raise EdgepickError(f"teacher.mode {mode!r} is unknown; use {' or '.join(MODES)}")
        parse_teacher_spec(spec)
        self.spec, self.mode, self.device, self.batch_size, self.cache_dir = spec, mode, device, batch_size, cache_dir
        self.online = None
        if mode == "on-the-fly":
            self.online = OnTheFlyTeacher(spec, device=device, batch_size=batch_size)
            self.online.check_data(100.0, "ZNE")  # what generators.load_for_training opens every folder as
        self.caches: dict[str, SoftLabelCache | EnsembleSoftLabels] = {}

    def build(self, path: str | Path) -> None:
        """Build (or resume, or keep) the cache of dataset folder ``path``; nothing to do on the fly. One process
        of a distributed run builds, the others wait and :meth:`open` it."""
        if self.online is None:
            build_soft_labels(path, self.spec, batch_size=self.batch_size, device=self.device, cache_dir=self.cache_dir)

    def open(self, path: str | Path) -> None:
        """Hold the current cache of ``path`` in memory (cache mode; EdgepickError when it is not built)."""
        if self.online is None:
            self.caches[str(path)] = SoftLabelCache.open(path, self.spec, build=False, cache_dir=self.cache_dir).preload()

    def steps(self, path: str | Path, window: int) -> tuple[list, list]:
        """The generator steps for dataset folder ``path``: (before the windowing, right after it)."""
        if self.online is not None:
            return self.online.steps(window)
        cache = self.caches[str(path)]
        return [generators.SoftLabelOrigin(cache)], [generators.CropSoftLabels(cache)]

    def sees_phase(self, path: str | Path, trace_names, threshold: float = 0.3) -> np.ndarray | None:
        """Per trace: whether the teacher's P or S probability passes ``threshold`` anywhere in it (from the
        cache; None on the fly, where the teacher has not seen the traces yet)."""
        if self.online is not None:
            return None
        cache = self.caches[str(path)]
        return np.array([float(cache.labels_by_name(n)[:2].max()) > threshold for n in trace_names])

    def target(self, batch: dict) -> np.ndarray:
        """float (batch, 3, window) P, S, noise of a batch from a generator with :meth:`steps`: the cached crop
        (float16, as stored) or the teacher's output now (float32)."""
        if self.online is not None:
            return self.online.targets(batch)
        return batch["y_soft"]
