"""How P and S picks are made from per-sample probabilities: the one Python twin of the firmware's picker.

A stream is cut into windows as SeisBench's ``annotate`` cuts it (:func:`window_offsets`), the model's window
predictions are averaged where windows overlap, leaving out the blinded samples at each window's ends
(:func:`stack_windows`), and each phase's stacked curve is picked by a :class:`PickRule`: obspy's
``trigger_onset`` on at the phase's threshold and off at half of it, one pick per triggered segment, placed by
:meth:`PickRule.peak`. :func:`stream_picks` chains the three with the student's normalisation: what the firmware
computes on the board (``firmware/lib/edgepick_core``, tested sample for sample against these functions).

The student saves its rule with its weights (SeisBench ``default_args``), ``make quantize`` writes the same rule
into the firmware's ``model_config.h`` and the benchmark scores with it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.errors import EdgepickError
from pipeline.data.normalization import NORM_EPS, normalize_windows
from pipeline.model import components

PHASES = "PS"


@dataclasses.dataclass(frozen=True)
class PickRule:
    """Every setting of the picker, each declared once here with its default (``XiaoNet._annotate_args`` and
    ``model_config.h`` take them from this class)."""

    # The trigger switches on where the phase's probability reaches this and off below half of it
    # (SeisBench classify's P_threshold / S_threshold).
    p_threshold: float = 0.3
    s_threshold: float = 0.3
    # Where in a triggered segment the pick goes: the midpoint of the contiguous samples >= (1 - this) x its
    # maximum, 0.5 = the midpoint at half maximum; None (or < 0): the first maximum, as SeisBench picks. The
    # student's P and S peaks are flat or multi-humped at the top, where INT8 rounding moved the first maximum by
    # 10-70 samples; the midpoint at half maximum sits on the steep flanks and stays put (docs/design.md).
    top_tolerance: float | None = 0.5
    # ... searched at most this many samples either side of the first maximum (the firmware keeps that history).
    top_half_width: int = 256
    # Samples of each window's (start, end) whose predictions are left out before stacking (SeisBench's
    # ``blinding``); None: the model's own default (the student's receptive field, student.default_blinding).
    blinding: tuple[int, int] | None = None
    # Two picks of one phase within this many seconds agree (float vs INT8 pick agreement).
    match_tolerance_s: float = 0.1

    def __post_init__(self) -> None:
        for name in ("p_threshold", "s_threshold"):
            value = getattr(self, name)
            if not 0 < value < 1:  # also refuses NaN
                raise EdgepickError(f"pick rule: {name} must lie in (0, 1), got {value}")
        if self.top_tolerance is not None and not self.top_tolerance < 1:
            raise EdgepickError(f"pick rule: top_tolerance must be < 1 (a fraction of the peak; None or < 0: the "
                                f"first maximum), got {self.top_tolerance}")
        if self.top_half_width < 1:
            raise EdgepickError(f"pick rule: top_half_width must be >= 1, got {self.top_half_width}")
        if self.blinding is not None:
            if len(self.blinding) != 2 or min(self.blinding) < 0:
                raise EdgepickError(f"pick rule: blinding must be two sample counts >= 0, got {self.blinding}")
            object.__setattr__(self, "blinding", (int(self.blinding[0]), int(self.blinding[1])))
        if not self.match_tolerance_s > 0:
            raise EdgepickError(f"pick rule: match_tolerance_s must be positive, got {self.match_tolerance_s}")

    def threshold(self, phase: str) -> float:
        return {"P": self.p_threshold, "S": self.s_threshold}[phase]

    def with_threshold(self, threshold: float | None) -> "PickRule":
        """The same rule with both thresholds at ``threshold`` (None: unchanged)."""
        if threshold is None:
            return self
        return dataclasses.replace(self, p_threshold=float(threshold), s_threshold=float(threshold))

    @property
    def first_maximum(self) -> bool:
        return self.top_tolerance is None or self.top_tolerance < 0

    def peak(self, segment) -> int:
        """Where in one triggered segment the pick goes (see ``top_tolerance``); compared in float32, as the
        firmware's ``TriggerPicker`` does."""
        segment = np.asarray(segment, dtype=np.float32)
        if self.first_maximum:
            return int(np.argmax(segment))
        lo, hi = self.top_run(segment, np.float32(1) - np.float32(self.top_tolerance))
        return lo + (hi - lo) // 2

    def top_run(self, segment, fraction) -> tuple[int, int]:
        """[lo, hi] of the contiguous samples >= ``fraction`` x the first maximum around it, at most
        ``top_half_width`` either side; float32, as the firmware's ``TriggerPicker`` compares."""
        segment = np.asarray(segment, dtype=np.float32)
        i = int(np.argmax(segment))
        level = segment[i] * np.float32(fraction)
        lo = i
        while lo > 0 and i - lo < self.top_half_width and segment[lo - 1] >= level:
            lo -= 1
        hi = i
        while hi + 1 < len(segment) and hi - i < self.top_half_width and segment[hi + 1] >= level:
            hi += 1
        return lo, hi

    def picks(self, curves: np.ndarray, phases: str = PHASES, sampling_rate: float = 100.0,
              t0: float = 0.0) -> list[dict]:
        """The picks on probability curves (samples, phases) or (phases, samples), ``curves[:, k]`` the curve of
        ``phases[k]`` (extra columns, noise, are ignored): SeisBench's ``picks_from_annotations`` (the same
        ``trigger_onset`` call) with the pick placed by :meth:`peak`. Sorted by (sample, phase), as dicts: phase,
        sample, time (t0 + sample / sampling_rate), prob (the segment's maximum), on, off (trigger samples), fwhm
        (the contiguous samples >= half the first maximum around it, searched as :meth:`peak` searches the top, at
        most ``top_half_width`` either side, whatever ``top_tolerance`` is; the firmware's ``Pick::fwhm``) and
        uncertainty_s (fwhm / (2 sqrt(2 ln 2)) / sampling_rate seconds). Compared in the curve's dtype, as numpy
        compares SeisBench's float32 annotation traces."""
        from obspy.signal.trigger import trigger_onset

        def width_at_half_maximum(segment) -> int:
            lo, hi = self.top_run(segment, 0.5)
            return hi - lo + 1

        # The standard deviation of a Gaussian of that width at half maximum: a one-sigma time uncertainty, as
        # QuakeML's time uncertainty and NonLinLoc's GAU error are read.
        fwhm_per_sigma = 2 * math.sqrt(2 * math.log(2))
        curves = np.asarray(curves)
        if curves.ndim != 2:
            raise EdgepickError(f"picks: curves must be 2-D, got shape {curves.shape}")
        if curves.shape[0] < curves.shape[1] and curves.shape[0] <= 4:
            curves = curves.T
        out = []
        for k, phase in enumerate(phases):
            data = curves[:, k]
            threshold = self.threshold(phase)
            for s0, s1 in trigger_onset(data, threshold, threshold / 2):
                segment = data[s0 : s1 + 1]
                peak = int(s0 + self.peak(segment))
                fwhm = width_at_half_maximum(segment)
                out.append({"phase": phase, "sample": peak, "time": t0 + peak / sampling_rate,
                            "prob": float(np.max(segment)), "on": int(s0), "off": int(s1), "fwhm": fwhm,
                            "uncertainty_s": fwhm / fwhm_per_sigma / sampling_rate})
        return sorted(out, key=lambda p: (p["sample"], p["phase"]))

    # ---- the rule as SeisBench annotate arguments ------------------------------------------------------------
    def annotate_args(self) -> dict:
        """The SeisBench annotate / classify arguments this rule stands for (the student's ``default_args``;
        without ``blinding`` where the rule leaves it to the model)."""
        args = {"P_threshold": self.p_threshold, "S_threshold": self.s_threshold,
                "pick_top_tolerance": -1.0 if self.first_maximum else float(self.top_tolerance),
                "pick_top_half_width": self.top_half_width}
        if self.blinding is not None:
            args["blinding"] = tuple(self.blinding)
        return args

    @classmethod
    def from_annotate_args(cls, argdict: dict, defaults: dict | None = None, **overrides) -> "PickRule":
        """The rule a SeisBench model picks with under ``argdict`` (its ``default_args`` updated by the call's
        arguments), falling back to ``defaults`` (the model class's ``_annotate_args``: name -> (help, default))
        and then to this class's defaults. A model without ``pick_top_tolerance`` (SeisBench's own) picks at the
        first maximum."""
        defaults = defaults or {}

        def get(name, fallback):
            if name in argdict:
                return argdict[name]
            return defaults[name][1] if name in defaults else fallback

        generic = get("*_threshold", cls.p_threshold)
        top = get("pick_top_tolerance", None)
        rule = {
            "p_threshold": float(get("P_threshold", generic)), "s_threshold": float(get("S_threshold", generic)),
            "top_tolerance": None if top is None or top < 0 else float(top),
            "top_half_width": int(get("pick_top_half_width", cls.top_half_width)),
            "blinding": tuple(int(b) for b in get("blinding", (0, 0))),
        }
        rule.update(overrides)
        return cls(**rule)


