"""What a window's components allow the student to pick: an S where its horizontal components are flat (a
vertical-only station, or dead N and E channels, as SeisBench fills the components a station lacks) is one the
PhaseNet teacher nearly never makes (2 false S on the 19 vertical-only ncsc100:test traces), while a student that
never saw such input fires S in their noise and coda (48 of its 53 false S there; docs/results.md, "Stop 27").
``s_needs_horizontals`` (an annotate argument of the student, off by default) makes that abstention a rule."""

from __future__ import annotations

import torch


def horizontals_flat(batch):
    """Per window of ``batch`` (B, 3, N) in ZNE order, whether every horizontal component is constant over it
    (torch or numpy: the student's annotate and the firmware's Python twin, pipeline.model.picking)."""
    horizontals = batch[:, 1:]
    return (horizontals == horizontals[..., :1]).all(-1).all(-1)


def without_s(batch, flat):
    """``batch`` (B, N, classes: P, S, noise) with the S probability of the ``flat`` windows moved to noise (the
    distribution stays one), as a copy; unchanged without flags. torch or numpy, as :func:`horizontals_flat`."""
    if flat is None or not bool(flat.any()):
        return batch
    batch = batch.clone() if isinstance(batch, torch.Tensor) else batch.copy()
    batch[flat, :, 2] += batch[flat, :, 1]
    batch[flat, :, 1] = 0
    return batch
