"""Distillation: the training loop, its loss, the soft-label cache and quantization-aware training."""