def annotate_rule(model, **overrides) -> PickRule:
    """The rule a SeisBench ``WaveformModel`` picks with by default (its ``default_args`` over its class's
    ``_annotate_args``), with ``overrides`` (e.g. ``top_tolerance=None``)."""
    return PickRule.from_annotate_args(dict(model.default_args), getattr(model, "_annotate_args", {}), **overrides)


@dataclasses.dataclass(frozen=True)
class LiveRule:
    """Every setting of the live pick mode for a student of ``in_samples``, held and validated once here (beside
    :class:`PickRule`; ``live.*`` in pipeline/config.py takes its defaults from this class, ``model_config.h`` its
    values): a window every ``hop`` samples, each keeping, per phase, the ``hop`` predictions that end that phase's
    look-ahead before its end (:func:`live_blinding`), so every sample is final look-ahead to look-ahead + hop - 1
    samples after it arrived; retraction: the same windows stacked once more at each phase's confirming look-ahead
    (0: never retracted), and a live pick with no pick of its phase within ``confirm_within`` samples on that curve
    is withdrawn (:func:`mark_retractions`). A value that does not fit is refused in one ``EdgepickError`` line."""

    in_samples: int
    hop: int = 100  # windows per second = sampling rate / this (the exact replay's hop is 1501)
    # samples of future each kept prediction sees, per phase: the same windows serve both, so a longer S look-ahead
    # costs no compute, only S latency
    p_lookahead: int = 100
    s_lookahead: int = 200
    p_confirm: int = 500  # the confirming look-ahead per phase (0: the phase's picks are never retracted)
    s_confirm: int = 500
    confirm_within: int = 50  # a pick of its phase this close on the confirming curve keeps a live pick

    def __post_init__(self) -> None:
        for lookahead in self.lookaheads.values():
            live_blinding(self.in_samples, self.hop, lookahead)  # a whole number >= 1 that fits, or one clear error
        confirm_lookaheads(self.confirms, self.lookaheads, self.in_samples, self.hop)
        if isinstance(self.confirm_within, bool) or not isinstance(self.confirm_within, (int, np.integer)) \
                or self.confirm_within < 0:
            raise EdgepickError(f"live.confirm_within_samples must be a whole number of samples >= 0, got "
                                f"{self.confirm_within!r}")
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, int(getattr(self, field.name)))

    @classmethod
    def of(cls, in_samples: int, hop: int, lookahead, confirm=0, confirm_within: int = 50) -> "LiveRule":
        """The rule of a look-ahead and a confirming look-ahead each given once for every phase (an int) or per
        phase (a mapping such as {"P": 100, "S": 200}, :func:`phase_lookaheads`); ``confirm`` 0: no retraction."""
        lookaheads, confirms = phase_lookaheads(lookahead), phase_lookaheads(confirm)
        return cls(in_samples, hop, lookaheads["P"], lookaheads["S"], confirms["P"], confirms["S"], confirm_within)

    @property
    def lookaheads(self) -> dict[str, int]:
        return {"P": self.p_lookahead, "S": self.s_lookahead}

    @property
    def confirms(self) -> dict[str, int]:
        return {"P": self.p_confirm, "S": self.s_confirm}

    def blinding(self, lookahead: int) -> tuple[int, int]:
        """The SeisBench blinding (pre, post) of this rule's windows at ``lookahead`` (:func:`live_blinding`)."""
        return live_blinding(self.in_samples, self.hop, lookahead)

    def with_confirm(self, confirm, confirm_within: int | None = None) -> "LiveRule":
        """The same windows and look-aheads with another confirmation (one for every phase or one per phase)."""
        confirms = phase_lookaheads(confirm)
        return dataclasses.replace(self, p_confirm=confirms["P"], s_confirm=confirms["S"],
                                   confirm_within=self.confirm_within if confirm_within is None else confirm_within)

    def saved(self) -> dict:
        """The settings as a student saves them (its ``default_args["live_rule"]``; the window is the student's)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "in_samples"}

    def to_dict(self) -> dict:
        """The settings as the benchmark report's ``live`` section names them."""
        return {"hop_samples": self.hop, "lookahead_samples": self.lookaheads, "confirm_samples": self.confirms,
                "confirm_within_samples": self.confirm_within}

    def __str__(self) -> str:
        text = (f"a window every {self.hop} samples of {self.in_samples}, look-ahead P {self.p_lookahead} / S "
                f"{self.s_lookahead} samples")
        if not any(self.confirms.values()):
            return text + ", no retraction"
        return text + (f", a pick retracted unless confirmed within {self.confirm_within} samples at look-ahead "
                       + " / ".join(f"{phase} {value or 'never'}" for phase, value in self.confirms.items()))


