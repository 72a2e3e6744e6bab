"""Teachers and their soft labels: per-sample (P, S, noise) distributions over whole traces, computed once.

Teacher specs
    ``phasenet:<weights>``, ``eqtransformer:<weights>`` or an ensemble joined by ``+`` with optional member weights,
    e.g. ``phasenet:okla*0.7+eqtransformer:elep*0.3`` (weights are normalised to sum to 1; default 1 each).
    Weights are loaded with SeisBench's own ``from_pretrained``: ``$SEISBENCH_CACHE_ROOT`` first, then a download.

What a teacher sees (:meth:`Teacher.predict_traces`)
    Exactly what SeisBench's ``annotate`` feeds it, in a batched form that is tested to equal ``annotate``:
    channels reordered to the model's ``component_order`` (PhaseNet okla ENZ, EQTransformer elep ZNE); the model's
    ``filter_args``/``filter_kwargs`` applied by obspy to the whole trace (EQTransformer: 1-45 Hz bandpass);
    windows of the model's ``in_samples`` at annotate's offsets (its ``overlap``, last window flush with the end);
    the model's own ``annotate_batch_pre`` (demean, ``norm`` peak/std, EQTransformer's taper); the model's forward;
    windows stitched with the model's ``stacking`` (PhaseNet avg, EQTransformer max) and ``blinding``.

    Edges, documented choices where ``annotate`` leaves gaps:
    - samples that ``blinding`` leaves uncovered (EQTransformer blinds 500 samples at each window end, so annotate
      returns nothing for the first and last 5 s of a trace) take the unblinded output of the window covering them;
    - a trace shorter than the teacher's window (``annotate`` returns nothing) is zero-padded at its end to the
      window length after filtering, and the output is cut back to the trace length. Such traces are counted in the
      cache's ``padded_traces`` attribute.

Output mapping to a (P, S, noise) distribution (:func:`to_distribution`)
    - softmax teachers (PhaseNet, labels contain ``N``): the P, S and N channels, reordered, renormalised to sum 1;
    - sigmoid teachers (EQTransformer: Detection, P, S): p_P = P, p_S = S, both scaled by 1 / (P + S) where
      P + S > 1, noise = 1 - p_P - p_S. Detection is not used: it marks the whole event span (P to coda), not an
      onset, so it carries no phase information the student's (P, S, noise) head could learn from.
    - ensembles: the weighted mean of the members' distributions (still a distribution).

The soft-label cache (:func:`build_soft_labels`, :class:`SoftLabelCache`)
    ``<dataset>/soft_labels/<model>-<weights>.hdf5``, one file per teacher (an ensemble reads its members' files and
    mixes them on read, so changing member weights recomputes nothing). Layout: ``labels`` float16 (3, total samples),
    chunked, uncompressed by default (soft labels compress only ~1.6x with lzf and random reads get ~4x slower;
    ``compression="lzf"`` trades), traces concatenated in dataset row order; ``offsets`` int64 (n_traces + 1);
    ``trace_name`` (the dataset's unique SeisBench trace names). Attributes key it: teacher spec, weights version,
    :data:`LABEL_VERSION` and the dataset fingerprint (sha256 of metadata.csv plus size and mtime of every
    waveforms*.hdf5). A build writes ``<name>.hdf5.partial``, records ``n_done`` after every flushed chunk and is
    renamed onto ``<name>.hdf5`` only when complete: a killed build resumes at ``n_done``.

Training (:class:`SoftLabelOrigin`, :class:`CropSoftLabels`, :class:`OnTheFlyTeacher`)
    In a SeisBench ``GenericGenerator``: ``SoftLabelOrigin(cache)`` first (checks the trace against its cache entry,
    found by the sample's ``trace_name``, and notes in the metadata where the trace starts, :data:`TRACE_ORIGIN`, a
    ``..._sample`` column), then the windowing augmentations (SeisBench's windows shift every ``..._sample`` column
    as they shift the picks, so the column ends up at the window's start), then ``CropSoftLabels()``, which reads
    the cached target over exactly the samples the window kept into ``state_dict["y_soft"]``. Without a cache
    (``teacher.mode=on-the-fly``): ``OnTheFlyTeacher.wrap_chain`` puts :class:`StashTrace` first (it notes the same
    origin) and :class:`TeacherContext` where CropSoftLabels would be, and ``OnTheFlyTeacher.targets`` runs the
    teacher on each batch's context.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import EdgepickError

log = logging.getLogger(__name__)

#: SeisBench model classes a spec may name (lower-case spec name -> seisbench.models class name).
TEACHER_MODELS = {"phasenet": "PhaseNet", "eqtransformer": "EQTransformer"}
#: Bump when the stitching or the mapping to (P, S, noise) changes: every cache built before is then stale.
LABEL_VERSION = 1
PHASES = ("P", "S", "N")
CACHE_DIR_NAME = "soft_labels"
CHUNK_SAMPLES = 32768
TRACES_PER_FLUSH = 256

_WEIGHTS_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


# --------------------------------------------------------------------------------------------------------- specs
@dataclasses.dataclass(frozen=True)
class TeacherMember:
    """One teacher of a spec: ``model:weights`` with its ensemble weight (normalised over the spec)."""

    model: str  # a key of TEACHER_MODELS
    weights: str
    weight: float = 1.0

    @property
    def spec(self) -> str:
        return f"{self.model}:{self.weights}"

    @property
    def local(self) -> bool:
        """True when ``weights`` names a local folder with a saved model (``make teacher``), not SeisBench weights."""
        return not _WEIGHTS_NAME.match(self.weights)

    @property
    def key(self) -> str:
        """File-name-safe key of the member's cache file (a local folder: its name plus a hash of its path)."""
        if self.local:
            folder = Path(self.weights)
            digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]
            return f"{self.model}-{re.sub(r'[^A-Za-z0-9_.-]', '_', folder.name)}-{digest}".lower()
        return f"{self.model}-{self.weights}".lower()


