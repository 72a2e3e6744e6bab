"""``make soft-labels``: run the teacher(s) once over each dataset of ``distill.dataset`` and cache their per-sample
(P, S, noise) output beside it (:mod:`pipeline.distill.soft_label_cache`); resumable, reused while current. Distillation builds
what is missing itself; this stage builds it ahead (e.g. on a machine with a GPU, ``teacher.device=cuda``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.distill import soft_labels
from pipeline.distill.soft_label_cache import build_soft_labels
from pipeline.errors import EdgepickError
from pipeline.model.teachers import parse_teacher_spec


def run(config, dataset_path: str | Path | None = None) -> list[Path]:
    teacher = config.teacher
    if teacher.mode not in soft_labels.MODES:
        raise EdgepickError(f"teacher.mode {teacher.mode!r} is unknown; use {' or '.join(soft_labels.MODES)}")
    parse_teacher_spec(teacher.name)
    if teacher.mode == "on-the-fly":
        print("soft-labels: teacher.mode=on-the-fly keeps no cache; nothing to build")
        return []
    paths = [dataset_path] if dataset_path else [p.strip() for p in config.distill.dataset.split(",") if p.strip()]
    built = []
    for path in paths:
        built += build_soft_labels(path, teacher.name, batch_size=teacher.batch_size,
                                               device=teacher.device or None, cache_dir=teacher.cache_dir or None)
    for path in built:
        print(f"soft-labels: {path}")
    return built
