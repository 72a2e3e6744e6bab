"""Teachers and the (P, S, noise) mapping: specs, the mapping of each output, the checks of a teacher against
data, missing weights offline; the real PhaseNet okla / EQTransformer elep from ../shared where it exists (the
soft-label cache: test_soft_label_cache.py). The stand-in teacher (``fake_teachers``) is in conftest.py.
"""

from __future__ import annotations


import numpy as np
import obspy
import pytest
import torch

from pipeline.config import DataConfig
from pipeline.data.datasets import open_dataset, write_dataset
from pipeline.errors import EdgepickError
from pipeline.distill.soft_label_cache import SoftLabelCache
from pipeline.distill.soft_labels import OnTheFlyTeacher
from pipeline.model.teachers import Teacher, TeacherMember, parse_teacher_spec, sigmoid_to_distribution, to_distribution

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------------- spec parsing
def test_parse_single_and_ensemble():
    (member,) = parse_teacher_spec("phasenet:okla")
    assert member == TeacherMember("phasenet", "okla", 1.0)
    assert member.key == "phasenet-okla"
    members = parse_teacher_spec("phasenet:okla*0.7+EQTransformer:elep*0.3")
    assert [(m.model, m.weights) for m in members] == [("phasenet", "okla"), ("eqtransformer", "elep")]
    assert [m.weight for m in members] == pytest.approx([0.7, 0.3])
    members = parse_teacher_spec(" phasenet:okla + eqtransformer:elep ")
    assert [m.weight for m in members] == pytest.approx([0.5, 0.5])
    assert [m.weight for m in parse_teacher_spec("phasenet:a*2+phasenet:b*6")] == pytest.approx([0.25, 0.75])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty"),
        ("gpd:stead", "unknown teacher"),
        ("phasenet", "<model>:<weights>"),
        ("phasenet:", "weights name"),
        ("phasenet:../etc", "weights name"),
        ("phasenet:okla*x", "not a number"),
        ("phasenet:okla*0", "positive"),
        ("phasenet:okla*-1", "positive"),
        ("phasenet:okla+", "empty member"),
        ("phasenet:okla+phasenet:okla", "twice"),
    ],
)
def test_parse_errors(spec, message):
    with pytest.raises(EdgepickError, match=message):
        parse_teacher_spec(spec)


# ---------------------------------------------------------------------------------------------------------- mapping
def test_eqtransformer_mapping_hand_made():
    p = np.array([0.0, 0.2, 0.8, 1.0, 0.5, 1.2])
    s = np.array([0.0, 0.1, 0.6, 1.0, 0.5, -0.1])
    dist = sigmoid_to_distribution(p, s)
    assert dist.shape == (3, 6) and dist.dtype == np.float32
    expected = np.array(
        [
            [0.0, 0.0, 1.0],  # nothing: all noise
            [0.2, 0.1, 0.7],  # P + S <= 1: kept, noise takes the rest
            [0.8 / 1.4, 0.6 / 1.4, 0.0],  # P + S > 1: renormalised, no noise
            [0.5, 0.5, 0.0],
            [0.5, 0.5, 0.0],  # exactly 1
            [1.0, 0.0, 0.0],  # out-of-range values clipped to [0, 1]
        ]
    ).T
    np.testing.assert_allclose(dist, expected, atol=1e-6)
    np.testing.assert_allclose(dist.sum(axis=0), 1.0, atol=1e-6)


def test_to_distribution_orders_and_ignores_detection():
    raw = np.array([[0.9, 0.3, 0.2], [0.1, 0.0, 0.7]])  # columns Detection, P, S
    np.testing.assert_allclose(to_distribution(raw, ["Detection", "P", "S"]), [[0.3, 0.0], [0.2, 0.7], [0.5, 0.3]], atol=1e-6)
    softmax = np.array([[0.7, 0.2, 0.1]])  # columns N, P, S (original PhaseNet order)
    np.testing.assert_allclose(to_distribution(softmax, list("NPS")), [[0.2], [0.1], [0.7]], atol=1e-6)
    with pytest.raises(EdgepickError, match="no P and S"):
        to_distribution(softmax, ["A", "B", "C"])


def test_teacher_refuses_unfit_data(fake_teachers):
    teacher = Teacher("phasenet:fake")
    teacher.check_data(100.0, "ZNE")
    with pytest.raises(EdgepickError, match="Hz"):
        teacher.check_data(40.0, "ZNE")
    with pytest.raises(EdgepickError, match="components"):
        teacher.check_data(100.0, "Z12")
    with pytest.raises(EdgepickError, match="ensemble"):
        Teacher("phasenet:a+phasenet:b")