def _local_model_file(weights: str) -> Path | None:
    """``<folder>/<name>`` (no suffix) of the one saved SeisBench model in folder ``weights`` (or one level below)."""
    folder = Path(weights)
    if not folder.is_dir():
        return None
    for pattern in ("*.json", "*/*.json"):
        pairs = sorted(p.with_suffix("") for p in folder.glob(pattern) if p.with_suffix(".pt").is_file())
        if pairs:
            return pairs[0] if len(pairs) == 1 else None
    return None


def parse_teacher_spec(spec: str) -> list[TeacherMember]:
    """Parse ``phasenet:okla``, ``eqtransformer:elep`` or ``a:x*0.7+b:y*0.3``; raise EdgepickError if malformed."""
    if not isinstance(spec, str) or not spec.strip():
        raise EdgepickError("empty teacher spec; use e.g. phasenet:okla or phasenet:okla+eqtransformer:elep")
    members: list[tuple[str, str, float]] = []
    for part in spec.split("+"):
        part = part.strip()
        if not part:
            raise EdgepickError(f"teacher spec {spec!r} has an empty member (stray '+')")
        weight = 1.0
        if "*" in part:
            part, weight_text = (p.strip() for p in part.rsplit("*", 1))
            try:
                weight = float(weight_text)
            except ValueError:
                raise EdgepickError(f"teacher spec {spec!r}: member weight {weight_text!r} is not a number") from None
            if not math.isfinite(weight) or weight <= 0:
                raise EdgepickError(f"teacher spec {spec!r}: member weight {weight_text!r} must be positive")
        if ":" not in part:
            raise EdgepickError(
                f"teacher {part!r} must look like <model>:<weights> with model one of {', '.join(TEACHER_MODELS)}"
            )
        model, weights = (p.strip() for p in part.split(":", 1))
        if model.lower() not in TEACHER_MODELS:
            raise EdgepickError(f"unknown teacher {model!r} in {spec!r}; known: {', '.join(TEACHER_MODELS)}")
        if not weights or not (_WEIGHTS_NAME.match(weights) or _local_model_file(weights) is not None):
            raise EdgepickError(
                f"teacher {part!r}: weights name {weights!r} is empty, has odd characters or is not a folder "
                "holding one saved SeisBench model (<name>.json + <name>.pt, e.g. from `make teacher`)"
            )
        members.append((model.lower(), weights, weight))
    seen = [(m, w) for m, w, _ in members]
    if len(set(seen)) != len(seen):
        raise EdgepickError(f"teacher spec {spec!r} names a member twice")
    total = sum(w for _, _, w in members)
    return [TeacherMember(m, w, weight / total) for m, w, weight in members]


