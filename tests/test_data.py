"""The data-stage writer, its checks and the generators, on small datasets made here."""

import json

import numpy as np
import pytest
import seisbench.data as sbd

from pipeline.data import generators, windowing
from pipeline.config import DataConfig
from pipeline.data.datasets import REPORT_NAME, event_split, open_dataset, prepare_trace, write_dataset
from pipeline.errors import EdgepickError

from helpers import make_records


@pytest.fixture
def small_dataset(tmp_path):
    path = tmp_path / "ds"
    write_dataset(make_records(), path, DataConfig(), "test")
    return path


def test_written_dataset_opens_and_splits_by_event(small_dataset):
    dataset = sbd.WaveformDataset(small_dataset)
    assert len(dataset) == 36
    assert dataset.metadata["split"].isin(["train", "dev", "test"]).all()
    events_per_split = dataset.metadata.groupby("split")["source_id"].apply(set)
    splits = list(events_per_split.index)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not events_per_split[a] & events_per_split[b]
    assert dataset.get_waveforms(0).shape == (3, 6000)
    assert dataset.component_order == "ZNE"
    report = json.loads((small_dataset / REPORT_NAME).read_text())
    assert report["traces"] == 36 and sum(s["traces"] for s in report["splits"].values()) == 36


def test_event_split_is_seeded_and_roughly_proportional():
    names = [f"event{i}" for i in range(3000)]
    a = [event_split(n, 1) for n in names]
    assert a == [event_split(n, 1) for n in names]
    assert a != [event_split(n, 2) for n in names]
    share = a.count("train") / len(a)
    assert 0.65 < share < 0.75


def test_bad_traces_are_skipped_and_counted(tmp_path):
    records = list(make_records(n_events=4, stations=1))
    records[0][1][1, 100] = np.nan
    records[1][1][:] = 5.0  # flat on every channel
    records.append(({"trace_name": "short", "trace_sampling_rate_hz": 100.0}, np.ones((3, 50))))
    report = write_dataset(iter(records), tmp_path / "ds", DataConfig(), "test", min_samples=3001)
    assert report["traces"] == 2
    assert report["skipped"] == {"NaN or inf samples": 1, "all channels flat": 1, "too short (50 samples, need 3001)": 1}


def test_dead_channel_is_kept_and_recorded():
    metadata, waveform = next(make_records(n_events=1, stations=1))
    waveform[2] = 0.0
    metadata, waveform = prepare_trace(metadata, waveform, DataConfig())
    assert metadata["trace_dead_channels"] == "E"


def test_vertical_only_writes_the_same_traces_and_splits_with_flat_horizontals(tmp_path):
    """data.vertical_only: a single-component copy of a source, trace for trace in the same splits (the split is the
    event's, so no test trace of the three-component set trains a student through its vertical copy); a trace whose
    vertical is dead is skipped there."""
    records = list(make_records(n_events=6, stations=2))
    records[0][1][0] = 0.0  # Z dead: nothing left of it vertical-only
    full = write_dataset(iter(records), tmp_path / "full", DataConfig(), "test")
    config = DataConfig()
    config.vertical_only = True
    vertical = write_dataset(iter(records), tmp_path / "z", config, "test")
    assert vertical["traces"] == full["traces"] - 1 and vertical["skipped"] == {"all channels flat": 1}
    a = sbd.WaveformDataset(tmp_path / "full").metadata.set_index("trace_name_original")
    b_set = sbd.WaveformDataset(tmp_path / "z")
    b = b_set.metadata.set_index("trace_name_original")
    assert (a.loc[b.index, "split"] == b["split"]).all()
    assert (b["trace_dead_channels"] == "NE").all()
    w = b_set.get_waveforms(0)
    assert np.abs(w[1:]).max() == 0 and np.abs(w[0]).max() > 0