@pytest.mark.parametrize("error", ["connection", "value"])
def test_missing_weights_offline(monkeypatch, error):
    import requests
    import seisbench.models as sbm

    def offline(name, *args, **kwargs):
        if error == "connection":
            raise requests.exceptions.ConnectionError("Max retries exceeded with url: https://files.seisbench.org")
        raise ValueError(f"No version for weight '{name}' available.")

    monkeypatch.setattr(sbm.EQTransformer, "from_pretrained", offline)
    with pytest.raises(EdgepickError) as info:
        Teacher("eqtransformer:nosuchweights")
    message = str(info.value)
    assert "nosuchweights" in message and "SEISBENCH_CACHE_ROOT" in message and "\n" not in message


# ------------------------------------------------------------------------------------ the real teachers (../shared)
def _stead_records(shared, count):
    stead = open_dataset(shared / "datasets" / "stead50")
    drop = {"index", "trace_chunk", "trace_component_order", "split", "trace_name_original"}
    for i in range(count):
        row = stead.metadata.iloc[i]
        metadata = {k: v for k, v in row.items() if k not in drop}
        metadata["trace_name"] = row["trace_name_original"]
        yield metadata, stead.get_waveforms(i)


def _stream(waveform, rate=100.0):
    start = obspy.UTCDateTime(0)
    return obspy.Stream(
        [
            obspy.Trace(waveform[i].astype(np.float64), header=dict(network="XX", station="S", channel=f"HH{c}",
                                                                     sampling_rate=rate, starttime=start))
            for i, c in enumerate("ZNE")
        ]
    )


@pytest.mark.shared
def test_real_phasenet_cache_finds_picks(teacher_cache, shared, tmp_path):
    path = tmp_path / "stead12"
    write_dataset(_stead_records(shared, 12), path, DataConfig(), "stead12")
    cache = SoftLabelCache.open(path, "phasenet:okla", progress=False, batch_size=64)
    assert cache.attrs["weights_version"] == "1"
    dataset = open_dataset(path)
    residuals = []
    for i in range(len(dataset)):
        pick = dataset.metadata["trace_p_arrival_sample"].iloc[i]
        labels = cache.labels(i).astype(np.float32)
        assert labels.shape == (3, dataset.get_waveforms(i).shape[1])
        residuals.append(int(np.argmax(labels[0])) - float(pick))
    residuals = np.abs(residuals)
    print("P residuals (samples):", residuals)
    assert np.all(residuals <= 50), residuals  # within 0.5 s of the analyst P pick (measured: 1-22 samples)
    assert np.median(residuals) <= 25, residuals

    # The ensemble reuses the PhaseNet file, adds EQTransformer's, and still finds the picks.
    ensemble = SoftLabelCache.open(path, "phasenet:okla*0.7+eqtransformer:elep*0.3", progress=False)
    assert sorted(p.name for p in (path / "soft_labels").iterdir()) == ["eqtransformer-elep.hdf5", "phasenet-okla.hdf5"]
    mixed = []
    for i in range(len(dataset)):
        labels = ensemble.labels(i).astype(np.float32)
        np.testing.assert_allclose(labels.sum(axis=0), 1.0, atol=5e-3)
        mixed.append(abs(int(np.argmax(labels[0])) - float(dataset.metadata["trace_p_arrival_sample"].iloc[i])))
    print("ensemble P residuals (samples):", mixed)
    assert np.all(np.array(mixed) <= 50), mixed


@pytest.mark.shared
def test_real_teachers_equal_annotate(teacher_cache, shared):
    stead = open_dataset(shared / "datasets" / "stead50")
    one = stead.get_waveforms(0)
    long = np.concatenate([stead.get_waveforms(1), stead.get_waveforms(2)], axis=1)  # 120 s: several windows
    for spec, waveform in (("phasenet:okla", one), ("eqtransformer:elep", long)):
        teacher = Teacher(spec)
        (raw,), _ = teacher.predict_raw([waveform])
        annotations = teacher.model.annotate(_stream(waveform))
        for j, label in enumerate(teacher.labels):
            (trace,) = annotations.select(channel=f"*_{label}")
            start = int(round((trace.stats.starttime - obspy.UTCDateTime(0)) * 100))
            np.testing.assert_allclose(raw[start : start + trace.stats.npts, j], trace.data, atol=1e-5)
        if spec.startswith("eqtransformer"):
            assert start == 500 and raw.shape[0] == long.shape[1]  # annotate blinds the edges; we fill them
            assert np.isfinite(raw).all()
    # An ensemble on the fly is a distribution per sample.
    online = OnTheFlyTeacher("phasenet:okla*0.7+eqtransformer:elep*0.3")
    target = online.predict(long[None, :, :6000])
    assert target.shape == (1, 3, 6000)
    np.testing.assert_allclose(target.sum(axis=1), 1.0, atol=1e-5)
