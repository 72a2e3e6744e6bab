"""Windows, normalisation and labels, as chains of small ``seisbench.generate`` callables.

Training windows are drawn at random around the picks (OKLA puts P at the same sample in every trace, so a fixed
window would teach the student where P is, not what it looks like); evaluation windows are drawn once from a seed
and replayed through SeisBench's ``SteeredGenerator``, so every model sees exactly the same samples.
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import seisbench.data as sbd
import seisbench.generate as sbg
import torch

from pipeline.data.datasets import open_dataset
from pipeline.errors import EdgepickError
from pipeline.data.normalization import normalize_windows
from pipeline.data.windowing import random_window_around_picks

PHASE_COLUMNS = {
    "trace_p_arrival_sample": "P",
    "trace_s_arrival_sample": "S",
    # a second event in the same trace (the synthetic source writes these)
    "trace_p2_arrival_sample": "P",
    "trace_s2_arrival_sample": "S",
}
LABELS = "PSN"  # class order of every edgepick model output: P, S, noise


def phase_columns(dataset: sbd.WaveformDataset) -> dict[str, str]:
    return {column: phase for column, phase in PHASE_COLUMNS.items() if column in dataset.metadata.columns}


class Normalise:
    """Demean each component and divide the window by its peak over all components (relative epsilon): exactly
    what the student does in ``annotate`` and the firmware does on the board (:func:`pipeline.data.normalization.normalize_windows`)."""

    def __init__(self, key: str = "X"):
        self.key = key

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        state_dict[self.key] = (normalize_windows(x), metadata)

    def __str__(self):
        return "Normalise (demean, peak over all components, relative epsilon)"


class Sometimes:
    """Apply ``augmentation`` with ``probability``, else leave the sample as it is: ``sbg.OneOf`` with a
    ``NullAugmentation``, minus the cost of ``np.random.choice`` (a tenth of a window's budget)."""

    def __init__(self, augmentation, probability: float):
        self.augmentation, self.probability = augmentation, probability

    def __call__(self, state_dict):
        if np.random.random() < self.probability:
            self.augmentation(state_dict)

    def __str__(self):
        return f"Sometimes ({self.augmentation}, p={self.probability:g})"


class GaussianNoise(sbg.GaussianNoise):
    """SeisBench's ``GaussianNoise`` (the same noise: standard deviation ``uniform(*scale)`` times the window's
    maximum), drawn in the waveform's own float32 from a numpy ``Generator`` instead of float64 ``np.random.randn``:
    half the time, and noise was a quarter of a cached training window's cost."""

    _rng, _pid = None, None

    def rng(self) -> np.random.Generator:
        # One per chain and process, seeded from numpy's global generator when first used: distill seeds that per
        # run and _seed_worker per DataLoader worker, so runs repeat exactly.
        if self._pid != os.getpid():
            self._rng, self._pid = np.random.default_rng(np.random.randint(2**32)), os.getpid()
        return self._rng

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key[0]]
        if self.key[0] != self.key[1]:
            metadata = copy.deepcopy(metadata)
        scale = np.random.uniform(*self.scale) * np.max(x)
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
        noise = self.rng().standard_normal(x.shape, dtype=dtype)
        noise *= scale
        state_dict[self.key[1]] = (x + noise, metadata)


