"""The soft-label cache: the teachers' outputs cached once per dataset (resumable, read-only when preloaded), cut
with each training window, equal to the teacher on the fly; TrainingTargets, the one entry point distillation
reads its target from. A randomly initialised SeisBench PhaseNet stands in for the teacher (``fake_teachers``,
conftest.py: no weights needed, fast)."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

from pipeline.data import generators
from pipeline.model import teachers
from pipeline.config import DataConfig
from pipeline.data.datasets import open_dataset, write_dataset
from pipeline.errors import EdgepickError
from pipeline.data.generators import CropSoftLabels, SoftLabelOrigin
from pipeline.distill.soft_label_cache import SoftLabelCache, build_soft_labels
from pipeline.distill.soft_labels import OnTheFlyTeacher, TrainingTargets
from pipeline.stages import soft_labels as soft_labels_stage
from pipeline.model.teachers import Teacher

torch.set_num_threads(1)

LENGTHS = (6000, 4500, 6000, 2000, 3001, 6000, 5000)  # 2000: shorter than PhaseNet's 3001-sample window



def _records(lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    for i, n in enumerate(lengths):
        waveform = rng.normal(size=(3, n)) * np.linspace(1, 3, n)
        p = n // 3
        waveform[:, p:] += 20 * rng.normal(size=(3, n - p)) * np.exp(-np.arange(n - p) / 300)
        yield {"trace_name": f"t{i}", "trace_sampling_rate_hz": 100.0, "trace_p_arrival_sample": p}, waveform


@pytest.fixture
def small_dataset(tmp_path):
    path = tmp_path / "ds"
    write_dataset(_records(), path, DataConfig(), "test")
    return path


# ------------------------------------------------------------------------------------------------------ the cache
@pytest.mark.slow
def test_cache_round_trip_and_reuse(small_dataset, fake_teachers, tmp_path):
    cache = SoftLabelCache.open(small_dataset, "phasenet:fake", progress=False)
    assert cache.path == small_dataset / "soft_labels" / "phasenet-fake.hdf5"
    assert not list((small_dataset / "soft_labels").glob("*.partial"))
    dataset = open_dataset(small_dataset)
    teacher = Teacher("phasenet:fake")
    assert len(cache) == len(dataset) == len(LENGTHS)
    for i in range(len(dataset)):
        waveform = dataset.get_waveforms(i)
        labels = cache.labels(i)
        assert labels.dtype == np.float16 and labels.shape == (3, waveform.shape[1])
        np.testing.assert_allclose(labels.astype(np.float32).sum(axis=0), 1.0, atol=3e-3)
        (direct,) = teacher.predict_traces([waveform])
        np.testing.assert_allclose(labels.astype(np.float32), direct, atol=1e-3)
        name = dataset.metadata["trace_name"].iloc[i]
        np.testing.assert_array_equal(cache.labels_by_name(name), labels)
    assert cache.attrs["padded_traces"] == 1  # the 2000-sample trace
    with h5py.File(cache.path) as handle:
        assert handle["labels"].chunks is not None and handle["labels"].dtype == np.float16
    cache.close()

    seen = dict(fake_teachers)
    again = SoftLabelCache.open(small_dataset, "phasenet:fake", build=False)  # no rebuild, no teacher needed
    assert fake_teachers == seen
    np.testing.assert_array_equal(again.labels(3), SoftLabelCache(again.path).labels(3))
    again.close()

    # The dataset changes (waveforms rewritten: new mtime): the cache is stale and rebuilt.
    waveforms = small_dataset / "waveforms.hdf5"
    stat = waveforms.stat()
    os.utime(waveforms, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(EdgepickError, match="stale"):
        SoftLabelCache.open(small_dataset, "phasenet:fake", build=False)
    SoftLabelCache.open(small_dataset, "phasenet:fake", progress=False).close()
    assert fake_teachers["traces"] == seen["traces"] + len(LENGTHS)


@pytest.mark.slow
def test_resume_after_interrupted_build(small_dataset, fake_teachers, tmp_path):
    paths = build_soft_labels(small_dataset, "phasenet:fake", traces_per_flush=2, max_traces=3, progress=False)
    assert paths[0].name == "phasenet-fake.hdf5.partial"
    with h5py.File(paths[0]) as handle:
        assert handle.attrs["n_done"] == 3 and not handle.attrs["complete"]
    with pytest.raises(EdgepickError, match="no current soft-label cache"):
        SoftLabelCache.open(small_dataset, "phasenet:fake", build=False)
    before = fake_teachers["traces"]
    (final,) = build_soft_labels(small_dataset, "phasenet:fake", traces_per_flush=2, progress=False)
    assert fake_teachers["traces"] - before == len(LENGTHS) - 3  # only the rest was computed
    assert final.name == "phasenet-fake.hdf5" and not paths[0].exists()

    reference = build_soft_labels(small_dataset, "phasenet:fake", cache_dir=tmp_path / "fresh", progress=False)[0]
    resumed, fresh = SoftLabelCache(final), SoftLabelCache(reference)
    np.testing.assert_array_equal(resumed.offsets, fresh.offsets)
    for i in range(len(LENGTHS)):
        np.testing.assert_array_equal(resumed.labels(i), fresh.labels(i))


@pytest.mark.slow
def test_corrupt_partial_starts_over(small_dataset, fake_teachers):
    partial = small_dataset / "soft_labels" / "phasenet-fake.hdf5.partial"
    partial.parent.mkdir()
    partial.write_bytes(b"not hdf5")
    cache = SoftLabelCache.open(small_dataset, "phasenet:fake", progress=False)
    assert len(cache) == len(LENGTHS) and not partial.exists()


def test_ensemble_is_weighted_mean(small_dataset, fake_teachers):
    a = SoftLabelCache.open(small_dataset, "phasenet:a", progress=False)
    b = SoftLabelCache.open(small_dataset, "phasenet:b", progress=False)
    ensemble = SoftLabelCache.open(small_dataset, "phasenet:a*3+phasenet:b", progress=False)
    for i in (0, 3):
        expected = 0.75 * a.labels(i).astype(np.float32) + 0.25 * b.labels(i).astype(np.float32)
        assert not np.allclose(a.labels(i), b.labels(i), atol=1e-2)
        np.testing.assert_allclose(ensemble.labels(i).astype(np.float32), expected, atol=2e-3)


def test_preloaded_caches_read_the_same_and_are_read_only(small_dataset, fake_teachers):
    for spec in ("phasenet:a", "phasenet:a*3+phasenet:b"):
        on_disk = SoftLabelCache.open(small_dataset, spec, progress=False)
        in_memory = SoftLabelCache.open(small_dataset, spec, progress=False).preload()
        for i in range(len(LENGTHS)):
            np.testing.assert_array_equal(in_memory.labels(i), on_disk.labels(i), err_msg=spec)
            np.testing.assert_array_equal(in_memory.labels(i, 700, 1900), on_disk.labels(i)[:, 700:1900], err_msg=spec)
        with pytest.raises(ValueError, match="read-only"):
            in_memory.labels(0)[0, 0] = 1
        with pytest.raises(EdgepickError, match="starts at 0"):
            in_memory.labels(0, -5, 10)


@pytest.mark.parametrize("preload", [False, True])
def test_training_chain_target_follows_the_random_window(small_dataset, fake_teachers, preload):
    """The chain distill trains with (random windows around picks, noise, normalisation): each window's target is
    the cache over the samples the window holds, found here through a position channel that rides along with X."""
    import seisbench.generate as sbg

    class AppendPosition:
        def __call__(self, state_dict):
            x, metadata = state_dict["X"]
            state_dict["X"] = (np.concatenate([x, np.arange(1, x.shape[1] + 1, dtype=x.dtype)[None]]), metadata)

    class TakePosition:
        def __call__(self, state_dict):
            x, metadata = state_dict["X"]
            state_dict["position"] = (x[-1].astype(np.int64) - 1, metadata)  # -1: padding
            state_dict["X"] = (x[:-1], metadata)

    cache = SoftLabelCache.open(small_dataset, "phasenet:fake", progress=False)
    if preload:
        cache.preload()
    dataset = generators.load_for_training(small_dataset)
    chain = generators.training_chain(dataset, 3001, teacher_steps=([SoftLabelOrigin(cache)], [CropSoftLabels(cache)]),
                                      hard_labels=False)
    crop = next(i for i, step in enumerate(chain) if isinstance(step, CropSoftLabels))
    generator = sbg.GenericGenerator(dataset)
    generator.add_augmentations([AppendPosition()] + chain[: crop + 1] + [TakePosition()] + chain[crop + 1 :])
    np.random.seed(2)
    starts = set()
    for _ in range(3):
        for i in range(len(dataset)):
            sample = generator[i]
            position, target = sample["position"], sample["y_soft"]
            assert sample["X"].shape == (3, 3001) and target.shape == (3, 3001)
            labels = cache.labels(i).astype(np.float32)
            inside = position >= 0
            np.testing.assert_array_equal(target[:, inside], labels[:, position[inside]])
            np.testing.assert_array_equal(target[:, ~inside], np.array([[0], [0], [1]]) * np.ones((1, (~inside).sum())))
            starts.add(int(position[0]))
    assert len(starts) > 5 and max(starts) > 0  # random windows, not all at the trace start


@pytest.mark.slow
@pytest.mark.parametrize("p0, strategy", [(100, "pad"), (-50, "pad"), (1500, "variable")])
def test_generator_crops_waveform_and_target_identically(small_dataset, fake_teachers, p0, strategy):
    """Whatever the window kept of the trace (a part, a part plus padding before or after it, a shorter rest), the
    target is the cached one over the same samples and noise over the padding."""
    import seisbench.generate as sbg

    cache = SoftLabelCache.open(small_dataset, "phasenet:fake", progress=False)
    dataset = open_dataset(small_dataset)
    generator = sbg.GenericGenerator(dataset)
    generator.add_augmentations(
        [
            SoftLabelOrigin(cache),
            sbg.FixedWindow(p0=p0, windowlen=3001, strategy=strategy),
            CropSoftLabels(cache),
            sbg.Normalize(demean_axis=-1, amp_norm_axis=-1),
        ]
    )
    noise = np.array([[0], [0], [1]])
    for i in range(len(dataset)):
        sample = generator[i]
        n = dataset.get_waveforms(i).shape[1]
        width = sample["X"].shape[1]
        assert sample["y_soft"].shape == (3, width) and sample["y_soft"].dtype == np.float16  # the cache's precision
        assert width == (3001 if strategy == "pad" else min(3001, max(n - p0, 0)))
        expected = np.tile(noise, (1, width)).astype(np.float16)
        first, end = max(p0, 0), min(p0 + width, n)
        if end > first:
            expected[:, first - p0 : end - p0] = cache.labels(i)[:, first:end]
        np.testing.assert_array_equal(sample["y_soft"], expected)


def test_crop_without_origin_is_one_clear_error(small_dataset, fake_teachers):
    import seisbench.generate as sbg

    cache = SoftLabelCache.open(small_dataset, "phasenet:fake", progress=False)
    generator = sbg.GenericGenerator(open_dataset(small_dataset))
    generator.add_augmentations([sbg.FixedWindow(p0=0, windowlen=2000), CropSoftLabels(cache)])
    with pytest.raises(EdgepickError, match="SoftLabelOrigin|before the windowing"):
        generator[0]
    with pytest.raises(EdgepickError, match="not a sample offset"):
        generators.window_start({generators.TRACE_ORIGIN: float("nan")}, "CropSoftLabels")


def test_cache_reads_a_span(small_dataset, fake_teachers):
    cache = SoftLabelCache.open(small_dataset, "phasenet:fake", progress=False)
    np.testing.assert_array_equal(cache.labels(0, 1000, 1500), cache.labels(0)[:, 1000:1500])
    assert cache.labels(3, 1500, 9000).shape == (3, 500)  # trace 3 has 2000 samples
    assert cache.trace_length(3) == 2000


def test_cache_in_dataloader_workers(small_dataset, fake_teachers):
    """Pickled into worker processes, the cache reopens its file per process and reads the same labels."""
    import pickle

    import seisbench.generate as sbg

    cache = SoftLabelCache.open(small_dataset, "phasenet:fake", progress=False)
    clone = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(clone.labels(1), cache.labels(1))
    generator = sbg.GenericGenerator(open_dataset(small_dataset))
    generator.add_augmentations([SoftLabelOrigin(cache), sbg.FixedWindow(p0=0, windowlen=2000), CropSoftLabels(cache)])
    loader = torch.utils.data.DataLoader(generator, batch_size=len(LENGTHS), num_workers=2)
    (batch,) = list(loader)
    expected = np.stack([cache.labels(i)[:, :2000] for i in range(len(LENGTHS))]).astype(np.float32)
    np.testing.assert_array_equal(batch["y_soft"].numpy(), expected)
    cache.preload()  # in memory, as distill holds it, and a window away from the trace start
    generator = sbg.GenericGenerator(open_dataset(small_dataset))
    generator.add_augmentations([SoftLabelOrigin(cache), sbg.FixedWindow(p0=300, windowlen=1500), CropSoftLabels(cache)])
    (batch,) = list(torch.utils.data.DataLoader(generator, batch_size=len(LENGTHS), num_workers=2))
    expected = np.stack([cache.labels(i)[:, 300:1800] for i in range(len(LENGTHS))])
    np.testing.assert_array_equal(batch["y_soft"].numpy(), expected)


@pytest.mark.slow
def test_on_the_fly_matches_cache(small_dataset, fake_teachers):
    cache = SoftLabelCache.open(small_dataset, "phasenet:fake", progress=False)
    dataset = open_dataset(small_dataset)
    windows = np.stack([dataset.get_waveforms(i) for i in (0, 2, 5)])  # all 6000 samples
    online = OnTheFlyTeacher("phasenet:fake")
    full = online.predict(windows)
    for k, i in enumerate((0, 2, 5)):
        np.testing.assert_allclose(full[k], cache.labels(i).astype(np.float32), atol=1e-3)
    cropped = online(windows[:, :, :3501], context=250)
    assert cropped.shape == (3, 3, 3001)
    with pytest.raises(EdgepickError, match="context"):
        online.predict(windows, context=3000)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["phasenet:fake", "phasenet:filtered*0.6+phasenet:fake*0.4"])
def test_on_the_fly_training_target_equals_cached_target(small_dataset, fake_teachers, monkeypatch, spec):
    """The same windows through the cache path (SoftLabelOrigin ... CropSoftLabels) and the on-the-fly path
    (steps + targets): the same (P, S, noise), to the cache's float16 rounding. Windows cover the trace start,
    the flush last teacher window, a window running past the trace end (padding) and a trace shorter than the
    teacher's window; the second spec adds a teacher whose filter runs over the whole trace, in an ensemble."""
    import pandas as pd
    import seisbench.generate as sbg

    load = teachers.load_model

    def with_filter(member):
        model = load(member)
        if member.weights == "filtered":
            model.filter_args, model.filter_kwargs = ["bandpass"], {"freqmin": 1, "freqmax": 20, "corners": 2, "zerophase": True}
        return model

    monkeypatch.setattr(teachers, "load_model", with_filter)
    cache = SoftLabelCache.open(small_dataset, spec, progress=False)
    dataset = open_dataset(small_dataset)
    window = 3001
    starts = {"t0": [0, 2999, 1200], "t1": [1700], "t2": [4000], "t3": [0], "t4": [0], "t6": [1234]}
    rows = [(name, start) for name, values in starts.items() for start in values]
    stored = dict(zip(dataset.metadata["trace_name_original"], dataset.metadata["trace_name"]))
    windows = pd.DataFrame({"trace_name": [stored[r[0]] for r in rows], "start_sample": [r[1] for r in rows],
                            "end_sample": [r[1] + window for r in rows]})

    cached = sbg.SteeredGenerator(dataset, windows)
    cached.add_augmentations([SoftLabelOrigin(cache), sbg.SteeredWindow(windowlen=window, strategy="pad"), CropSoftLabels(cache)])
    online = OnTheFlyTeacher(spec, batch_size=5)
    fly = sbg.SteeredGenerator(dataset, windows)
    before, after = online.steps(window)
    fly.add_augmentations(before + [sbg.SteeredWindow(windowlen=window, strategy="pad")] + after
                          + [sbg.Normalize(demean_axis=-1, amp_norm_axis=-1)])
    batch = next(iter(torch.utils.data.DataLoader(fly, batch_size=len(rows))))
    target = online.targets(batch)
    assert target.shape == (len(rows), 3, window) and target.dtype == np.float32
    for k in range(len(rows)):
        expected = cached[k]
        np.testing.assert_allclose(target[k], expected["y_soft"], atol=5e-4, err_msg=str(rows[k]))  # float16: <= 2.4e-4
        assert batch["X"][k].shape == (3, window)  # the student's window alone
    past_end = rows.index(("t2", 4000))
    assert (target[past_end, 2, 2000:] == 1).all()  # beyond the trace: noise, as the cache path pads
    # the context matters: the teacher run on the student's window alone gives another target
    k = rows.index(("t0", 1200))
    alone = online.predict(dataset.get_waveforms(dataset.get_idx_from_trace_name(stored["t0"]))[None, :, 1200 : 1200 + window])
    assert np.abs(alone[0] - target[k]).max() > 1e-3  # twice the tolerance above (a near-uniform random teacher)


