"""A causal student's streaming step -> TFLite FP32 / INT8, each run block by block in TensorFlow Lite Micro
(issue 30; the step itself: pipeline/model/stream_step.py).

What is exported is :class:`~pipeline.model.stream_step.StreamStep` and its softmax, in the "external state" form
of streaming keyword spotting (google-research kws_streaming): the model is stateless; it takes ``block`` (1, 3, 64),
the normalised samples, and ``state_00``, ``state_01``, ... (each convolution's carried left context, in
``StreamStep.state_shapes`` order), and returns ``probabilities`` (1, 3, 64) and ``new_state_00``, ... in the same
order; the caller feeds the new states back. Each carried context is a CONCATENATION of the state and the layer's
new input along time, the new state a STRIDED_SLICE of its end, the causal convolutions run unpadded ("valid").

The chain is the whole-window student's (:mod:`.chain`): PyTorch -> ONNX (onnxruntime within 1e-4) -> edgepick's
Keras model (within 1e-4 of onnxruntime) -> TensorFlow's converter. The converter orders a several-input model's
inputs and outputs as it likes; :func:`canonical_order` puts them back in the step's order (by the signature the
converter writes). INT8 is full-integer with int8 input, output and states, its ranges calibrated on real (block,
states) pairs: the float stream over calibration traces, recorded block by block (:func:`record_pairs`). TFLite's
int8 CONCATENATION and STRIDED_SLICE keep one scale for their inputs and output, so each output state has its
input state's quantization and its bytes are fed back as they are; :func:`pipeline.deploy.tflm_stream.check_io`
fails loudly where a conversion does not keep that. ``int8_float_io`` is the alternative measured against it:
the same int8 model with float block, probabilities and states, QUANTIZE / DEQUANTIZE inside.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from pipeline.deploy import tflm, tflm_stream
from pipeline.deploy.convert import int8, tflite
from pipeline.deploy.convert.onnx_export import ONNX_TOLERANCE, checked_onnx, warnings_silenced
from pipeline.deploy.convert.onnx_to_keras import keras_call, layer_name, module_of, onnx_to_keras
from pipeline.errors import EdgepickError
from pipeline.model import picking, streaming
from pipeline.model.macs import count_macs
from pipeline.model.stream_step import StreamStep, stream_scores
from pipeline.model.streaming import BLOCK, NormSettings

STREAM_PRECISIONS = ("fp32", "int8", "int8_float_io")
# TFLite Micro vs the PyTorch stream, max |difference| in probability: a float model further off is a conversion
# error (refused); an int8 one is judged by its pick agreement (the tolerance is what the tests hold it to)
STREAM_TOLERANCE = {"fp32": 1e-4, "int8": 5e-2, "int8_float_io": 5e-2}
STREAM_AGREEMENT_REQUIRED = {"fp32": 0.99, "int8": 0.97, "int8_float_io": 0.97}  # as chain.AGREEMENT_REQUIRED


class StreamProbabilities(nn.Module):
    """``StreamStep`` with the softmax: ``forward(block, *states) -> (probabilities, *new_states)``."""

    def __init__(self, step: StreamStep):
        super().__init__()
        self.step = step

    def forward(self, block: torch.Tensor, *states: torch.Tensor):
        logits, *new = self.step(block, *states)
        return (torch.softmax(logits, dim=1), *new)


def io_names(states: int) -> tuple[list[str], list[str]]:
    """The ONNX (and Keras) input and output names: sorted as they are ordered (the converter's signature sorts)."""
    if states > 100:
        raise EdgepickError(f"a streaming step with {states} states is more than the export names (100)")
    return (["block"] + [f"state_{k:02d}" for k in range(states)],
            ["probabilities"] + [f"new_state_{k:02d}" for k in range(states)])


def export_stream_onnx(step: StreamStep, opset: int = 17):
    """The step and its softmax as a checked ONNX model, constants folded."""
    shapes = step.state_shapes()
    inputs, outputs = io_names(len(shapes))
    buffer = io.BytesIO()
    with warnings_silenced():
        torch.onnx.export(StreamProbabilities(step).eval(), (torch.zeros(1, 3, BLOCK), *step.zero_states()), buffer,
                          dynamo=False, opset_version=opset, do_constant_folding=True, input_names=inputs,
                          output_names=outputs)
    return checked_onnx(buffer.getvalue(), "streaming ONNX model")


def record_pairs(step: StreamStep, traces, norm: NormSettings, limit: int | None = None):
    """Every (block, states) the float stream sees over ``traces`` (each (3, n) raw samples, from zero states),
    as lists of (1, C, K) float32 arrays in the step's input order; and the PyTorch outputs of each, likewise."""
    pairs, outputs = [], []
    with torch.no_grad():
        for trace in traces:
            trace = np.asarray(trace, dtype=np.float64)
            normalizer = norm.normalizer(trace.shape[0])
            states = step.zero_states()
            for start in range(0, trace.shape[1] - BLOCK + 1, BLOCK):
                block = torch.from_numpy(normalizer(trace[:, start : start + BLOCK]))[None]
                pairs.append([block.numpy()] + [s.numpy() for s in states])
                logits, *states = step(block, *states)
                outputs.append([torch.softmax(logits, dim=1).numpy()] + [s.numpy() for s in states])
                if limit and len(pairs) >= limit:
                    return pairs, outputs
    if not pairs:
        raise EdgepickError(f"no {BLOCK}-sample block in the {len(traces)} calibration trace(s)")
    return pairs, outputs


def canonical_order(flatbuffer: bytes, names: tuple[list[str], list[str]]) -> bytes:
    """The flatbuffer with its subgraph's inputs and outputs in the step's order (TensorFlow's converter orders a
    several-input model's as it likes; its signature names them: the inputs by their Keras names, the outputs
    ``output_<k>`` by their Keras position)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    if not model.signatureDefs:
        raise EdgepickError("the converted streaming model has no signature to order its inputs and outputs by")
    signature = model.signatureDefs[0]
    given = {t.name.decode(): t.tensorIndex for t in signature.inputs}
    returned = {t.name.decode(): t.tensorIndex for t in signature.outputs}
    inputs, outputs = names
    try:
        order_in = [given[layer_name(name)] for name in inputs]
        order_out = [returned[f"output_{k}"] for k in range(len(outputs))]
    except KeyError as missing:
        raise EdgepickError(f"the converted streaming model's signature lacks {missing}: {sorted(given)}, "
                            f"{sorted(returned)}") from None
    graph = model.subgraphs[0]
    if sorted(order_in) != sorted(int(i) for i in graph.inputs) or sorted(order_out) != sorted(int(o) for o in graph.outputs):
        raise EdgepickError("the converted streaming model's signature does not name its inputs and outputs")
    graph.inputs = np.array(order_in, dtype=np.int32)
    graph.outputs = np.array(order_out, dtype=np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def convert_stream_int8(keras_model, pairs: list, names: list[str], float_io: bool = False) -> bytes:
    """Full-integer INT8 of the step's Keras model, calibrated on recorded (block, states) ``pairs``; int8 block,
    probabilities and states (``float_io``: float ones, quantized and dequantized inside)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    keys = [layer_name(n) for n in names]

    def representative():
        for pair in pairs:  # by name: the calibrator feeds a list in the converted model's own input order
            yield {key: np.transpose(a, (0, 2, 1))[:, :, None, :].astype(np.float32) for key, a in zip(keys, pair)}

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.float32 if float_io else tf.int8
    converter.inference_output_type = tf.float32 if float_io else tf.int8
    with warnings_silenced(), tflite.converter_chatter_hidden():
        return bytes(converter.convert())


def graph_macs(flatbuffer: bytes) -> int:
    """Multiply-accumulates of one invoke, counted from the flatbuffer's CONV_2D / DEPTHWISE_CONV_2D ops (output
    elements x kernel taps x input channels per output; a depthwise one reads one channel)."""
    schema = tflm.schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    graph = model.Subgraphs(0)
    total = 0
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        weights = graph.Tensors(op.Inputs(1)).ShapeAsNumpy()  # conv (out, kh, kw, in); depthwise (1, kh, kw, out)
        outputs = int(np.prod(graph.Tensors(op.Outputs(0)).ShapeAsNumpy()))
        total += outputs * int(weights[1]) * int(weights[2]) * (int(weights[3]) if name == "CONV_2D" else 1)
    return total


class _FromZeroStates(nn.Module):
    def __init__(self, step: StreamStep):
        super().__init__()
        self.step = step

    def forward(self, block: torch.Tensor):
        return self.step(block, *self.step.zero_states())[0]


def step_macs(step: StreamStep) -> int:
    """Multiply-accumulates of one 64-sample step, counted with forward hooks on the student's layers (as its
    window's are, pipeline/model/macs.py) plus the fixed output smoothing (a functional depthwise convolution)."""
    student = step.student
    smoothing = 3 * BLOCK * student.smoothing.shape[-1] if student.smooth_output else 0
    return count_macs(_FromZeroStates(step), (1, 3, BLOCK)) + smoothing


@dataclass
class StreamResult:
    onnx_max_error: float = 0.0
    keras_max_error: float = 0.0
    variants: dict = field(default_factory=dict)  # precision -> info dict
    flatbuffers: dict = field(default_factory=dict)  # precision -> bytes (strings stripped)
    onnx_bytes: bytes = b""
    state_shapes: list = field(default_factory=list)  # (1, C, K) per state, the step's order
    state_layers: list = field(default_factory=list)  # the student layer each state feeds
    macs_per_block: int = 0
    calibration_pairs: int = 0


def stream_export(student, calibration_traces, heldout_traces, precisions=("fp32", "int8"),
                  measure_arena: bool = True, check_agreement: bool = False, rule: picking.PickRule | None = None,
                  max_pairs: int = 20_000, equalize_alpha: float = 1.0) -> StreamResult:
    """Run the streaming chain on a causal ``student``. ``calibration_traces`` / ``heldout_traces``: raw (3, n)
    waveforms (n >= 64) streamed from zero states, the first to calibrate INT8 (at most ``max_pairs`` blocks), the
    second to compare each variant in TFLite Micro with the PyTorch stream (:func:`stream_scores`): max |difference|
    in probability and pick agreement by ``rule`` (default: the student's). ``equalize_alpha``: INT8's depthwise ->
    pointwise equalisation (:func:`.int8.equalize_depthwise`, on calibration pairs; 0: off), as the whole-window
    chain's. (Its percentile-clipped ranges are not applied: clipping each CONCATENATION's group lowered the pick
    agreement, docs/design.md "Streaming export".)"""
    precisions = tuple(precisions)
    bad = [p for p in precisions if p not in STREAM_PRECISIONS]
    if bad:
        raise EdgepickError(f"unknown streaming precision(s) {bad}; use {', '.join(STREAM_PRECISIONS)}")
    if not getattr(student, "causal", False):
        raise EdgepickError("the streaming export needs a causal student (student.causal=true)")
    student = student.eval()
    for name, tensor in student.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise EdgepickError(f"student parameter {name} holds NaN or inf: refusing to convert (re-run distill)")
    heldout = [_trace(t, "held-out") for t in heldout_traces]
    calibration = [_trace(t, "calibration") for t in calibration_traces]
    if not heldout or (not calibration and any(p.startswith("int8") for p in precisions)):
        raise EdgepickError(f"the streaming export needs held-out traces (got {len(heldout)}) and, for INT8, "
                            f"calibration traces (got {len(calibration)})")
    rule = rule or student.pick_rule
    step = StreamStep(student)
    result = StreamResult(state_shapes=step.state_shapes(), state_layers=state_layers(student))
    result.macs_per_block = step_macs(step)
    names = io_names(len(result.state_shapes))

    onnx_model = export_stream_onnx(step)
    result.onnx_bytes = onnx_model.SerializeToString()
    norm = NormSettings.of(student)
    probe, expected = record_pairs(step, heldout[:2], norm, limit=64)
    ort = _onnxruntime_outputs(onnx_model, names[0], probe)
    result.onnx_max_error = _max_error(ort, expected)
    if result.onnx_max_error > ONNX_TOLERANCE:
        raise EdgepickError(f"streaming step: onnxruntime differs from PyTorch by {result.onnx_max_error:.2e}")
    keras_model = onnx_to_keras(onnx_model)
    result.keras_max_error = _max_error([keras_call(keras_model, pair) for pair in probe], ort)
    if result.keras_max_error > ONNX_TOLERANCE:
        raise EdgepickError(f"streaming step: the Keras model differs from onnxruntime by {result.keras_max_error:.2e}")
    origin = {layer_name(n.name): module_of(n.name) for n in onnx_model.graph.node}

    pairs = record_pairs(step, calibration, norm, max_pairs)[0] if calibration else []
    result.calibration_pairs = len(pairs)
    int8_model, equalization = keras_model, {}
    if pairs and equalize_alpha > 0 and any(p.startswith("int8") for p in precisions):
        int8_model = onnx_to_keras(onnx_model)  # a copy: the FP32 model keeps PyTorch's weights
        chosen = pairs[:: max(1, len(pairs) // 512)]
        equalization = int8.equalize_depthwise(int8_model, int8.depthwise_pointwise_pairs(onnx_model),
                                               [np.concatenate(k) for k in zip(*chosen)], alpha=equalize_alpha)
        drift = _max_error([keras_call(int8_model, pair) for pair in probe], ort)
        if drift > ONNX_TOLERANCE:
            raise EdgepickError(f"depthwise equalisation changed the streaming step by {drift:.2e}")
    reference = [stream_scores(student, trace, step) for trace in heldout]
    for precision in precisions:
        started = time.perf_counter()
        if precision == "fp32":
            raw = tflite.convert_fp32(keras_model)
        else:
            raw = convert_stream_int8(int8_model, pairs, names[0], float_io=precision == "int8_float_io")
        raw = canonical_order(raw, names)
        tflm.check_ops(raw, origin)  # names the op and layer TFLite Micro cannot run
        device = tflite.strip_strings(raw)
        io_ = tflm_stream.io_lists(device)
        tflm_stream.check_io(io_, result.state_shapes)
        info = {"precision": precision, "ops": tflm.op_counts(device), "bytes": len(device),
                "equalization": equalization if precision != "fp32" else {},
                "bytes_unstripped": len(raw), "sha256": hashlib.sha256(device).hexdigest(), "io": io_,
                "macs_per_block": result.macs_per_block, "graph_macs_per_block": graph_macs(device)}
        if measure_arena:
            sample = tflm.quantize_input(probe[0][0][0], io_["inputs"][0])
            info["arena_bytes"] = tflm.minimal_arena(device, sample)
        outputs = [tflm_stream.run_stream(device, trace, norm, streaming.channel_delays(student),
                                          info.get("arena_bytes"), io_) for trace in heldout]
        info.update(_compare(reference, outputs, rule, student.sampling_rate))
        info["heldout_traces"] = len(heldout)
        info["tolerance"] = STREAM_TOLERANCE[precision]
        info["agreement_required"] = STREAM_AGREEMENT_REQUIRED[precision]
        info["seconds"] = round(time.perf_counter() - started, 2)
        if precision == "fp32" and info["max_abs_error"] > STREAM_TOLERANCE[precision]:
            raise EdgepickError(f"streaming {precision} in TFLite Micro differs from the PyTorch stream by "
                                f"{info['max_abs_error']:.2e} (> {STREAM_TOLERANCE[precision]})")
        if check_agreement and info["reference_picks"] and info["pick_agreement"] < info["agreement_required"]:
            raise EdgepickError(f"streaming {precision}: pick agreement with PyTorch {info['pick_agreement']:.3f} < "
                                f"{info['agreement_required']} ({info['reference_picks']} picks)")
        result.variants[precision] = info
        result.flatbuffers[precision] = device
    return result


def state_layers(student) -> list[str]:
    """The student layer each state is the left context of, in the step's order."""
    names = ["enc1", "enc2", "enc3"] + [f"multiscale.branches.{k}" for k in range(len(student.multiscale.branches))]
    names += ["up3", "up2", "up1"] + [f"refine.{k}" for k in range(student.refine_blocks)]
    return names + (["smoothing"] if student.smooth_output else [])


def _trace(trace, what: str) -> np.ndarray:
    trace = np.asarray(trace, dtype=np.float64)
    if trace.ndim != 2 or trace.shape[0] != 3 or trace.shape[1] < BLOCK:
        raise EdgepickError(f"{what} traces must be (3, n >= {BLOCK}) samples, got {trace.shape}")
    if not np.isfinite(trace).all():
        raise EdgepickError(f"a {what} trace holds NaN or inf samples")
    return trace


def _onnxruntime_outputs(onnx_model, names: list[str], pairs: list) -> list:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [session.run(None, {n: a.astype(np.float32) for n, a in zip(names, pair)}) for pair in pairs]


def _max_error(a: list, b: list) -> float:
    """Max |a - b| over every output of every step, a state's relative to its largest |value| where that is > 1
    (probabilities are <= 1; a state holds activations, float32-exact only to their magnitude)."""
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max() / max(1.0, float(np.abs(y).max())))
               for pa, pb in zip(a, b) for x, y in zip(pa, pb))


def _compare(reference: list, outputs: list, rule: picking.PickRule, rate: float) -> dict:
    """Max and mean |difference| over the samples both streams finished, and pick agreement over the traces (each
    a window of :func:`pipeline.model.picking.pick_agreement`)."""
    finite = [~np.isnan(r).any(axis=1) for r in reference]  # every class finished (each has its own delay)
    diffs = np.concatenate([np.abs(o[f] - r[f]).ravel() for r, o, f in zip(reference, outputs, finite)])
    if not np.isfinite(diffs).all():
        raise EdgepickError("the streaming model in TFLite Micro gave NaN or inf probabilities")
    agreement, picks = picking.pick_agreement([r[f].T for r, f in zip(reference, finite)],
                                              [o[f].T for o, f in zip(outputs, finite)], rule, rate)
    return {"max_abs_error": float(diffs.max()), "mean_abs_error": float(diffs.mean()), "pick_agreement": agreement,
            "reference_picks": picks, "compared_samples": int(sum(int(f.sum()) for f in finite))}
