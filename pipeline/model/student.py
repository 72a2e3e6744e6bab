"""The XiaoNet-style student: a tiny U-shaped phase picker built to map onto TensorFlow Lite Micro ops.

Architecture (after XiaoNet v5-B, github.com/Hy-X/xiao_net), every convolution depthwise-separable (DS):

- encoder: DS k7 s1 (3 -> c1), DS k5 s4 (-> c2), DS k5 s4 (-> c3), bottleneck DS k3 s4 (-> c4);
- multi-scale block: three parallel DS convolutions k3 / k5 / k7 (c4 -> c4), summed;
- decoder, three times: ``ConvTranspose1d(k=4, s=4)`` (c_in -> c_out) + additive skip -> depthwise k5 -> BN -> act;
- ``refine_blocks`` DS k5 blocks (c1 -> c1) at full resolution (0 by default): capacity where the pick's time is set;
- 1x1 convolution -> a fixed smoothing filter -> softmax over (P, S, noise).

with ``c_i = base_channels * channel_multipliers[i]``. Each DS block is depthwise conv -> pointwise conv -> BatchNorm ->
act, the activation ReLU6 by default (TFLite fuses it into the convolution) or XiaoNet's Hardswish. Choices made
for TensorFlow Lite Micro (why: docs/design.md, "The student"):

- Upsampling is a ``ConvTranspose1d`` with kernel = stride = 4, never ``nn.Upsample`` (whose export grew a 32x
  larger tensor); the converter emits it as a pointwise CONV_2D and a depth-to-space RESHAPE. A k4/s4 transposed
  convolution generalises "nearest x4 then the pointwise half of XiaoNet's decoder DS block"; the depthwise half
  then runs on the (cheaper) output channels.
- Windows are padded internally to a multiple of 64 (three stride-4 stages) and the output is cropped back, so
  ``in_samples`` can be 1001, 3001 or anything else. Strided convolutions pad exactly like TensorFlow's ``SAME``
  (all padding on the right), so the TFLite model needs no extra PAD op per layer.
- The converted model uses CONV_2D, DEPTHWISE_CONV_2D, ADD, PAD, RESHAPE, STRIDED_SLICE and SOFTMAX only.

Training runs the same layers as 2-D convolutions on a channels-last (batch, channels, 1, samples) tensor, about
twice as fast on the CPU; evaluation and the export run them as the 1-D layers above (see :func:`to_channels_last`).

The model is a :class:`seisbench.models.WaveformModel`: ``save`` / ``load``, ``annotate`` and ``classify`` on obspy
streams work as for SeisBench's PhaseNet (labels ``PSN``, components ``ZNE``, 100 Hz, one peak normalisation over
all components with a *relative* epsilon, :mod:`pipeline.data.normalization`), picking by its
:class:`~pipeline.model.picking.PickRule`, saved in its ``default_args``.
"""

from __future__ import annotations

import math
import zipfile
from typing import Any

import numpy as np
import seisbench.models as sbm
import seisbench.util as sbu
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import EdgepickError
from pipeline.data.normalization import NORM_EPS, normalize_windows
from pipeline.model import components, streaming
from pipeline.model.layers import (ACTIVATIONS, BatchNorm, DepthwiseConv1d, DSConv,  # noqa: F401
                                   MultiScale, PointwiseConv1d, UpBlock, Upsample4, causal_pad, make_activation,
                                   same_padding, to_channels_last)
from pipeline.model.macs import count_macs, phasenet_macs  # noqa: F401 - the student's MAC counts, re-exported
from pipeline.model.picking import LiveRule, PickRule

DOWNSAMPLING = 64  # 4 ** 3: the internal length must be a multiple of this
DEFAULT_MULTIPLIERS = (1, 2, 4, 4)
CLASS_ORDER = "PSN"
# Samples of a window whose prediction sees past the window's edge: the network's receptive field reaches 302
# samples back and 291 ahead (tests/test_student.py measures it). Annotate leaves out ("blinding") the predictions
# that close to either end of each window; the overlapping windows' interiors cover those samples, and only the
# first and last ~3 s of a stream get none (no picks there: a stream start is no onset).
RECEPTIVE_RADIUS = 302
REFINE_KERNEL = 5  # each full-resolution refine block widens the receptive field by 2 samples either side