# -------------------------------------------------------------------------------------------------- the teachers
def _model_class(model: str):
    import seisbench.models as sbm

    return getattr(sbm, TEACHER_MODELS[model])


def _cache_root() -> str:
    import seisbench

    return str(seisbench.cache_root)


def annotate_blinding(model, argdict: dict | None = None) -> tuple[int, int]:
    """The samples a SeisBench model's annotate leaves out at each window's (start, end) with ``argdict`` (default:
    its ``default_args``); (0, 0) for a model without a ``blinding`` argument."""
    argdict = model.default_args if argdict is None else argdict
    value = argdict.get("blinding", model._annotate_args.get("blinding", (None, (0, 0)))[1])
    return int(value[0]), int(value[1])


def load_single_model(spec: str):
    """The SeisBench model of a one-member teacher spec (an ensemble has no single ``classify``): one EdgepickError
    line otherwise, or if it cannot be had."""
    members = parse_teacher_spec(spec)
    if len(members) != 1:
        raise EdgepickError(f"teacher {spec!r}: one model is needed here, not an ensemble of {len(members)}")
    return load_model(members[0])


def load_model(member: TeacherMember):
    """The SeisBench model of ``member`` via ``from_pretrained``; one EdgepickError line if it cannot be had."""
    import requests

    cls = _model_class(member.model)
    if member.local:  # a fine-tuned teacher saved by `make teacher`
        path = _local_model_file(member.weights)
        if path is None:
            raise EdgepickError(f"teacher {member.spec!r}: {member.weights} holds no saved SeisBench model (.json + .pt)")
        try:
            model = cls.load(path)
        except Exception as error:  # a foreign or truncated file fails in many ways inside torch / json
            raise EdgepickError(f"teacher {member.spec!r}: cannot load {path} as a {cls.__name__} ({type(error).__name__}: {error})") from error
        model._weights_version = local_weights_version(member)
        model.eval()
        return model
    try:
        model = cls.from_pretrained(member.weights)
    except (requests.RequestException, ConnectionError, ValueError, OSError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise EdgepickError(
            f"teacher weights {member.spec!r} are not in SEISBENCH_CACHE_ROOT={_cache_root()} "
            f"(models/v3/{cls.__name__.lower()}/{member.weights}.pt.v*) and could not be downloaded "
            f"({type(error).__name__}: {detail})"
        ) from error
    model.eval()
    return model


def local_weights_version(member: TeacherMember) -> str | None:
    """The newest weights version in the local SeisBench cache, without loading or downloading anything (a local
    model folder: the first 16 hex digits of its .pt file's sha256, so a re-fine-tuned teacher invalidates caches)."""
    if member.local:
        path = _local_model_file(member.weights)
        if path is None:
            return None
        return "sha256:" + hashlib.sha256(path.with_suffix(".pt").read_bytes()).hexdigest()[:16]
    try:
        versions = _model_class(member.model).list_versions(member.weights, remote=False)
    except Exception:  # a broken cache folder is no reason to fail here; loading will say what is wrong
        return None
    if not versions:
        return None
    from packaging import version

    return max(versions, key=version.parse)


def to_distribution(raw: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Map a teacher's stitched output (samples, channels) with channel ``labels`` to (3, samples) P, S, noise."""
    labels = [str(label) for label in labels]
    raw = np.asarray(raw, dtype=np.float32)
    if all(p in labels for p in PHASES):  # softmax over the phases (PhaseNet)
        dist = np.stack([raw[:, labels.index(p)] for p in PHASES])
        dist = np.clip(dist, 0.0, None)
        total = dist.sum(axis=0, keepdims=True)
        return dist / np.where(total > 0, total, 1.0)
    if "P" in labels and "S" in labels:  # independent sigmoids (EQTransformer)
        return sigmoid_to_distribution(raw[:, labels.index("P")], raw[:, labels.index("S")])
    raise EdgepickError(f"teacher outputs {labels} have no P and S channels to distil from")


def sigmoid_to_distribution(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """EQTransformer's P and S sigmoids as a distribution: scaled by 1/(P+S) where P+S > 1, noise the rest."""
    p = np.clip(np.asarray(p, dtype=np.float32), 0.0, 1.0)
    s = np.clip(np.asarray(s, dtype=np.float32), 0.0, 1.0)
    total = p + s
    scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-12), 1.0).astype(np.float32)
    p, s = p * scale, s * scale
    noise = np.clip(1.0 - p - s, 0.0, 1.0)
    return np.stack([p, s, noise])


class TeacherInput:
    """What a teacher does to a trace before its windows reach the model, without the model itself (picklable into
    DataLoader workers): components reordered to the model's, the model's filter on the whole trace (SeisBench's
    own ``WaveformModel._filter_stream``), windows of ``in_samples`` at annotate's offsets (``hop`` apart, the last
    flush with the end)."""

    @staticmethod
    def _filter_stream_single(filter_args, filter_kwargs, stream):  # what WaveformModel._filter_stream calls
        import seisbench.models as sbm

        sbm.WaveformModel._filter_stream_single(filter_args, filter_kwargs, stream)

    def __init__(self, model, in_samples: int, hop: int):
        self.in_samples, self.hop = int(in_samples), int(hop)
        self.component_order = str(model.component_order)
        self.sampling_rate = float(model.sampling_rate or 100.0)
        self.filter_args, self.filter_kwargs = model.filter_args, model.filter_kwargs

    def prepare(self, trace: np.ndarray, component_order: str) -> np.ndarray:
        """float64 (3, samples): reordered to the model's components and filtered as annotate_stream_pre does."""
        x = np.asarray(trace, dtype=np.float64)[[component_order.index(c) for c in self.component_order]]
        if self.filter_args is not None or self.filter_kwargs is not None:
            import obspy
            import seisbench.models as sbm

            stream = obspy.Stream(
                [
                    obspy.Trace(x[i].copy(), header={"channel": f"HH{c}", "sampling_rate": self.sampling_rate})
                    for i, c in enumerate(self.component_order)
                ]
            )
            sbm.WaveformModel._filter_stream(self, stream)
            x = np.stack([tr.data for tr in stream])
        return x

    def offsets(self, n: int) -> np.ndarray:
        from pipeline.flash import window_offsets  # SeisBench's cutting, shared with the firmware's reference

        return window_offsets(n, self.in_samples, self.hop).astype(np.intp)


class Teacher:
    """One SeisBench teacher applied to whole traces exactly as its ``annotate`` would (see the module doc)."""

    def __init__(self, member: TeacherMember | str, device: str | None = None, batch_size: int = 64, model=None):
        if isinstance(member, str):
            members = parse_teacher_spec(member)
            if len(members) != 1:
                raise EdgepickError(f"Teacher takes one model, got the ensemble {member!r}")
            member = members[0]
        self.member = member
        self.model = model if model is not None else load_model(member)
        if device:
            self.model.to(device)
        self.batch_size = int(batch_size)
        self.argdict = dict(self.model.default_args)
        self.in_samples = int(self.model.in_samples)
        self.sampling_rate = self.model.sampling_rate
        self.component_order = str(self.model.component_order)
        self.labels = [str(label) for label in self.model.labels]
        self.overlap = int(self.model._get_overlap(self.in_samples, self.argdict))
        self.stacking = str(self.model._argdict_get_with_default(self.argdict, "stacking")).lower()
        self.blinding = annotate_blinding(self.model, self.argdict)
        self.weights_version = str(self.model.weights_version or "1")
        self.input = TeacherInput(self.model, self.in_samples, self.in_samples - self.overlap)

    def check_data(self, sampling_rate: float, component_order: str) -> None:
        """EdgepickError if this teacher cannot see data of this rate and component order as it was trained."""
        if self.sampling_rate is not None and abs(float(self.sampling_rate) - float(sampling_rate)) > 1e-6:
            raise EdgepickError(
                f"teacher {self.member.spec} works at {self.sampling_rate} Hz but the data is {sampling_rate} Hz "
                "(re-run the data stage at the teacher's rate)"
            )
        if sorted(self.component_order) != sorted(component_order) or len(component_order) != 3:
            raise EdgepickError(
                f"teacher {self.member.spec} needs components {self.component_order}, the data has {component_order}"
            )

    def _prepare(self, trace: np.ndarray, component_order: str) -> np.ndarray:
        """Reorder to the model's components and apply its filter to the whole trace (annotate_stream_pre)."""
        return self.input.prepare(trace, component_order)

    def _offsets(self, n: int) -> np.ndarray:
        return self.input.offsets(n)

    def _forward(self, windows: np.ndarray) -> np.ndarray:
        """Raw model output (windows, samples, channels), unblinded, via the model's own pre/post hooks."""
        import torch

        outputs = []
        argdict = dict(self.argdict, blinding=(0, 0))
        for start in range(0, len(windows), self.batch_size):
            batch = torch.as_tensor(windows[start : start + self.batch_size], dtype=torch.float32)
            batch = batch.to(self.model.device)
            with torch.no_grad():
                pre = self.model.annotate_batch_pre(batch, argdict=argdict)
                piggyback = None
                if isinstance(pre, tuple):
                    pre, piggyback = pre
                pred = self.model(pre)
                post = self.model.annotate_batch_post(pred, piggyback=piggyback, argdict=argdict)
            outputs.append(post.float().cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, self.in_samples, len(self.labels)), np.float32)

    def _stitch(self, windows: np.ndarray, offsets: np.ndarray, n: int) -> np.ndarray:
        from seisbench.ext import stack_windows

        windows = np.ascontiguousarray(windows, dtype=np.float32)
        raw = stack_windows(windows=windows, offsets=offsets, method=self.stacking)
        pre, post = self.blinding
        if pre > 0 or post > 0:
            blinded = windows.copy()
            if pre > 0:
                blinded[:, :pre] = np.nan
            if post > 0:
                blinded[:, windows.shape[1] - post :] = np.nan
            stacked = stack_windows(windows=blinded, offsets=offsets, method=self.stacking)
            raw = np.where(np.isnan(stacked), raw, stacked)  # uncovered edges: the unblinded window (module doc)
        return raw[:n]

    def predict_raw(self, traces: Sequence[np.ndarray], component_order: str = "ZNE") -> tuple[list[np.ndarray], int]:
        """The stitched model outputs (samples, channels) of each whole trace, and how many traces were padded."""
        prepared, plans, padded = [], [], 0
        for trace in traces:
            x = self._prepare(trace, component_order)
            n = x.shape[1]
            if n < self.in_samples:
                x = np.pad(x, ((0, 0), (0, self.in_samples - n)))
                padded += 1
            offsets = self._offsets(x.shape[1])
            prepared.append(np.stack([x[:, o : o + self.in_samples] for o in offsets]))
            plans.append((offsets, n))
        if not prepared:
            return [], 0
        outputs = self._forward(np.concatenate(prepared))
        results, start = [], 0
        for offsets, n in plans:
            results.append(self._stitch(outputs[start : start + len(offsets)], offsets, n))
            start += len(offsets)
        return results, padded

    def predict_traces(self, traces: Sequence[np.ndarray], component_order: str = "ZNE") -> list[np.ndarray]:
        """(3, samples) float32 (P, S, noise) for each whole trace (channels in ``component_order``)."""
        raw, _ = self.predict_raw(traces, component_order)
        return [to_distribution(r, self.labels) for r in raw]


