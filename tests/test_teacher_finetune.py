"""``make teacher``: fine-tuning a teacher on labelled data, saved as a SeisBench model that works as a teacher.

Offline: an untrained SeisBench PhaseNet (okla's conventions: PSN, peak norm, ENZ) stands in for the pretrained
weights; the test marked by ``teacher_cache`` fine-tunes the real PhaseNet okla from ../shared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.model import teachers
from pipeline.stages import teacher as teacher_finetune
from pipeline.config import Config
from pipeline.data.datasets import write_dataset
from pipeline.errors import EdgepickError

from helpers import make_records, unlabelled_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    path = tmp_path_factory.mktemp("finetune") / "ds"
    write_dataset(make_records(n_events=24, stations=2), path, Config().data, "test")
    return path


@pytest.fixture
def untrained(monkeypatch):
    """``phasenet:fake`` loads a seeded, untrained PhaseNet instead of pretrained weights."""
    import seisbench.models as sbm

    load = teachers.load_model

    def fake(member):
        if member.local:
            return load(member)
        torch.manual_seed(0)
        if member.model == "eqtransformer":  # the elep conventions: ZNE, std normalisation
            model = sbm.EQTransformer(in_samples=6000, sampling_rate=100, norm="std", component_order="ZNE")
            model._weights_version = "1"
            return model.eval()
        model = sbm.PhaseNet(phases="PSN", norm="peak", component_order="ENZ", sampling_rate=100)
        model._weights_version = "1"
        return model.eval()

    monkeypatch.setattr(teachers, "load_model", fake)


def finetune_config(dataset, out, **overrides) -> Config:
    config = Config()
    config.teacher.name = "phasenet:fake"
    cfg = config.teacher.finetune
    cfg.dataset, cfg.out = str(dataset), str(out)
    cfg.epochs, cfg.windows_per_epoch, cfg.batch_size, cfg.workers = 1, 48, 16, 0
    cfg.learning_rate = 3e-3
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return config


@pytest.mark.slow
def test_one_epoch_improves_saves_a_loadable_teacher_and_resumes(labelled, tmp_path, untrained):
    out = tmp_path / "teacher"
    state = teacher_finetune.run(finetune_config(labelled, out))
    (epoch,) = state["history"]
    assert np.isfinite(epoch["train_loss"]) and epoch["dev_loss"] < state["initial_dev_loss"]
    for name in ("checkpoint.pt", "metrics.csv", "loss.png", "teacher/teacher.json", "teacher/teacher.pt"):
        assert (out / name).is_file(), name

    # the saved model is a teacher: spec phasenet:<folder>, keyed by a hash of its weights
    (member,) = teachers.parse_teacher_spec(f"phasenet:{out}")
    assert member.local and "/" not in member.key
    teacher = teachers.Teacher(member)
    assert teacher.weights_version == teachers.local_weights_version(member) and teacher.weights_version.startswith("sha256:")
    (dist,) = teacher.predict_traces([np.random.default_rng(0).normal(size=(3, 4000))])
    assert dist.shape == (3, 4000)
    np.testing.assert_allclose(dist.sum(axis=0), 1.0, atol=1e-5)

    # resume continues after the checkpoint's epoch; a corrupt checkpoint is one error, nothing overwritten
    state = teacher_finetune.run(finetune_config(labelled, out, epochs=2, resume=True))
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    checkpoint = out / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    saved = (out / "teacher" / "teacher.pt").read_bytes()
    with pytest.raises(EdgepickError, match="corrupt"):
        teacher_finetune.run(finetune_config(labelled, out, epochs=3, resume=True))
    assert (out / "teacher" / "teacher.pt").read_bytes() == saved


@pytest.mark.slow
def test_eqtransformer_fine_tunes_with_its_own_loss_and_is_a_teacher(labelled, tmp_path, untrained):
    """EQTransformer: 6000-sample windows, detection + P + S sigmoids, weighted binary cross-entropy."""
    out = tmp_path / "eqt"
    config = finetune_config(labelled, out, windows_per_epoch=8, batch_size=4, learning_rate=1e-3)
    config.teacher.name = "eqtransformer:fake"
    state = teacher_finetune.run(config)
    (epoch,) = state["history"]
    assert np.isfinite(epoch["train_loss"]) and np.isfinite(state["initial_dev_loss"])
    for name in ("checkpoint.pt", "metrics.csv", "loss.png", "teacher/teacher.json", "teacher/teacher.pt"):
        assert (out / name).is_file(), name
    (member,) = teachers.parse_teacher_spec(f"eqtransformer:{out}")
    teacher = teachers.Teacher(member)
    assert teacher.in_samples == 6000 and teacher.labels == ["Detection", "P", "S"]
    (dist,) = teacher.predict_traces([np.random.default_rng(0).normal(size=(3, 7000))])
    assert dist.shape == (3, 7000)
    np.testing.assert_allclose(dist.sum(axis=0), 1.0, atol=1e-5)


def test_eqtransformer_loss_weights_detection_p_and_s():
    labels = torch.zeros(1, 3, 10)
    labels[0, 0, 2], labels[0, 1, 6], labels[0, 2] = 1.0, 1.0, 1.0
    detections = torch.zeros(1, 1, 10)
    detections[0, 0, 2:8] = 1.0
    perfect = (detections[:, 0], labels[:, 0], labels[:, 1])
    assert teacher_finetune.eqtransformer_loss(perfect, labels, detections) < 1e-5
    wrong_s = (detections[:, 0], labels[:, 0], 1 - labels[:, 1])
    wrong_p = (detections[:, 0], 1 - labels[:, 0], labels[:, 1])
    # S errors weigh 0.55, P errors 0.40
    ratio = teacher_finetune.eqtransformer_loss(wrong_s, labels, detections) / teacher_finetune.eqtransformer_loss(wrong_p, labels, detections)
    assert ratio == pytest.approx(0.55 / 0.40, rel=1e-4)


def test_dataset_without_picks_is_one_clear_error(tmp_path, untrained):
    path = unlabelled_dataset(tmp_path / "unlabelled")
    with pytest.raises(EdgepickError, match="needs analyst picks") as info:
        teacher_finetune.run(finetune_config(path, tmp_path / "out"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_ensemble_and_bad_local_folder_are_refused(tmp_path, untrained):
    with pytest.raises(EdgepickError, match="ensemble"):
        config = finetune_config(tmp_path, tmp_path / "out")
        config.teacher.name = "phasenet:a+phasenet:b"
        teacher_finetune.run(config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgepickError, match="weights name"):
        teachers.parse_teacher_spec(f"phasenet:{tmp_path / 'empty'}")


def test_cli_stage_is_registered():
    from pipeline.cli import STAGES

    assert STAGES["teacher"][:2] == ("teacher", "run")  # pipeline.stages.teacher.run
    assert Config.load(overrides=["teacher.finetune.epochs=3"]).teacher.finetune.epochs == 3


@pytest.mark.shared
def test_real_phasenet_okla_fine_tunes_one_short_epoch(labelled, tmp_path, teacher_cache):
    out = tmp_path / "okla"
    config = Config.load(overrides=[f"teacher.finetune.dataset={labelled}", f"teacher.finetune.out={out}",
                                    "teacher.finetune.epochs=1", "teacher.finetune.windows_per_epoch=32",
                                    "teacher.finetune.batch_size=16", "teacher.finetune.workers=0"])
    assert config.teacher.name == "phasenet:okla"
    state = teacher_finetune.run(config)
    assert np.isfinite(state["history"][0]["dev_loss"]) and np.isfinite(state["initial_dev_loss"])
    assert teachers.Teacher(f"phasenet:{out}").component_order == "ENZ"


def test_real_eqtransformer_elep_fine_tunes_one_short_epoch(labelled, tmp_path, teacher_cache):
    out = tmp_path / "elep"
    config = Config.load(overrides=[f"teacher.finetune.dataset={labelled}", f"teacher.finetune.out={out}",
                                    "teacher.name=eqtransformer:elep", "teacher.finetune.epochs=1",
                                    "teacher.finetune.windows_per_epoch=8", "teacher.finetune.batch_size=4",
                                    "teacher.finetune.workers=0"])
    state = teacher_finetune.run(config)
    assert np.isfinite(state["history"][0]["dev_loss"]) and np.isfinite(state["initial_dev_loss"])
    assert teachers.Teacher(f"eqtransformer:{out}").labels == ["Detection", "P", "S"]