class GapResume:
    """A stream that resumes: the window's samples before a random point silenced, then raised back over ``ramp``
    samples with a cosine taper, all ahead of the teacher's first phase (its P or S probability above ``below``,
    in ``state_dict[target]``) by ``margin`` samples. What a data gap, a station's restart or an event trace's
    tapered start (STEAD's) shows a streaming student: a rise out of silence, whose target stays the teacher's
    "noise" (the teacher saw the data whole). Windows whose first phase comes too early are left as they are."""

    def __init__(self, ramp: tuple[int, int] = (10, 150), margin: int = 200, below: float = 0.1,
                 key: str = "X", target: str = "y_soft"):
        if not 1 <= ramp[0] <= ramp[1] or margin < 0 or not 0 < below < 1:
            raise EdgepickError(f"GapResume needs 1 <= ramp[0] <= ramp[1], margin >= 0 and 0 < below < 1; got "
                                f"ramp={ramp}, margin={margin}, below={below}")
        self.ramp, self.margin, self.below, self.key, self.target = tuple(ramp), int(margin), below, key, target

    def __call__(self, state_dict):
        if self.target not in state_dict:
            raise EdgepickError(f"GapResume needs the teacher's target in {self.target!r} (teacher.mode=cache)")
        x, metadata = state_dict[self.key]
        target = np.asarray(state_dict[self.target][0], dtype=np.float32)
        phase = np.flatnonzero((target[0] > self.below) | (target[1] > self.below))
        room = (int(phase[0]) if len(phase) else x.shape[-1]) - self.margin  # samples the gap and ramp may take
        ramp = np.random.randint(self.ramp[0], self.ramp[1] + 1)
        if room <= ramp:
            return
        end = np.random.randint(ramp + 1, room + 1)  # where the data is whole again
        start = np.random.randint(0, end - ramp)  # where the silence begins (0: the stream's start)
        x = x.copy()
        x[:, start : end - ramp] = 0
        x[:, end - ramp : end] *= (0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)).astype(x.dtype)
        state_dict[self.key] = (x, metadata)

    def __str__(self):
        return (f"GapResume (silence then a {self.ramp[0]}-{self.ramp[1]} sample taper, {self.margin} samples before "
                "the first phase)")


def normalise() -> list:
    return [Normalise()]


def label(columns: dict[str, str], sigma: int = 20) -> list:
    """Per-sample (P, S, noise) probabilities: Gaussians of width ``sigma`` samples at the picks."""
    return [sbg.ProbabilisticLabeller(label_columns=columns, model_labels=LABELS, sigma=sigma, dim=0)]


def float32(*keys: str) -> list:
    return [sbg.ChangeDtype(np.float32, key=key) for key in keys]


def augment(noise_std: tuple[float, float] = (0.0, 0.05), channel_dropout: bool = True,
            gap_resume: float = 0.0) -> list:
    """Robustness to what field stations do: added noise, dead channels, and (``gap_resume`` of the windows,
    :class:`GapResume`) data that resumes after a gap."""
    chain = [Sometimes(GapResume(), gap_resume)] if gap_resume > 0 else []
    chain.append(Sometimes(GaussianNoise(scale=noise_std), 0.5))
    if channel_dropout:
        chain.append(Sometimes(sbg.ChannelDropout(), 0.1))
    return chain


# --------------------------------------------------------------------------------- the teacher's target per window
TRACE_ORIGIN = "trace_origin_sample"
"""Metadata column: where the trace's first sample lies relative to the current window. It ends in ``_sample``, so
every SeisBench window shifts it as it shifts the picks (their documented convention): after windowing, the window
starts at sample ``-metadata[TRACE_ORIGIN]`` of the trace. Both teacher paths cut their target this way. Not for
steps that blank samples without moving them (SeisBench's ``RandomWindow`` with ``low``/``high`` zeroes the data
outside its bounds): the target there stays the teacher's, as it would for the analyst-pick labels."""


def mark_trace_origin(metadata: dict) -> None:
    metadata[TRACE_ORIGIN] = 0


def window_start(metadata: dict, step: str) -> int:
    if TRACE_ORIGIN not in metadata:
        raise EdgepickError(f"{step} needs {TRACE_ORIGIN} in the metadata: put its partner step before the windowing")
    origin = metadata[TRACE_ORIGIN]
    if not isinstance(origin, (int, float, np.integer, np.floating)) or not np.isfinite(origin):
        raise EdgepickError(f"{step}: {TRACE_ORIGIN} is {origin!r}, not a sample offset (one window per sample: "
                            "SlidingWindow's stacked windows are not supported)")
    return -int(origin)


