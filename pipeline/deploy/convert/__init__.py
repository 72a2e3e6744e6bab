"""PyTorch student -> ONNX -> Keras -> TFLite FP32 / FP16 / INT8 -> C sources: pure functions, no configuration."""

from pipeline.deploy.convert.chain import AGREEMENT_REQUIRED, PRECISIONS, QuantizeResult, quantize_student

__all__ = ["AGREEMENT_REQUIRED", "PRECISIONS", "QuantizeResult", "quantize_student"]
