"""Where distillation's teacher target comes from, behind one object for the training loop
(:class:`TrainingTargets`): the soft-label cache of each dataset (:mod:`pipeline.distill.soft_label_cache`), or the teacher
on every batch (:class:`OnTheFlyTeacher`).

Cache mode: ``SoftLabelOrigin(cache)`` before the windowing of a SeisBench generator chain and
``CropSoftLabels(cache)`` after it (:mod:`pipeline.data.generators`) read the cached target over exactly the window's
samples. On the fly (``teacher.mode=on-the-fly``): ``StashTrace`` and ``TeacherContext`` at the same places carry
each window's whole-trace context, and :meth:`OnTheFlyTeacher.targets` runs the teacher on a batch's context,
giving the cache's target with no cache on disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data import generators
from pipeline.errors import EdgepickError
from pipeline.model.picking import PickRule
from pipeline.distill.soft_label_cache import EnsembleSoftLabels, SoftLabelCache, build_soft_labels
from pipeline.model.teachers import Teacher, parse_teacher_spec, to_distribution

MODES = ("cache", "on-the-fly")


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
        """The generator steps that carry each training window's teacher context: :class:`~pipeline.data.generators.
        StashTrace` before the windowing, :class:`~pipeline.data.generators.TeacherContext` right after it (before
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

    def teacher_picks(self, path: str | Path, trace_names, threshold: float = 0.3) -> dict[str, np.ndarray] | None:
        """Trace name -> the samples of the teacher's P and S picks in it (SeisBench's rule: trigger at
        ``threshold``, first maximum), from the cache: where ``distill.live_windows`` puts picks on continuous data
        that has no analyst's. None on the fly, where the teacher has not seen the traces yet."""
        picks = self._cached_picks(path, trace_names, threshold)
        if picks is None:
            return None
        return {name: np.array([p["sample"] for p in found], dtype=np.int64) for name, found in picks.items()}

    def near_field(self, path: str | Path, trace_names, max_sp: int, threshold: float = 0.3) -> np.ndarray | None:
        """Per trace: whether the teacher picks an S at most ``max_sp`` samples after one of its P picks (both as
        :meth:`teacher_picks`): the near-field traces ``distill.oversample_near_field`` draws more often. None on
        the fly, where the teacher has not seen the traces yet."""
        picks = self._cached_picks(path, trace_names, threshold)
        if picks is None:
            return None
        out = []
        for name in trace_names:
            found = picks[name]
            p = np.array([q["sample"] for q in found if q["phase"] == "P"], dtype=np.int64)
            s = np.array([q["sample"] for q in found if q["phase"] == "S"], dtype=np.int64)
            gaps = s[None, :] - p[:, None]
            out.append(bool(((gaps > 0) & (gaps <= max_sp)).any()))
        return np.array(out, dtype=bool)

    def _cached_picks(self, path: str | Path, trace_names, threshold: float) -> dict[str, list[dict]] | None:
        """Trace name -> the teacher's picks (PickRule dicts) on its cached soft labels, at ``threshold`` with the
        first maximum (SeisBench's rule); None on the fly."""
        if self.online is not None:
            return None
        cache = self.caches[str(path)]
        rule = PickRule(p_threshold=threshold, s_threshold=threshold, top_tolerance=None)
        return {name: rule.picks(np.asarray(cache.labels_by_name(name), np.float32)) for name in trace_names}

    def target(self, batch: dict) -> np.ndarray:
        """float (batch, 3, window) P, S, noise of a batch from a generator with :meth:`steps`: the cached crop
        (float16, as stored) or the teacher's output now (float32)."""
        if self.online is not None:
            return self.online.targets(batch)
        return batch["y_soft"]