# ------------------------------------------------------------------------------------------------ the cache files
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


def _open_dataset(dataset_path: str | Path):
    from pipeline.data import open_dataset

    return open_dataset(dataset_path, sampling_rate=None)


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
    dataset = _open_dataset(dataset_path)
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


# -------------------------------------------------------------------------------------------- generator callables
TRACE_ORIGIN = "trace_origin_sample"
"""Metadata column: where the trace's first sample lies relative to the current window. It ends in ``_sample``, so
every SeisBench window shifts it as it shifts the picks (their documented convention): after windowing, the window
starts at sample ``-metadata[TRACE_ORIGIN]`` of the trace. Both teacher paths cut their target this way. Not for
steps that blank samples without moving them (SeisBench's ``RandomWindow`` with ``low``/``high`` zeroes the data
outside its bounds): the target there stays the teacher's, as it would for the analyst-pick labels."""


def mark_trace_origin(metadata: dict) -> None:
    metadata[TRACE_ORIGIN] = 0


def window_start(metadata: dict, step: str) -> int:
    if TRACE_ORIGIN not in metadata:
        raise EdgepickError(f"{step} needs {TRACE_ORIGIN} in the metadata: put its partner step before the windowing")
    origin = metadata[TRACE_ORIGIN]
    if not isinstance(origin, (int, float, np.integer, np.floating)) or not np.isfinite(origin):
        raise EdgepickError(f"{step}: {TRACE_ORIGIN} is {origin!r}, not a sample offset (one window per sample: "
                            "SlidingWindow's stacked windows are not supported)")
    return -int(origin)


