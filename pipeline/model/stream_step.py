"""One streaming step of a causal student: a 64-sample block in, its 64 scores out, each layer's left context
carried as state (pipeline.model.streaming explains the form). What the TFLite streaming model and the firmware
run; :func:`stream_scores` runs it over a whole stream, the reference the whole-window forward is tested against.

The states, in the order :meth:`StreamStep.state_shapes` lists them: for each convolution whose kernel is longer
than its stride, the last ``kernel - stride`` samples of its input (the U-net's levels run at 1/4, 1/16 and 1/64
of the rate: 16, 4 and 1 samples per block). Zero states are a stream that starts with the block, as the
whole-window forward pads each layer with zeros.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import EdgepickError
from pipeline.model import streaming
from pipeline.model.layers import baked
from pipeline.model.streaming import BLOCK


class StreamStep(nn.Module):
    """``forward(block, *states) -> (logits, *new_states)`` of a causal :class:`~pipeline.model.student.XiaoNet` in
    eval mode: ``block`` (1, 3, 64) normalised samples, ``logits`` (1, 3, 64) its scores (each ``output_delay``
    samples late)."""

    def __init__(self, student):
        super().__init__()
        if not getattr(student, "causal", False):
            raise EdgepickError("only a causal student (student.causal=true) runs as a stream of blocks")
        self.student = baked(student).eval() if getattr(student, "antialias", False) else student.eval()
        self._shapes: list[tuple[int, int, int]] = []
        with torch.no_grad():  # the states' shapes, traced once from zero states of any length
            self._trace = True
            self.forward(torch.zeros(1, 3, BLOCK))
            self._trace = False

    def state_shapes(self) -> list[tuple[int, int, int]]:
        return list(self._shapes)

    def zero_states(self) -> list[torch.Tensor]:
        return [torch.zeros(shape) for shape in self._shapes]

    def forward(self, block: torch.Tensor, *states: torch.Tensor):
        s = self.student
        queue, new = list(states), []

        def context(x: torch.Tensor, kernel: int, stride: int = 1) -> torch.Tensor:
            """``x`` after its carried context (kernel - stride samples; or its first samples dropped)."""
            keep = kernel - stride
            if keep < 0:
                return x[..., -keep:]
            if keep == 0:
                return x
            if self._trace:
                self._shapes.append((1, x.shape[1], keep))
                state = torch.zeros(1, x.shape[1], keep)
            else:
                state = queue.pop(0)
            full = torch.cat([state, x], dim=-1)
            new.append(full[..., -keep:])
            return full

        def ds(layer, x):
            return layer.act(layer.bn(layer.pw(layer.dw(context(x, layer.kernel, layer.stride)))))

        def up(layer, x, skip):
            return layer.act(layer.bn(layer.dw(context(layer.up(x) + skip, layer.kernel))))

        e1 = ds(s.enc1, block)
        e2 = ds(s.enc2, e1)
        e3 = ds(s.enc3, e2)
        b = ds(s.bottleneck, e3)
        m = None
        for branch in s.multiscale.branches:
            y = ds(branch, b)
            m = y if m is None else m + y
        d = up(s.up3, m, e3)
        d = up(s.up2, d, e2)
        d = up(s.up1, d, e1)
        for layer in s.refine:
            d = ds(layer, d)
        out = s.head(d)
        if s.smooth_output:
            out = F.conv1d(context(out, s.smoothing.shape[-1]), s.smoothing, groups=3)
        return (out, *new)


def stream_scores(student, waveform: np.ndarray, step: StreamStep | None = None) -> np.ndarray:
    """A causal student's probabilities (n, 3) over a whole stream ``waveform`` (3, n), run block by block from
    zero states with the running normalisation kept block by block, each score moved back to the sample it is of
    (each class's delay earlier, :func:`streaming.channel_delays`); the samples no block has finished (the last
    delay's and a partial block) are NaN."""
    step = step or StreamStep(student)
    waveform = np.asarray(waveform, dtype=np.float64)
    normalizer = streaming.NormSettings.of(student).normalizer(waveform.shape[0])
    states = step.zero_states()
    n = waveform.shape[1]
    written = np.full((n // BLOCK * BLOCK, 3), np.nan, dtype=np.float32)
    with torch.no_grad():
        for start in range(0, n - BLOCK + 1, BLOCK):
            block = torch.from_numpy(normalizer(waveform[:, start : start + BLOCK])).unsqueeze(0)
            logits, *states = step(block, *states)
            written[start : start + BLOCK] = torch.softmax(logits, dim=1)[0].T.numpy()
    return streaming.at_samples(written, n, streaming.channel_delays(student))