# ---------------------------------------------------------------------------------------------------------------
# Windows and stacking, as SeisBench's annotate does them
# ---------------------------------------------------------------------------------------------------------------
def window_offsets(n_samples: int, in_samples: int, hop: int) -> np.ndarray:
    """Window starts as SeisBench cuts a stream of ``n_samples`` (``_cut_fragments_array``): every ``hop``
    (= in_samples - overlap), plus one last window ending at the last sample when the regular ones stop short.
    Empty when the stream is shorter than a window."""
    offsets = np.arange(0, n_samples - in_samples + 1, hop)
    if len(offsets) == 0:
        return offsets
    if offsets[-1] + in_samples < n_samples:
        offsets = np.concatenate([offsets, [n_samples - in_samples]])
    return offsets


def stack_windows(predictions: Sequence[np.ndarray], offsets: Sequence[int], n_samples: int,
                  blinding: tuple[int, int] = (0, 0)) -> np.ndarray:
    """SeisBench's ``avg`` stacking (its own ``seisbench.ext.stack_windows``: the nanmean over the windows
    covering a sample): (samples, classes) from window predictions (each (in_samples, classes)), the blinded
    samples of each window left out (NaN where no window covers a sample)."""
    from seisbench.ext import stack_windows as seisbench_stack

    if len(predictions) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    windows = np.array(predictions, dtype=np.float32)
    pre, post = blinding
    if pre > 0:
        windows[:, :pre] = np.nan
    if post > 0:
        windows[:, windows.shape[1] - post :] = np.nan
    stacked = seisbench_stack(windows=windows, offsets=np.asarray(offsets, dtype=np.intp), method="avg")
    out = np.full((n_samples, windows.shape[2]), np.nan, dtype=np.float32)
    out[: min(n_samples, len(stacked))] = stacked[:n_samples]
    return out