def test_wrong_sampling_rate_is_resampled_with_picks_moved():
    metadata, waveform = next(make_records(n_events=1, stations=1, rate=200.0))
    p200 = metadata["trace_p_arrival_sample"]
    out_meta, out = prepare_trace(metadata, waveform, DataConfig())
    assert out.shape[1] == waveform.shape[1] // 2
    assert out_meta["trace_sampling_rate_hz"] == 100.0 and out_meta["trace_original_sampling_rate_hz"] == 200.0
    assert out_meta["trace_p_arrival_sample"] == pytest.approx(p200 / 2)


def test_tiny_physical_amplitudes_are_rescaled():
    metadata, waveform = next(make_records(n_events=1, stations=1))
    waveform = waveform / np.abs(waveform).max() * 1e-14
    out_meta, out = prepare_trace(metadata, waveform, DataConfig())
    assert 1 <= np.abs(out).max() < 10
    assert out_meta["trace_amplitude_scale"] == pytest.approx(1e14)
    normalised = generators.normalise()[0]
    state = {"X": (out[:, :3001], {})}
    normalised(state)
    assert np.abs(state["X"][0]).max() == pytest.approx(1.0, rel=1e-5)  # relative epsilon 1e-6


def test_failed_write_keeps_previous_dataset(small_dataset):
    before = (small_dataset / "metadata.csv").read_bytes()

    def broken():
        yield from make_records(n_events=2, stations=1)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        write_dataset(broken(), small_dataset, DataConfig(), "test")
    assert (small_dataset / "metadata.csv").read_bytes() == before
    assert not [p for p in small_dataset.parent.iterdir() if p.name.endswith(".tmp")]


def test_no_usable_trace_is_an_error(tmp_path):
    with pytest.raises(EdgepickError, match="no usable trace"):
        write_dataset(iter([]), tmp_path / "empty", DataConfig(), "test")
    assert not (tmp_path / "empty").exists()