def soft_label_window(cache, index: int, start: int, length: int) -> np.ndarray:
    """float16 (3, length), the cache's own precision: the cached P, S, noise of row ``index`` from trace sample
    ``start`` on (which may be negative); noise (0, 0, 1) wherever the window runs outside the trace, as the zero
    padding there holds none. (Training takes it to float32 a batch at a time, where torch converts it fast.)"""
    first, end = max(start, 0), min(start + length, cache.trace_length(index))
    if first == start and end - first == length:
        return np.array(cache.labels(index, first, end))  # a copy: later steps may write in place, not into the cache
    out = np.zeros((3, length), dtype=np.float16)
    out[2] = 1.0
    if end > first:
        out[:, first - start : end - start] = cache.labels(index, first, end)
    return out


class SoftLabelOrigin:
    """SeisBench augmentation, before windowing: check the trace against its soft-label cache entry (looked up by
    the sample's ``trace_name``: SeisBench's ``get_sample`` passes metadata, not the row index, and a filtered or
    split dataset renumbers its rows) and note where it starts (:data:`TRACE_ORIGIN`) for :class:`CropSoftLabels`.
    Expects channels-first waveforms (CW)."""

    def __init__(self, cache, key: str = "X"):
        self.cache = cache
        self.key = key

    def __call__(self, state_dict: dict) -> None:
        waveform, metadata = state_dict[self.key]
        length = self.cache.trace_length(self.cache.index_of(metadata["trace_name"]))
        if waveform.ndim != 2 or waveform.shape[-1] != length:
            raise EdgepickError(
                f"trace {metadata['trace_name']}: waveform {waveform.shape} does not align with its soft labels "
                f"(3, {length}) (open the dataset channels-first at its own sampling rate)"
            )
        mark_trace_origin(metadata)

    def __str__(self) -> str:
        return f"SoftLabelOrigin({getattr(self.cache, 'teacher', '?')})"