def stream_picks(waveform: np.ndarray, model: Callable[[np.ndarray], np.ndarray], in_samples: int, hop: int,
                 rule: PickRule, eps: float | None = None, sampling_rate: float = 100.0,
                 t0: float = 0.0, s_needs_horizontals: bool = False) -> tuple[list[dict], np.ndarray]:
    """What the firmware computes on a whole stream ``waveform`` (3, n): windows, the student's normalisation,
    ``model`` ((3, in_samples) normalised window -> (in_samples, classes) probabilities), no S in a window whose
    N and E are flat with ``s_needs_horizontals``, stacking with the rule's blinding, picks. Returns (picks,
    stacked curves)."""
    waveform = _stream_waveform(waveform, "stream_picks")
    offsets = window_offsets(waveform.shape[1], in_samples, hop)
    predictions = _window_predictions(waveform, model, in_samples, offsets, eps, s_needs_horizontals)
    if not predictions:
        return [], np.zeros((0, 3), dtype=np.float32)
    stacked = stack_windows(predictions, offsets, int(offsets[-1]) + in_samples, rule.blinding or (0, 0))
    return rule.picks(stacked, PHASES, sampling_rate, t0), stacked


def _stream_waveform(waveform, caller: str) -> np.ndarray:
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 2 or waveform.shape[0] != 3:
        raise EdgepickError(f"{caller}: waveform must be (3, samples), got {waveform.shape}")
    return waveform


