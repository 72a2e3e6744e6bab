"""Windows, normalisation and labels, as chains of small ``seisbench.generate`` callables.

Training windows are drawn at random around the picks (OKLA puts P at the same sample in every trace, so a fixed
window would teach the student where P is, not what it looks like); evaluation windows are drawn once from a seed
and replayed through SeisBench's ``SteeredGenerator``, so every model sees exactly the same samples.
"""

from __future__ import annotations

import copy
import os
import re
import time

import numpy as np
import pandas as pd
import seisbench.data as sbd
import seisbench.generate as sbg
import torch

from pipeline.errors import EdgepickError

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
    what the student does in ``annotate`` and the firmware does on the board (:func:`pipeline.student.normalize_windows`)."""

    def __init__(self, key: str = "X"):
        self.key = key

    def __call__(self, state_dict):
        from pipeline.student import normalize_windows

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


def normalise() -> list:
    return [Normalise()]


def label(columns: dict[str, str], sigma: int = 20) -> list:
    """Per-sample (P, S, noise) probabilities: Gaussians of width ``sigma`` samples at the picks."""
    return [sbg.ProbabilisticLabeller(label_columns=columns, model_labels=LABELS, sigma=sigma, dim=0)]


def float32(*keys: str) -> list:
    return [sbg.ChangeDtype(np.float32, key=key) for key in keys]


class RandomWindowAroundPicks(sbg.FixedWindow):
    """A window of ``windowlen`` samples that holds one of the picks (chosen at random) at a uniformly random
    position with ``pick_probability``, else starts anywhere in the trace; zero-padded where the trace is short.

    The same windows as ``WindowAroundSample`` followed by ``RandomWindow``, cut with one slice instead of two
    ``np.take`` copies of twice the window (a third of the generator's time).
    """

    def __init__(self, columns: list[str], windowlen: int, pick_probability: float = 2 / 3, key="X"):
        super().__init__(windowlen=windowlen, strategy="pad", key=key)
        self.columns, self.pick_probability = list(columns), pick_probability

    def __call__(self, state_dict, p0=None, windowlen=None):
        x, metadata = state_dict[self.key[0]]
        n, windowlen = x.shape[-1], self.windowlen
        picks = [metadata[c] for c in self.columns if c in metadata and np.isfinite(metadata[c])]
        if picks and np.random.random() < self.pick_probability:
            p0 = int(picks[np.random.randint(len(picks))]) - np.random.randint(windowlen)
            p0 = min(max(p0, 0), max(n - windowlen, 0))
        else:
            p0 = np.random.randint(max(n - windowlen, 0) + 1)
        if n < windowlen or self.key[0] != self.key[1]:
            return super().__call__(state_dict, p0, windowlen)
        for column in metadata:
            if column.endswith("_sample"):
                metadata[column] = metadata[column] - p0
        state_dict[self.key[1]] = (x[..., p0 : p0 + windowlen].copy(), metadata)  # a copy: later steps write in place

    def __str__(self):
        return f"RandomWindowAroundPicks ({len(self.columns)} pick columns, p={self.pick_probability:g}, {self.windowlen} samples)"


def random_window_around_picks(columns: dict[str, str], in_samples: int, pick_probability: float = 2 / 3) -> list:
    """A window that holds a pick at a random position (with ``pick_probability``), else anywhere in the trace."""
    return [RandomWindowAroundPicks(list(columns), in_samples, pick_probability)]


def augment(noise_std: tuple[float, float] = (0.0, 0.05), channel_dropout: bool = True) -> list:
    """Robustness to what field stations do: added noise and dead channels."""
    chain = [Sometimes(GaussianNoise(scale=noise_std), 0.5)]
    if channel_dropout:
        chain.append(Sometimes(sbg.ChannelDropout(), 0.1))
    return chain


def training_chain(dataset: sbd.WaveformDataset, in_samples: int, sigma: int = 20, soft_labels=None,
                   hard_labels: bool = True) -> list:
    """Window around picks, augment, normalise, label; with a soft-label cache the teacher target is cropped with X.
    ``hard_labels=False`` leaves out the analyst-pick labels ("y"), which distillation with alpha = 1 never reads
    (labelling was a third of the generator's time)."""
    columns = phase_columns(dataset)
    chain = []
    if soft_labels is not None:
        from pipeline.teachers import CropSoftLabels, SoftLabelOrigin

        chain.append(SoftLabelOrigin(soft_labels))
        chain += random_window_around_picks(columns, in_samples)
        chain.append(CropSoftLabels(soft_labels))
    else:
        chain += random_window_around_picks(columns, in_samples)
    chain += augment() + normalise()  # Normalise already returns float32
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


def evaluation_generator(dataset: sbd.WaveformDataset, in_samples: int, seed: int = 0, sigma: int = 20, soft_labels=None,
                         wrap=None):
    """Deterministic windows (see :func:`evaluation_windows`), normalised and labelled like training ones.
    ``wrap``: an optional function of the chain that returns the chain to use (the on-the-fly teacher adds its
    context steps around the windowing step this way)."""
    columns = phase_columns(dataset)
    generator = sbg.SteeredGenerator(dataset, evaluation_windows(dataset, in_samples, seed))
    window = [sbg.SteeredWindow(windowlen=in_samples, strategy="pad")]
    if soft_labels is not None:
        from pipeline.teachers import CropSoftLabels, SoftLabelOrigin

        window = [SoftLabelOrigin(soft_labels)] + window + [CropSoftLabels(soft_labels)]
    chain = window + normalise() + label(columns, sigma) + float32("X", "y")
    generator.add_augmentations(wrap(chain) if wrap is not None else chain)
    return generator


def training_generator(dataset: sbd.WaveformDataset, in_samples: int, sigma: int = 20, soft_labels=None, wrap=None,
                       hard_labels: bool = True):
    """Random windows around picks (:func:`training_chain`); ``wrap`` as in :func:`evaluation_generator`."""
    generator = sbg.GenericGenerator(dataset)
    chain = training_chain(dataset, in_samples, sigma, soft_labels, hard_labels)
    generator.add_augmentations(wrap(chain) if wrap is not None else chain)
    return generator


def load_for_training(
    path, split: str | None = None, sampling_rate: float = 100.0, component_order: str = "ZNE"
) -> sbd.WaveformDataset:
    """Open a dataset folder with its waveforms in memory and a metadata lookup: what high throughput needs."""
    from pipeline.data import open_dataset

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
