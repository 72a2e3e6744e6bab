"""The distillation loss (``make distill``): ``alpha T^2 KL(teacher_T || student_T) + (1 - alpha) CE(labels)``, its
phase weighting and the peak-shape term (``distill.*`` in pipeline/config.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.errors import EdgepickError

PHASE_WEIGHT_SOURCES = ("teacher", "both")


def check_phase_weight_source(source: str) -> None:
    if source not in PHASE_WEIGHT_SOURCES:
        raise EdgepickError(f"distill.phase_weight_source must be one of {', '.join(PHASE_WEIGHT_SOURCES)}, got "
                            f"{source!r}")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor | None,
    hard_labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
    phase_weight: float = 0.0,
    phase_weight_source: str = "teacher",
    peak_shape: float = 0.0,
    peak_shape_power: float = 1.0,
    s_quiet_weight: float = 0.0,
    s_quiet_below: float = 0.05,
) -> torch.Tensor:
    """Mean over batch and samples of alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(hard, student).

    Tensors are (batch, classes, samples); classes are (P, S, noise). With ``phase_weight`` w > 0 the KL term is
    a weighted mean, sample weights 1 + w * (the teacher's P + S probability): phase samples are ~1 % of a window,
    so an even mean spends the loss on noise and little on where and how high the peaks are.
    ``phase_weight_source`` "both": the larger of the teacher's and the student's own P + S probability (the
    student's without gradient), so a student peak where the teacher has none (a false pick, a peak that stays up
    after the teacher's has fallen) weighs as much as a teacher peak it misses.
    ``peak_shape`` > 0 adds that much of :func:`peak_shape_loss` (times alpha): where the peak lies and how wide;
    ``peak_shape_power`` is its target's sharpening.
    ``s_quiet_weight`` > 0 adds that much of :func:`s_quiet_loss` (times alpha): the student's S probability where
    the teacher's is below ``s_quiet_below`` (noise, P codas, late codas), pushed down whatever the rest of the KL.
    """
    check_phase_weight_source(phase_weight_source)
    loss = student_logits.new_zeros(())
    if alpha > 0:
        teacher_log = torch.log(teacher_probs.float().clamp_min(1e-8))
        teacher_log_soft = F.log_softmax(teacher_log / temperature, dim=1)
        student_log_soft = F.log_softmax(student_logits / temperature, dim=1)
        kl_per_sample = F.kl_div(student_log_soft, teacher_log_soft, reduction="none", log_target=True).sum(dim=1)
        if phase_weight > 0:
            phase = teacher_probs.float()[:, :2].sum(dim=1)
            if phase_weight_source == "both":
                phase = torch.maximum(phase, torch.softmax(student_logits.detach().float(), dim=1)[:, :2].sum(dim=1))
            weights = 1 + phase_weight * phase.clamp(0, 1)
            kl = (weights * kl_per_sample).sum() / weights.sum()
        else:
            kl = kl_per_sample.mean()
        loss = loss + alpha * temperature**2 * kl
        if peak_shape > 0:
            loss = loss + alpha * peak_shape * peak_shape_loss(student_logits, teacher_probs, power=peak_shape_power)
        if s_quiet_weight > 0:
            loss = loss + alpha * s_quiet_weight * s_quiet_loss(student_logits, teacher_probs, s_quiet_below)
    if alpha < 1:
        cross_entropy = -(hard_labels * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()
        loss = loss + (1 - alpha) * cross_entropy
    return loss


def peak_shape_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, min_peak: float = 0.5,
                    power: float = 1.0) -> torch.Tensor:
    """Where a phase's peak lies and how wide it is, not how high: for each window and phase (P, S) in which the
    teacher's probability reaches ``min_peak``, the KL divergence between the teacher's and the student's curves,
    each normalised over the window's samples to sum to 1 (a softmax over time of the student's log-probability);
    the mean over those (window, phase) pairs, 0 where there is none. A student peak that stays up after the
    teacher's has fallen moves mass away from the teacher's samples, and costs here whatever its height.
    ``power`` > 1 raises the teacher's curve to it before normalising: a narrower target around its maximum."""
    teacher = teacher_probs.float()[:, :2]
    peaks = teacher.amax(dim=-1) >= min_peak
    if not bool(peaks.any()):
        return student_logits.new_zeros(())
    if power != 1.0:
        teacher = teacher.clamp_min(0) ** power
    target = teacher / teacher.sum(dim=-1, keepdim=True).clamp_min(1e-8)
    student_log = F.log_softmax(student_logits.float(), dim=1)[:, :2]
    student_shape = student_log - torch.logsumexp(student_log, dim=-1, keepdim=True)
    kl = (target * (torch.log(target.clamp_min(1e-12)) - student_shape)).sum(dim=-1)
    return kl[peaks].mean()


def s_quiet_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, below: float = 0.05) -> torch.Tensor:
    """The mean of -log(1 - the student's S probability) over the samples where the teacher's S probability is
    below ``below`` (0 where there is none): a false S in noise or coda costs as a missed "not S" would, however
    little of the window it covers (the KL's mean over a window weighs a 1 s false peak as 3 % of the window)."""
    quiet = teacher_probs.float()[:, 1] < below
    if not bool(quiet.any()):
        return student_logits.new_zeros(())
    log_not_s = torch.log1p(-torch.softmax(student_logits.float(), dim=1)[:, 1].clamp(max=1 - 1e-6))
    return -log_not_s[quiet].mean()


def shift_consistency_loss(scores: torch.Tensor, shifted: torch.Tensor, phase_weight: float = 0.0) -> torch.Tensor:
    """How much a causal student's P and S probabilities change when only its block grid moves: ``scores`` and
    ``shifted`` (batch, classes, n) its logits over the same samples from two windows whose starts differ by less
    than a block. The mean squared difference of the two P and S probabilities, each sample weighted as the KL is
    (1 + ``phase_weight`` x the larger P + S of the two, without gradient), so that the samples near a phase count.
    Both sides have gradients: neither grid is the right one (Zhang 2019's consistency under shifts, as a loss)."""
    a = torch.softmax(scores.float(), dim=1)[:, :2]
    b = torch.softmax(shifted.float(), dim=1)[:, :2]
    weights = 1 + phase_weight * torch.maximum(a.sum(1), b.sum(1)).detach().clamp(0, 1)
    return (weights * ((a - b) ** 2).sum(1)).sum() / weights.sum()
