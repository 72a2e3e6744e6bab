"""The streaming form of the student: each sample computed once (issue 30; docs/design.md, "Streaming").

The live mode of a plain student runs its whole 30 s window every second, so 29 of every 30 seconds are computed
again. A *causal* student (``student.causal``) is built so that the stream can be cut into blocks of 64 samples
(the three stride-4 stages) and each block run once, with each layer's left context kept as state between blocks,
as streaming keyword spotting runs on TensorFlow Lite Micro (google-research kws_streaming):

- every convolution is causal: a stride-1 kernel k sees the k - 1 samples before its own, a stride-4 one ends each
  output on the last sample of its stride (:func:`pipeline.model.student.causal_pad`), so a block's outputs need no
  sample after the block, and the U-net's skips meet at the same block with no delay line;
- the look-ahead the picks need becomes a fixed ``output_delay``: the score the network writes at sample t is of
  sample t - output_delay (distillation compares it with the teacher's there); S may have its own, longer one
  (``s_output_delay``: S is told from P by what follows it, at no cost in compute, only in S latency), so the
  P and noise channels a block writes are of output_delay, its S channel of s_output_delay samples before it;
- the per-window normalisation becomes a running one (:func:`running_normalize`): each block demeaned by the mean
  of the last ``norm_window`` samples and divided by their largest excursion from it over all components: the
  per-window normalisation of a window that ends with the block, kept incrementally (block sums, maxima, minima).

The whole-window forward of a causal student (zero padding before the window) is the stream run block by block
from zero states (:mod:`pipeline.model.stream_step`, tests/test_streaming.py); a window's scores from
:func:`history` samples on have their whole history and equal the endless stream's.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import EdgepickError
from pipeline.model.picking import LiveRule

BLOCK = 64  # samples per streaming step: the student's three stride-4 stages (student.DOWNSAMPLING)
DEFAULT_NORM_WINDOW = 1024  # 10.24 s at 100 Hz: a running normalisation window (16 blocks)
DEFAULT_OUTPUT_DELAY = 100  # 1 s of look-ahead, the live mode's P look-ahead (LiveRule.p_lookahead)


def check_causal(causal, output_delay, norm_window, in_samples,
                 s_output_delay=None) -> tuple[bool, int, int, int]:
    """The streaming settings, validated: (causal, output_delay, norm_window, s_output_delay); a plain student has
    neither delays nor a running window (0, 0, 0); a causal one's (None: the defaults; S's: P's) are whole samples,
    its windows whole blocks."""
    causal = bool(causal)
    if not causal and output_delay is None and norm_window is None and not s_output_delay:
        return False, 0, 0, 0
    output_delay = DEFAULT_OUTPUT_DELAY if output_delay is None else output_delay
    norm_window = DEFAULT_NORM_WINDOW if norm_window is None else norm_window
    s_output_delay = output_delay if s_output_delay is None or (causal and s_output_delay == 0) else s_output_delay
    try:
        delay, window, s_delay = int(output_delay), int(norm_window), int(s_output_delay)
    except (TypeError, ValueError) as error:
        raise EdgepickError(f"student output_delay / s_output_delay / norm_window must be whole numbers of samples: "
                            f"{error}") from None
    if delay != output_delay or window != norm_window or s_delay != s_output_delay:
        raise EdgepickError(f"student output_delay / s_output_delay / norm_window must be whole numbers of samples, "
                            f"got {output_delay!r} / {s_output_delay!r} / {norm_window!r}")
    if not causal:
        if delay or window or s_delay:  # a plain student saves 0 / 0 / 0
            raise EdgepickError("student output_delay, s_output_delay and norm_window are settings of a causal "
                                "(streaming) student; set student.causal=true or leave them 0")
        return False, 0, 0, 0
    if window < BLOCK or window % BLOCK:
        raise EdgepickError(f"student norm_window must be a whole number of {BLOCK}-sample blocks, got {window}")
    if in_samples % BLOCK:
        raise EdgepickError(f"a causal student's in_samples must be a whole number of {BLOCK}-sample blocks, got "
                            f"{in_samples} (e.g. {math.ceil(in_samples / BLOCK) * BLOCK})")
    for name, value in (("output_delay", delay), ("s_output_delay", s_delay)):
        if value < 1 or value >= in_samples:
            raise EdgepickError(f"a causal student's {name} must be >= 1 sample and shorter than the window, got "
                                f"{value}")
    return True, delay, window, s_delay


def channel_delays(student) -> tuple[int, int, int]:
    """How many samples late a causal student writes each class's score (P, S, noise: CLASS_ORDER); a plain
    student's are 0."""
    p = int(getattr(student, "output_delay", 0) or 0)
    s = int(getattr(student, "s_output_delay", 0) or p)
    return p, s, p