def receptive_radius(refine_blocks: int = 0) -> int:
    """How far a student's output looks past its sample, either side (the default student's: RECEPTIVE_RADIUS)."""
    return RECEPTIVE_RADIUS + int(refine_blocks) * (REFINE_KERNEL - 1) // 2


def default_blinding(overlap: int, radius: int = RECEPTIVE_RADIUS) -> int:
    """Samples blinded at each end of a window: the receptive radius, but at most half the overlap, so that every
    sample away from the stream's ends stays inside some window's unblinded part."""
    return max(0, min(radius, int(overlap) // 2))


def internal_length(samples: int) -> int:
    """The length the network runs on: ``samples`` rounded up to a multiple of 64."""
    return int(math.ceil(samples / DOWNSAMPLING) * DOWNSAMPLING)


def window_padding(samples: int) -> tuple[int, int]:
    """Zeros added (left, right) to a window of ``samples`` before the network; the output is cropped back."""
    extra = internal_length(samples) - samples
    return extra // 2, extra - extra // 2


class XiaoNet(sbm.WaveformModel):
    """XiaoNet-style student; ``forward`` maps (B, 3, N) normalised windows to (B, 3, N) probabilities (P, S, noise)."""

    # The pick rule is annotate arguments, as SeisBench's own pickers keep theirs; the defaults and meanings are
    # pipeline.model.picking.PickRule's, and each student saves the values it was made with in its default_args.
    _annotate_args = sbm.WaveformModel._annotate_args.copy()
    _annotate_args["*_threshold"] = ("Detection threshold for the provided phase", PickRule.p_threshold)
    _annotate_args["pick_top_tolerance"] = ("The pick is the midpoint of the samples >= (1 - this) x the segment's "
                                            "maximum (< 0: the first maximum)", PickRule.top_tolerance)
    _annotate_args["pick_top_half_width"] = ("Samples searched either side of the maximum for the pick",
                                             PickRule.top_half_width)
    _annotate_args["blinding"] = ("Number of prediction samples to discard on each side of each window prediction",
                                  (RECEPTIVE_RADIUS, RECEPTIVE_RADIUS))
    _annotate_args["overlap"] = (_annotate_args["overlap"][0], 0.5)
    # The live pick mode the student was distilled for (pipeline.model.picking.LiveRule's settings, saved by make distill
    # and make qat; None: not recorded). Annotate does not use it; it travels with the weights, as the pick rule.
    _annotate_args["s_needs_horizontals"] = ("No S where a window's N and E are flat (a vertical-only station): the "
                                             "teacher's abstention there, as a rule (pipeline.model.components)", False)
    _annotate_args["live_rule"] = ("The live rule the student was distilled for (pipeline.model.picking.LiveRule)", None)

    def __init__(
        self,
        base_channels: int = 8,
        in_samples: int = 3001,
        channel_multipliers: tuple[int, ...] | list[int] = DEFAULT_MULTIPLIERS,
        sampling_rate: float = 100,
        component_order: str = "ZNE",
        phases: str = CLASS_ORDER,
        norm_eps: float = NORM_EPS,
        activation: str = "hardswish",
        smooth_output: bool = True,
        refine_blocks: int = 0,
        causal: bool = False,
        output_delay: int | None = None,
        norm_window: int | None = None,
        s_output_delay: int | None = None,
        antialias: bool = False,
        sample_norm: bool = False,
        norm_lag: int = 0,
        pick_rule: PickRule | None = None,
        s_needs_horizontals: bool | None = None,
        pick_top_tolerance: float | None = None,
        **kwargs,
    ):
        """``pick_rule``: the student's picker (thresholds, pick placement, blinding); what it leaves open (and
        without it, everything) takes PickRule's defaults and the blinding of :func:`default_blinding`.
        ``pick_top_tolerance``: how students saved before the rule lived in ``default_args`` stored theirs.
        ``causal``: the streaming form (pipeline.model.streaming): every layer causal, the input normalised by a
        running ``norm_window``, the output ``output_delay`` samples late (its S ``s_output_delay``, None: the same);
        each sample is then computed once. ``antialias`` (a causal student's): the stride-4 stages and the
        upsampling's convolutions blurred (pipeline.model.layers.BlurredDepthwiseConv1d), so that a stream's scores
        depend less on where its 64-sample block grid falls. ``sample_norm`` (a causal student's): the running
        normalisation's peak taken up to each sample, not each block's end (streaming.running_normalize)."""
        causal, output_delay, norm_window, s_output_delay = streaming.check_causal(
            causal, output_delay, norm_window, in_samples, s_output_delay)
        if base_channels < 1 or in_samples < DOWNSAMPLING:
            raise EdgepickError(f"student needs base_channels >= 1 and in_samples >= {DOWNSAMPLING}, got {base_channels}, {in_samples}")
        if len(channel_multipliers) != 4:
            raise EdgepickError(f"channel_multipliers needs 4 entries (encoder 1-3, bottleneck), got {channel_multipliers}")
        if int(refine_blocks) < 0:
            raise EdgepickError(f"student refine_blocks must be >= 0, got {refine_blocks}")
        for name, value in (("antialias", antialias), ("sample_norm", sample_norm)):
            if value and not causal:
                raise EdgepickError(f"student.{name} is a setting of a causal (streaming) student: set "
                                    "student.causal=true")
        if phases != CLASS_ORDER:
            raise EdgepickError(f"the student's class order is fixed to {CLASS_ORDER!r}, got {phases!r}")
        citation = (
            "XiaoNet-style student after Xiao, Walter & Ogwari, github.com/Hy-X/xiao_net (MIT); "
            "output conventions after Zhu & Beroza (2019), PhaseNet."
        )
        for key in ("citation", "output_type", "pred_sample", "labels"):
            kwargs.pop(key, None)
        super().__init__(
            citation=citation,
            in_samples=int(in_samples),
            output_type="array",
            pred_sample=(0, int(in_samples)),
            labels=phases,
            sampling_rate=sampling_rate,
            component_order=component_order,
            **kwargs,
        )
        self.base_channels = int(base_channels)
        self.channel_multipliers = tuple(int(m) for m in channel_multipliers)
        self.norm_eps = float(norm_eps)
        self.causal, self.output_delay, self.norm_window = causal, output_delay, norm_window
        self.s_output_delay, self.antialias, self.sample_norm = s_output_delay, bool(antialias), bool(sample_norm)
        self.norm_lag = streaming.check_norm_lag(norm_lag, norm_window // DOWNSAMPLING, self.sample_norm)
        aa = self.antialias
        make_activation(activation)  # validates the name
        self.activation = activation
        c1, c2, c3, c4 = (self.base_channels * m for m in self.channel_multipliers)
        self.channels = (c1, c2, c3, c4)
        self.enc1 = DSConv(3, c1, 7, activation=activation, causal=causal)
        self.enc2 = DSConv(c1, c2, 5, 4, activation=activation, causal=causal, antialias=aa)
        self.enc3 = DSConv(c2, c3, 5, 4, activation=activation, causal=causal, antialias=aa)
        self.bottleneck = DSConv(c3, c4, 3, 4, activation=activation, causal=causal, antialias=aa)
        self.multiscale = MultiScale(c4, activation=activation, causal=causal)
        self.up3 = UpBlock(c4, c3, activation=activation, causal=causal, antialias=aa)
        self.up2 = UpBlock(c3, c2, activation=activation, causal=causal, antialias=aa)
        self.up1 = UpBlock(c2, c1, activation=activation, causal=causal, antialias=aa)
        self.refine_blocks = int(refine_blocks)
        self.refine = nn.Sequential(*(DSConv(c1, c1, REFINE_KERNEL, activation=activation, causal=causal)
                                      for _ in range(self.refine_blocks)))
        self.head = PointwiseConv1d(c1, 3)
        self.smooth_output = bool(smooth_output)
        # The stride-4 transposed convolutions leave a period-4 ripple on the output (each of the 4 output phases
        # comes from its own kernel tap). On a flat-topped P or S peak the ripple decides which tooth is the
        # maximum, and INT8 rounding then moves the pick by 10-25 samples. A fixed [1, 2, 2, 2, 1] / 8 filter on
        # the logits (box-4 * box-2: zero gain at periods 4 and 2) removes it; not a parameter, not in state_dict.
        self.register_buffer("smoothing", torch.tensor([1.0, 2, 2, 2, 1]).div(8).repeat(3, 1, 1), persistent=False)
        if causal:  # windows whose kept samples have their whole history (the streaming output, exactly)
            pre = streaming.history(self)
            late = max(output_delay, s_output_delay)
            self.default_args.setdefault("overlap", streaming.exact_overlap(self.in_samples, pre, late))
            defaults = PickRule(blinding=(pre, late)).annotate_args()
        else:
            self.default_args.setdefault("overlap", int(in_samples) // 2)
            blind = default_blinding(self.default_args["overlap"], receptive_radius(self.refine_blocks))
            defaults = PickRule(blinding=(blind, blind)).annotate_args()
        if pick_top_tolerance is not None:
            defaults["pick_top_tolerance"] = float(pick_top_tolerance)
        for key, value in defaults.items():  # what default_args (a saved student's, or a caller's) leave open
            self.default_args.setdefault(key, value)
        if pick_rule is not None:
            self.default_args.update(pick_rule.annotate_args())
        if s_needs_horizontals is not None:  # else a saved student's default_args (or the class default: off)
            self.default_args["s_needs_horizontals"] = bool(s_needs_horizontals)
        self.pick_rule  # a rule that does not hold (a threshold of 2, a top tolerance of 1) fails here

    @property
    def pick_rule(self) -> PickRule:
        """How this student picks by default (its ``default_args``; a classify call may override them)."""
        return PickRule.from_annotate_args(self.default_args, self._annotate_args)

    @property
    def live_rule(self) -> LiveRule | None:
        """The live rule saved with this student (None for a student saved without one)."""
        saved = self.default_args.get("live_rule")
        return LiveRule(self.in_samples, **saved) if saved else None

    # ---- network -------------------------------------------------------------------------------------------
    def logits(self, x: torch.Tensor, channels_last: bool | None = None) -> torch.Tensor:
        """Pre-softmax scores (B, 3, N) in (P, S, noise) order. ``channels_last`` (default: while training) runs the
        network in the training layout (see :func:`to_channels_last`); the scores are the same either way. A causal
        student normalises ``x`` itself (running, :func:`pipeline.model.streaming.running_normalize`) and its score at
        sample t is of sample t - ``output_delay``."""
        samples = x.shape[-1]
        left, right = (0, internal_length(samples) - samples) if self.causal else window_padding(samples)
        if self.causal:
            x = streaming.running_normalize(F.pad(x, (0, right)), self.norm_window // DOWNSAMPLING, self.norm_eps,
                                            self.sample_norm, self.norm_lag)
        elif left or right:
            x = F.pad(x, (left, right))
        if self.training if channels_last is None else channels_last:
            x = to_channels_last(x)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        b = self.multiscale(self.bottleneck(e3))
        d = self.up3(b, e3)
        d = self.up2(d, e2)
        d = self.up1(d, e1)
        out = self.head(self.refine(d))
        if self.smooth_output:
            if self.causal:
                out = causal_pad(out, self.smoothing.shape[-1])
            pad = 0 if self.causal else 2
            if out.dim() == 3:
                out = F.conv1d(out, self.smoothing, padding=pad, groups=3)
            else:
                out = F.conv2d(out, self.smoothing.unsqueeze(2), padding=(0, pad), groups=3)
        if left or right:
            out = out[..., left : left + samples]
        return out.squeeze(2) if out.dim() == 4 else out

    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        out = self.logits(x)
        return out if logits else torch.softmax(out, dim=1)

    def count_macs(self, samples: int | None = None) -> int:
        """Multiply-accumulates of one window (convolutions and linear layers), counted with forward hooks."""
        samples = samples or self.in_samples
        smoothing = 3 * internal_length(samples) * self.smoothing.shape[-1] if self.smooth_output else 0  # functional conv
        return count_macs(self, (1, 3, samples)) + smoothing

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- SeisBench hooks (after seisbench.models.PhaseNet) -------------------------------------------------
    async def annotate_async(self, stream, copy=True, **kwargs):
        """SeisBench's; a causal student's scores are its stream's, warmed up (:func:`streaming.warmed_up`)."""
        if not self.causal:
            return await super().annotate_async(stream, copy=copy, **kwargs)
        padded, starts = streaming.warmed_up(self, stream)
        return streaming.cropped(await super().annotate_async(padded, copy=False, **kwargs), starts)

    def annotate_batch_pre(self, batch: torch.Tensor, argdict: dict[str, Any]):
        flat = components.horizontals_flat(batch) if argdict.get("s_needs_horizontals") else None
        return batch if self.causal else normalize_windows(batch, self.norm_eps), flat  # a causal student: its own

    def annotate_batch_post(self, batch: torch.Tensor, piggyback: Any, argdict: dict[str, Any]) -> torch.Tensor:
        batch = components.without_s(torch.transpose(batch, -1, -2), piggyback)  # (B, N, classes), as SeisBench stitches
        if self.causal:  # each score back at the sample it is of; the last (each class's delay) are not known yet
            batch = streaming.undelay(batch, streaming.channel_delays(self))
        prenan, postnan = argdict.get("blinding", self._annotate_args["blinding"][1])
        if prenan > 0:
            batch[:, :prenan] = np.nan
        if postnan > 0:
            batch[:, -postnan:] = np.nan
        return batch

    def classify_aggregate(self, annotations, argdict) -> sbu.ClassifyOutput:
        """Picks per phase by the student's :class:`PickRule` under ``argdict`` (SeisBench's trigger, on at
        ``<phase>_threshold`` and off at half, the pick placed by :meth:`PickRule.peak`); noise is not picked."""
        rule = PickRule.from_annotate_args(argdict, self._annotate_args)
        picks = sbu.PickList()
        for phase in self.labels:
            if phase == "N":
                continue
            picks += self._picks(annotations.select(channel=f"{self.__class__.__name__}_{phase}"), rule, phase)
        return sbu.ClassifyOutput(self.name, picks=sbu.PickList(sorted(picks)))

    @staticmethod
    def _picks(annotations, rule: PickRule, phase: str) -> sbu.PickList:
        """SeisBench's ``picks_from_annotations`` with the pick placed by the rule."""
        from obspy.signal.trigger import trigger_onset

        threshold = rule.threshold(phase)
        picks = []
        for trace in annotations:
            trace_id = f"{trace.stats.network}.{trace.stats.station}.{trace.stats.location}"
            times = trace.times()
            for s0, s1 in trigger_onset(trace.data, threshold, threshold / 2):
                segment = trace.data[s0 : s1 + 1]
                peak = s0 + rule.peak(segment)
                picks.append(sbu.Pick(
                    trace_id=trace_id, start_time=trace.stats.starttime + times[s0],
                    end_time=trace.stats.starttime + times[s1], peak_time=trace.stats.starttime + times[peak],
                    peak_value=np.max(segment), phase=phase,
                ))
        return sbu.PickList(sorted(picks))

    def get_model_args(self) -> dict:
        model_args = super().get_model_args()
        for key in ("citation", "output_type", "pred_sample", "labels", "in_samples"):
            model_args.pop(key, None)
        model_args.update(
            base_channels=self.base_channels,
            in_samples=self.in_samples,
            channel_multipliers=list(self.channel_multipliers),
            phases=self.labels,
            norm_eps=self.norm_eps,
            activation=self.activation,
            smooth_output=self.smooth_output,
            refine_blocks=self.refine_blocks,
            causal=self.causal,
            output_delay=self.output_delay,
            norm_window=self.norm_window,
            s_output_delay=self.s_output_delay,
            antialias=self.antialias,
            sample_norm=self.sample_norm,
            norm_lag=self.norm_lag,
        )
        return model_args


def hop_samples(model) -> int:
    """Window hop of SeisBench's annotate for this model: in_samples - overlap (overlap < 1 is a fraction)."""
    overlap = model.default_args.get("overlap", model._annotate_args["overlap"][1])
    overlap = int(round(overlap * model.in_samples)) if 0 < overlap < 1 else int(overlap)
    return max(1, model.in_samples - overlap)


def build_student(config) -> XiaoNet:
    """The student described by a :class:`pipeline.config.StudentConfig`."""
    rule = PickRule(p_threshold=config.p_threshold, s_threshold=config.s_threshold,
                    top_tolerance=config.pick_top_tolerance)
    return XiaoNet(
        base_channels=config.base_channels,
        in_samples=config.in_samples,
        channel_multipliers=tuple(config.channel_multipliers),
        activation=config.activation,
        smooth_output=config.smooth_output,
        refine_blocks=config.refine_blocks,
        causal=config.causal,
        output_delay=config.output_delay if config.causal else None,
        norm_window=config.norm_window if config.causal else None,
        s_output_delay=(config.s_output_delay or None) if config.causal else None,
        antialias=bool(config.antialias),
        sample_norm=bool(config.sample_norm),
        norm_lag=int(config.norm_lag),
        pick_rule=rule,
        s_needs_horizontals=bool(config.s_needs_horizontals),
    )


def load_student(path) -> XiaoNet:
    """A saved student (``<path>.json`` + ``<path>.pt``, SeisBench's format), or a folder holding exactly one."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        candidates = sorted(p.with_suffix("") for p in path.glob("*.json") if p.with_suffix(".pt").exists())
        if not candidates:  # the distill stage's folder: <out>/student/student.json + .pt
            candidates = sorted(p.with_suffix("") for p in path.glob("*/*.json") if p.with_suffix(".pt").exists())
        if len(candidates) != 1:
            raise EdgepickError(f"student folder {path} must hold one <name>.json + <name>.pt pair, found {len(candidates)}")
        path = candidates[0]
    if not path.with_suffix(".json").is_file() or not path.with_suffix(".pt").is_file():
        raise EdgepickError(f"no saved student at {path} (.json + .pt); run `make distill` first?")
    weights = path.with_suffix(".pt")
    if not zipfile.is_zipfile(weights):  # torch.save writes zip archives; random bytes fail in torch as MemoryError
        raise EdgepickError(f"{weights} is not a valid student checkpoint (truncated, or not written by torch.save); "
                            "delete it and save the student again (make distill)")
    if not _is_student(path.with_suffix(".json")):
        raise EdgepickError(f"{path} is a saved SeisBench model but not an edgepick student (its model_args have no "
                            "base_channels): a teacher of make teacher is used as teacher.name=phasenet:<folder>")
    try:
        model = XiaoNet.load(path)
    except Exception as error:  # noqa: BLE001 - torch / json raise many kinds
        raise EdgepickError(f"cannot load student {path}: {type(error).__name__}: {error}") from error
    return model.eval()


def _is_student(description) -> bool:
    """Whether a SeisBench model description (``<name>.json``) is a XiaoNet's (an unreadable one is left to load)."""
    import json

    try:
        args = json.loads(description.read_text()).get("model_args")
    except (OSError, ValueError, AttributeError):
        return True
    return not isinstance(args, dict) or "base_channels" in args
