"""What makes the full-integer INT8 model hold: depthwise -> pointwise activation equalisation (exact in float)
before conversion, and INT8 activation ranges tightened to a percentile of the float activations after it, the
percentile chosen on train-split windows (:func:`choose_activation_ranges`)."""

from __future__ import annotations

import re

import numpy as np

from pipeline.deploy import tflm
from pipeline.model import picking
from pipeline.deploy.convert.onnx_export import torch_run
from pipeline.deploy.convert.onnx_to_keras import layer_name
from pipeline.deploy.convert.tflite import strip_strings


def depthwise_pointwise_pairs(onnx_model) -> list[tuple[str, str]]:
    """(depthwise layer, pointwise layer) names where a depthwise Conv feeds only a 1x1 Conv, nothing in between."""
    producers = {n.output[0]: n for n in onnx_model.graph.node}
    consumers: dict[str, int] = {}
    for node in onnx_model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    consts = {init.name: init for init in onnx_model.graph.initializer}
    pairs = []
    for node in onnx_model.graph.node:
        if node.op_type != "Conv" or node.input[1] not in consts:
            continue
        attrs = {a.name: a for a in node.attribute}
        group = attrs["group"].i if "group" in attrs else 1
        if group != 1 or list(consts[node.input[1]].dims)[2:] != [1]:
            continue
        dw = producers.get(node.input[0])
        if dw is None or dw.op_type != "Conv" or consumers.get(node.input[0], 0) != 1 or dw.input[1] not in consts:
            continue
        dw_attrs = {a.name: a for a in dw.attribute}
        dw_group = dw_attrs["group"].i if "group" in dw_attrs else 1
        dims = list(consts[dw.input[1]].dims)
        if dw_group > 1 and dims[1] == 1 and dims[0] == dw_group:
            pairs.append((layer_name(dw.name), layer_name(node.name)))
    return pairs


def equalize_depthwise(keras_model, pairs: list[tuple[str, str]], windows: np.ndarray, alpha: float = 0.5,
                       max_scale: float = 64.0) -> dict[str, float]:
    """Activation equalisation for per-tensor INT8: scale each depthwise output channel i by s_i and the pointwise
    weights reading it by 1 / s_i. Exact in float (nothing sits between the two), it evens out the per-channel ranges
    of the depthwise output, which INT8 quantizes with one scale: s_i = (max_j r_j / r_i) ** alpha, r from
    ``windows`` ((B, 3, N); a several-input model's: a list of (B, C, K) arrays, one per input). Returns the largest
    scale per pair. (After Nagel et al. 2019, data-free quantization.)"""
    import keras

    if not pairs:
        return {}
    several = isinstance(windows, (list, tuple))
    xs = [np.transpose(np.asarray(w, dtype=np.float32), (0, 2, 1))[:, :, None, :] for w in (windows if several else [windows])]
    probe = keras.Model(keras_model.inputs, [keras_model.get_layer(dw).output for dw, _ in pairs])
    outputs = [[] for _ in pairs]
    for start in range(0, len(xs[0]), 16):
        batch = [x[start : start + 16] for x in xs]
        result = probe(batch if several else batch[0], training=False)
        result = result if isinstance(result, (list, tuple)) else [result]
        for k, value in enumerate(result):
            outputs[k].append(np.abs(np.asarray(value)).max(axis=(0, 1, 2)))
    report = {}
    for (dw_name, pw_name), ranges in zip(pairs, outputs):
        r = np.max(ranges, axis=0).astype(np.float64)
        top = r.max()
        if top <= 0:
            continue
        scale = np.clip((top / np.maximum(r, top / max_scale)) ** alpha, 1.0, max_scale)
        dw_layer, pw_layer = keras_model.get_layer(dw_name), keras_model.get_layer(pw_name)
        dw_weights = dw_layer.get_weights()
        dw_weights[0] = (dw_weights[0] * scale[None, None, :, None]).astype(np.float32)
        if len(dw_weights) > 1:
            dw_weights[1] = (dw_weights[1] * scale).astype(np.float32)
        dw_layer.set_weights(dw_weights)
        pw_weights = pw_layer.get_weights()
        pw_weights[0] = (pw_weights[0] / scale[None, None, :, None]).astype(np.float32)
        pw_layer.set_weights(pw_weights)
        report[dw_name] = float(scale.max())
    return report


