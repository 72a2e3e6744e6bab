"""The TensorFlow Lite Micro runtime (PyPI ``tflite-micro``): the same reference kernels as the microcontroller.

Load a flatbuffer (:func:`load`), name the op and layer TFLite Micro cannot run (:func:`check_ops`), find the
smallest tensor arena by exact search (:func:`minimal_arena`), read the model's input / output quantization
(:func:`io_details`) and run normalised windows through it (:func:`run`), int8 input quantized and output
dequantized as the firmware does (:func:`quantize_input`, :func:`dequantize_output`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np

from pipeline.errors import EdgepickError

MAX_ARENA = 64 * 1024 * 1024


def schema():
    """The TFLite flatbuffer schema's generated Python bindings (shipped with tflite-micro)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


def builtin_ops(flatbuffer: bytes) -> list[tuple[str, str]]:
    """(op name, output tensor name) for every operator of the flatbuffer, in execution order."""
    schema_ = schema()
    names = {v: k for k, v in vars(schema_.BuiltinOperator).items() if not k.startswith("_")}
    model = schema_.Model.GetRootAsModel(flatbuffer, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        codes.append(names.get(builtin, f"BUILTIN_{builtin}") if builtin != schema_.BuiltinOperator.CUSTOM
                     else f"CUSTOM:{(code.CustomCode() or b'').decode()}")
    ops = []
    subgraph = model.Subgraphs(0)
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        output = subgraph.Tensors(op.Outputs(0)).Name() if op.OutputsLength() else b""
        ops.append((codes[op.OpcodeIndex()], (output or b"").decode(errors="replace")))
    return ops


def op_counts(flatbuffer: bytes) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op, _ in builtin_ops(flatbuffer):
        counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items()))


@contextlib.contextmanager
def captured_stderr():
    """Capture C-level stderr (TFLite Micro reports errors there) into the yielded list's first item."""
    result = [""]
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield result
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            result[0] = tmp.read().decode(errors="replace")


def load(flatbuffer: bytes, arena: int):
    """(interpreter or None, the exception, TFLite Micro's stderr): an interpreter with an ``arena``-byte arena."""
    from tflite_micro.python.tflite_micro import runtime

    with captured_stderr() as err:
        try:
            interpreter = runtime.Interpreter.from_bytes(flatbuffer, arena_size=arena)
        except Exception as error:  # noqa: BLE001 - pybind raises RuntimeError / ValueError
            interpreter = None
            exc = error
        else:
            exc = None
    return interpreter, exc, err[0]


def check_ops(flatbuffer: bytes, origin: dict[str, str] | None = None) -> None:
    """Raise an EdgepickError naming the op and layer when TFLite Micro cannot build the model at a huge arena
    (``origin``: Keras layer name -> the PyTorch module it came from)."""
    interpreter, exc, err = load(flatbuffer, MAX_ARENA)
    if interpreter is not None:
        return
    ops = builtin_ops(flatbuffer)
    message = (err.strip() + " " + str(exc)).strip()
    for op, output in ops:
        if op in message or op.replace("_", " ").lower() in message.lower():
            layer = _layer_from_tensor(output, origin)
            raise EdgepickError(f"TFLite Micro cannot run op {op} (layer {layer}): {message.splitlines()[0] if message else exc}")
    first = message.splitlines()[0] if message else str(exc)
    raise EdgepickError(f"TFLite Micro cannot load the model even with a {MAX_ARENA >> 20} MB arena: {first}")


def _layer_from_tensor(tensor_name: str, origin: dict[str, str] | None) -> str:
    for keras_name, module in (origin or {}).items():
        if keras_name and keras_name in tensor_name:
            return f"{keras_name} <- PyTorch {module}"
    return tensor_name or "?"