def soft_label_window(cache, index: int, start: int, length: int) -> np.ndarray:
    """float16 (3, length), the cache's own precision: the cached P, S, noise of row ``index`` from trace sample
    ``start`` on (which may be negative); noise (0, 0, 1) wherever the window runs outside the trace, as the zero
    padding there holds none. (Training takes it to float32 a batch at a time, where torch converts it fast.)"""
    first, end = max(start, 0), min(start + length, cache.trace_length(index))
    if first == start and end - first == length:
        return np.array(cache.labels(index, first, end))  # a copy: later steps may write in place, not into the cache
    out = np.zeros((3, length), dtype=np.float16)
    out[2] = 1.0
    if end > first:
        out[:, first - start : end - start] = cache.labels(index, first, end)
    return out


class SoftLabelOrigin:
    """SeisBench augmentation, before windowing: check the trace against its soft-label cache entry (looked up by
    the sample's ``trace_name``: SeisBench's ``get_sample`` passes metadata, not the row index, and a filtered or
    split dataset renumbers its rows) and note where it starts (:data:`TRACE_ORIGIN`) for :class:`CropSoftLabels`.
    Expects channels-first waveforms (CW)."""

    def __init__(self, cache, key: str = "X"):
        self.cache = cache
        self.key = key

    def __call__(self, state_dict: dict) -> None:
        waveform, metadata = state_dict[self.key]
        length = self.cache.trace_length(self.cache.index_of(metadata["trace_name"]))
        if waveform.ndim != 2 or waveform.shape[-1] != length:
            raise EdgepickError(
                f"trace {metadata['trace_name']}: waveform {waveform.shape} does not align with its soft labels "
                f"(3, {length}) (open the dataset channels-first at its own sampling rate)"
            )
        mark_trace_origin(metadata)

    def __str__(self) -> str:
        return f"SoftLabelOrigin({getattr(self.cache, 'teacher', '?')})"


class CropSoftLabels:
    """SeisBench augmentation, after windowing: the cached teacher target over exactly the samples of the trace that
    ``state_dict[source]`` now holds, float16 (3, window), into ``state_dict[key]``; where the window ran past the
    trace (SeisBench pads with zeros), pure noise (0, 0, 1). Only the window is read from the cache."""

    def __init__(self, cache, key: str = "y_soft", source: str = "X"):
        self.cache = cache
        self.key = key
        self.source = source

    def __call__(self, state_dict: dict) -> None:
        waveform, metadata = state_dict[self.source]
        index = self.cache.index_of(metadata["trace_name"])
        start = window_start(metadata, "CropSoftLabels")
        state_dict[self.key] = (soft_label_window(self.cache, index, start, waveform.shape[-1]), metadata)

    def __str__(self) -> str:
        return f"CropSoftLabels(key={self.key})"


class StashTrace:
    """Generator step before windowing (on-the-fly teacher): keep the whole trace in ``state_dict[stash]`` for the
    teacher and note where it starts (:data:`TRACE_ORIGIN`), so that whatever windowing follows records where the
    window came from."""

    def __init__(self, key: str = "X", stash: str = "teacher_trace"):
        self.key, self.stash = key, stash

    def __call__(self, state_dict: dict) -> None:
        waveform, metadata = state_dict[self.key]
        mark_trace_origin(metadata)
        state_dict[self.stash] = (waveform, metadata)

    def __str__(self) -> str:
        return "StashTrace (whole trace kept for the teacher, its origin noted)"