def test_training_targets_one_entry_point(small_dataset, fake_teachers):
    """TrainingTargets gives the training loop the cache's steps and target, or the on-the-fly teacher's; an
    unknown mode is one clear error."""
    with pytest.raises(EdgepickError, match="teacher.mode"):
        TrainingTargets("phasenet:fake", "sometimes")
    cached = TrainingTargets("phasenet:fake")
    cached.build(small_dataset)
    cached.open(small_dataset)
    before, after = cached.steps(small_dataset, 3001)
    assert [type(s) for s in before + after] == [generators.SoftLabelOrigin, generators.CropSoftLabels]
    names = open_dataset(small_dataset).metadata["trace_name"]
    sees = cached.sees_phase(small_dataset, names)
    assert sees.dtype == bool and len(sees) == len(names)
    fly = TrainingTargets("phasenet:fake", "on-the-fly")
    before, after = fly.steps(small_dataset, 3001)
    assert [type(s) for s in before + after] == [generators.StashTrace, generators.TeacherContext]
    assert fly.sees_phase(small_dataset, names) is None


def test_run_from_config(small_dataset, fake_teachers, tmp_path):
    from pipeline.config import Config

    config = Config.load(overrides=[f"teacher.cache_dir={tmp_path / 'sl'}", "teacher.batch_size=16"])
    config.teacher.name = "phasenet:fake"
    (path,) = soft_labels_stage.run(config, small_dataset)
    assert path == tmp_path / "sl" / "phasenet-fake.hdf5" and path.is_file()
    config.teacher.mode = "sometimes"
    with pytest.raises(EdgepickError, match="teacher.mode"):
        soft_labels_stage.run(config, small_dataset)


def test_dataset_teacher_mismatch_is_one_error(tmp_path, fake_teachers):
    path = tmp_path / "ds50"
    write_dataset(_records((4000, 4000)), path, DataConfig(sampling_rate=50.0), "test")
    with pytest.raises(EdgepickError, match="50.0 Hz"):
        build_soft_labels(path, "phasenet:fake", progress=False)


