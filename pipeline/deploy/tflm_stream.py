"""A causal student's streaming model in the TensorFlow Lite Micro interpreter, block by block, its states fed back
as the firmware feeds them (pipeline/deploy/convert/stream_export.py makes the model).

The model's inputs are ``block`` (1, 64, 1, 3): 64 normalised samples, interleaved Z, N, E, then each carried
state; its outputs ``probabilities`` (1, 64, 1, 3) (P, S, noise; each ``output_delay`` samples late), then each new
state, in the inputs' order and shapes. A stream starts from zero states: 0.0 for a float state, the zero point for
an int8 one (the int8 of 0.0). After each invoke every output state is copied out of the arena first, then into the
input states before the next invoke (:func:`run_stream`): TFLite Micro's planner may put an output where an input
lived (an input's memory is free after its last reader), so copying output k into input k while output k + 1 is
still to be read could overwrite it.
"""

from __future__ import annotations

import numpy as np

from pipeline.deploy import tflm
from pipeline.errors import EdgepickError
from pipeline.model.streaming import BLOCK, NormSettings, at_samples


def io_lists(flatbuffer: bytes) -> dict:
    """``{"inputs": [...], "outputs": [...]}``: shape, dtype name, scale and zero point (0 for float) of each."""
    interpreter, exc, err = tflm.load(flatbuffer, tflm.MAX_ARENA)
    if interpreter is None:
        raise EdgepickError(f"TFLite Micro cannot load the streaming model: {err.strip() or exc}")
    model = tflm.schema().Model.GetRootAsModel(flatbuffer, 0)
    graph = model.Subgraphs(0)

    def describe(d) -> dict:
        q = d.get("quantization_parameters", {})
        scales = [float(s) for s in np.ravel(q.get("scales", []))]
        zeros = [int(z) for z in np.ravel(q.get("zero_points", []))]
        return {"shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "scale": scales[0] if scales else 0.0, "zero_point": zeros[0] if zeros else 0}

    return {"inputs": [describe(interpreter.get_input_details(k)) for k in range(graph.InputsLength())],
            "outputs": [describe(interpreter.get_output_details(k)) for k in range(graph.OutputsLength())]}


def zero_state(details: dict) -> np.ndarray:
    """A state tensor of a stream that starts now: 0.0, quantized (its zero point) where the state is int8."""
    if details["dtype"] == "int8":
        return np.full(details["shape"], details["zero_point"], dtype=np.int8)
    return np.zeros(details["shape"], dtype=np.dtype(details["dtype"]))


def check_io(io: dict, state_shapes: list[tuple[int, int, int]] | None = None) -> None:
    """The streaming model's interface, or one error line: a (1, 64, 1, 3) block and probabilities, then each
    state as an input and an output of the same shape and quantization (so the firmware copies its bytes back
    unchanged: TFLite's CONCATENATION and STRIDED_SLICE keep one scale, and a converter that requantized a state
    would break that), in the step's order and shapes (``state_shapes``, (1, C, K) each) when given."""
    inputs, outputs = io["inputs"], io["outputs"]
    if len(inputs) != len(outputs) or len(inputs) < 1:
        raise EdgepickError(f"streaming model has {len(inputs)} inputs and {len(outputs)} outputs: a block and each "
                            "state in, the probabilities and each new state out")
    for name, d in (("block", inputs[0]), ("probabilities", outputs[0])):
        if d["shape"] != [1, BLOCK, 1, 3]:
            raise EdgepickError(f"streaming model's {name} is {d['shape']}, not [1, {BLOCK}, 1, 3]")
    if state_shapes is not None and len(state_shapes) != len(inputs) - 1:
        raise EdgepickError(f"streaming model carries {len(inputs) - 1} states, the student's step {len(state_shapes)}")
    for k, (i, o) in enumerate(zip(inputs[1:], outputs[1:])):
        if i["shape"] != o["shape"] or i["dtype"] != o["dtype"]:
            raise EdgepickError(f"state {k}: input {i['shape']} {i['dtype']} but output {o['shape']} {o['dtype']}")
        if i["dtype"] == "int8" and (not np.float32(i["scale"]) == np.float32(o["scale"])
                                     or i["zero_point"] != o["zero_point"]):
            raise EdgepickError(f"state {k}: the converter quantized its input (scale {i['scale']!r}, zero point "
                                f"{i['zero_point']}) and output (scale {o['scale']!r}, zero point {o['zero_point']}) "
                                "differently: its bytes cannot be fed back; export the states as float")
        if state_shapes is not None:
            _, channels, keep = state_shapes[k]
            if i["shape"] != [1, keep, 1, channels]:
                raise EdgepickError(f"state {k} is {i['shape']} in the model, [1, {keep}, 1, {channels}] in the step")


def run_stream(flatbuffer: bytes, waveform: np.ndarray, norm: NormSettings, delays, arena: int | None = None,
               io: dict | None = None) -> np.ndarray:
    """A causal student's probabilities (n, 3) over ``waveform`` (3, n) as the streaming model gives them in
    TFLite Micro: :func:`pipeline.model.stream_step.stream_scores`'s layout (each score at the sample it is of,
    NaN where no block has finished it), normalised block by block as it normalises, from zero states.
    ``norm``: the student's normalisation (:class:`NormSettings`); ``delays``: each class's
    (:func:`pipeline.model.streaming.channel_delays`)."""
    written = run_stream_blocks(flatbuffer, waveform, norm, arena, io)
    return at_samples(written, np.asarray(waveform).shape[1], delays)


def run_stream_blocks(flatbuffer: bytes, waveform: np.ndarray, norm: NormSettings, arena: int | None = None,
                      io: dict | None = None) -> np.ndarray:
    """The streaming model's output (blocks x 64, 3) at each sample of ``waveform`` (3, n)'s whole blocks, as the
    firmware gets it: each block normalised into input 0 (``norm``'s
    :class:`~pipeline.model.streaming.RunningNormalizer`; an int8 input by its ``quantized`` pass), the states fed back from zero states, output 0 dequantized; not moved
    back by the delays (pipeline.model.block_picks does that). ``waveform``'s samples as the firmware holds them:
    float32 values (a float64 array of them is fine)."""
    interpreter, exc, err = tflm.load(flatbuffer, arena or tflm.MAX_ARENA)
    if interpreter is None:
        raise EdgepickError(f"TFLite Micro cannot load the streaming model: {err.strip() or exc}")
    io = io or io_lists(flatbuffer)
    check_io(io)
    waveform = np.asarray(waveform, dtype=np.float64)
    if waveform.ndim != 2 or waveform.shape[0] != 3:
        raise EdgepickError(f"a stream is (3, n) samples, got {waveform.shape}")
    normalizer = norm.normalizer(3)
    states = [zero_state(d) for d in io["inputs"][1:]]
    blocks = waveform.shape[1] // BLOCK
    out = np.full((blocks * BLOCK, 3), np.nan, dtype=np.float32)
    block_input = io["inputs"][0]
    for start in range(0, blocks * BLOCK, BLOCK):
        raw = waveform[:, start : start + BLOCK]
        if block_input["dtype"] == "int8":  # normalised and quantized in one pass, as the firmware does
            quantized = normalizer.quantized(raw, block_input["scale"], block_input["zero_point"])
            interpreter.set_input(quantized.T.reshape(block_input["shape"]), 0)
        else:
            interpreter.set_input(tflm.quantize_input(normalizer(raw), block_input), 0)
        for k, state in enumerate(states):
            interpreter.set_input(state, k + 1)
        interpreter.invoke()
        out[start : start + BLOCK] = tflm.dequantize_output(interpreter.get_output(0), io["outputs"][0])
        states = [np.array(interpreter.get_output(k + 1), copy=True) for k in range(len(states))]  # all out first
    return out
