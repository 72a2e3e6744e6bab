"""The distillation loss and training loop: checkpoints, resume, bad input, and a two-process DDP run."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.distill import loop as distillation, losses
from pipeline.stages import distill
from pipeline.errors import EdgepickError

from helpers import tiny_config, unlabelled_dataset


def test_loss_is_zero_when_student_matches_teacher_and_scales_with_t_squared():
    logits = torch.randn(2, 3, 50)
    teacher = torch.softmax(logits, dim=1)
    assert losses.distillation_loss(logits, teacher, None, 4.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.softmax(torch.randn(2, 3, 50), dim=1)
    for t in (1.0, 2.0, 4.0):
        teacher_t = torch.softmax(torch.log(other) / t, dim=1)
        kl = (teacher_t * (torch.log(teacher_t) - F.log_softmax(logits / t, dim=1))).sum(1).mean()
        assert losses.distillation_loss(logits, other, None, t, 1.0).item() == pytest.approx(t * t * kl.item(), rel=1e-5)


def test_alpha_mixes_soft_and_hard_terms():
    logits = torch.randn(2, 3, 40)
    teacher = torch.softmax(torch.randn(2, 3, 40), dim=1)
    hard = torch.softmax(5 * torch.randn(2, 3, 40), dim=1)
    soft_only = losses.distillation_loss(logits, teacher, hard, 2.0, 1.0)
    hard_only = losses.distillation_loss(logits, teacher, hard, 2.0, 0.0)
    ce = -(hard * F.log_softmax(logits, 1)).sum(1).mean()
    assert hard_only.item() == pytest.approx(ce.item(), rel=1e-6)
    mixed = losses.distillation_loss(logits, teacher, hard, 2.0, 0.3)
    assert mixed.item() == pytest.approx(0.3 * soft_only.item() + 0.7 * hard_only.item(), rel=1e-5)


def test_phase_weight_weights_the_kl_by_the_teachers_phase_probability():
    logits = torch.randn(2, 3, 60)
    teacher = torch.softmax(3 * torch.randn(2, 3, 60), dim=1)
    t = 2.0
    teacher_t = torch.softmax(torch.log(teacher) / t, dim=1)
    kl = (teacher_t * (torch.log(teacher_t) - F.log_softmax(logits / t, dim=1))).sum(1)
    weights = 1 + 5.0 * teacher[:, :2].sum(1)
    want = t * t * (weights * kl).sum() / weights.sum()
    assert losses.distillation_loss(logits, teacher, None, t, 1.0, 5.0).item() == pytest.approx(want.item(), rel=1e-5)
    # an even mean without it, and the weighted loss differs from it
    even = losses.distillation_loss(logits, teacher, None, t, 1.0, 0.0).item()
    assert even == pytest.approx(t * t * kl.mean().item(), rel=1e-5)
    assert abs(even - want.item()) > 1e-4


def test_phase_weight_from_both_weights_the_students_own_peaks_too():
    """"both": weights from the larger of the teacher's and the student's P + S probability, without a gradient
    through the weights; a student peak where the teacher has none costs more than with the teacher's weights."""
    t = 1.0
    teacher = torch.zeros(1, 3, 40)
    teacher[:, 2] = 1.0
    teacher[0, 0, 10] = 0.9  # the teacher's one P peak
    teacher[0, 2, 10] = 0.1
    logits = torch.zeros(1, 3, 40)
    logits[0, 2] = 4.0  # the student: noise ...
    logits[0, 0, 30] = 8.0  # ... and a P peak of its own at sample 30
    logits.requires_grad_(True)
    student = torch.softmax(logits.detach(), dim=1)
    kl = (teacher.clamp_min(1e-8) * (torch.log(teacher.clamp_min(1e-8)) - F.log_softmax(logits.detach(), dim=1))).sum(1)
    weights = 1 + 5.0 * torch.maximum(teacher[:, :2].sum(1), student[:, :2].sum(1))
    want = (weights * kl).sum() / weights.sum()
    both = losses.distillation_loss(logits, teacher, None, t, 1.0, 5.0, "both")
    assert both.item() == pytest.approx(want.item(), rel=1e-5)
    assert both.item() > losses.distillation_loss(logits, teacher, None, t, 1.0, 5.0, "teacher").item()
    both.backward()  # the weights carry no gradient: d(loss)/d(logits) is the weighted KL's alone
    reference = logits.detach().clone().requires_grad_(True)
    kl_ref = (teacher.clamp_min(1e-8) * (torch.log(teacher.clamp_min(1e-8)) - F.log_softmax(reference, dim=1))).sum(1)
    ((weights * kl_ref).sum() / weights.sum()).backward()
    assert torch.allclose(logits.grad, reference.grad, atol=1e-6)
    with pytest.raises(EdgepickError, match="phase_weight_source"):
        losses.distillation_loss(logits, teacher, None, t, 1.0, 5.0, "student")