def minimal_arena(flatbuffer: bytes, sample: np.ndarray | None = None) -> int:
    """The smallest ``arena_size`` (bytes) with which TFLite Micro allocates and invokes the model: binary search,
    each size tried in a forked child (:func:`_works_in_child`)."""
    check_ops(flatbuffer)

    def works(size: int) -> bool:
        return _works_in_child(flatbuffer, size, sample)

    lo, hi = 0, 1024
    while not works(hi):
        lo, hi = hi, hi * 2
        if hi > MAX_ARENA:
            raise EdgepickError(f"model needs more than {MAX_ARENA} bytes of arena")
    while hi - lo > 1:  # invariant: lo fails, hi works
        mid = (lo + hi) // 2
        if works(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _works(flatbuffer: bytes, size: int, sample: np.ndarray | None) -> bool:
    interpreter, _, _ = load(flatbuffer, size)
    if interpreter is None:
        return False
    if sample is not None:
        try:
            with captured_stderr():
                interpreter.set_input(sample, 0)
                interpreter.invoke()
        except Exception:  # noqa: BLE001
            return False
    return True


def _works_in_child(flatbuffer: bytes, size: int, sample: np.ndarray | None) -> bool:
    """Whether the model allocates and invokes with a ``size``-byte arena, tried in a forked child: some of TFLite
    Micro's kernels use a persistent buffer their Init could not allocate without checking it, so an arena a few
    hundred bytes short of that point is a segmentation fault, not an error (the streaming student's INT8 model at
    16,128-16,640 bytes); a child that dies of it is a size that does not work."""
    if not hasattr(os, "fork"):
        return _works(flatbuffer, size, sample)
    pid = os.fork()
    if pid == 0:  # the child: no Python cleanup, its only answer is the exit status
        code = 1
        try:
            code = 0 if _works(flatbuffer, size, sample) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def io_details(flatbuffer: bytes) -> dict:
    """``{"input": ..., "output": ...}``, each shape, dtype name, scale and zero point (0 for float tensors)."""
    interpreter, exc, err = load(flatbuffer, MAX_ARENA)
    if interpreter is None:
        raise EdgepickError(f"TFLite Micro cannot load the model: {err.strip() or exc}")

    def describe(d):
        q = d.get("quantization_parameters", {})
        scales = [float(s) for s in np.ravel(q.get("scales", []))]
        zeros = [int(z) for z in np.ravel(q.get("zero_points", []))]
        return {"shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "scale": scales[0] if scales else 0.0, "zero_point": zeros[0] if zeros else 0}

    return {"input": describe(interpreter.get_input_details(0)), "output": describe(interpreter.get_output_details(0))}


def quantize_input(window: np.ndarray, details: dict) -> np.ndarray:
    """A normalised (3, N) window as the model's input tensor (1, N, 1, 3), int8-quantized where the input is
    int8: x / scale in float32, rounded half away from zero (TfLiteRound, as TFLite Micro's Quantize kernel and the
    firmware's ep_quant do), plus the zero point, clamped."""
    x = np.asarray(window, dtype=np.float32).T[None, :, None, :]
    if details["dtype"] == "int8":
        scaled = x / np.float32(details["scale"])
        # + 0.5 in float64, exact for float32 values (in float32, 0.49999997 + 0.5 would round up to 1)
        rounded = np.sign(scaled) * np.floor(np.abs(scaled).astype(np.float64) + 0.5)
        x = np.clip(np.nan_to_num(rounded) + details["zero_point"], -128, 127).astype(np.int8)
    return x.reshape(details["shape"])


def dequantize_output(y: np.ndarray, details: dict) -> np.ndarray:
    """The model's output tensor as float (N, 3) probabilities."""
    y = np.asarray(y)
    if details["dtype"] == "int8":
        y = (y.astype(np.float32) - details["zero_point"]) * details["scale"]
    return y.reshape(-1, 3)


def run(flatbuffer: bytes, windows: np.ndarray, arena: int | None = None) -> np.ndarray:
    """(B, 3, N) normalised windows through TFLite Micro, returned as float probabilities (B, 3, N)."""
    interpreter, exc, err = load(flatbuffer, arena or MAX_ARENA)
    if interpreter is None:
        raise EdgepickError(f"TFLite Micro cannot load the model: {err.strip() or exc}")
    details = io_details(flatbuffer)
    outputs = []
    for window in np.asarray(windows, dtype=np.float32):
        interpreter.set_input(quantize_input(window, details["input"]), 0)
        interpreter.invoke()
        outputs.append(dequantize_output(interpreter.get_output(0), details["output"]).T)
    return np.stack(outputs).astype(np.float32)