def at_samples(written: np.ndarray, n: int, delays) -> np.ndarray:
    """A stream's scores (n, 3) from ``written`` (the rows its blocks wrote, at most n, class c ``delays[c]``
    late), each moved back to the sample it is of; NaN where no block has written it yet (:func:`undelay`)."""
    out = np.full((n + max(delays), written.shape[1]), np.nan, dtype=np.float32)
    out[: len(written)] = written
    return undelay(out, delays)[:n]


def undelay(scores, delays):
    """``scores`` (..., n, classes), class c written ``delays[c]`` samples late, with each score moved back to the
    sample it is of; the last ``delays[c]`` of class c are not known yet (NaN). numpy or torch."""
    out = scores.clone() if isinstance(scores, torch.Tensor) else scores.copy()
    out[...] = np.nan
    n = scores.shape[-2]
    for c, d in enumerate(delays):
        out[..., : n - d, c] = scores[..., d:, c]
    return out


def causal_reach(refine_blocks: int = 0, kernel_refine: int = 5, antialias: bool = False) -> int:
    """How many samples before its own a causal student's score looks at (at most, over a block's positions):
    the architecture of pipeline.model.student.XiaoNet traced index by index (tests/test_streaming.py checks it
    against gradients)."""
    n = 16 * BLOCK
    earliest = np.arange(n)

    def conv(e: np.ndarray, kernel: int, stride: int = 1) -> np.ndarray:
        out = np.arange(len(e) // stride) * stride + stride - kernel  # first input index of each output
        return e[np.clip(out, 0, len(e) - 1)]

    def up(e: np.ndarray) -> np.ndarray:
        return np.repeat(e, 4)

    blur = 4 if antialias else 0  # the low-pass's extra taps (pipeline.model.layers.BLUR)
    e1 = conv(earliest, 7)
    e2 = conv(e1, 5 + blur, 4)
    e3 = conv(e2, 5 + blur, 4)
    b = conv(e3, 3 + blur, 4)
    b = np.minimum.reduce([conv(b, k) for k in (3, 5, 7)])
    d = conv(np.minimum(up(b), e3), 5 + blur)
    d = conv(np.minimum(up(d), e2), 5 + blur)
    d = conv(np.minimum(up(d), e1), 5 + blur)
    for _ in range(int(refine_blocks)):
        d = conv(d, kernel_refine)
    d = conv(d, 5)  # the output smoothing
    steady = np.arange(n - BLOCK, n)
    return int((steady - d[steady]).max())


def history(student) -> int:
    """Samples of a window before the first score that equals the endless stream's: the running normalisation's
    window and the network's causal reach (both before the score's own sample)."""
    return int(student.norm_window + causal_reach(student.refine_blocks, antialias=getattr(student, "antialias", False)))


def exact_overlap(in_samples: int, history_samples: int, output_delay: int) -> int:
    """SeisBench's overlap for annotating a stream with a causal student exactly: each window keeps whole blocks
    from its ``history_samples``-th sample to ``output_delay`` before its end, and the next window starts so that
    it keeps the blocks after them."""
    kept = (in_samples - history_samples - output_delay) // BLOCK * BLOCK
    if kept < BLOCK:
        raise EdgepickError(f"a causal student's window ({in_samples} samples) must hold its history "
                            f"({history_samples}), its output delay ({output_delay}) and a {BLOCK}-sample block")
    return int(in_samples - kept)


def live_rule(student) -> LiveRule:
    """The live mode of a causal student as a :class:`LiveRule`: a window every block whose kept scores are its
    last block's, each phase's delay late (so its picks are reported as the stream's are); no retraction: a
    sample's score is final once computed."""
    p_delay, s_delay, _ = channel_delays(student)
    return block_live_rule(student.in_samples, p_delay, s_delay)


def block_live_rule(in_samples: int, p_delay: int, s_delay: int) -> LiveRule:
    """The live rule of a streaming model of these delays (:func:`live_rule` of its student): a window every
    block, look-ahead = each phase's delay, no retraction."""
    return LiveRule(int(in_samples), BLOCK, int(p_delay), int(s_delay), 0, 0)


def warmup(waveform: np.ndarray, samples: int, rate: float, noise_s: float = 1.0) -> np.ndarray:
    """``waveform`` (components, n) after ``samples`` samples of its own first ``noise_s`` seconds mirrored back and
    forth: a station that had been streaming before it (continuous at the join)."""
    if samples <= 0:
        return waveform
    head = waveform[:, : max(1, int(round(noise_s * rate)))]
    return np.concatenate([np.pad(head, ((0, 0), (samples, 0)), mode="symmetric")[:, :samples], waveform], axis=1)


def warmed_up(student, stream):
    """``stream`` as a causal student's live stream sees it: each trace after :func:`history` samples (and a block)
    of warm-up (:func:`warmup`), so that its first sample has a whole history and the windows' blinding falls on the
    warm-up, and without its last partial block (the stream has not finished it); and each trace's first time, to
    crop the scores back to (:func:`cropped`)."""
    padded, starts = stream.copy(), {}
    samples = history(student) + BLOCK
    for trace in padded:
        key = trace.id.rsplit(".", 1)[0]
        starts[key] = min(starts.get(key, trace.stats.starttime), trace.stats.starttime)
        data = warmup(trace.data[None], samples, trace.stats.sampling_rate)[0]
        trace.data = data[: len(data) // BLOCK * BLOCK]  # whole blocks: SeisBench's last window on the block grid
        trace.stats.starttime -= samples / trace.stats.sampling_rate
    return padded, starts


def cropped(annotations, starts: dict):
    """The scores of :func:`warmed_up` traces from each station's first sample on."""
    for trace in annotations:
        first = starts.get(trace.id.rsplit(".", 1)[0])
        if first is not None:
            trace.trim(starttime=first, nearest_sample=True)
    return annotations


NORM_CLIP = 8.0  # a lagged normalisation's bound: an onset up to 8x the noise before it stands out, then saturates
MAX_NORM_LAG = 512  # the firmware keeps at most 8 raw blocks for a lag (ep_running_norm.h, kMaxLagBlocks)


def running_normalize(x, window_blocks: int, eps: float, per_sample: bool = False, lag: int = 0):
    """``x`` (..., components, n), n a whole number of blocks, each block demeaned per component by the mean of
    the last ``window_blocks`` blocks (fewer at the start) and divided by the largest absolute excursion from
    that mean over the same samples and all components, times (1 + ``eps``) (1 where it is 0): the per-window
    normalisation (pipeline.data.normalization) of the window ending with the block. numpy or torch; the
    statistics in float64, the result float32. :class:`RunningNormalizer` is the same, block by block.

    ``per_sample``: the peak is taken up to each sample (the ``window_blocks - 1`` blocks before its block and its
    block's samples up to it) and the mean is that of the ``window_blocks`` blocks before the block (the first
    block's own at the start): the per-window normalisation of a window ending with the sample. The noise just
    before an onset then keeps its scale, wherever the onset falls in its block; with a peak per block it is divided
    by the onset's peak from the block's first sample on, a step the block grid places (docs/design.md, "Streaming").
    ``lag`` (per sample): the peak of the samples up to ``lag`` before each (sample 0's where there are none), the
    result clipped to +-NORM_CLIP: an onset is measured against the noise before it for ``lag`` samples (the
    contrast a whole window's normalisation keeps), instead of against itself."""
    if isinstance(x, np.ndarray):
        return running_normalize(torch.from_numpy(np.asarray(x, dtype=np.float64)), window_blocks, eps,
                                 per_sample, lag).numpy()
    *lead, components, n = x.shape
    if n % BLOCK:
        raise EdgepickError(f"running normalisation needs whole {BLOCK}-sample blocks, got {n} samples")
    blocks = x.detach().reshape(-1, components, n // BLOCK, BLOCK).double()
    sums = F.pad(blocks.sum(-1).cumsum(-1), (1, 0))
    idx = torch.arange(n // BLOCK)
    if per_sample:
        first, last = (idx - window_blocks).clamp(min=0), idx.clamp(min=1)  # blocks [first, last): those before
        mean = (sums[..., last] - sums[..., first]) / ((last - first) * BLOCK).double()
        high, low = _lagged_max(blocks, window_blocks, lag), -_lagged_max(-blocks, window_blocks, lag)
        mean = mean.unsqueeze(-1)
    else:
        first = (idx - window_blocks + 1).clamp(min=0)
        mean = (sums[..., idx + 1] - sums[..., first]) / ((idx - first + 1) * BLOCK).double()
        high = F.max_pool1d(F.pad(blocks.amax(-1), (window_blocks - 1, 0), value=-math.inf), window_blocks, 1)
        low = -F.max_pool1d(F.pad(-blocks.amin(-1), (window_blocks - 1, 0), value=-math.inf), window_blocks, 1)
    peak = torch.maximum(high - mean, mean - low).amax(dim=1, keepdim=True) * (1 + eps)
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    if not per_sample:
        mean, peak = mean.unsqueeze(-1), peak.unsqueeze(-1)
    out = (blocks - mean) / peak
    if lag:
        out = out.clamp(-NORM_CLIP, NORM_CLIP)
    return out.reshape(*lead, components, n).to(torch.float32)


def _lagged_max(blocks: torch.Tensor, window_blocks: int, lag: int) -> torch.Tensor:
    """(batch, components, blocks, 64) -> the same shape: at each sample t the maximum of the samples from the first
    of the ``window_blocks - 1`` blocks before t's block to t - ``lag`` (sample 0 where t < lag)."""
    batch, components, count, _ = blocks.shape
    n = count * BLOCK
    t = torch.arange(n)
    u = (t - lag).clamp(min=0)  # the last sample each t may see
    back = t // BLOCK - u // BLOCK  # whole blocks between t's block and u's
    extremes = blocks.amax(-1)
    whole = []  # whole[k][b]: the maximum of blocks [b - window_blocks + 1, b - k - 1]
    for k in range(int(back.max()) + 1):
        before = _before(extremes, window_blocks - 1 - k)
        whole.append(F.pad(before, (k, 0), value=-math.inf)[..., :count])
    whole = torch.stack(whole)[back, :, :, t // BLOCK].permute(1, 2, 0)  # (batch, components, n)
    upto = blocks.cummax(-1).values.reshape(batch, components, n)[..., u]
    return torch.maximum(upto, whole).reshape(batch, components, count, BLOCK)


def _before(extremes: torch.Tensor, blocks: int) -> torch.Tensor:
    """(batch, components, blocks) per-block maxima -> the maximum of the ``blocks`` blocks before each (-inf where
    there are none)."""
    if blocks < 1:
        return torch.full_like(extremes, -math.inf)
    earlier = F.pad(extremes[..., :-1], (blocks, 0), value=-math.inf)  # earlier[k] = extremes[k - blocks]
    return F.max_pool1d(earlier, blocks, 1)[..., : extremes.shape[-1]]


def check_norm_lag(lag, window_blocks: int, per_sample: bool) -> int:
    """A running normalisation's lag in samples, checked as the firmware's ``RunningNorm::Init`` checks it: 0, or
    with a peak per sample 1-MAX_NORM_LAG and under the window (``window_blocks``) less a block."""
    lag = int(lag)
    if lag < 0 or (lag and (not per_sample or lag > MAX_NORM_LAG or lag >= (window_blocks - 1) * BLOCK)):
        raise EdgepickError(f"norm_lag must be 0, or with sample_norm 1-{MAX_NORM_LAG} samples and under the "
                            f"normalisation window less a block ({max(0, window_blocks - 1) * BLOCK} samples); "
                            f"got {lag}")
    return lag


@dataclass(frozen=True)
class NormSettings:
    """A causal student's running normalisation (its norm_window, norm_eps, sample_norm and norm_lag), as
    :func:`running_normalize` and :class:`RunningNormalizer` take it: one object for the stream, its export, the
    TFLite run and the firmware's twin."""

    window_blocks: int
    eps: float
    per_sample: bool = False
    lag: int = 0

    @classmethod
    def of(cls, student) -> "NormSettings":
        return cls(int(student.norm_window) // BLOCK, float(student.norm_eps),
                   bool(getattr(student, "sample_norm", False)), int(getattr(student, "norm_lag", 0)))

    @classmethod
    def described(cls, description: dict) -> "NormSettings":
        """From the streaming model's description (stream_states.json; per_sample and lag 0 where older)."""
        return cls(int(description["norm_window_blocks"]), float(description["norm_eps"]),
                   bool(description.get("norm_per_sample", False)), int(description.get("norm_lag_samples", 0)))

    def normalizer(self, components: int = 3) -> "RunningNormalizer":
        """A new normaliser (a stream's start) of these settings."""
        return RunningNormalizer(components, self.window_blocks, self.eps, self.per_sample, self.lag)


class RunningNormalizer:
    """:func:`running_normalize` one block at a time, as the firmware keeps it (``RunningNorm``, ep_running_norm.h),
    bit for bit: per block and component its sum (its samples added in order), maximum and minimum, for the last
    ``window_blocks`` blocks, the window's sums a running total (minus the block that leaves, plus the one that
    comes); mean and peak in double. On integer counts every sum is exact. ``per_sample``: the peak up to each
    sample, the mean of the blocks before (:func:`running_normalize`'s ``per_sample``).

    Calling it gives the float block ((x - mean) / peak in double); :meth:`quantized` gives an int8 model's input
    from the same statistics as the firmware computes it: in fixed point for a block of whole numbers, in one float32
    pass otherwise (the double division and a separate quantization cost ~10x more on the FPU-less ESP32-C3)."""

    def __init__(self, components: int, window_blocks: int, eps: float, per_sample: bool = False, lag: int = 0):
        if window_blocks < 1:
            raise EdgepickError(f"running normalisation needs a window of at least one block, got {window_blocks}")
        self.window_blocks, self.eps, self.per_sample = int(window_blocks), float(eps), bool(per_sample)
        self.lag, self.seen = check_norm_lag(lag, self.window_blocks, self.per_sample), 0
        self.stats: deque[np.ndarray] = deque(maxlen=self.window_blocks)  # per block (3, components): sum, max, min
        self.total = np.zeros(components, dtype=np.float64)  # the window's sums
        self.recent: deque[np.ndarray] = deque(maxlen=-(-self.lag // BLOCK))  # raw blocks a lag reaches back to

    def update(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One more block's statistics; the mean (per component) and the peak (x (1 + eps), 1 where 0) of the
        window ending with it: one peak, or with ``per_sample`` one per sample (64,)."""
        block = np.asarray(block, dtype=np.float64)
        if block.shape[-1] != BLOCK:
            raise EdgepickError(f"running normalisation takes {BLOCK}-sample blocks, got {block.shape[-1]}")
        # np.add.accumulate adds in order (sum() adds pairwise)
        mine = np.stack([np.add.accumulate(block, -1)[..., -1], block.max(-1), block.min(-1)])
        if self.per_sample:
            before = list(self.stats)
            mean = self.total / (len(before) * BLOCK) if before else mine[0] / BLOCK
            high, low = self._extremes(block, before)
            peak = np.maximum(high - mean[:, None], mean[:, None] - low).max(0) * (1 + self.eps)
        if len(self.stats) == self.window_blocks:
            self.total = self.total - self.stats[0][0]
        self.total = self.total + mine[0]
        self.stats.append(mine)
        self.recent.append(block)
        self.seen += BLOCK
        if not self.per_sample:
            stats = np.stack(self.stats)
            mean = self.total / (len(self.stats) * BLOCK)
            peak = np.float64(np.maximum(stats[:, 1].max(0) - mean, mean - stats[:, 2].min(0)).max()) * (1 + self.eps)
        return mean, np.where(peak > 0, peak, 1.0)

    def _extremes(self, block: np.ndarray, before: list) -> tuple[np.ndarray, np.ndarray]:
        """Per sample of ``block`` (per sample mode) the largest and smallest sample of each component from the
        first of the ``window_blocks - 1`` blocks before it to ``lag`` samples before the sample (sample 0 at the
        start): (components, 64) each. ``before``: the statistics of the blocks before it, oldest first."""
        t = self.seen + np.arange(BLOCK)
        u = np.maximum(t - self.lag, 0)  # the last sample each may see
        back = t // BLOCK - u // BLOCK  # 0: its own block; k: the k-th raw block before it
        high, low = np.empty_like(block), np.empty_like(block)
        for k in np.unique(back):
            mine = back == k
            raw = block if k == 0 else self.recent[-k]
            reach = u[mine] % BLOCK  # the samples of that block up to u
            high[:, mine] = np.maximum.accumulate(raw, -1)[:, reach]
            low[:, mine] = np.minimum.accumulate(raw, -1)[:, reach]
            whole = before[max(0, len(before) - self.window_blocks + 1): len(before) - k]  # blocks wholly before u's
            if whole:
                high[:, mine] = np.maximum(high[:, mine], np.stack(whole)[:, 1].max(0)[:, None])
                low[:, mine] = np.minimum(low[:, mine], np.stack(whole)[:, 2].min(0)[:, None])
        return high, low

    def __call__(self, block: np.ndarray) -> np.ndarray:
        block = np.asarray(block, dtype=np.float64)
        mean, peak = self.update(block)
        out = (block - mean[:, None]) / peak
        return (np.clip(out, -NORM_CLIP, NORM_CLIP) if self.lag else out).astype(np.float32)

    def quantized(self, block: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
        """The block (components, 64) as an int8 input of ``scale`` and ``zero_point``: (x - mean) / peak / scale,
        rounded half away from zero, plus the zero point, clamped to [-128, 127], computed as the firmware does
        (``RunningNorm::NormalizeInt8``, to ~1e-4 of a step): with inv = 1 / (peak x scale) (double), a block of
        whole numbers below 2^31 in fixed point (per component R = the mean truncated, inv = M 2^-S with M its 23-bit
        mantissa, C = round((R - mean) inv 2^S), q = round((x - R) M + C) / 2^S), any other in one float32 pass (r =
        float32(mean), a = float32(inv), c = float32((r - mean) inv), q = round((x - r) a + c), each step float32).
        With ``per_sample`` the same, the constants computed again where the peak changes within the block; with a
        ``lag`` the result clipped to the steps of +-NORM_CLIP.
        ``block``: float32 samples (the firmware parses float32)."""
        x = np.asarray(block, dtype=np.float32)
        mean, peak = self.update(x)
        whole = bool(np.all(np.trunc(x) == x) and np.all(np.abs(x) < 2.0 ** 31))
        peaks = np.broadcast_to(peak, (x.shape[-1],))
        out = np.empty(x.shape, dtype=np.int8)
        start = 0
        while start < x.shape[-1]:  # runs of samples that share a peak
            stop = start + 1
            while stop < x.shape[-1] and peaks[stop] == peaks[start]:
                stop += 1
            out[:, start:stop] = _quantize(x[:, start:stop], mean, float(peaks[start]), scale, zero_point, whole)
            start = stop
        if self.lag:  # the clip at +-NORM_CLIP, in steps (rounding is monotone: the same as clipping before it)
            step = math.floor(NORM_CLIP / float(np.float32(scale)) + 0.5)
            out = np.clip(out.astype(np.int64), -step + int(zero_point), step + int(zero_point)).clip(-128, 127)
        return out.astype(np.int8)

    def __str__(self) -> str:
        peak = "each block's peak" if not self.per_sample else (
            f"the peak {self.lag} samples before each, clipped at {NORM_CLIP:g}" if self.lag else "each sample's peak")
        return f"RunningNormalizer(last {self.window_blocks} blocks of {BLOCK} samples, {peak}, eps {self.eps:g})"


def _quantize(x: np.ndarray, mean: np.ndarray, peak: float, scale: float, zero_point: int, whole: bool) -> np.ndarray:
    """Samples ``x`` (components, n) of one peak as :meth:`RunningNormalizer.quantized` computes them."""
    inv = 1.0 / (peak * float(np.float32(scale)))
    mantissa, exponent = math.frexp(inv)
    shift = 23 - exponent
    if whole and 1 <= shift <= 62:
        multiplier = int(mantissa * 8388608.0)  # 2^23
        base = np.trunc(mean).astype(np.int64)
        offset = np.array([math.floor(math.ldexp((float(b) - m) * inv, shift) + 0.5) for b, m in zip(base, mean)],
                          dtype=np.int64)
        t = (x.astype(np.int64) - base[:, None]) * multiplier + offset[:, None]
        half = np.int64(1) << np.int64(shift - 1)
        rounded = np.where(t >= 0, (t + half) >> shift, -((-t + half) >> shift))
    else:
        r = mean.astype(np.float32)
        c = ((r.astype(np.float64) - mean) * inv).astype(np.float32)
        v = (x - r[:, None]) * np.float32(inv) + c[:, None]  # float32 throughout (numpy keeps the array's dtype)
        rounded = np.sign(v) * np.floor(np.abs(v).astype(np.float64) + 0.5)  # exact: + 0.5 in float64
    return np.clip(rounded + int(zero_point), -128, 127).astype(np.int8)