class CropSoftLabels:
    """SeisBench augmentation, after windowing: the cached teacher target over exactly the samples of the trace that
    ``state_dict[source]`` now holds, float16 (3, window), into ``state_dict[key]``; where the window ran past the
    trace (SeisBench pads with zeros), pure noise (0, 0, 1). Only the window is read from the cache."""

    def __init__(self, cache, key: str = "y_soft", source: str = "X"):
        self.cache = cache
        self.key = key
        self.source = source

    def __call__(self, state_dict: dict) -> None:
        waveform, metadata = state_dict[self.source]
        index = self.cache.index_of(metadata["trace_name"])
        start = window_start(metadata, "CropSoftLabels")
        state_dict[self.key] = (soft_label_window(self.cache, index, start, waveform.shape[-1]), metadata)

    def __str__(self) -> str:
        return f"CropSoftLabels(key={self.key})"


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

    def wrap_chain(self, chain: list, window: int, component_order: str = "ZNE") -> list:
        """A generator chain with the teacher's context added: :class:`StashTrace` first, :class:`TeacherContext`
        right after the chain's last windowing step (before augmentation and normalisation, which the teacher must
        not see; the cache path puts CropSoftLabels at the same place)."""
        import seisbench.generate as sbg

        def is_window(step) -> bool:
            return isinstance(step, sbg.FixedWindow) or isinstance(getattr(step, "augmentation", None), sbg.FixedWindow)

        last = max((i for i, step in enumerate(chain) if is_window(step)), default=None)
        if last is None:
            raise EdgepickError("on-the-fly teacher: the generator chain has no windowing step to cut the context around")
        context = TeacherContext([t.input for t in self.teachers], window, component_order)
        return [StashTrace()] + list(chain[: last + 1]) + [context] + list(chain[last + 1 :])

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


class StashTrace:
    """Generator step before windowing (on-the-fly teacher): keep the whole trace in ``state_dict[stash]`` for the
    teacher and note where it starts (:data:`TRACE_ORIGIN`), so that whatever windowing follows records where the
    window came from."""

    def __init__(self, key: str = "X", stash: str = "teacher_trace"):
        self.key, self.stash = key, stash

    def __call__(self, state_dict: dict) -> None:
        waveform, metadata = state_dict[self.key]
        mark_trace_origin(metadata)
        state_dict[self.stash] = (waveform, metadata)

    def __str__(self) -> str:
        return "StashTrace (whole trace kept for the teacher, its origin noted)"


