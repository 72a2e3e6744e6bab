"""The picks of a streaming model block by block: the Python twin of the firmware's block picker
(firmware/lib/edgepick_core/src/ep_block_picker.h), sample for sample.

A stream (one segment) runs from zero states, one 64-sample block at a time; each block's scores are written at its
own samples, the column of phase p at block sample t being the probability of sample t - delay_p (P and noise
``output_delay``, S its own delay). The picks are the live rule of a causal student
(:func:`pipeline.model.streaming.live_rule`: a window every block keeping its last block's scores, look-ahead = each
phase's delay, no retraction): each phase's curve is the delayed scores from the first window's kept block on (the
first ``in_samples - 64`` samples of a stream are that window's warm-up), picked by the student's
:class:`~pipeline.model.picking.PickRule`, each pick "reported" when the block that closes its trigger has arrived
(:func:`~pipeline.model.picking.add_reported_samples`). With ``s_needs_horizontals`` a block whose window (the
``in_samples`` samples ending with it) has flat N and E gives no S, as that window's annotate would.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import EdgepickError
from pipeline.model import components
from pipeline.model.picking import PHASES, LiveRule, PickRule, add_reported_samples
from pipeline.model.streaming import BLOCK, undelay


def flat_blocks(waveform: np.ndarray, in_samples: int) -> np.ndarray:
    """Per whole block of ``waveform`` (3, n): whether the live window ending with it (its ``in_samples`` samples,
    fewer at the start) has N and E constant (:func:`pipeline.model.components.horizontals_flat`)."""
    x = np.asarray(waveform)
    blocks = x.shape[1] // BLOCK
    out = np.zeros(blocks, dtype=bool)
    for b in range(blocks):
        end = (b + 1) * BLOCK
        out[b] = end >= in_samples and bool(components.horizontals_flat(x[None, :, end - in_samples : end])[0])
    return out


def block_curves(written: np.ndarray, live: LiveRule, flat: np.ndarray | None = None) -> np.ndarray:
    """Each phase's live curve (samples, 3: P, S, noise) from ``written`` (blocks x 64, 3): the model's output at
    each block sample of a stream from zero states; NaN before the first window's kept block and where no block has
    written the score yet. ``flat``: per block, no S (its S moved to noise)."""
    written = np.array(written, dtype=np.float32)
    n = written.shape[0]
    if n % BLOCK or written.ndim != 2 or written.shape[1] != 3:
        raise EdgepickError(f"block scores must be (whole 64-sample blocks, 3), got {written.shape}")
    if flat is not None and flat.any():
        rows = np.repeat(np.asarray(flat, dtype=bool)[: n // BLOCK], BLOCK)
        written[rows, 2] += written[rows, 1]
        written[rows, 1] = 0.0
    delays = (live.p_lookahead, live.s_lookahead, live.p_lookahead)  # P, S, noise
    curves = undelay(written, delays)
    for k, d in enumerate(delays):
        curves[: max(0, live.in_samples - BLOCK - d), k] = np.nan  # before the first window's kept block, d late
    return curves


def block_stream_picks(written: np.ndarray, n_samples: int, live: LiveRule, rule: PickRule,
                       sampling_rate: float = 100.0, t0: float = 0.0,
                       flat: np.ndarray | None = None) -> tuple[list[dict], np.ndarray]:
    """What the firmware's block picker emits on a stream of ``n_samples`` samples followed by "#end" (its last
    partial block never run): the picks of :func:`block_curves` by ``rule``, each with "reported". Returns (picks,
    curves)."""
    if live.hop != BLOCK or any(live.confirms.values()):
        raise EdgepickError(f"a streaming model's live rule is a window every {BLOCK} samples without retraction, "
                            f"got {live}")
    curves = block_curves(written, live, flat)
    picks = add_reported_samples(rule.picks(curves, PHASES, sampling_rate, t0), int(n_samples), live)
    return picks, curves