class TeacherContext:
    """Generator step right after windowing (on-the-fly teacher): read where the window starts (:data:`TRACE_ORIGIN`)
    and cut, for each teacher, the span of the stashed whole trace covered by the teacher windows (annotate's
    offsets over the whole trace, as the cache used) that overlap the student's window, prepared as the teacher
    sees it (components, filter on the whole trace). Fixed-size outputs, so a DataLoader can batch them:

    - ``teacher_context_<i>`` float32 (3, window + 2 * (in_samples - 1)), zero after the span;
    - ``teacher_offsets_<i>`` int64: the teacher windows' starts relative to the span, -1 padded;
    - ``teacher_crop_<i>`` int64 (3,): the student window's start in the span, its samples inside the trace, window.
    """

    def __init__(self, inputs: list, window: int, component_order: str = "ZNE", key: str = "X",
                 stash: str = "teacher_trace"):
        self.inputs, self.window, self.component_order = list(inputs), int(window), component_order
        self.key, self.stash = key, stash
        self.max_windows = [math.ceil((self.window + t.in_samples - 1) / t.hop) + 1 for t in self.inputs]
        self.max_span = [self.window + 2 * (t.in_samples - 1) for t in self.inputs]

    def __call__(self, state_dict: dict) -> None:
        x, metadata = state_dict[self.key]
        whole, _ = state_dict.pop(self.stash)
        n, start = whole.shape[-1], window_start(metadata, "TeacherContext")
        if start < 0 or x.shape[-1] != self.window:
            raise EdgepickError(
                f"trace {metadata.get('trace_name', '?')}: the on-the-fly teacher needs windows of {self.window} samples "
                f"starting inside the trace (got {x.shape[-1]} samples, start {start})"
            )
        valid = min(self.window, n - start)
        for i, (teacher, max_windows, max_span) in enumerate(zip(self.inputs, self.max_windows, self.max_span)):
            length = max(n, teacher.in_samples)  # a short trace is zero-padded to one teacher window
            offsets = teacher.offsets(length)
            used = offsets[(offsets < start + valid) & (offsets + teacher.in_samples > start)]
            first, end = int(used[0]), int(used[-1]) + teacher.in_samples
            if teacher.filter_args is None and teacher.filter_kwargs is None:  # components only: the span suffices
                span = teacher.prepare(whole[:, first:end], self.component_order)
            else:  # the filter runs over the whole trace, as for the cache
                span = teacher.prepare(whole, self.component_order)[:, first:end]
            context = np.zeros((3, max_span), dtype=np.float32)
            context[:, : span.shape[1]] = span
            relative = np.full(max_windows, -1, dtype=np.int64)
            relative[: len(used)] = used - first
            state_dict[f"teacher_context_{i}"] = (context, metadata)
            state_dict[f"teacher_offsets_{i}"] = (relative, metadata)
            state_dict[f"teacher_crop_{i}"] = (np.array([start - first, valid, self.window], dtype=np.int64), metadata)

    def __str__(self) -> str:
        return f"TeacherContext ({len(self.inputs)} teacher(s), window {self.window})"


class AsTeacherSees:
    """The whole trace as a teacher sees it, float32: its component order and its filter over the whole trace
    (``teachers.TeacherInput.prepare``), before the teacher's own windows are cut (``make teacher``)."""

    def __init__(self, teacher_input, component_order: str = "ZNE", key: str = "X"):
        self.input, self.component_order, self.key = teacher_input, component_order, key

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        state_dict[self.key] = (self.input.prepare(x, self.component_order).astype(np.float32), metadata)

    def __str__(self):
        return f"AsTeacherSees (components {self.input.component_order}, the teacher's filter)"


def training_chain(dataset: sbd.WaveformDataset, in_samples: int, sigma: int = 20, teacher_steps=None,
                   hard_labels: bool = True, end_probability: float = 0.0, end_range: tuple[int, int] = (1, 1),
                   teacher_picks=None, gap_resume: float = 0.0) -> list:
    """Window around picks, augment (``gap_resume``: :func:`augment`), normalise, label. ``teacher_steps``: (steps
    before the windowing, steps right after it) that bring the teacher's target along
    (pipeline.distill.soft_labels.TrainingTargets.steps).
    ``hard_labels=False`` leaves out the analyst-pick labels ("y"), which distillation with alpha = 1 never reads
    (labelling was a third of the generator's time). ``end_probability``, ``end_range``: windows that put a pick
    where the live mode keeps predictions, ``teacher_picks`` the teacher's where a trace has no analyst pick
    (:class:`pipeline.data.windowing.RandomWindowAroundPicks`)."""
    columns = phase_columns(dataset)
    before, after = teacher_steps or ([], [])
    chain = (list(before) + random_window_around_picks(columns, in_samples, end_probability=end_probability,
                                                       end_range=end_range, teacher_picks=teacher_picks)
             + list(after))
    chain += augment(gap_resume=gap_resume) + normalise()  # Normalise already returns float32
    if hard_labels:
        chain += label(columns, sigma) + float32("y")
    return chain