_TIED_OPS = ("RESHAPE", "PAD", "STRIDED_SLICE")  # TFLite Micro wants equal input / output quantization for these


_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")


def refine_activation_ranges(flatbuffer: bytes, keras_model, windows: np.ndarray, percentile: float = 99.99) -> bytes:
    """Tighten the INT8 activation ranges of an (unstripped) full-integer flatbuffer to ``percentile`` of the float
    activations on ``windows`` (the converter uses min / max, which heavy-tailed activations waste bits on).

    Only inner activations change: the model input, the softmax output (fixed 1/256) and the tensors tied to them
    keep theirs; tensors tied by RESHAPE / PAD / STRIDED_SLICE share one range; every convolution bias is
    requantized to its new input scale (bias scale = input scale x weight scale). TFLite Micro derives all kernel
    multipliers from these scales at Prepare, so the edited model is as valid as the converter's."""
    import keras
    from tensorflow.lite.tools import flatbuffer_utils

    schema = tflm.schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    graph = model.subgraphs[0]
    tensors = graph.tensors
    ops = [(names.get(max(model.operatorCodes[op.opcodeIndex].builtinCode,
                          model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)), op) for op in graph.operators]
    # union-find over tied tensors
    parent = list(range(len(tensors)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for name, op in ops:
        if name in _TIED_OPS:
            parent[find(op.outputs[0])] = find(op.inputs[0])
    frozen = {find(i) for i in list(graph.inputs) + list(graph.outputs)}
    for name, op in ops:
        if name == "SOFTMAX":
            frozen.add(find(op.outputs[0]))
    # activation tensor -> Keras layer
    layer_names = {layer.name for layer in keras_model.layers}
    targets: dict[int, str] = {}
    for name, op in ops:
        index = op.outputs[0]
        tensor_name = (tensors[index].name or b"").decode(errors="replace").split(";")[0]
        parts = tensor_name.split("/")
        if len(parts) < 2:
            continue
        layer = parts[1]
        while layer not in layer_names and re.search(r"_\d+$", layer):
            layer = re.sub(r"_\d+$", "", layer)
        if layer in layer_names and find(index) not in frozen:
            targets[index] = layer
    if not targets:
        return flatbuffer
    wanted = sorted(set(targets.values()))
    probe = keras.Model(keras_model.inputs, [keras_model.get_layer(n).output for n in wanted])
    x = np.transpose(np.asarray(windows, dtype=np.float32), (0, 2, 1))[:, :, None, :]
    collected: dict[str, list] = {n: [] for n in wanted}
    for start in range(0, len(x), 16):
        out = probe(x[start : start + 16], training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        for n, value in zip(wanted, out):
            collected[n].append(np.asarray(value).ravel())
    ranges = {}
    rng = np.random.default_rng(0)
    for n, values in collected.items():
        v = np.concatenate(values)
        if len(v) > 400_000:
            v = np.concatenate([rng.choice(v, 400_000, replace=False), [v.min(), v.max()]])
        if percentile > 0:
            ranges[n] = (min(float(np.percentile(v, 100 - percentile)), 0.0), max(float(np.percentile(v, percentile)), 0.0))
        else:  # the clipping range with the smallest int8 round-trip error
            ranges[n] = _mse_range(v)
    group_range: dict[int, tuple[float, float]] = {}
    for index, layer in targets.items():
        lo, hi = ranges[layer]
        g = find(index)
        if g in group_range:
            lo, hi = min(lo, group_range[g][0]), max(hi, group_range[g][1])
        group_range[g] = (lo, hi)
    old_scale = {i: float(t.quantization.scale[0]) for i, t in enumerate(tensors)
                 if t.quantization is not None and t.quantization.scale is not None and len(t.quantization.scale) == 1}
    for i, tensor in enumerate(tensors):
        g = find(i)
        if g not in group_range or tensor.type != schema.TensorType.INT8 or i not in old_scale:
            continue
        lo, hi = group_range[g]
        if hi - lo <= 0:
            continue
        scale = (hi - lo) / 255.0
        zero = int(np.clip(round(-128 - lo / scale), -128, 127))
        tensor.quantization.scale = np.array([scale], dtype=np.float32)
        tensor.quantization.zeroPoint = np.array([zero], dtype=np.int64)
        tensor.quantization.min = None
        tensor.quantization.max = None
    for name, op in ops:
        if name not in _CONV_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x_index, w_index, b_index = op.inputs[0], op.inputs[1], op.inputs[2]
        if x_index not in old_scale:
            continue
        new_x = float(tensors[x_index].quantization.scale[0])
        if new_x == old_scale[x_index]:
            continue
        bias = tensors[b_index]
        buffer = model.buffers[bias.buffer]
        values = np.frombuffer(bytes(bytearray(buffer.data)), dtype="<i4").astype(np.float64)
        w_scale = np.asarray(tensors[w_index].quantization.scale, dtype=np.float64)
        new_values = np.round(values * old_scale[x_index] / new_x)
        buffer.data = np.clip(new_values, -(2**31), 2**31 - 1).astype("<i4").view(np.uint8)
        bias.quantization.scale = (new_x * w_scale).astype(np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _mse_range(values: np.ndarray) -> tuple[float, float]:
    """(lo, hi) among percentile clippings whose asymmetric int8 quantization has the smallest mean squared error."""
    best, best_error = None, np.inf
    for p in (100.0, 99.999, 99.99, 99.95, 99.9, 99.8, 99.5, 99.0, 98.0):
        lo = min(float(np.percentile(values, 100 - p)), 0.0)
        hi = max(float(np.percentile(values, p)), 0.0)
        if hi - lo <= 0:
            continue
        scale = (hi - lo) / 255.0
        zero = np.clip(np.round(-128 - lo / scale), -128, 127)
        q = np.clip(np.round(values / scale) + zero, -128, 127)
        error = float(np.mean(((q - zero) * scale - values) ** 2))
        if error < best_error:
            best, best_error = (lo, hi), error
    return best or (float(values.min()), float(values.max()))


PERCENTILE_CANDIDATES = (100.0, 99.99, 99.9, 99.7, 99.5)


def choose_activation_ranges(raw: bytes, keras_model, model, calibration: np.ndarray, percentile: float):
    """INT8 activation ranges: ``percentile`` >= 100 keeps the converter's min / max; a value in (50, 100) clips to
    that percentile; < 0 picks among PERCENTILE_CANDIDATES the one whose outputs are closest to PyTorch's (mean
    absolute difference) on calibration (train-split) windows not used for the ranges. Not the pick agreement
    itself: on ~200 windows (~300 picks) it varies by +-0.02 between candidates that differ only by chance, and
    choosing on it did not carry over to held-out windows, while the mean difference did.
    Returns (flatbuffer, percentile, pick agreement on the selection windows)."""
    stats = calibration[: min(64, len(calibration))]
    if percentile >= 100:
        return raw, 100.0, float("nan")
    if percentile > 0:
        return refine_activation_ranges(raw, keras_model, stats, percentile), percentile, float("nan")
    selection = calibration[64:] if len(calibration) >= 96 else calibration[-min(32, len(calibration)) :]
    reference = torch_run(model, selection)
    best = None
    for candidate in PERCENTILE_CANDIDATES:
        flatbuffer = raw if candidate >= 100 else refine_activation_ranges(raw, keras_model, stats, candidate)
        outputs = tflm.run(strip_strings(flatbuffer), selection)
        agreement, _ = picking.pick_agreement(reference, outputs, model.pick_rule, model.sampling_rate)
        score = (-float(np.abs(outputs - reference).mean()), agreement)
        if best is None or score > best[0]:
            best = (score, flatbuffer, candidate)
    (_, agreement), flatbuffer, candidate = best
    return flatbuffer, candidate, agreement
