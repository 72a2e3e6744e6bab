"""Quantization-aware fine-tuning: fake quantization at the INT8 tensors, a float student saved, and distill's
``init_from`` / ``quantization_aware`` switches."""

import pytest
import torch

from pipeline.stages import distill
from pipeline.errors import EdgepickError
from pipeline.distill.fake_quant import QuantizationAware, tensor_points
from pipeline.model.student import XiaoNet, load_student

from helpers import tiny_config


@pytest.mark.slow
def test_fake_quantization_rounds_every_tflite_tensor_and_detaches_cleanly():
    torch.manual_seed(0)
    model = XiaoNet(base_channels=4, in_samples=1001).eval()
    x = torch.randn(4, 3, 1001)
    x = x / x.abs().amax(dim=(1, 2), keepdim=True)
    names = [name for name, _, _ in tensor_points(model)]
    # input, every DSConv (depthwise output + block output), the multi-scale sum, each up block (3), logits
    assert names[0] == "input" and names[-1] == "head" and len(names) == 1 + 2 * 7 + 1 + 3 * 3 + 1
    reference = model(x)
    keys = set(model.state_dict())
    with QuantizationAware(model) as qat:
        qat.quantizers.train()
        quantized = model(x)
        assert set(model.state_dict()) == keys  # the fake quantizers are not part of the student
        low, high = qat.ranges()["input"]
        assert low < 0 < high and high <= 1.0 + 1e-6
    difference = (quantized - reference).abs().max().item()
    assert 0 < difference < 0.2  # rounded, not broken
    assert torch.equal(model(x), reference)  # detached: the float student again


@pytest.mark.slow
def test_quantization_aware_fine_tuning_starts_from_a_saved_student(labelled, tmp_path):  # noqa: F811
    first = tiny_config(labelled, tmp_path / "float", epochs=1)
    distill.run(first)
    start = load_student(tmp_path / "float")
    tuned_config = tiny_config(labelled, tmp_path / "qat", epochs=1, init_from=str(tmp_path / "float"),
                               quantization_aware=True, learning_rate=1e-3)
    distill.run(tuned_config)
    tuned = load_student(tmp_path / "qat")
    changes = [(a - b).abs().max().item() for a, b in zip(start.state_dict().values(), tuned.state_dict().values())
               if a.is_floating_point()]
    assert max(changes) > 0 and max(changes) < 0.5  # fine-tuned from the saved weights, not re-initialised
    wrong = tiny_config(labelled, tmp_path / "bad", epochs=1, init_from=str(tmp_path / "float"))
    wrong.student.base_channels = 3
    with pytest.raises(EdgepickError, match="architecture differs"):
        distill.run(wrong)
    other_activation = tiny_config(labelled, tmp_path / "bad", epochs=1, init_from=str(tmp_path / "float"))
    other_activation.student.activation = "relu"  # same weights, another network: refused, not silently changed
    with pytest.raises(EdgepickError, match="activation 'relu6'.*student.activation=relu6"):
        distill.run(other_activation)


@pytest.mark.slow
def test_quantization_aware_fine_tuning_that_diverges_saves_nothing(labelled, tmp_path):  # noqa: F811
    """make qat runs distill's loop (pipeline/stages/qat.py), so a diverged epoch is not kept there either."""
    from pipeline.stages import qat

    distill.run(tiny_config(labelled, tmp_path / "float", epochs=1))
    config = tiny_config(labelled, tmp_path / "unused", epochs=1)
    config.qat.init_from, config.qat.out = str(tmp_path / "float"), str(tmp_path / "qat")
    config.qat.epochs, config.qat.learning_rate = 2, 1e6
    with pytest.raises(EdgepickError, match="non-finite"):
        qat.run(config)
    assert not (tmp_path / "qat" / "checkpoint.pt").exists() and not (tmp_path / "qat" / "student").exists()