def _window_predictions(waveform: np.ndarray, model, in_samples: int, offsets, eps: float | None,
                        s_needs_horizontals: bool = False) -> list[np.ndarray]:
    """``model``'s predictions on the normalised windows of ``waveform`` at ``offsets`` (with
    ``s_needs_horizontals``, a window's whose N and E are flat without S: the firmware's ``DropS``)."""
    out = []
    for o in offsets:
        window = waveform[:, o : o + in_samples]
        prediction = np.asarray(model(normalize_windows(window, NORM_EPS if eps is None else eps)), dtype=np.float32)
        if s_needs_horizontals:
            prediction = components.without_s(prediction[None], components.horizontals_flat(window[None]))[0]
        out.append(prediction)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The live mode: a small hop and a look-ahead, each sample from exactly one window
# ---------------------------------------------------------------------------------------------------------------
def live_blinding(in_samples: int, hop: int, lookahead: int) -> tuple[int, int]:
    """The live mode's SeisBench blinding (pre, post) = (in_samples - hop - lookahead, lookahead): each window keeps
    the ``hop`` predictions that end ``lookahead`` samples before its end, so with windows every ``hop`` every
    sample from the pre-th on comes from exactly one window and is final once that window ran, ``lookahead`` to
    ``lookahead + hop - 1`` samples after it arrived. Refuses a hop or look-ahead < 1 or one that does not fit."""
    for name, value in (("hop", hop), ("look-ahead", lookahead)):
        try:
            whole = not isinstance(value, bool) and int(value) == value
        except (TypeError, ValueError, OverflowError):  # NaN, inf, text
            whole = False
        if not whole or value < 1:
            raise EdgepickError(f"live mode: the {name} must be a whole number of samples >= 1, got {value}")
    if hop + lookahead >= in_samples:
        raise EdgepickError(f"live mode: hop + look-ahead ({int(hop)} + {int(lookahead)} samples) must be shorter "
                            f"than the {in_samples}-sample window")
    return int(in_samples - hop - lookahead), int(lookahead)


def live_offsets(n_samples: int, in_samples: int, hop: int) -> np.ndarray:
    """Window starts of the live mode: every ``hop``, with no last window ending at the stream's end (a live
    stream has none; the firmware's ``exact_tail`` off)."""
    return np.arange(0, max(n_samples - in_samples + 1, 0), hop)


def phase_lookaheads(lookahead) -> dict[str, int]:
    """The look-ahead of each phase in PHASES: one for every phase (an int) or one per phase (a mapping such as
    {"P": 100, "S": 200}: an S peak needs more of the coda after it than a P onset)."""
    if isinstance(lookahead, dict):
        missing = [phase for phase in PHASES if phase not in lookahead]
        if missing:
            raise EdgepickError(f"live mode: no look-ahead for phase {', '.join(missing)} (got {lookahead})")
        return {phase: lookahead[phase] for phase in PHASES}
    return {phase: lookahead for phase in PHASES}