class TeacherContext:
    """Generator step right after windowing (on-the-fly teacher): read where the window starts (:data:`TRACE_ORIGIN`)
    and cut, for each teacher, the span of the stashed whole trace covered by the teacher windows (annotate's
    offsets over the whole trace, as the cache used) that overlap the student's window, prepared as the teacher
    sees it (components, filter on the whole trace). Fixed-size outputs, so a DataLoader can batch them:

    - ``teacher_context_<i>`` float32 (3, window + 2 * (in_samples - 1)), zero after the span;
    - ``teacher_offsets_<i>`` int64: the teacher windows' starts relative to the span, -1 padded;
    - ``teacher_crop_<i>`` int64 (3,): the student window's start in the span, its samples inside the trace, window.
    """

    def __init__(self, inputs: list[TeacherInput], window: int, component_order: str = "ZNE", key: str = "X",
                 stash: str = "teacher_trace"):
        self.inputs, self.window, self.component_order = list(inputs), int(window), component_order
        self.key, self.stash = key, stash
        self.max_windows = [math.ceil((self.window + t.in_samples - 1) / t.hop) + 1 for t in self.inputs]
        self.max_span = [self.window + 2 * (t.in_samples - 1) for t in self.inputs]

    def __call__(self, state_dict: dict) -> None:
        x, metadata = state_dict[self.key]
        whole, _ = state_dict.pop(self.stash)
        n, start = whole.shape[-1], window_start(metadata, "TeacherContext")
        if start < 0 or x.shape[-1] != self.window:
            raise EdgepickError(
                f"trace {metadata.get('trace_name', '?')}: the on-the-fly teacher needs windows of {self.window} samples "
                f"starting inside the trace (got {x.shape[-1]} samples, start {start})"
            )
        valid = min(self.window, n - start)
        for i, (teacher, max_windows, max_span) in enumerate(zip(self.inputs, self.max_windows, self.max_span)):
            length = max(n, teacher.in_samples)  # a short trace is zero-padded to one teacher window
            offsets = teacher.offsets(length)
            used = offsets[(offsets < start + valid) & (offsets + teacher.in_samples > start)]
            first, end = int(used[0]), int(used[-1]) + teacher.in_samples
            if teacher.filter_args is None and teacher.filter_kwargs is None:  # components only: the span suffices
                span = teacher.prepare(whole[:, first:end], self.component_order)
            else:  # the filter runs over the whole trace, as for the cache
                span = teacher.prepare(whole, self.component_order)[:, first:end]
            context = np.zeros((3, max_span), dtype=np.float32)
            context[:, : span.shape[1]] = span
            relative = np.full(max_windows, -1, dtype=np.int64)
            relative[: len(used)] = used - first
            state_dict[f"teacher_context_{i}"] = (context, metadata)
            state_dict[f"teacher_offsets_{i}"] = (relative, metadata)
            state_dict[f"teacher_crop_{i}"] = (np.array([start - first, valid, self.window], dtype=np.int64), metadata)

    def __str__(self) -> str:
        return f"TeacherContext ({len(self.inputs)} teacher(s), window {self.window})"


MODES = ("cache", "on-the-fly")


def run(config, dataset_path: str | Path | None = None) -> list[Path]:
    """CLI helper: build the soft-label cache of ``config.teacher.name`` for a dataset (default ``distill.dataset``)."""
    teacher = config.teacher
    if teacher.mode not in MODES:
        raise EdgepickError(f"teacher.mode {teacher.mode!r} is unknown; use {' or '.join(MODES)}")
    parse_teacher_spec(teacher.name)
    if teacher.mode == "on-the-fly":
        return []  # nothing to precompute
    paths = [dataset_path] if dataset_path else [p.strip() for p in config.distill.dataset.split(",") if p.strip()]
    built = []
    for path in paths:
        built += build_soft_labels(
            path,
            teacher.name,
            batch_size=teacher.batch_size,
            device=teacher.device or None,
            cache_dir=teacher.cache_dir or None,
        )
    return built
