"""Multiply-accumulates of a model's forward pass, counted with forward hooks (the MAC budgets of the student and
its teachers)."""

from __future__ import annotations

import seisbench.models as sbm
import torch
import torch.nn as nn


def count_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """MACs of one forward pass on a zero input of ``shape`` over Conv1d / ConvTranspose1d / Linear, batch 1."""
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        kernel = getattr(module, "effective_kernel", module.kernel_size[0])  # a blurred depthwise: its whole kernel
        total += output[0].numel() * (module.in_channels // module.groups) * kernel

    def convt_hook(module, inputs, output):
        nonlocal total
        total += inputs[0][0].numel() * (module.out_channels // module.groups) * module.kernel_size[0]

    def linear_hook(module, inputs, output):
        nonlocal total
        total += output[0].numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv1d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.ConvTranspose1d):
            handles.append(module.register_forward_hook(convt_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(shape, device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(total)


def phasenet_macs(in_samples: int = 3001) -> int:
    """MACs per window of SeisBench's PhaseNet (untrained weights: the count only depends on the architecture)."""
    return count_macs(sbm.PhaseNet(), (1, 3, in_samples))