def test_open_dataset_explains_broken_folders(small_dataset, tmp_path):
    with pytest.raises(EdgepickError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "metadata.csv").write_bytes((small_dataset / "metadata.csv").read_bytes())
    data = (small_dataset / "waveforms.hdf5").read_bytes()
    (truncated / "waveforms.hdf5").write_bytes(data[: len(data) // 3])
    with pytest.raises(EdgepickError, match="corrupt or truncated HDF5"):
        open_dataset(truncated)
    no_name = tmp_path / "no_name"
    no_name.mkdir()
    (no_name / "metadata.csv").write_text("station_code,split\nA,train\n")
    (no_name / "waveforms.hdf5").write_bytes(data)
    with pytest.raises(EdgepickError, match="lacks required column"):
        open_dataset(no_name)
    with pytest.raises(EdgepickError, match="sampling rate"):
        open_dataset(small_dataset, sampling_rate=50.0)


def test_mixed_sampling_rates_print_plain_numbers(tmp_path):
    """A folder not written by the data stage (40 and 100 Hz traces): the refusal names the rates as numbers."""
    path = tmp_path / "mixed"
    path.mkdir()
    with sbd.WaveformDataWriter(path / "metadata.csv", path / "waveforms.hdf5") as writer:
        writer.data_format = {"dimension_order": "CW", "component_order": "ZNE"}
        for i, rate in enumerate((40.0, 100.0, 100.0)):
            writer.add_trace({"trace_name": f"t{i}", "trace_sampling_rate_hz": rate}, np.ones((3, 4000)))
    with pytest.raises(EdgepickError, match="sampling rate") as info:
        open_dataset(path, sampling_rate=100.0)
    message = str(info.value)
    assert "sampling rate 40, 100 Hz, expected 100 Hz" in message
    assert "np." not in message and "float64" not in message


def test_training_windows_hold_labels(small_dataset):
    dataset = generators.load_for_training(small_dataset)
    generator = generators.training_generator(dataset, in_samples=3001)
    np.random.seed(0)
    samples = [generator[i] for i in range(20)]
    for sample in samples:
        assert sample["X"].shape == (3, 3001) and sample["X"].dtype == np.float32
        assert sample["y"].shape == (3, 3001)
        np.testing.assert_allclose(sample["y"].sum(axis=0), 1.0, atol=1e-5)
        assert np.abs(sample["X"]).max() <= 1.0 + 1e-6
    # most windows are drawn around a pick, so most hold a P or S label peak
    assert sum(s["y"][:2].max() > 0.5 for s in samples) >= 10


def test_evaluation_windows_are_deterministic(small_dataset):
    dataset = generators.load_for_training(small_dataset)
    a = generators.evaluation_generator(dataset, 3001, seed=3)
    b = generators.evaluation_generator(dataset, 3001, seed=3)
    for i in range(len(dataset)):
        np.testing.assert_array_equal(a[i]["X"], b[i]["X"])
    table = generators.evaluation_windows(dataset, 3001, seed=3)
    p = dataset.metadata["trace_p_arrival_sample"].to_numpy()
    assert ((p >= table["start_sample"]) & (p < table["end_sample"])).all()


def test_random_window_holds_the_pick_where_it_was_and_copies():
    x = np.arange(3 * 6000, dtype=np.float32).reshape(3, 6000)
    window = windowing.RandomWindowAroundPicks(["trace_p_arrival_sample"], windowlen=3001, pick_probability=1.0)
    np.random.seed(1)
    for _ in range(50):
        state = {"X": (x, {"trace_p_arrival_sample": 4500.0, "trace_s_arrival_sample": np.nan})}
        window(state)
        w, metadata = state["X"]
        p = metadata["trace_p_arrival_sample"]
        assert w.shape == (3, 3001) and 0 <= p < 3001
        assert w[0, int(p)] == 4500.0  # the sample under the moved pick is the pick's sample
        w[:] = 0  # later augmentations write in place: the trace itself must not change
    assert x[0, 4500] == 4500.0
    state = {"X": (x[:, :1000], {"trace_p_arrival_sample": 500.0})}
    window(state)
    assert state["X"][0].shape == (3, 3001) and state["X"][0][:, 1000:].max() == 0  # short trace: zero-padded


def test_live_windows_put_the_pick_where_the_live_mode_keeps_predictions():
    """end_probability: that share of the windows around a pick puts it end_range samples before the window's end
    (distill.live_windows: where the live firmware keeps its predictions); the others anywhere, as before."""
    x = np.arange(3 * 9000, dtype=np.float32).reshape(3, 9000)
    window = windowing.RandomWindowAroundPicks(["trace_p_arrival_sample"], windowlen=3001, pick_probability=1.0,
                                                end_probability=0.5, end_range=(50, 350))
    np.random.seed(3)
    before_end = []
    for _ in range(400):
        state = {"X": (x, {"trace_p_arrival_sample": 4500.0})}
        window(state)
        w, metadata = state["X"]
        p = int(metadata["trace_p_arrival_sample"])
        assert w[0, p] == 4500.0
        before_end.append(3001 - p)
    before_end = np.asarray(before_end)
    in_range = (before_end >= 50) & (before_end <= 350)
    assert 0.45 < in_range.mean() < 0.65  # half by the rule, ~10 % of the others by chance
    assert before_end[in_range].min() <= 60 and before_end[in_range].max() >= 340  # uniform over the range
    assert (~in_range).sum() > 100  # the rest still anywhere in the window
    assert "0.5 of them 50-350 samples before the end" in str(window)
    # without it the random draws are the ones of earlier runs (which pick, then where): seed for seed the same windows
    plain = windowing.RandomWindowAroundPicks(["trace_p_arrival_sample", "trace_s_arrival_sample"], windowlen=3001,
                                               pick_probability=1.0)
    np.random.seed(11)
    got = []
    for _ in range(20):
        state = {"X": (x, {"trace_p_arrival_sample": 4500.0, "trace_s_arrival_sample": 5200.0})}
        plain(state)
        got.append(int(state["X"][1]["trace_p_arrival_sample"]))
    np.random.seed(11)
    want = []
    for _ in range(20):
        np.random.random()  # pick_probability's draw
        pick = [4500, 5200][np.random.randint(2)]
        p0 = min(max(pick - np.random.randint(3001), 0), 9000 - 3001)
        want.append(4500 - p0)
    assert got == want
    for bad in ({"end_probability": 1.5}, {"end_probability": 0.3, "end_range": (0, 100)},
                {"end_probability": 0.3, "end_range": (100, 4000)}):
        with pytest.raises(EdgepickError, match="end_"):
            windowing.RandomWindowAroundPicks(["trace_p_arrival_sample"], windowlen=3001, **bad)


def test_live_windows_use_the_teachers_picks_on_continuous_data():
    """A trace without analyst picks (the transfer data) gets pick_probability x end_probability of its windows with
    one of the teacher's picks end_range samples before the end, chosen among those that fit without clamping; the
    rest start anywhere. An analyst pick, where there is one, wins; without end_probability the picks are unused."""
    x = np.arange(3 * 6000, dtype=np.float32).reshape(3, 6000)
    teacher = {"a": np.array([1000, 4000, 5900]), "b": np.array([], dtype=np.int64)}
    window = windowing.RandomWindowAroundPicks(["trace_p_arrival_sample"], windowlen=3001, pick_probability=0.5,
                                                end_probability=0.6, end_range=(50, 350), teacher_picks=teacher)
    assert "the teacher's picks too" in str(window)

    def at_end_share(rule):
        np.random.seed(5)
        at_end = []
        for _ in range(2000):
            state = {"X": (x, {"trace_name": "a", "trace_p_arrival_sample": np.nan})}
            rule(state)
            before_end = 3001 - (teacher["a"] - int(state["X"][0][0, 0]))
            fits = (before_end >= 50) & (before_end <= 350)
            at_end.extend(before_end[fits])
        return len(at_end) / 2000, np.asarray(at_end)

    by_chance, _ = at_end_share(windowing.RandomWindowAroundPicks(["trace_p_arrival_sample"], windowlen=3001))
    share, at_end = at_end_share(window)
    # 0.3 by the rule, the other 0.7 at the rate of windows drawn anywhere; 1000 never fits (its window would start
    # before the trace), 4000 and 5900 do (for 5900 only up to 101 samples before the end): nothing is clamped
    assert abs(share - (0.3 + 0.7 * by_chance)) < 0.04 and 0.05 < by_chance < 0.25
    assert at_end.min() >= 50 and at_end.max() <= 350 and (at_end > 101).any()
    for name in ("b", "unknown"):  # no teacher pick: anywhere, as before
        state = {"X": (x, {"trace_name": name, "trace_p_arrival_sample": np.nan})}
        window(state)
        assert state["X"][0].shape == (3, 3001)
    state = {"X": (x, {"trace_name": "a", "trace_p_arrival_sample": 2500.0})}  # analyst pick: the old rule
    np.random.seed(0)
    window(state)
    assert 0 <= state["X"][1]["trace_p_arrival_sample"] < 3001
    plain = windowing.RandomWindowAroundPicks(["trace_p_arrival_sample"], windowlen=3001, teacher_picks=teacher)
    assert plain.teacher_picks is None and "teacher" not in str(plain)


def test_training_chain_without_hard_labels(small_dataset):
    """alpha = 1 never reads the analyst-pick labels: the chain can leave them out, windows unchanged."""
    dataset = generators.load_for_training(small_dataset)
    with_labels = generators.training_generator(dataset, in_samples=3001)
    without = generators.training_generator(dataset, in_samples=3001, hard_labels=False)
    np.random.seed(5)
    a = with_labels[0]
    np.random.seed(5)
    b = without[0]
    assert "y" in a and "y" not in b
    assert np.array_equal(a["X"], b["X"])


def test_gaussian_noise_is_seisbench_noise_in_float32_and_repeats_under_the_seed():
    import seisbench.generate as sbg

    x = np.zeros((3, 40000), dtype=np.float32)
    x[0, 0] = 2.0  # window maximum 2: noise standard deviation 0.1 x 2
    stds = {}
    for name, augmentation in (("edgepick", generators.GaussianNoise(scale=(0.1, 0.1))),
                               ("seisbench", sbg.GaussianNoise(scale=(0.1, 0.1)))):
        np.random.seed(3)
        state = {"X": (x, {})}
        augmentation(state)
        y = state["X"][0]
        assert y.dtype == np.float32 and y.shape == x.shape
        stds[name] = float(y[:, 1:].std())
    assert x[0, 0] == 2.0 and np.count_nonzero(x) == 1  # the input is not written
    assert stds["edgepick"] == pytest.approx(0.2, rel=0.02) and stds["seisbench"] == pytest.approx(0.2, rel=0.02)

    def draw():
        np.random.seed(11)
        state = {"X": (x, {})}
        generators.GaussianNoise(scale=(0.0, 0.1))(state)
        return state["X"][0]

    assert np.array_equal(draw(), draw())
    assert not np.array_equal(draw()[:, 1:], 0)


def test_gap_resume_silences_and_tapers_only_ahead_of_the_teachers_first_phase():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 3000)).astype(np.float32) + 5.0  # an offset: the silence is zeros, not the mean
    target = np.zeros((3, 3000), dtype=np.float16)
    target[2] = 1
    target[0, 1500:1540] = 0.6  # the teacher's P at 1500-1540
    step = generators.GapResume(ramp=(20, 100), margin=200)
    for seed in range(30):
        np.random.seed(seed)
        state = {"X": (x, {"m": 1}), "y_soft": (target, {})}
        step(state)
        y, metadata = state["X"]
        assert metadata == {"m": 1} and y.dtype == np.float32 and np.array_equal(x[:, 0], x[:, 0])
        changed = np.flatnonzero((y != x).any(axis=0))
        assert len(changed) and changed[-1] < 1300  # nothing within the margin of the phase or after it moves
        assert np.array_equal(y[:, 1300:], x[:, 1300:])
        zeros = np.flatnonzero((y == 0).all(axis=0))
        assert len(zeros) and zeros[-1] < changed[-1]  # silence, then the ramp back to the data
        ramp = y[:, zeros[-1] + 1 : changed[-1] + 1] / x[:, zeros[-1] + 1 : changed[-1] + 1]
        assert np.all(np.diff(ramp[0]) > 0) and np.all((ramp > 0) & (ramp < 1))
    assert np.count_nonzero(x == 0) == 0  # the input is not written
    early = target.copy()
    early[0, 100:140] = 0.9  # a phase too early for any gap: the window is left alone
    state = {"X": (x, {}), "y_soft": (early, {})}
    step(state)
    assert state["X"][0] is x
    with pytest.raises(EdgepickError, match="teacher.mode=cache"):
        step({"X": (x, {})})
    with pytest.raises(EdgepickError, match="ramp"):
        generators.GapResume(ramp=(50, 10))
    assert "taper" in str(step) and "GapResume" in str(generators.augment(gap_resume=0.2)[0])
    assert not any("GapResume" in str(a) for a in generators.augment())


def test_training_chain_carries_gap_resume(small_dataset):
    dataset = generators.load_for_training(small_dataset)
    chain = [str(a) for a in generators.training_chain(dataset, 3001, gap_resume=0.25)]
    assert sum("GapResume" in a and "p=0.25" in a for a in chain) == 1
    assert not any("GapResume" in str(a) for a in generators.training_chain(dataset, 3001))


@pytest.mark.parametrize("cores, local_processes, expected", [(1, 1, 0), (2, 1, 0), (4, 1, 2), (16, 1, 8), (64, 1, 8),
                                                              (16, 2, 4), (16, 8, 0)])
def test_automatic_worker_count(monkeypatch, cores, local_processes, expected):
    monkeypatch.setattr(generators.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_processes))  # torchrun's processes on this machine
    assert generators.worker_count(-1) == expected
    assert generators.worker_count(3) == 3  # an explicit count is kept
    with pytest.raises(EdgepickError, match="workers=-2"):
        generators.worker_count(-2)
