"""Quantization-aware fine-tuning: the student trains while seeing the rounding its INT8 TFLite twin will do.

TFLite's full-integer conversion stores every activation tensor as int8 with one (scale, zero point) per tensor.
On a saturated softmax the student's P and S peaks are flat-topped, so that rounding moves peaks by more than
0.1 s and post-training quantization alone loses pick agreement (docs/design.md). Fine-tuning for a few epochs with
PyTorch's fake quantization (straight-through rounding, moving-average min/max ranges, as the converter's
calibration does) at exactly the tensors TFLite materialises teaches the student to keep its peaks where they are.

The fake-quantization modules live beside the model, attached by hooks: the model's ``state_dict`` and the saved
student stay plain float, and ``make quantize`` converts them as before.
"""

from __future__ import annotations

import torch
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

from pipeline.model.student import DSConv, MultiScale, UpBlock, XiaoNet


def _fake_quant() -> FakeQuantize:
    """int8, one affine (scale, zero point) per tensor: what the TFLite converter gives activations."""
    return FakeQuantize(
        observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
        qscheme=torch.per_tensor_affine, averaging_constant=0.01,
    )


def tensor_points(model: XiaoNet) -> list[tuple[str, torch.nn.Module, str]]:
    """(name, module, 'input' | 'output') of every int8 tensor of the converted model (BatchNorm and the activation
    are fused into the convolution before them, so a DSConv has two: depthwise output and block output)."""
    points = [("input", model.enc1.dw, "input")]
    for name, module in model.named_modules():
        if isinstance(module, DSConv):
            points += [(f"{name}.dw", module.dw, "output"), (name, module, "output")]
        elif isinstance(module, MultiScale):
            points.append((name, module, "output"))  # the sum of its branches
        elif isinstance(module, UpBlock):
            points += [(f"{name}.up", module.up, "output"), (f"{name}.sum", module.dw, "input"), (name, module, "output")]
    points.append(("head", model.head, "output"))  # the logits, before the softmax
    return points


class QuantizationAware:
    """Attach int8 fake quantization to ``model``'s activation tensors; ``detach()`` restores the float model.

    Usable as a context manager. ``observe(False)`` freezes the ranges (the usual last phase of QAT)."""

    def __init__(self, model: XiaoNet):
        self.model = model
        self.quantizers = torch.nn.ModuleDict()
        self.handles = []
        device = next(model.parameters()).device
        for name, module, where in tensor_points(model):
            key = name.replace(".", "_")
            self.quantizers[key] = quantizer = _fake_quant().to(device)
            if where == "input":
                hook = module.register_forward_pre_hook(lambda m, args, q=quantizer: (q(args[0]),) + tuple(args[1:]))
            else:
                hook = module.register_forward_hook(lambda m, args, out, q=quantizer: q(out))
            self.handles.append(hook)
        self.quantizers.train(model.training)

    def observe(self, enabled: bool = True) -> None:
        for quantizer in self.quantizers.values():
            quantizer.enable_observer(enabled)

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {k: (float(q.activation_post_process.min_val), float(q.activation_post_process.max_val))
                for k, q in self.quantizers.items()}

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()
