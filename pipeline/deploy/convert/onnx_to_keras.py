"""ONNX -> Keras: a channels-last Keras model on (1, N, 1, C) built from the ONNX graph, node by node.

Conv -> Conv2D / DepthwiseConv2D, ConvTranspose -> Conv2DTranspose (kernel = stride: a pointwise Conv2D and a
depth-to-space RESHAPE), HardSwish, ReLU / ReLU6 (fused into the convolution by the converter), Add, Pad ->
folded into the next convolution's SAME padding or ZeroPadding2D, Slice -> Cropping2D, Concat along time ->
Concatenate, Softmax; weights read from the ONNX initializers. One input (1, 3, N) -> one output is the whole-window
student; several inputs (1, 3, N) + (1, C_i, K_i) and outputs are its streaming step (the block and each layer's
carried context, :mod:`.stream_export`). An op outside that set is an :class:`EdgepickError` naming the op and the PyTorch module it
came from. (onnx2tf guessed the depthwise layout wrongly and litert-torch kept channels-first TRANSPOSEs around
every convolution: docs/design.md, "Export".)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pipeline.errors import EdgepickError
from pipeline.model.student import same_padding


SUPPORTED_ONNX_OPS = ("Conv", "ConvTranspose", "HardSwish", "Relu", "Clip", "Add", "Pad", "Slice", "Concat",
                      "Softmax", "BatchNormalization")


def module_of(node_name: str) -> str:
    """``/up3/dw/Conv`` -> ``up3.dw`` (the PyTorch module an exported node came from)."""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1]) or node_name


def layer_name(node_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", node_name.strip("/")) or "node"


@dataclass
class _Pending:
    """A zero padding along time not yet materialised (it may fold into the next convolution's SAME padding)."""

    source: str
    left: int
    right: int
    layer: str


def onnx_to_keras(onnx_model):
    """A Keras model equivalent to ``onnx_model`` (the student's op set), input (1, N, 1, 3), output (1, N, 1, 3);
    a streaming step's (several inputs (1, C, K) -> (1, K, 1, C), named as in ONNX) takes and returns lists."""
    import keras
    from onnx import numpy_helper

    graph = onnx_model.graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    unsupported = [n for n in graph.node if n.op_type not in SUPPORTED_ONNX_OPS]
    if unsupported:
        node = unsupported[0]
        raise EdgepickError(
            f"ONNX op {node.op_type} (node {node.name}, PyTorch module {module_of(node.name)}) has no TFLite Micro "
            f"mapping in edgepick's converter; supported: {', '.join(SUPPORTED_ONNX_OPS)}"
        )
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    values: dict[str, object] = {}
    inputs = []
    for k, input_info in enumerate(graph.input):
        dims = [d.dim_value for d in input_info.type.tensor_type.shape.dim]
        if len(dims) != 3 or dims[0] != 1 or min(dims) < 1 or (k == 0 and dims[1] != 3):
            raise EdgepickError(f"ONNX input {input_info.name} must be (1, {3 if k == 0 else 'C'}, N), got {dims}")
        name = "window" if len(graph.input) == 1 else layer_name(input_info.name)
        inputs.append(keras.Input(shape=(dims[2], 1, dims[1]), batch_size=1, name=name))
        values[input_info.name] = inputs[-1]

    def attrs(node) -> dict:
        import onnx

        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def materialise(name: str):
        value = values[name]
        if isinstance(value, _Pending):
            base = materialise(value.source)
            value = keras.layers.ZeroPadding2D(((value.left, value.right), (0, 0)), name=value.layer)(base)
            values[name] = value
        return value

    def length(name: str) -> int:
        value = values[name]
        if isinstance(value, _Pending):
            return length(value.source) + value.left + value.right
        return int(value.shape[1])

    for node in graph.node:
        a = attrs(node)
        name = layer_name(node.name)
        where = f"node {node.name} (PyTorch module {module_of(node.name)})"
        if node.op_type == "Pad":
            pads = consts.get(node.input[1]) if len(node.input) > 1 else None
            value = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if pads is None or a.get("mode", b"constant") not in (b"constant", "constant") or (value is not None and np.any(value)):
                raise EdgepickError(f"{where}: only constant zero padding with fixed pads maps onto TFLite Micro")
            pads = [int(p) for p in pads]
            if len(pads) != 6 or any(pads[i] for i in (0, 1, 3, 4)) or min(pads) < 0:
                raise EdgepickError(f"{where}: only non-negative padding along time is supported, got pads {pads}")
            values[node.output[0]] = _Pending(node.input[0], pads[2], pads[5], name)
        elif node.op_type in ("Conv", "ConvTranspose"):
            weight = consts.get(node.input[1])
            bias = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if weight is None or weight.ndim != 3:
                raise EdgepickError(f"{where}: needs a constant 1-D convolution kernel")
            kernel = int(weight.shape[2])
            stride = int(a.get("strides", [1])[0])
            if a.get("dilations", [1])[0] != 1:
                raise EdgepickError(f"{where}: dilated convolutions are not supported")
            group = int(a.get("group", 1))
            pads = list(a.get("pads", [0, 0]))
            src = node.input[0]
            if node.op_type == "ConvTranspose":
                if group != 1 or any(pads) or any(a.get("output_padding", [0])):
                    raise EdgepickError(f"{where}: ConvTranspose must have group 1, no pads, no output_padding")
                cin, cout = weight.shape[0], weight.shape[1]
                x = materialise(src)
                if kernel == stride:
                    # k == s: every input sample emits `kernel` output samples independently, i.e. a pointwise
                    # convolution to kernel * cout channels and a depth-to-space RESHAPE. TFLite Micro's int8
                    # TRANSPOSE_CONV keeps an int32 scratch of its whole output (96 KB at 3008 x 8): this does not.
                    layer = keras.layers.Conv2D(kernel * cout, (1, 1), use_bias=False, name=name)
                    out = layer(x)
                    layer.set_weights([weight.transpose(0, 2, 1).reshape(cin, kernel * cout)[None, None]])
                    out = keras.layers.Reshape((int(x.shape[1]) * kernel, 1, cout), name=f"{name}_d2s")(out)
                    if bias is not None:
                        raise EdgepickError(f"{where}: ConvTranspose with bias is not supported (fold it into the next layer)")
                    values[node.output[0]] = out
                    continue
                layer = keras.layers.Conv2DTranspose(
                    cout, (kernel, 1), strides=(stride, 1), padding="valid", use_bias=bias is not None, name=name
                )
                out = layer(x)
                kernel_tf = weight.transpose(2, 1, 0)[:, None]  # (k, 1, out, in)
                layer.set_weights([kernel_tf] + ([bias] if bias is not None else []))
                values[node.output[0]] = out
                continue
            # Conv: fold a preceding zero Pad into SAME padding when it is exactly TF's SAME
            value = values[src]
            base, left, right = src, pads[0], pads[1]
            if isinstance(value, _Pending) and consumers.get(src, 0) == 1:
                base, left, right = value.source, value.left + pads[0], value.right + pads[1]
            if (left, right) == same_padding(length(base), kernel, stride):
                x, padding = materialise(base), "same"
            elif (pads[0], pads[1]) == same_padding(length(src), kernel, stride):
                x, padding = materialise(src), "same"
            else:
                x = materialise(src)
                if any(pads):
                    x = keras.layers.ZeroPadding2D(((pads[0], pads[1]), (0, 0)), name=f"{name}_pad")(x)
                padding = "valid"
            cout, cin_per_group = weight.shape[0], weight.shape[1]
            cin = int(x.shape[-1])
            if group == 1:
                layer = keras.layers.Conv2D(
                    cout, (kernel, 1), strides=(stride, 1), padding=padding, use_bias=bias is not None, name=name
                )
                out = layer(x)
                layer.set_weights([weight.transpose(2, 1, 0)[:, None]] + ([bias] if bias is not None else []))
            elif group == cin and cin_per_group == 1 and cout % cin == 0:
                multiplier = cout // cin
                # strides (s, s), not (s, 1): TensorFlow's CPU depthwise kernel without oneDNN (CPUs without
                # AVX-512) refuses unequal strides; on the width-1 axis a stride of s gives the same output
                layer = keras.layers.DepthwiseConv2D(
                    (kernel, 1), strides=(stride, stride), padding=padding, depth_multiplier=multiplier,
                    use_bias=bias is not None, name=name,
                )
                out = layer(x)
                # ONNX (cin * m, 1, k) -> Keras (k, 1, cin, m)
                dw = weight[:, 0, :].reshape(cin, multiplier, kernel).transpose(2, 0, 1)[:, None]
                layer.set_weights([dw] + ([bias] if bias is not None else []))
            else:
                raise EdgepickError(f"{where}: grouped convolution with {group} groups is neither dense nor depthwise")
            values[node.output[0]] = out
        elif node.op_type == "BatchNormalization":
            scale, bias_, mean, var = (consts[n] for n in node.input[1:5])
            layer = keras.layers.BatchNormalization(epsilon=float(a.get("epsilon", 1e-5)), name=name)
            out = layer(materialise(node.input[0]))
            layer.set_weights([scale, bias_, mean, var])
            values[node.output[0]] = out
        elif node.op_type == "HardSwish":
            values[node.output[0]] = keras.layers.Activation("hard_swish", name=name)(materialise(node.input[0]))
        elif node.op_type in ("Relu", "Clip"):
            low, high = 0.0, None
            if node.op_type == "Clip":
                low = float(consts[node.input[1]]) if len(node.input) > 1 and node.input[1] else float(a.get("min", -np.inf))
                high = float(consts[node.input[2]]) if len(node.input) > 2 and node.input[2] else a.get("max")
            if low != 0.0 or (high is not None and high <= 0):
                raise EdgepickError(f"{where}: only ReLU / ReLU6-style clipping (min 0) maps onto fused TFLite activations")
            values[node.output[0]] = keras.layers.ReLU(max_value=None if high is None else float(high), name=name)(
                materialise(node.input[0])
            )
        elif node.op_type == "Add":
            if any(i in consts for i in node.input):
                raise EdgepickError(f"{where}: Add with a constant operand is not supported")
            values[node.output[0]] = keras.layers.Add(name=name)([materialise(i) for i in node.input])
        elif node.op_type == "Slice":
            starts, ends = consts.get(node.input[1]), consts.get(node.input[2])
            axes = consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
            steps = consts.get(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(len(starts))
            if starts is None or ends is None or list(np.asarray(axes) % 3) != [2] or int(steps[0]) != 1:
                raise EdgepickError(f"{where}: only unit-step slicing along time is supported")
            total = length(node.input[0])
            begin = int(starts[0]) if starts[0] >= 0 else total + int(starts[0])
            end = min(int(ends[0]), total) if ends[0] >= 0 else total + int(ends[0])
            values[node.output[0]] = keras.layers.Cropping2D(((begin, total - end), (0, 0)), name=name)(
                materialise(node.input[0])
            )
        elif node.op_type == "Concat":
            if int(a.get("axis", 0)) not in (2, -1):
                raise EdgepickError(f"{where}: only concatenation along time is supported")
            values[node.output[0]] = keras.layers.Concatenate(axis=1, name=name)([materialise(i) for i in node.input])
        elif node.op_type == "Softmax":
            if int(a.get("axis", -1)) not in (1, -2):
                raise EdgepickError(f"{where}: softmax must run over the class axis")
            values[node.output[0]] = keras.layers.Softmax(axis=-1, name=name)(materialise(node.input[0]))
    if len(graph.input) == 1 and len(graph.output) == 1:
        return keras.Model(inputs[0], materialise(graph.output[0].name), name="edgepick_student")
    return keras.Model(inputs, [materialise(o.name) for o in graph.output], name="edgepick_stream")


def keras_call(keras_model, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """One call of a several-input Keras model: arrays (1, C, K) in ONNX's layout in, the outputs likewise out."""
    x = [np.transpose(np.asarray(a, dtype=np.float32), (0, 2, 1))[:, :, None, :] for a in arrays]
    out = keras_model(x, training=False)
    return [np.transpose(np.asarray(o)[:, :, 0, :], (0, 2, 1)) for o in (out if isinstance(out, (list, tuple)) else [out])]


def keras_run(keras_model, windows: np.ndarray) -> np.ndarray:
    """(B, 3, N) windows through the Keras model, returned as (B, 3, N)."""
    x = np.transpose(windows, (0, 2, 1))[:, :, None, :].astype(np.float32)
    out = np.concatenate([keras_model(x[i : i + 1], training=False).numpy() for i in range(len(x))])
    return np.transpose(out[:, :, 0, :], (0, 2, 1))
