"""Feature distillation (FitNets, Romero et al. 2015): the student also matches the teacher's highest-resolution
decoder features, through a 1x1 adapter (issue 28).

The output curves carry only part of what sets a pick's time; PhaseNet's last decoder layer (the input of its 1x1
``out`` convolution: ``last_filters`` channels at the window's full resolution) holds the rest. With
``distill.feature_weight`` w > 0 the loss gains w x :func:`hint_loss`: the mean squared difference between the
adapted student features (the input of the student's head, through a learned 1x1 convolution onto the teacher's
channels) and the teacher's, relative to the teacher's mean square (scale-free). The adapter lives only in training:
the saved student is the plain network.

The teacher's features are computed on the batch's own windows (its SeisBench ``annotate_batch_pre`` normalisation,
scale-free, so the student's per-window peak normalisation before it changes nothing), with the first PhaseNet of
``teacher.name``; the student's window must be PhaseNet's (same samples, same rate).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.errors import EdgepickError
from pipeline.model import teachers


class TeacherFeatures:
    """The input of a SeisBench PhaseNet's ``out`` convolution for a batch of windows (batch, 3, samples):
    (batch, last_filters, samples), without gradient."""

    def __init__(self, spec: str, in_samples: int, device: torch.device | str = "cpu"):
        members = [m for m in teachers.parse_teacher_spec(spec) if m.model.lower() == "phasenet"]
        if not members:
            raise EdgepickError(f"distill.feature_weight needs a PhaseNet in teacher.name (its last decoder layer is "
                                f"the hint), got {spec!r}")
        self.model = teachers.load_model(members[0]).to(device).eval()
        if int(self.model.in_samples) != int(in_samples):
            raise EdgepickError(f"distill.feature_weight: the student's window ({in_samples} samples) must be the "
                                f"teacher's ({self.model.in_samples}) for its features to line up")
        self.channels = int(self.model.out.in_channels)
        self._seen: list[torch.Tensor] = []
        self.model.out.register_forward_pre_hook(lambda module, args: self._seen.append(args[0]))

    @torch.no_grad()
    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        self._seen.clear()
        self.model(self.model.annotate_batch_pre(windows.float(), {}))
        return self._seen.pop()

    def __str__(self) -> str:
        return f"TeacherFeatures(PhaseNet out input, {self.channels} channels)"


class StudentHint(nn.Module):
    """A 1x1 adapter from the student's head input (its full-resolution decoder features) onto ``channels``
    teacher channels; :meth:`capture` hooks the student so that each forward leaves its features here."""

    def __init__(self, student_channels: int, channels: int):
        super().__init__()
        self.adapter = nn.Conv1d(student_channels, channels, 1)
        self.features: torch.Tensor | None = None

    def capture(self, student) -> None:
        student.head.register_forward_pre_hook(lambda module, args: setattr(self, "features", args[0]))

    def forward(self, samples: int, left: int = 0) -> torch.Tensor:
        """The adapted features of the last forward, cropped to the window's ``samples`` from ``left``."""
        if self.features is None:
            raise EdgepickError("StudentHint: no student forward has been captured")
        features = self.features.squeeze(2) if self.features.dim() == 4 else self.features
        return self.adapter(features[..., left : left + samples])


def hint_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over batch, channels and samples, divided by the teacher features' mean square."""
    if student_features.shape != teacher_features.shape:
        raise EdgepickError(f"feature hint: student features {tuple(student_features.shape)} against the teacher's "
                            f"{tuple(teacher_features.shape)}")
    scale = teacher_features.pow(2).mean().clamp_min(1e-8)
    return (student_features - teacher_features).pow(2).mean() / scale