@pytest.mark.slow
def test_training_writes_student_checkpoint_metrics_and_plot(labelled, tmp_path):
    out = tmp_path / "student"
    state = distill.run(tiny_config(labelled, out))
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    for name in ("checkpoint.pt", "metrics.csv", "loss.png", "student/student.json", "student/student.pt"):
        assert (out / name).is_file(), name
    from pipeline.model.student import load_student

    student = load_student(out / "student")
    x = torch.randn(1, 3, 1001)
    assert student(x).shape == (1, 3, 1001)


@pytest.mark.slow
def test_training_is_deterministic_on_cpu(labelled, tmp_path):
    a = distill.run(tiny_config(labelled, tmp_path / "a", epochs=1))
    b = distill.run(tiny_config(labelled, tmp_path / "b", epochs=1))
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]


@pytest.mark.slow
def test_resume_continues_and_corrupt_checkpoint_is_refused(labelled, tmp_path):
    out = tmp_path / "run"
    distill.run(tiny_config(labelled, out, epochs=1))
    state = distill.run(tiny_config(labelled, out, epochs=2, resume=True))
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    checkpoint = out / "checkpoint.pt"
    saved = (out / "edgepick_config.yaml").read_text()
    with pytest.raises(EdgepickError, match="has run 2 epochs, the run is set to 2: nothing to train"):
        distill.run(tiny_config(labelled, out, epochs=2, resume=True, seed=3))  # a no-op said, settings kept
    assert (out / "edgepick_config.yaml").read_text() == saved
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgepickError, match="corrupt"):
        distill.run(tiny_config(labelled, out, epochs=3, resume=True))
    assert checkpoint.read_bytes() == data[: len(data) // 2]  # nothing overwritten


@pytest.mark.slow
def test_diverging_loss_stops_and_keeps_last_good_checkpoint(labelled, tmp_path):
    out = tmp_path / "run"
    distill.run(tiny_config(labelled, out, epochs=1))
    good = (out / "checkpoint.pt").read_bytes()
    student = (out / "student" / "student.pt").read_bytes()
    # a new run into the same folder whose weights blow up in its first epoch
    with pytest.raises(EdgepickError, match="non-finite loss"):
        distill.run(tiny_config(labelled, out, epochs=3, learning_rate=1e30, grad_clip=1e30))
    assert (out / "checkpoint.pt").read_bytes() == good
    assert (out / "student" / "student.pt").read_bytes() == student


def test_hard_labels_needed_but_absent_is_an_error(tmp_path):
    path = unlabelled_dataset(tmp_path / "unlabelled")
    with pytest.raises(EdgepickError, match="needs analyst picks"):
        distill.run(tiny_config(path, tmp_path / "out", alpha=0.5))


@pytest.mark.slow
def test_two_process_ddp_run_on_cpu(labelled, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pipeline",
        "distill", "--set", f"distill.dataset={labelled}", "--set", f"distill.out={out}", "--set", "distill.alpha=0",
        "--set", "distill.epochs=1", "--set", "distill.windows_per_epoch=64", "--set", "distill.batch_size=16",
        "--set", "distill.workers=0", "--set", "student.base_channels=2", "--set", "student.in_samples=1001",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "student" / "student.pt").is_file()
    assert "world 2" in result.stdout


def test_distillation_from_the_real_teacher_uses_the_soft_label_cache(labelled, tmp_path, teacher_cache):
    config = tiny_config(labelled, tmp_path / "kd", alpha=0.5, epochs=1)
    state = distill.run(config)
    assert np.isfinite(state["history"][0]["train_loss"])
    assert list((labelled / "soft_labels").glob("*.hdf5")), "the teacher's soft labels were cached beside the dataset"
    # a second run reuses the cache instead of running the teacher again
    before = {p: p.stat().st_mtime_ns for p in (labelled / "soft_labels").glob("*.hdf5")}
    distill.run(tiny_config(labelled, tmp_path / "kd2", alpha=1.0, epochs=1))
    assert {p: p.stat().st_mtime_ns for p in (labelled / "soft_labels").glob("*.hdf5")} == before


def test_live_windows_take_the_teachers_picks_where_a_folder_has_no_analyst_picks(labelled, tmp_path, teacher_cache):
    """distill.live_windows on a mixture: the unlabelled folder's windows are placed by the teacher's picks (read
    from its soft-label cache: P and S where PhaseNet sees them), the labelled folder's by its analyst picks."""
    unlabelled = unlabelled_dataset(tmp_path / "unlabelled")
    config = tiny_config(f"{unlabelled},{labelled}", tmp_path / "kd", alpha=1.0, epochs=1, live_windows=0.3)
    train, _, targets = distillation._datasets(config, master=True)
    placement = {t.path: distillation._teacher_picks(targets, t, config.distill) for t in train}
    assert placement[str(labelled)] is None
    picks = placement[str(unlabelled)]
    names = list(train[0].dataset.metadata["trace_name"])
    assert sorted(picks) == sorted(names)
    # the records are events: the teacher picks most of them, each pick inside its trace
    assert sum(len(v) > 0 for v in picks.values()) >= len(names) // 2
    assert all(((v >= 0) & (v < 6000)).all() for v in picks.values())
    config.distill.live_windows = 0.0
    assert distillation._teacher_picks(targets, train[0], config.distill) is None
    state = distill.run(tiny_config(f"{unlabelled},{labelled}", tmp_path / "kd", alpha=1.0, epochs=1, live_windows=0.3))
    assert np.isfinite(state["history"][0]["train_loss"])


@pytest.mark.slow
def test_sweep_ranks_runs_writes_table_and_pareto_plot_and_resumes(labelled, tmp_path):
    from pipeline.stages import sweep

    config = tiny_config(labelled, tmp_path / "unused", epochs=1)
    config.sweep.temperatures = (2.0,)
    config.sweep.alphas = (0.0,)  # hard labels only: no teacher needed here
    config.sweep.base_channels = (1, 2)
    config.sweep.out = str(tmp_path / "sweep")
    rows = sweep.run(config)
    assert len(rows) == 2
    assert rows[0]["dev_f1"] >= rows[1]["dev_f1"]
    assert rows[0]["macs"] != rows[1]["macs"]
    for row in rows:  # ranked on the dev split, at both tolerances, each phase at its best threshold
        assert row["dev"].endswith(":dev") and row["against"] == "analyst"
        f1 = [row[f"dev_f1_{phase}_{t}"] for phase in "PS" for t in ("0.1", "0.5")]
        assert row["dev_f1"] == pytest.approx(sum(f1) / 4)
        assert all(f1[k] <= f1[k + 1] for k in (0, 2))  # a looser tolerance never scores lower
        assert row["threshold_P"] in config.calibrate.thresholds and row["threshold_S"] in config.calibrate.thresholds
    for name in ("sweep.csv", "sweep.md", "pareto.png"):
        assert (tmp_path / "sweep" / name).is_file()
    assert "dev F1 S @0.1 s" in (tmp_path / "sweep" / "sweep.md").read_text()
    config.sweep.dataset = f"{labelled}:test"
    with pytest.raises(EdgepickError, match="tune on a dev split"):
        sweep.run(config)
    config.sweep.dataset = ""
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep").glob("*/student/student.pt")}
    assert sweep.run(config) == rows  # finished points are kept, not re-run
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep").glob("*/student/student.pt")} == stamp
    config.sweep.tolerances_s = (0.5,)  # ranked another way: the same students scored again, not distilled again
    again = sweep.run(config)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep").glob("*/student/student.pt")} == stamp
    for row in again:
        assert row["tolerances_s"] == [0.5] and "dev_f1_P_0.1" not in row
        assert row["dev_f1"] == pytest.approx((row["dev_f1_P_0.5"] + row["dev_f1_S_0.5"]) / 2)


def test_pareto_front_keeps_only_undominated_runs():
    from pipeline.stages.sweep import pareto_front

    rows = [{"macs": 1, "dev_f1": 0.5}, {"macs": 2, "dev_f1": 0.4}, {"macs": 3, "dev_f1": 0.7}, {"macs": 4, "dev_f1": 0.7}]
    assert pareto_front(rows) == [rows[0], rows[2]]


@pytest.mark.slow
def test_on_the_fly_teacher_distils_without_a_cache(labelled, tmp_path, monkeypatch):
    """teacher.mode=on-the-fly: the teacher (a seeded random PhaseNet here, offline) runs on every batch, in the
    training loader's workers' context windows, and no soft-label cache is written."""
    import seisbench.models as sbm

    from pipeline.model import teachers

    def fake(member):
        torch.manual_seed(0)
        model = sbm.PhaseNet(phases="PSN", norm="peak", component_order="ENZ", sampling_rate=100)
        model._weights_version = "1"
        return model.eval()

    monkeypatch.setattr(teachers, "load_model", fake)
    config = tiny_config(labelled, tmp_path / "fly", alpha=0.5, epochs=1, windows_per_epoch=32, workers=1)
    config.teacher.name = "phasenet:fake"
    config.teacher.mode = "on-the-fly"
    state = distill.run(config)
    assert np.isfinite(state["history"][0]["train_loss"]) and np.isfinite(state["history"][0]["dev_loss"])
    assert (tmp_path / "fly" / "student" / "student.pt").is_file()
    assert not list(labelled.glob("soft_labels/phasenet-fake*")), "on the fly, nothing is cached"
    config.teacher.mode = "sometimes"
    with pytest.raises(EdgepickError, match="teacher.mode"):
        distill.run(config)


def test_bad_worker_count_fails_before_anything_is_written(labelled, tmp_path):
    out = tmp_path / "run"
    before = sorted((labelled / "soft_labels").glob("*")) if (labelled / "soft_labels").exists() else []
    with pytest.raises(EdgepickError, match="workers=-3"):
        distill.run(tiny_config(labelled, out, workers=-3, alpha=1.0))
    assert not out.exists()
    after = sorted((labelled / "soft_labels").glob("*")) if (labelled / "soft_labels").exists() else []
    assert after == before  # no soft labels built either


def p_only_probs(p_curve: torch.Tensor) -> torch.Tensor:
    """(1, 3, samples) probabilities: ``p_curve`` as P, no S, the rest noise."""
    out = torch.zeros(1, 3, len(p_curve))
    out[0, 0] = p_curve
    out[0, 2] = 1 - p_curve
    return out


def test_peak_shape_loss_sees_where_and_how_wide_a_peak_is_not_how_high():
    """0 for a student curve of the teacher's shape at any height; more for one that stays up after the teacher's
    has fallen, and more for one further away; windows and phases without a teacher peak do not count."""
    n = 200
    t = torch.arange(n, dtype=torch.float32)
    probs = p_only_probs

    teacher = probs(0.9 * torch.exp(-0.5 * ((t - 100) / 10) ** 2))

    def logits(p_curve):
        return torch.log(probs(p_curve).clamp_min(1e-6))

    same_shape_lower = losses.peak_shape_loss(logits(0.4 * torch.exp(-0.5 * ((t - 100) / 10) ** 2)), teacher)
    stays_up = losses.peak_shape_loss(logits(torch.where(t < 100, 0.9 * torch.exp(-0.5 * ((t - 100) / 10) ** 2),
                                                          torch.where(t < 130, 0.9, 0.9 * torch.exp(-0.5 * ((t - 130) / 10) ** 2)))), teacher)
    shifted = losses.peak_shape_loss(logits(0.9 * torch.exp(-0.5 * ((t - 130) / 10) ** 2)), teacher)
    assert same_shape_lower.item() == pytest.approx(0.0, abs=1e-3)
    assert 0.1 < stays_up.item() < shifted.item()
    no_peak = probs(torch.full((n,), 0.1))  # the teacher reaches 0.1 only: nothing to match
    assert losses.peak_shape_loss(logits(0.9 * torch.exp(-0.5 * ((t - 130) / 10) ** 2)), no_peak).item() == 0.0
    # in the distillation loss: alpha x peak_shape x the term on top of the KL
    lg = logits(0.9 * torch.exp(-0.5 * ((t - 130) / 10) ** 2))
    plain = losses.distillation_loss(lg, teacher, None, 1.0, 1.0)
    with_shape = losses.distillation_loss(lg, teacher, None, 1.0, 1.0, peak_shape=0.5)
    assert with_shape.item() == pytest.approx(plain.item() + 0.5 * shifted.item(), rel=1e-4)


def test_peak_shape_power_narrows_the_target():
    """With power 2 the target is the teacher's curve squared (narrower): a student of the teacher's own width now
    costs, one of the squared curve's width costs nothing; a power below 1 is refused before anything is written."""
    n = 200
    t = torch.arange(n, dtype=torch.float32)
    probs = p_only_probs

    teacher = probs(0.9 * torch.exp(-0.5 * ((t - 100) / 10) ** 2))
    own_width = torch.log(probs(0.5 * torch.exp(-0.5 * ((t - 100) / 10) ** 2)).clamp_min(1e-6))
    narrower = torch.log(probs(0.5 * torch.exp(-0.5 * ((t - 100) / (10 / 2 ** 0.5)) ** 2)).clamp_min(1e-6))
    assert losses.peak_shape_loss(own_width, teacher).item() == pytest.approx(0.0, abs=1e-3)
    assert losses.peak_shape_loss(own_width, teacher, power=2.0).item() > 0.05
    assert losses.peak_shape_loss(narrower, teacher, power=2.0).item() == pytest.approx(0.0, abs=1e-3)


def test_bad_peak_shape_power_fails_before_anything_is_written(labelled, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(EdgepickError, match="peak_shape_power >= 1"):
        distill.run(tiny_config(labelled, out, peak_shape=0.1, peak_shape_power=0.5))
    assert not out.exists()


def test_bad_phase_weight_source_fails_before_anything_is_written(labelled, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(EdgepickError, match="phase_weight_source must be one of teacher, both, got 'student'"):
        distill.run(tiny_config(labelled, out, phase_weight=5.0, phase_weight_source="student"))
    assert not out.exists()


# issue 17: a diverged epoch is never saved; a resume applies or refuses changed settings; a corrupt file is one line

@pytest.mark.slow
def test_diverged_epoch_is_saved_neither_as_best_student_nor_as_checkpoint(labelled, tmp_path):
    """learning_rate=1e6: epoch 1's losses stay finite (1e9 train, 1e13 dev) but every BatchNorm running_var is inf."""
    out = tmp_path / "run"
    with pytest.raises(EdgepickError, match="non-finite") as info:
        distill.run(tiny_config(labelled, out, epochs=2, learning_rate=1e6))
    assert "running_var" in str(info.value) and "no checkpoint was saved" in str(info.value)
    assert not (out / "checkpoint.pt").exists() and not (out / "student").exists()


@pytest.mark.slow
def test_divergence_on_resume_keeps_the_finite_checkpoint_and_student(labelled, tmp_path):
    out = tmp_path / "run"
    distill.run(tiny_config(labelled, out, epochs=1))
    good, student = (out / "checkpoint.pt").read_bytes(), (out / "student" / "student.pt").read_bytes()
    with pytest.raises(EdgepickError, match="non-finite.*the last good checkpoint in .* is kept"):
        distill.run(tiny_config(labelled, out, epochs=2, learning_rate=1e6, resume=True))
    assert (out / "checkpoint.pt").read_bytes() == good
    assert (out / "student" / "student.pt").read_bytes() == student
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_non_finite_buffers_are_never_written_nor_resumed_from(labelled, tmp_path):
    from pipeline.distill import training
    from pipeline.model.student import build_student

    config = tiny_config(labelled, tmp_path / "run", epochs=1)
    model = build_student(config.student)
    model.enc1.bn.running_var.fill_(float("inf"))  # a buffer, not a parameter
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(EdgepickError, match="non-finite values in enc1.bn.running_var"):
        training.save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, schedule, {"epoch": 1}, config)
    with pytest.raises(EdgepickError, match="non-finite"):
        training.save_model(model, tmp_path, "student")
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "student").exists()
    # a checkpoint with inf in it (as saved before this was refused) is not resumed from
    (tmp_path / "run").mkdir()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "state": {"epoch": 1}, "config": config.to_dict(), "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state()}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(EdgepickError, match="holds non-finite weights"):
        distill.run(tiny_config(labelled, tmp_path / "run", epochs=2, resume=True))


@pytest.mark.slow
def test_resume_applies_a_new_learning_rate_and_epochs_and_says_so(labelled, tmp_path, capsys):
    from pipeline.distill.training import warmup_cosine

    out = tmp_path / "run"
    distill.run(tiny_config(labelled, out, epochs=1, learning_rate=1e-3))
    capsys.readouterr()
    state = distill.run(tiny_config(labelled, out, epochs=2, learning_rate=1e-4, resume=True))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resume:")]
    assert len(lines) == 1, lines
    assert "distill.learning_rate 0.001 -> 0.0001" in lines[0] and "distill.epochs 1 -> 2" in lines[0]
    steps = 64 // 16 * 2
    assert state["history"][-1]["lr"] == pytest.approx(1e-4 * warmup_cosine(steps, steps))  # not 1e-3 x ...
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(1e-4)
    assert checkpoint["schedule"]["base_lrs"] == pytest.approx([1e-4])


@pytest.mark.slow
def test_resume_refuses_another_student_dataset_or_teacher_naming_them(labelled, tmp_path):
    out = tmp_path / "run"
    distill.run(tiny_config(labelled, out, epochs=1))
    saved = (out / "checkpoint.pt").read_bytes()
    other_student = tiny_config(labelled, out, epochs=2, resume=True)
    other_student.student.base_channels = 3
    with pytest.raises(EdgepickError, match="student.base_channels 2 -> 3"):
        distill.run(other_student)
    with pytest.raises(EdgepickError, match="distill.dataset"):
        distill.run(tiny_config(tmp_path / "other", out, epochs=2, resume=True))
    other_teacher = tiny_config(labelled, out, epochs=2, resume=True, alpha=0.5)
    other_teacher.teacher.name = "eqtransformer:original"
    with pytest.raises(EdgepickError, match="teacher.name") as info:
        distill.run(other_teacher)
    assert "distill.alpha 0.0 -> 0.5" in str(info.value) and "\n" not in str(info.value)
    assert (out / "checkpoint.pt").read_bytes() == saved


@pytest.mark.parametrize("content", [
    np.random.default_rng(0).bytes(4096),  # torch: UnpicklingError
    b"\x80\x02\x8e" + (2**62).to_bytes(8, "little") + bytes(64),  # a pickle claiming 4 EiB: MemoryError with no text
], ids=["random", "huge-length"])
def test_checkpoint_of_random_bytes_is_one_clear_line(labelled, tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    checkpoint = out / "checkpoint.pt"
    checkpoint.write_bytes(content)
    with pytest.raises(EdgepickError, match="not a valid torch checkpoint") as info:
        distill.run(tiny_config(labelled, out, epochs=1, resume=True))
    message = str(info.value)
    assert str(checkpoint) in message and "delete it" in message and "without --resume" in message
    assert "MemoryError" not in message and "Unpickling" not in message and "\n" not in message  # not torch's text
    assert checkpoint.read_bytes() == content


def test_saved_student_of_random_bytes_is_one_clear_line(labelled, tmp_path):
    from pipeline.distill import training
    from pipeline.model.student import build_student

    config = tiny_config(labelled, tmp_path / "run", epochs=1)
    training.save_model(build_student(config.student), tmp_path / "saved", "student")
    weights = tmp_path / "saved" / "student" / "student.pt"
    weights.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(EdgepickError, match="not a valid student checkpoint") as info:
        distill.run(tiny_config(labelled, tmp_path / "run", epochs=1, init_from=str(tmp_path / "saved")))
    message = str(info.value)
    assert str(weights) in message and "delete it" in message
    assert "MemoryError" not in message and "Unpickling" not in message and "\n" not in message


def s_curve_probs(s_curve):
    """(1, 3, n) probabilities with the S curve given, P zero and noise the rest."""
    out = torch.zeros(1, 3, s_curve.numel())
    out[0, 1] = s_curve
    out[0, 2] = 1 - s_curve
    return out


def test_s_quiet_loss_counts_the_students_s_only_where_the_teachers_is_quiet():
    """A false S peak where the teacher's S is near zero costs; an S peak where the teacher has one does not; the
    term enters the distillation loss as alpha x s_quiet_weight x it, and its gradient lowers the false peak."""
    n = 300
    t = torch.arange(n, dtype=torch.float32)
    bump = lambda centre, height: height * torch.exp(-0.5 * ((t - centre) / 10) ** 2)  # noqa: E731
    teacher = s_curve_probs(bump(200, 0.9))
    logits = lambda probs: torch.log(probs.clamp_min(1e-6))  # noqa: E731
    matching = losses.s_quiet_loss(logits(s_curve_probs(bump(200, 0.9))), teacher)
    false_peak = losses.s_quiet_loss(logits(s_curve_probs(bump(200, 0.9) + bump(60, 0.6))), teacher)
    higher = losses.s_quiet_loss(logits(s_curve_probs(bump(200, 0.9) + bump(60, 0.9))), teacher)
    assert matching.item() < 0.05 * false_peak.item() and false_peak.item() < higher.item()  # tails of the true S: little
    assert losses.s_quiet_loss(logits(s_curve_probs(bump(60, 0.6))), s_curve_probs(torch.full((n,), 0.5))).item() == 0.0
    student = logits(s_curve_probs(bump(200, 0.9) + bump(60, 0.6))).requires_grad_(True)
    plain = losses.distillation_loss(student, teacher, None, 1.0, 1.0)
    weighted = losses.distillation_loss(student, teacher, None, 1.0, 1.0, s_quiet_weight=2.0, s_quiet_below=0.05)
    assert weighted.item() - plain.item() == pytest.approx(2.0 * false_peak.item(), rel=1e-4)
    losses.s_quiet_loss(student, teacher).backward()
    assert student.grad[0, 1, 60] > 0  # descending the gradient lowers the S logit at the false peak


@pytest.mark.parametrize("setting, match", [({"s_quiet_weight": -1.0}, "s_quiet_weight must be >= 0"),
                                            ({"s_quiet_below": 1.0}, "s_quiet_below in"),
                                            ({"oversample_near_field": 0.5}, "oversample_near_field must be >= 1"),
                                            ({"near_field_s": 0.0}, "near_field_s > 0"),
                                            ({"gap_resume": 1.5}, "gap_resume must lie in"),
                                            ({"gap_resume": 0.2, "alpha": 0.0}, "cached targets")])
def test_bad_near_field_settings_fail_before_anything_is_written(labelled, tmp_path, setting, match):
    out = tmp_path / "run"
    with pytest.raises(EdgepickError, match=match):
        distill.run(tiny_config(labelled, out, **setting))
    assert not out.exists()


def test_near_field_traces_are_the_teachers_p_then_s_within_near_field_s(labelled, tmp_path, teacher_cache):
    """TrainingTargets.near_field from the soft-label cache: a trace is near-field where the teacher picks an S at
    most max_sp samples after a P; a longer max_sp never finds fewer; oversample_near_field draws them more often."""
    config = tiny_config(str(labelled), tmp_path / "kd", alpha=1.0, epochs=1, oversample_near_field=4.0)
    train, _, targets = distillation._datasets(config, master=True)
    names = list(train[0].dataset.metadata["trace_name"])
    picks = targets.teacher_picks(train[0].path, names)
    near = targets.near_field(train[0].path, names, max_sp=500)
    wide = targets.near_field(train[0].path, names, max_sp=6000)
    assert near.shape == (len(names),) and (wide >= near).all()
    assert wide.sum() > 0  # the synthetic events have P and S: the teacher picks both in some
    cache = targets.caches[str(train[0].path)]
    from pipeline.model.picking import PickRule

    rule = PickRule(p_threshold=0.3, s_threshold=0.3, top_tolerance=None)
    for name, flag in zip(names, near):
        found = rule.picks(np.asarray(cache.labels_by_name(name), np.float32))
        p = [q["sample"] for q in found if q["phase"] == "P"]
        s = [q["sample"] for q in found if q["phase"] == "S"]
        assert flag == any(0 < b - a <= 500 for a in p for b in s)
        assert sorted(p + s) == sorted(picks[name].tolist())
    state = distill.run(config)  # the sampler's weights with oversample_near_field
    assert np.isfinite(state["history"][0]["train_loss"])


def test_dataset_weights_set_each_folders_share_of_the_windows(labelled, tmp_path):
    """distill.dataset_weights: the mixture's shares instead of the folders' trace counts; a folder weighted 0 gives
    no window; a weight list that does not fit the folders is refused before anything is written."""
    config = tiny_config(f"{labelled},{labelled}", tmp_path / "kd", windows_per_epoch=400, dataset_weights=(0.0, 1.0))
    train, _, _ = distillation._datasets(config, master=True)
    loader = distillation._train_loader(train, 1001, config.distill, 400, 0, seed=0)
    drawn = torch.tensor(list(loader.sampler))
    assert len(drawn) == 400 and (drawn >= len(train[0])).all()  # all from the second folder
    config.distill.dataset_weights = (1.0, 3.0)
    drawn = torch.tensor(list(distillation._train_loader(train, 1001, config.distill, 4000, 0, seed=0).sampler))
    assert 0.2 < float((drawn < len(train[0])).float().mean()) < 0.3
    for weights in [(1.0,), (1.0, -1.0), (0.0, 0.0)]:
        out = tmp_path / f"bad{len(weights)}{weights[-1]}"
        with pytest.raises(EdgepickError, match="dataset_weights must be one weight >= 0 per folder"):
            distill.run(tiny_config(f"{labelled},{labelled}", out, dataset_weights=weights))
        assert not out.exists()


# ---- feature distillation (FitNets: pipeline.distill.features) ------------------------------------------------
def test_teacher_features_are_what_phasenets_output_layer_reads_and_the_hint_trains_the_student(fake_teachers):
    from pipeline.distill import features
    from pipeline.model.student import XiaoNet, window_padding

    teacher = features.TeacherFeatures("phasenet:okla", 3001)
    x = torch.randn(2, 3, 3001) * 50
    seen = teacher(x)
    assert seen.shape == (2, teacher.channels, 3001) and not seen.requires_grad
    with torch.no_grad():
        probs = teacher.model(teacher.model.annotate_batch_pre(x, {}))
    torch.testing.assert_close(torch.softmax(teacher.model.out(seen), dim=1), probs)
    student = XiaoNet(base_channels=2, in_samples=3001, activation="relu")
    hint = features.StudentHint(student.channels[0], teacher.channels)
    hint.capture(student)
    student.logits(x / x.abs().amax(-1, keepdim=True), channels_last=True)  # the training layout (4-D)
    assert window_padding(3001) == (3, 4)  # 3001 runs as 3008
    adapted = hint(3001, 3)
    assert adapted.shape == seen.shape
    loss = features.hint_loss(adapted, seen)
    assert loss.item() > 0 and features.hint_loss(seen * 3, seen * 3).item() == 0.0
    assert features.hint_loss(2 * seen, seen).item() == pytest.approx(features.hint_loss(20 * seen, 10 * seen).item())
    loss.backward()
    assert hint.adapter.weight.grad.abs().sum() > 0 and student.enc1.pw.weight.grad.abs().sum() > 0
    with pytest.raises(EdgepickError, match="feature hint"):
        features.hint_loss(adapted[:, :3], seen)


@pytest.mark.slow
def test_feature_weight_trains_and_resumes_with_its_adapter_and_saves_the_plain_student(labelled, tmp_path,
                                                                                         fake_teachers):
    out = tmp_path / "hint"
    config = tiny_config(labelled, out, epochs=1, feature_weight=1.0)
    config.student.in_samples = 3001
    state = distill.run(config)
    assert np.isfinite(state["history"][0]["train_loss"])
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert set(checkpoint["hint"]) == {"adapter.weight", "adapter.bias"}
    saved = torch.load(out / "student" / "student.pt", weights_only=False)
    assert not any("adapter" in key for key in saved)
    config.distill.epochs, config.distill.resume = 2, True
    assert len(distill.run(config)["history"]) == 2


@pytest.mark.parametrize("settings, match", [({"in_samples": 1001}, "must be the teacher's"),
                                             ({"in_samples": 3008, "causal": True}, "whole-window student"),
                                             ({"feature_weight": -1.0}, "feature_weight must be >= 0")])
def test_bad_feature_hint_settings_fail_before_anything_is_written(labelled, tmp_path, fake_teachers, settings, match):
    out = tmp_path / "run"
    config = tiny_config(labelled, out, feature_weight=settings.pop("feature_weight", 1.0))
    for key, value in settings.items():
        setattr(config.student, key, value)
    with pytest.raises(EdgepickError, match=match):
        distill.run(config)
    assert not out.exists()


def test_shift_consistency_loss_is_zero_for_equal_scores_and_weighs_the_phases():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 50, requires_grad=True)
    assert losses.shift_consistency_loss(scores, scores.detach().clone()).item() == 0.0
    other = scores.detach() + torch.randn(2, 3, 50)
    plain = losses.shift_consistency_loss(scores, other)
    assert plain.item() > 0
    plain.backward()
    assert scores.grad.abs().sum() > 0
    # a difference at a phase sample counts more with phase_weight: only there do the two differ
    quiet = torch.tensor([0.0, 0.0, 10.0]).view(1, 3, 1).repeat(1, 1, 20)  # noise everywhere
    a, b = quiet.clone(), quiet.clone()
    a[0, :, 5], b[0, :, 5] = torch.tensor([10.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 0.0])  # a P peak vs none
    assert losses.shift_consistency_loss(a, b, phase_weight=10).item() > losses.shift_consistency_loss(a, b).item()


@pytest.mark.slow
def test_shift_consistency_trains_a_causal_student(labelled, tmp_path):
    out = tmp_path / "shift"
    config = tiny_config(labelled, out, epochs=1, shift_consistency=1.0)
    config.student.causal, config.student.in_samples, config.student.norm_window = True, 1024, 256
    config.student.output_delay, config.student.sample_norm = 64, True
    state = distill.run(config)
    assert np.isfinite(state["history"][0]["train_loss"])
    assert (out / "student" / "student.pt").is_file()


@pytest.mark.parametrize("settings, match", [({}, "causal student"),
                                             ({"shift_consistency": -1.0}, "shift_consistency must be >= 0")])
def test_bad_shift_consistency_fails_before_anything_is_written(labelled, tmp_path, settings, match):
    out = tmp_path / "run"
    config = tiny_config(labelled, out, shift_consistency=settings.pop("shift_consistency", 1.0))
    with pytest.raises(EdgepickError, match=match):
        distill.run(config)
    assert not out.exists()
