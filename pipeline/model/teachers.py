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

Their outputs cached once per dataset, and distillation's target: :mod:`pipeline.distill.soft_labels`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.errors import EdgepickError
from pipeline.model.picking import window_offsets

#: SeisBench model classes a spec may name (lower-case spec name -> seisbench.models class name).
TEACHER_MODELS = {"phasenet": "PhaseNet", "eqtransformer": "EQTransformer"}


PHASES = ("P", "S", "N")


_WEIGHTS_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


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
        host = re.search(r"host='([^']+)'", detail)
        if host and ("NameResolution" in detail or "Max retries" in detail):
            detail = f"no connection to {host.group(1)}"  # the rest of urllib3's chain says nothing more
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
