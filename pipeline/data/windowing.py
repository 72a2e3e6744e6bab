"""Where a training window is cut: around an analyst pick, or one of the teacher's, at a random position or where
the live firmware keeps its predictions (``distill.live_windows``), else anywhere in the trace; a
``seisbench.generate`` step (:class:`RandomWindowAroundPicks`), chained by :func:`pipeline.data.generators.training_chain`.
"""

from __future__ import annotations

import numpy as np
import seisbench.generate as sbg

from pipeline.errors import EdgepickError


class RandomWindowAroundPicks(sbg.FixedWindow):
    """A window of ``windowlen`` samples that holds one of the picks (chosen at random) at a uniformly random
    position with ``pick_probability``, else starts anywhere in the trace; zero-padded where the trace is short.
    With ``end_probability``, a window around a pick puts it ``end_range`` = (lo, hi) samples before the window's
    end (uniformly) instead: where the live firmware keeps its predictions (its look-ahead to look-ahead + hop
    before the end), which a window drawn anywhere puts a pick in only ~hop / windowlen of the time.

    ``teacher_picks`` (trace name -> the teacher's pick samples, from its soft labels) gives a trace without analyst
    picks (continuous data the teacher labels) the same share of windows with a teacher pick ``end_range`` samples
    before the end, pick_probability x end_probability, drawn among the picks that fit there without clamping; its
    other windows start anywhere, as before. Without ``end_probability`` it is never read.

    The same windows as ``WindowAroundSample`` followed by ``RandomWindow``, cut with one slice instead of two
    ``np.take`` copies of twice the window (a third of the generator's time).
    """

    def __init__(self, columns: list[str], windowlen: int, pick_probability: float = 2 / 3, key="X",
                 end_probability: float = 0.0, end_range: tuple[int, int] = (1, 1), teacher_picks=None):
        super().__init__(windowlen=windowlen, strategy="pad", key=key)
        if not 0 <= end_probability <= 1:
            raise EdgepickError(f"end_probability must lie in [0, 1], got {end_probability}")
        lo, hi = (int(v) for v in end_range)
        if end_probability > 0 and not 1 <= lo <= hi <= windowlen:
            raise EdgepickError(f"end_range must be 1 <= lo <= hi <= {windowlen} samples before the end, got {end_range}")
        self.columns, self.pick_probability = list(columns), pick_probability
        self.end_probability, self.end_range = float(end_probability), (lo, hi)
        self.teacher_picks = teacher_picks if self.end_probability else None

    def __call__(self, state_dict, p0=None, windowlen=None):
        x, metadata = state_dict[self.key[0]]
        n, windowlen = x.shape[-1], self.windowlen
        picks = [metadata[c] for c in self.columns if c in metadata and np.isfinite(metadata[c])]
        teacher_end = None if picks or self.teacher_picks is None else self._teacher_end_start(metadata, n)
        if teacher_end is not None:
            p0 = teacher_end
        elif picks and np.random.random() < self.pick_probability:
            pick = int(picks[np.random.randint(len(picks))])  # drawn first: the windows of earlier runs, seed for seed
            if self.end_probability and np.random.random() < self.end_probability:
                position = windowlen - np.random.randint(self.end_range[0], self.end_range[1] + 1)
            else:
                position = np.random.randint(windowlen)
            p0 = pick - position
            p0 = min(max(p0, 0), max(n - windowlen, 0))
        else:
            p0 = np.random.randint(max(n - windowlen, 0) + 1)
        if n < windowlen or self.key[0] != self.key[1]:
            return super().__call__(state_dict, p0, windowlen)
        for column in metadata:
            if column.endswith("_sample"):
                metadata[column] = metadata[column] - p0
        state_dict[self.key[1]] = (x[..., p0 : p0 + windowlen].copy(), metadata)  # a copy: later steps write in place

    def _teacher_end_start(self, metadata, n: int) -> int | None:
        """The start of a window with one of the teacher's picks end_range samples before its end, or None (the
        share of windows drawn anywhere, or no teacher pick fits there in this trace)."""
        samples = self.teacher_picks.get(metadata.get("trace_name"))
        if samples is None or len(samples) == 0 or np.random.random() >= self.pick_probability * self.end_probability:
            return None
        # a pick s ends up k samples before the end for a start s - windowlen + k inside [0, n - windowlen]
        samples = np.asarray(samples, dtype=np.int64)
        low = np.maximum(self.end_range[0], self.windowlen - samples)
        high = np.minimum(self.end_range[1], n - samples)
        fits = np.flatnonzero(low <= high)
        if not len(fits):
            return None
        i = fits[np.random.randint(len(fits))]
        k = np.random.randint(low[i], high[i] + 1)
        return int(samples[i]) - self.windowlen + int(k)

    def __str__(self):
        end = (f", {self.end_probability:g} of them {self.end_range[0]}-{self.end_range[1]} samples before the end"
               if self.end_probability else "")
        if self.teacher_picks is not None:
            end += ", the teacher's picks too where a trace has no analyst pick"
        return (f"RandomWindowAroundPicks ({len(self.columns)} pick columns, p={self.pick_probability:g}{end}, "
                f"{self.windowlen} samples)")


def random_window_around_picks(columns: dict[str, str], in_samples: int, pick_probability: float = 2 / 3,
                               end_probability: float = 0.0, end_range: tuple[int, int] = (1, 1),
                               teacher_picks=None) -> list:
    """A window that holds a pick at a random position (with ``pick_probability``; ``end_probability`` of those
    ``end_range`` samples before the window's end, the teacher's picks too on a trace without analyst picks),
    else anywhere in the trace."""
    return [RandomWindowAroundPicks(list(columns), in_samples, pick_probability, end_probability=end_probability,
                                    end_range=end_range, teacher_picks=teacher_picks)]