def evaluation_windows(dataset: sbd.WaveformDataset, in_samples: int, seed: int = 0) -> pd.DataFrame:
    """One fixed window per trace, drawn once from ``seed``: it holds the P pick where there is one."""
    rng = np.random.default_rng(seed)
    metadata = dataset.metadata
    n_samples = _trace_samples(dataset)
    starts = []
    for i, row in enumerate(metadata.itertuples(index=False)):
        length = n_samples[i]
        if length < in_samples:
            raise EdgepickError(f"trace {i} has {length} samples, shorter than the {in_samples}-sample window")
        p = getattr(row, "trace_p_arrival_sample", np.nan)
        if p is not None and np.isfinite(p):
            low = int(max(0, p - in_samples * 0.9))
            high = int(min(length - in_samples, p - in_samples * 0.1))
        else:
            low, high = 0, length - in_samples
        starts.append(int(rng.integers(low, high + 1)) if high >= low else max(0, min(int(p) - in_samples // 2, length - in_samples)))
    starts = np.asarray(starts)
    return pd.DataFrame(
        {"trace_name": metadata["trace_name"].values, "start_sample": starts, "end_sample": starts + in_samples}
    )


def evaluation_generator(dataset: sbd.WaveformDataset, in_samples: int, seed: int = 0, sigma: int = 20,
                         teacher_steps=None):
    """Deterministic windows (see :func:`evaluation_windows`), normalised and labelled like training ones, with
    ``teacher_steps`` as in :func:`training_chain`."""
    columns = phase_columns(dataset)
    generator = sbg.SteeredGenerator(dataset, evaluation_windows(dataset, in_samples, seed))
    before, after = teacher_steps or ([], [])
    window = list(before) + [sbg.SteeredWindow(windowlen=in_samples, strategy="pad")] + list(after)
    generator.add_augmentations(window + normalise() + label(columns, sigma) + float32("X", "y"))
    return generator


def training_generator(dataset: sbd.WaveformDataset, in_samples: int, sigma: int = 20, teacher_steps=None,
                       hard_labels: bool = True, end_probability: float = 0.0, end_range: tuple[int, int] = (1, 1),
                       teacher_picks=None, gap_resume: float = 0.0):
    """Random windows around picks (:func:`training_chain`)."""
    generator = sbg.GenericGenerator(dataset)
    generator.add_augmentations(training_chain(dataset, in_samples, sigma, teacher_steps, hard_labels,
                                               end_probability, end_range, teacher_picks, gap_resume))
    return generator


def dataset_windows(path: str | Path, split: str, count: int, samples: int, seed: int = 0) -> np.ndarray:
    """``count`` normalised (3, samples) windows cut from ``split`` of a SeisBench-format dataset, seeded, 80 % of
    them around the P pick where there is one: calibration and held-out windows of the quantize stage."""
    dataset = open_dataset(path)
    part = getattr(dataset, split)()
    if len(part) == 0:
        raise EdgepickError(f"dataset {path} has no {split} traces")
    rng = np.random.default_rng(seed)
    metadata = part.metadata
    windows = []
    order = rng.permutation(len(part))
    attempts = 0
    while len(windows) < count and attempts < 20 * count:
        idx = int(order[attempts % len(order)])
        attempts += 1
        waveform = np.asarray(part.get_waveforms(idx), dtype=np.float64)
        if waveform.ndim != 2 or waveform.shape[-1] < samples:
            continue
        p = metadata.iloc[idx].get("trace_p_arrival_sample", np.nan)
        latest = waveform.shape[-1] - samples
        if p == p and p is not None and rng.random() < 0.8:
            lo, hi = int(p) - samples + 100, int(p) - 100
            start = int(rng.integers(max(0, lo), max(max(0, lo), min(hi, latest)) + 1))
        else:
            start = int(rng.integers(0, latest + 1))
        start = min(max(start, 0), latest)
        windows.append(normalize_windows(waveform[:, start : start + samples]))
    if len(windows) < count:
        raise EdgepickError(f"dataset {path} ({split}) gave only {len(windows)} windows of {samples} samples, need {count}")
    return np.stack(windows).astype(np.float32)


def load_for_training(
    path, split: str | None = None, sampling_rate: float = 100.0, component_order: str = "ZNE"
) -> sbd.WaveformDataset:
    """Open a dataset folder with its waveforms in memory and a metadata lookup: what high throughput needs."""
    dataset = open_dataset(path, sampling_rate, cache="full", metadata_cache=True, component_order=component_order)
    if split is not None:
        if "split" not in dataset.metadata.columns:
            raise EdgepickError(f"dataset {path} has no split column")
        dataset = dataset.get_split(split)
        if len(dataset) == 0:
            raise EdgepickError(f"dataset {path} has no traces in split {split!r}")
    _keep_training_columns(dataset)
    dataset.preload_waveforms(pbar=False)
    return dataset


TRAINING_COLUMNS = re.compile(
    r"trace_name|trace_chunk|trace_sampling_rate_hz|trace_npts|trace_component_order|split|source_id|trace_\w+_arrival_sample"
)


def _keep_training_columns(dataset: sbd.WaveformDataset) -> None:
    """Drop descriptive metadata columns: SeisBench deep-copies every sample's metadata twice per window (reading
    and labelling), which with ~70 columns cost a quarter of the generator's time."""
    columns = [c for c in dataset.metadata.columns if TRAINING_COLUMNS.fullmatch(c)]
    dataset._metadata = dataset.metadata[columns].copy()
    dataset._rebuild_metadata_cache()  # SeisBench's own lookup, rebuilt from the trimmed table


def worker_count(requested: int) -> int:
    """DataLoader worker processes for ``requested`` (the config's ``workers``) in each training process; -1 =
    automatic: none where a process has 2 cores or fewer, where workers take the cores the training step needs
    (cached distillation epoch here: 0 workers 2.8 s, 2 workers 3.1 s; scripts/benchmark_distill_modes.py), else
    half its cores, at most 8. A process's cores are the machine's shared among torchrun's local processes.
    The count decides which random windows a seed draws: give it explicitly to repeat a run on another machine."""
    if requested >= 0:
        return requested
    if requested != -1:
        raise EdgepickError(f"workers={requested}: use a count >= 0, or -1 for automatic")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return 0 if cores <= 2 else min(8, cores // 2)


def loader(generator, batch_size: int = 64, workers: int = 2, shuffle: bool = True, seed: int = 0):
    """A torch DataLoader whose workers draw reproducible random windows."""
    return torch.utils.data.DataLoader(
        generator,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
    )


def measure_throughput(generator, seconds: float = 10.0, batch_size: int = 64, workers: int = 2) -> float:
    """Windows per second that ``generator`` delivers through a DataLoader (after one warm-up batch)."""
    windows = 0
    data_iter = iter(loader(generator, batch_size=batch_size, workers=workers))
    next(data_iter)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        try:
            batch = next(data_iter)
        except StopIteration:
            data_iter = iter(loader(generator, batch_size=batch_size, workers=workers))
            continue
        windows += len(batch["X"])
    return windows / (time.perf_counter() - started)


def _trace_samples(dataset: sbd.WaveformDataset) -> np.ndarray:
    if "trace_npts" in dataset.metadata.columns:
        return dataset.metadata["trace_npts"].to_numpy(int)
    return np.array([dataset.get_waveforms(i).shape[-1] for i in range(len(dataset))])


def _seed_worker(worker_id: int) -> None:
    # SeisBench's window and augmentation callables draw from numpy's global generator.
    np.random.seed(torch.initial_seed() % 2**32)
