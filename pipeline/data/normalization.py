"""The window normalisation the student, its training windows and the firmware share (ep_normalize.cpp, tested
against this function): each component demeaned, the window divided by its largest peak over all components."""

from __future__ import annotations

import numpy as np
import torch

# Relative normalisation epsilon: the window is divided by its largest peak x (1 + NORM_EPS).
NORM_EPS = 1e-6


def normalize_windows(x, eps: float = NORM_EPS):
    """Demean each component, then divide the window by its largest absolute value over all components (numpy or
    torch), times (1 + ``eps``).

    ``x``: (..., components, samples). One scale for all three components, as SeisBench's PhaseNet does
    (``norm_amp_per_comp=False``): the ratio of vertical to horizontal amplitude is what tells P (strongest on Z)
    from S (strongest on the horizontals), and a per-component peak would erase it. The epsilon is relative, so
    1e-14 m/s amplitudes are not swamped; all-zero windows stay zero. This is what :meth:`XiaoNet.annotate_batch_pre`
    does and what the firmware does (``ep_normalize``).
    """
    if isinstance(x, torch.Tensor):
        x = x - x.mean(dim=-1, keepdim=True)
        scale = x.abs().amax(dim=(-2, -1), keepdim=True) * (1 + eps)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return x / scale
    x = np.asarray(x)
    x = x - x.mean(axis=-1, keepdims=True, dtype=np.float64).astype(x.dtype if x.dtype == np.float64 else np.float32)
    scale = float(np.abs(x).max()) * (1 + eps) if x.ndim == 2 else np.abs(x).max(axis=(-2, -1), keepdims=True) * (1 + eps)
    scale = np.where(scale > 0, scale, 1.0)
    return (x / scale).astype(np.float32)
