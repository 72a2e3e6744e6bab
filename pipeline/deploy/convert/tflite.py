"""Keras -> TFLite with TensorFlow's own converter: FP32, full-integer INT8 (int8 input and output, a
representative dataset of real normalised windows), and TFLite's float16 weight quantization (kept only to show
that TFLite Micro rejects it: it has no float16 kernels). Strings are stripped from what goes to the board."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

import numpy as np

from pipeline.deploy import tflm
from pipeline.deploy.convert.onnx_export import warnings_silenced


@contextlib.contextmanager
def converter_chatter_hidden():
    """The converter's C++ lines (``fully_quantize: 0, ...``, "Ignored output_format") go to the process's own
    stdout / stderr, below Python's reach: hold them in a file and show them only with ``-v`` (debug logging) or
    when the conversion fails."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 1)
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace")[-4000:])


def _converter(keras_model):
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(keras_model)


def convert_fp32(keras_model) -> bytes:
    with warnings_silenced(), converter_chatter_hidden():
        return bytes(_converter(keras_model).convert())


def convert_int8(keras_model, calibration: np.ndarray) -> bytes:
    """Full-integer INT8 (int8 input and output); ``calibration``: (B, 3, N) normalised windows, B >= 1."""
    import tensorflow as tf

    converter = _converter(keras_model)
    data = np.transpose(np.asarray(calibration, dtype=np.float32), (0, 2, 1))[:, :, None, :]

    def representative():
        for window in data:
            yield [window[None]]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with warnings_silenced(), converter_chatter_hidden():
        return bytes(converter.convert())


def convert_fp16_reference(keras_model) -> bytes:
    """TFLite's own float16 weight quantization (DEQUANTIZE float16 -> float32): kept to show TFLM rejects it."""
    import tensorflow as tf

    converter = _converter(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    with warnings_silenced(), converter_chatter_hidden():
        return bytes(converter.convert())


def strip_strings(flatbuffer: bytes) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    flatbuffer_utils.strip_strings(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def fp16_reference_status(keras_model) -> str:
    """Whether TFLite's own FP16 .tflite loads in TFLite Micro (it should not: no float16 kernels)."""
    flatbuffer = convert_fp16_reference(keras_model)
    interpreter, exc, err = tflm.load(flatbuffer, tflm.MAX_ARENA)
    if interpreter is not None:
        return "loads"
    return f"rejected: {(err.strip().splitlines() or [str(exc)])[0]}"