def live_reported_sample(sample: int, n_samples: int, in_samples: int, hop: int, lookahead: int) -> int:
    """The last sample the firmware's live mode has received when it finalises ``sample`` of an ``n_samples``
    stream for a phase of this ``lookahead``: the last sample of the window whose kept slice holds it (of the first
    window for the samples before any slice), or the stream's last sample (its "#end") for one past the last
    window's slice."""
    pre, _ = live_blinding(in_samples, hop, lookahead)
    windows = len(live_offsets(n_samples, in_samples, hop))
    k = max(0, (int(sample) - pre) // hop)
    return int(k * hop + in_samples - 1) if k < windows else int(n_samples - 1)


def add_reported_samples(picks: list[dict], n_samples: int, live: LiveRule) -> list[dict]:
    """``picks`` (PickRule.picks dicts, on the stream's sample grid) each with "reported": the last sample received
    when the live firmware (``live``) emits it. A trigger closes when its first sample below threshold / 2 (off + 1)
    is finalised for its phase's look-ahead; one still open at the end closes at the "#end" (live_reported_sample)."""
    return [dict(p, reported=live_reported_sample(p["off"] + 1, n_samples, live.in_samples, live.hop,
                                                  live.lookaheads[p["phase"]]))
            for p in picks]


def live_stream_picks(waveform: np.ndarray, model: Callable[[np.ndarray], np.ndarray], live: LiveRule,
                      rule: PickRule, eps: float | None = None, sampling_rate: float = 100.0,
                      t0: float = 0.0, s_needs_horizontals: bool = False) -> tuple[list[dict], np.ndarray]:
    """What the firmware's live mode (``live``) emits on a whole stream ``waveform`` (3, n) followed by "#end":
    windows every hop (live_offsets), the student's normalisation, ``model`` as in :func:`stream_picks`, each
    phase's curve stacked with the live blinding of its look-ahead (the noise column with P's) in place of the
    rule's, picks by ``rule``, each with its "reported" sample (:func:`add_reported_samples`). With a confirming
    look-ahead, the same windows are stacked once more at it and each pick gets "retracted": the sample its
    retraction line is reported at, or None (:func:`mark_retractions`). Returns (picks, stacked curves)."""
    in_samples, hop, lookaheads, confirms = live.in_samples, live.hop, live.lookaheads, live.confirms
    waveform = _stream_waveform(waveform, "live_stream_picks")
    offsets = live_offsets(waveform.shape[1], in_samples, hop)
    predictions = _window_predictions(waveform, model, in_samples, offsets, eps, s_needs_horizontals)
    if not predictions:
        return [], np.zeros((0, 3), dtype=np.float32)
    n_stacked = int(offsets[-1]) + in_samples
    stacks: dict[tuple[int, int], np.ndarray] = {}

    def stacked_at(values: dict[str, int]) -> np.ndarray:
        """Each phase's column stacked with the live blinding of its look-ahead in ``values``."""
        blindings = {phase: live_blinding(in_samples, hop, values[phase]) for phase in PHASES}
        for b in set(blindings.values()) - set(stacks):
            stacks[b] = stack_windows(predictions, offsets, n_stacked, b)
        out = stacks[blindings[PHASES[0]]].copy()
        for k, phase in enumerate(PHASES):
            out[:, k] = stacks[blindings[phase]][:, k]
        return out

    stacked = stacked_at(lookaheads)
    picks = add_reported_samples(rule.picks(stacked, PHASES, sampling_rate, t0), waveform.shape[1], live)
    if any(confirms.values()):
        confirming_phases = "".join(phase for phase in PHASES if confirms[phase])
        confirming_curves = stacked_at({phase: confirms[phase] or lookaheads[phase] for phase in PHASES})
        confirming = [p for p in rule.picks(confirming_curves, PHASES, sampling_rate, t0)
                      if p["phase"] in confirming_phases]
        picks = mark_retractions(picks, confirming, waveform.shape[1], live)
    return picks, stacked


# ---------------------------------------------------------------------------------------------------------------
# Retraction: a live pick the same windows at a longer look-ahead do not confirm is withdrawn by a later line
# ---------------------------------------------------------------------------------------------------------------
def confirm_lookaheads(confirm, lookaheads: dict[str, int], in_samples: int, hop: int) -> dict[str, int]:
    """The confirming look-ahead of each phase (0: its picks are never retracted) from ``confirm`` (one for every
    phase or one per phase); each must be longer than the phase's own look-ahead and fit the window with the hop."""
    confirms = phase_lookaheads(confirm)
    for phase, value in confirms.items():
        if value == 0:
            continue
        live_blinding(in_samples, hop, value)  # a whole number >= 1 that fits, or one clear error
        if value <= lookaheads[phase]:
            raise EdgepickError(f"live mode: {phase}'s confirming look-ahead ({value} samples) must be longer than its "
                                f"look-ahead ({lookaheads[phase]} samples), or 0 for none")
    return {phase: int(value) for phase, value in confirms.items()}


def mark_retractions(picks: list[dict], confirming: list[dict], n_samples: int, live: LiveRule) -> list[dict]:
    """``picks`` (live picks with "reported") each with "retracted": the last sample received when the firmware
    prints its retraction line, or None when it keeps the pick. A pick of a phase with a confirming look-ahead C
    (``live.confirms``) is retracted when no pick of its phase on the confirming stream (``confirming``: the same
    windows stacked at C, PickRule.picks dicts on the stream's grid) lies within ``live.confirm_within`` samples of it, once that stream
    has finalised the pick's sample + ``within`` and any trigger open there has closed; a pick whose sample +
    ``within`` that stream never covers (it keeps no prediction after the last window's end - C) is kept."""
    in_samples, hop, confirm, within = live.in_samples, live.hop, live.confirms, live.confirm_within
    n_windows = len(live_offsets(n_samples, in_samples, hop))
    out = []
    for pick in picks:
        c = confirm.get(pick["phase"], 0)
        retracted = None
        if c and n_windows:
            covered_until = (n_windows - 1) * hop + in_samples - c
            decided = pick["sample"] + within
            theirs = [q for q in confirming if q["phase"] == pick["phase"]]
            if decided < covered_until and not any(abs(q["sample"] - pick["sample"]) <= within for q in theirs):
                # a trigger still open at the deciding sample may yet place a pick within reach: wait for it to close
                decided = next((q["off"] + 1 for q in theirs if q["on"] <= decided <= q["off"]), decided)
                retracted = max(pick["reported"], live_reported_sample(decided, n_samples, in_samples, hop, c))
        out.append(dict(pick, retracted=retracted))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Agreement of two pickers on the same windows
# ---------------------------------------------------------------------------------------------------------------
def pick_agreement(reference: np.ndarray, candidate: np.ndarray, rule: PickRule,
                   sampling_rate: float = 100.0) -> tuple[float, int]:
    """Share of the picks of both sides matched one-to-one by a same-phase pick within the rule's match
    tolerance, over windows of probabilities (B, classes, N); and the mean number of picks per side."""
    tolerance = rule.match_tolerance_s * sampling_rate
    matched = total = 0
    for ref, cand in zip(reference, candidate):
        a, b = ([(p["phase"], p["sample"]) for p in rule.picks(np.asarray(x)[:2])] for x in (ref, cand))
        total += len(a) + len(b)
        used = set()
        for phase, sample in a:
            best = None
            for k, (phase_b, sample_b) in enumerate(b):
                if k in used or phase_b != phase or abs(sample_b - sample) > tolerance:
                    continue
                if best is None or abs(sample_b - sample) < abs(b[best][1] - sample):
                    best = k
            if best is not None:
                used.add(best)
                matched += 2
    return (matched / total if total else 1.0), total // 2


def describe(rule: PickRule) -> str:
    """A short text of how a rule places and blinds picks (the benchmark report's "pick" column)."""
    if rule.first_maximum:
        text = "first maximum"
    elif math.isclose(rule.top_tolerance, 0.5):
        text = "midpoint at half maximum"
    else:
        text = f"midpoint of samples >= {1 - rule.top_tolerance:g} x maximum"
    if rule.blinding and any(rule.blinding):
        text += f"; blinds {rule.blinding[0]} / {rule.blinding[1]} samples"
    return text
