"""The student's layers: depthwise-separable convolutions (TF-SAME padded, or causal for the streaming form), the
k4/s4 transposed-convolution upsampling, the multi-scale block and the decoder block, each also running on the
(B, C, 1, N) channels-last training layout (pipeline.model.student explains the architecture)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import EdgepickError


def same_padding(length: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding (left, right) for one spatial axis: extra padding goes to the right."""
    out = math.ceil(length / stride)
    total = max((out - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


ACTIVATIONS = ("hardswish", "relu6", "relu")


def make_activation(name: str) -> nn.Module:
    """Hardswish (XiaoNet's), ReLU6 or ReLU. TFLite fuses ReLU6 and ReLU into the convolution before them; ReLU6's
    bound quantizes best, but where the phase channels of the decoder reach 6 the output has a flat top."""
    if name == "hardswish":
        return nn.Hardswish()
    if name == "relu6":
        return nn.ReLU6()
    if name == "relu":
        return nn.ReLU()
    raise EdgepickError(f"unknown student activation {name!r}; use {', '.join(ACTIVATIONS)}")


# Training runs the network on (batch, channels, 1, samples) tensors in channels-last memory, i.e. (batch, samples,
# channels) in memory; evaluation and the ONNX export run the plain 1-D layers on (batch, channels, samples). On the
# CPU, oneDNN's kernels for a few channels over 3,000 samples are several times faster channels-last: forward +
# backward at batch 64, depthwise k5 over 8 channels 26 -> 4 ms, the 1x1 convolution 8 -> 16 channels 9 -> 4 ms, the
# k4/s4 transposed convolution 5.5 -> 3.4 ms (BatchNorm is the one op that is slower, 4.7 -> 8 ms). The layers below
# are the 1-D layers plus that 2-D path, with the same parameters: same state_dict, same numbers (tests/test_student.py).
def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, N) -> (B, C, 1, N) stored channels-last, the training layout."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


class PointwiseConv1d(nn.Conv1d):
    """A 1x1 ``nn.Conv1d``."""

    def __init__(self, cin: int, cout: int, bias: bool = True):
        super().__init__(cin, cout, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return super().forward(x)
        return F.conv2d(x, self.weight.unsqueeze(2), self.bias)


class DepthwiseConv1d(nn.Conv1d):
    """A depthwise ``nn.Conv1d`` (groups = channels, no bias)."""

    def __init__(self, channels: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__(channels, channels, kernel, stride, padding=padding, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return super().forward(x)
        return F.conv2d(x, self.weight.unsqueeze(2), None, (1, self.stride[0]), (0, self.padding[0]), groups=self.groups)


class Upsample4(nn.ConvTranspose1d):
    """``nn.ConvTranspose1d(cin, cout, 4, stride=4)`` without bias: x4 upsampling TFLite Micro runs as TRANSPOSE_CONV."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 4, stride=4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return super().forward(x)
        return F.conv_transpose2d(x, self.weight.unsqueeze(2), None, (1, 4))


class BatchNorm(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that also takes the (B, C, 1, N) training layout."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"expected a 2-D, 3-D or 4-D input, got {x.dim()}-D")


def causal_pad(x: torch.Tensor, kernel: int, stride: int = 1) -> torch.Tensor:
    """``x`` with ``kernel - stride`` zeros before it (or that many first samples dropped, where the kernel is
    shorter than the stride): a convolution over it ends each output on the last input sample of its stride, so
    output j of a block of ``stride`` x m inputs needs no sample after the block (pipeline.model.streaming)."""
    pad = kernel - stride
    return F.pad(x, (pad, 0)) if pad > 0 else x[..., -pad:] if pad < 0 else x


# The anti-aliasing low-pass (student.antialias): box-4 * box-2, zero gain at periods 4 and 2 (the output
# smoothing's filter), so a stride-4 stage keeps little that folds onto its output rate
BLUR = (1.0, 2.0, 2.0, 2.0, 1.0)


class BlurredDepthwiseConv1d(DepthwiseConv1d):
    """A depthwise convolution whose kernel is its learned ``kernel`` taps convolved with the fixed low-pass
    :data:`BLUR` (BlurPool, Zhang 2019, "Making convolutional networks shift-invariant again"): ``effective_kernel``
    = kernel + 4 taps, one convolution in the graph (the export folds the product into its weights)."""

    def __init__(self, channels: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__(channels, kernel, stride, padding=padding)
        self.register_buffer("blur", torch.tensor(BLUR).div(sum(BLUR)).view(1, 1, -1), persistent=False)
        self.effective_kernel = kernel + len(BLUR) - 1

    def effective_weight(self) -> torch.Tensor:
        taps = len(BLUR) - 1
        return F.conv1d(F.pad(self.weight, (taps, taps)), self.blur)  # (channels, 1, kernel + taps): full convolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.effective_weight()
        if x.dim() == 3:
            return F.conv1d(x, weight, None, self.stride, self.padding, groups=self.groups)
        return F.conv2d(x, weight.unsqueeze(2), None, (1, self.stride[0]), (0, self.padding[0]), groups=self.groups)


def baked(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each :class:`BlurredDepthwiseConv1d` a plain :class:`DepthwiseConv1d` of its
    effective kernel (the same numbers): what an exporter traces (ONNX needs a convolution's kernel as a constant)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BlurredDepthwiseConv1d):
                plain = DepthwiseConv1d(child.in_channels, child.effective_kernel, child.stride[0], child.padding[0])
                with torch.no_grad():
                    plain.weight.copy_(child.effective_weight())
                plain.effective_kernel = child.effective_kernel
                setattr(parent, name, plain.to(child.weight.device))
    return model


def depthwise(channels: int, kernel: int, stride: int, padding, antialias: bool) -> DepthwiseConv1d:
    """A depthwise convolution, blurred (:class:`BlurredDepthwiseConv1d`) with ``antialias``; its kernel length as
    the input sees it is ``conv.effective_kernel``."""
    if antialias:
        conv = BlurredDepthwiseConv1d(channels, kernel, stride)
        conv.padding = (padding(conv.effective_kernel),)
        return conv
    conv = DepthwiseConv1d(channels, kernel, stride, padding=padding(kernel))
    conv.effective_kernel = kernel
    return conv


class DSConv(nn.Module):
    """Depthwise (k, stride, TF-SAME padding; or causal) -> pointwise -> BatchNorm -> Hardswish (or ReLU6); with
    ``antialias`` the depthwise kernel is blurred (:class:`BlurredDepthwiseConv1d`) and ``kernel`` its effective
    length."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, activation: str = "hardswish",
                 causal: bool = False, antialias: bool = False):
        super().__init__()
        self.stride, self.causal = stride, causal
        self.dw = depthwise(cin, kernel, stride, lambda k: (k - 1) // 2 if stride == 1 and not causal else 0,
                            antialias)
        self.kernel = self.dw.effective_kernel
        self.pw = PointwiseConv1d(cin, cout, bias=False)
        self.bn = BatchNorm(cout)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.causal:
            x = causal_pad(x, self.kernel, self.stride)
        elif self.stride != 1:
            left, right = same_padding(x.shape[-1], self.kernel, self.stride)
            if left or right:
                x = F.pad(x, (left, right))
        return self.act(self.bn(self.pw(self.dw(x))))


class MultiScale(nn.Module):
    """Three parallel DS convolutions k3 / k5 / k7, summed."""

    def __init__(self, channels: int, kernels: tuple[int, ...] = (3, 5, 7), activation: str = "hardswish",
                 causal: bool = False):
        super().__init__()
        self.branches = nn.ModuleList(DSConv(channels, channels, k, activation=activation, causal=causal)
                                      for k in kernels)  # at 1/64 of the rate: nothing left to blur

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class UpBlock(nn.Module):
    """ConvTranspose1d(k=4, s=4) (cin -> cout) + skip -> depthwise k5 (blurred with ``antialias``: the
    upsampling's period-4 steps smoothed) -> BatchNorm -> Hardswish."""

    def __init__(self, cin: int, cout: int, kernel: int = 5, activation: str = "hardswish", causal: bool = False,
                 antialias: bool = False):
        super().__init__()
        self.causal = causal
        self.up = Upsample4(cin, cout)
        self.dw = depthwise(cout, kernel, 1, lambda k: 0 if causal else (k - 1) // 2, antialias)
        self.kernel = self.dw.effective_kernel
        self.bn = BatchNorm(cout)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x) + skip
        return self.act(self.bn(self.dw(causal_pad(x, self.kernel) if self.causal else x)))
