"""A causal student's streaming model for the firmware: the JSON that describes its state tensors and the C sources
(``stream_model_data.cc/.h``, ``stream_model_config.h``, ``stream_model_ops.h``), generated as
:mod:`.c_array` generates the whole-window model's, every name prefixed ``EDGEPICK_STREAM_`` / ``kEdgepickStream``
so that both sets can sit in one build.

What the C side does with them, per 64-sample block (docs/design.md, "Streaming export"):

1. normalise the block as :class:`pipeline.model.streaming.RunningNormalizer` does (per block and component the
   sum, maximum and minimum of the last ``EDGEPICK_STREAM_NORM_WINDOW_BLOCKS`` blocks; mean and peak in double,
   the result float32) and write it, quantized where the input is int8, to input 0 ([1][64][1][3], Z N E
   interleaved);
2. write each carried state k into input k + 1 (at the start of a stream: its zero value, the zero point of an
   int8 state, 0.0 of a float one);
3. invoke; output 0 is the block's probabilities [1][64][1][3] (P, S, noise): P and noise of the samples
   ``EDGEPICK_STREAM_OUTPUT_DELAY`` before the block's own, S of those ``EDGEPICK_STREAM_S_OUTPUT_DELAY`` before
   (the student's ``s_output_delay``; ``output_delay`` where it has none);
4. copy every new state, outputs 1 ... S, out of the arena into the firmware's own state buffers, all of them
   before writing any input (the planner may place an output where an input was), in the same byte layout.

The picks are the live rule of a causal student (pipeline.model.streaming.live_rule; the firmware's BlockPicker,
ep_block_picker.h, and its Python twin pipeline.model.block_picks): the first ``EDGEPICK_STREAM_WINDOW_SAMPLES`` - 64
samples of a stream are its first window's warm-up. ``stream_model_config.h`` also carries the board's memory budget
(pipeline.deploy.boards.check_stream_budget) with its ``static_assert``\ s, and the quantize id that pairs it with
quantize.out, as model_config.h does.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.artifacts import atomic_dir
from pipeline.deploy.convert.c_array import c_array, model_ops_header
from pipeline.errors import EdgepickError
from pipeline.model.picking import PickRule
from pipeline.model import streaming
from pipeline.model.streaming import BLOCK

_ITEMSIZE = {"int8": 1, "uint8": 1, "int16": 2, "float32": 4}


def state_description(info: dict, layers: list[str], student) -> dict:
    """The JSON the firmware (and a reader) takes the streaming model's interface from: the block, the
    probabilities and each state tensor (input and output index, layer, shape, dtype, quantization, bytes, the
    value a stream starts from), the stream's constants and the copy the caller owes between invokes."""
    io = info["io"]
    if len(io["inputs"]) - 1 != len(layers):
        raise EdgepickError(f"the streaming model carries {len(io['inputs']) - 1} states, the student {len(layers)}")
    states = []
    for k, (layer, tensor) in enumerate(zip(layers, io["inputs"][1:])):
        _, samples, _, channels = tensor["shape"]
        dtype = tensor["dtype"]
        if dtype not in _ITEMSIZE:
            raise EdgepickError(f"state {k} ({layer}) is {dtype}: the firmware keeps int8 or float32 states")
        states.append({"name": f"state_{k:02d}", "layer": layer, "input_index": k + 1, "output_index": k + 1,
                       "shape": tensor["shape"], "samples": samples, "channels": channels, "dtype": dtype,
                       "scale": tensor["scale"], "zero_point": tensor["zero_point"],
                       "bytes": samples * channels * _ITEMSIZE[dtype],
                       "start_value": tensor["zero_point"] if dtype == "int8" else 0.0})
    rate = float(student.sampling_rate)
    return {
        "precision": info["precision"], "bytes": info["bytes"], "sha256": info["sha256"],
        "arena_bytes": info.get("arena_bytes"), "ops": info["ops"],
        "block_samples": BLOCK, "output_delay_samples": int(student.output_delay),
        "s_output_delay_samples": streaming.channel_delays(student)[1], "window_samples": int(student.in_samples),
        "s_needs_horizontals": bool(student.default_args.get("s_needs_horizontals", False)),
        "norm_window_samples": int(student.norm_window), "norm_window_blocks": int(student.norm_window) // BLOCK,
        "norm_eps": float(student.norm_eps), "norm_per_sample": bool(getattr(student, "sample_norm", False)),
        "norm_lag_samples": int(getattr(student, "norm_lag", 0)),
        "sampling_rate": rate, "component_order": "ZNE", "class_order": "PSN",
        "input": dict(io["inputs"][0], name="block", index=0),
        "output": dict(io["outputs"][0], name="probabilities", index=0),
        "states": states, "state_bytes": sum(s["bytes"] for s in states),
        "macs_per_block": info["macs_per_block"], "macs_per_second": info["macs_per_block"] * rate / BLOCK,
        "copy": "after each invoke copy every output state 1..S out of the arena, all before any input is written; "
                "before each invoke write the block into input 0 and each state into input k (the same byte layout "
                "[1][samples][1][channels]); a stream starts from each state's start_value",
    }


def stream_config_header(description: dict, rule: PickRule, budget: dict | None = None,
                         quantize_id: str | None = None) -> str:
    """``stream_model_config.h``: the streaming model's constants (:func:`state_description`), the pick rule, the
    board's memory budget (``budget``: :func:`pipeline.deploy.boards.check_stream_budget`; None: the measured arena,
    no budget lines) and the id of the ``make quantize`` run (None: no line)."""
    d = description
    arena_alloc = budget["arena_alloc_bytes"] if budget else int(d["arena_bytes"] or 0)
    lines = [
        "// Generated by `make quantize` (pipeline/deploy/convert/stream_c.py). Do not edit.",
        "#ifndef EDGEPICK_STREAM_MODEL_CONFIG_H_", "#define EDGEPICK_STREAM_MODEL_CONFIG_H_", "", "#include <stdint.h>", "",
        *([f"#define EDGEPICK_STREAM_QUANTIZE_ID \"{quantize_id}\"  // quantize_report.json's quantize_id, beside the "
           "TFLite variants written with it"] if quantize_id else []),
        "// The streaming model of a causal student (issue 30): block + states in, probabilities + new states out",
        f"#define EDGEPICK_STREAM_PRECISION \"{d['precision']}\"",
        f"#define EDGEPICK_STREAM_MODEL_BYTES {d['bytes']}u  // g_edgepick_stream_model_len",
        f"#define EDGEPICK_STREAM_MODEL_SHA256 \"{d['sha256']}\"",
        f"#define EDGEPICK_STREAM_ARENA_BYTES {int(d['arena_bytes'] or 0)}u  // minimal TFLite Micro arena, measured (64-bit host)",
        f"#define EDGEPICK_STREAM_ARENA_ALLOC_BYTES {arena_alloc}u  // with the margin, rounded to 16",
        f"#define EDGEPICK_STREAM_MACS_PER_BLOCK {int(d['macs_per_block'])}u",
        f"#define EDGEPICK_STREAM_BLOCK_SAMPLES {d['block_samples']}  // samples per invoke",
        f"#define EDGEPICK_STREAM_OUTPUT_DELAY {d['output_delay_samples']}  // P and noise scores are of the samples this many earlier",
        f"#define EDGEPICK_STREAM_S_OUTPUT_DELAY {d['s_output_delay_samples']}  // S scores are of the samples this many earlier",
        f"#define EDGEPICK_STREAM_WINDOW_SAMPLES {d['window_samples']}  // the live rule's window: its first WINDOW - BLOCK samples warm up",
        f"#define EDGEPICK_STREAM_SAMPLING_RATE_HZ {d['sampling_rate']!r}f",
        "#define EDGEPICK_STREAM_COMPONENT_ORDER \"ZNE\"  // input [1][64][1][3], interleaved per sample",
        "#define EDGEPICK_STREAM_CLASS_ORDER \"PSN\"  // output [1][64][1][3]",
        "// running normalisation: each block demeaned per component by the mean of the last NORM_WINDOW_BLOCKS blocks",
        "// and divided by (1 + EPS) x the largest excursion from it over those samples and all components (0 -> 1);",
        "// EPS a double, as pipeline.model.streaming.RunningNormalizer's",
        f"#define EDGEPICK_STREAM_NORM_WINDOW_SAMPLES {d['norm_window_samples']}",
        f"#define EDGEPICK_STREAM_NORM_WINDOW_BLOCKS {d['norm_window_blocks']}",
        f"#define EDGEPICK_STREAM_NORM_EPS {float(d['norm_eps'])!r}",
        f"#define EDGEPICK_STREAM_NORM_PER_SAMPLE {int(bool(d.get('norm_per_sample')))}  // 1: the peak up to each "
        "sample, the mean of the NORM_WINDOW_BLOCKS blocks before (RunningNormalizer's per_sample)",
        f"#define EDGEPICK_STREAM_NORM_LAG {int(d.get('norm_lag_samples', 0))}  // per sample: the peak of the samples "
        "this many before, the input clipped to +-8 (RunningNormalizer's lag)",
        f"#define EDGEPICK_STREAM_S_NEEDS_HORIZONTALS {int(bool(d.get('s_needs_horizontals')))}"
        "  // no S where the window's N and E are flat (a vertical-only station)",
        f"#define EDGEPICK_STREAM_INPUT_INT8 {1 if d['input']['dtype'] == 'int8' else 0}",
        f"#define EDGEPICK_STREAM_INPUT_SCALE {float(d['input']['scale'])!r}f",
        f"#define EDGEPICK_STREAM_INPUT_ZERO_POINT {d['input']['zero_point']}",
        f"#define EDGEPICK_STREAM_OUTPUT_INT8 {1 if d['output']['dtype'] == 'int8' else 0}",
        f"#define EDGEPICK_STREAM_OUTPUT_SCALE {float(d['output']['scale'])!r}f",
        f"#define EDGEPICK_STREAM_OUTPUT_ZERO_POINT {d['output']['zero_point']}",
        "",
        "// The carried states: input k + 1 and output k + 1 of the model, [1][SAMPLES][1][CHANNELS] each. After an",
        "// invoke copy every output state out of the arena before writing any input; before the next, write them all",
        f"#define EDGEPICK_STREAM_STATE_COUNT {len(d['states'])}",
        f"#define EDGEPICK_STREAM_STATES_INT8 {1 if d['states'] and d['states'][0]['dtype'] == 'int8' else 0}",
        f"#define EDGEPICK_STREAM_STATE_BYTES {d['state_bytes']}u  // all states together",
    ]
    for k, s in enumerate(d["states"]):
        lines.append(f"#define EDGEPICK_STREAM_STATE_{k}_BYTES {s['bytes']}u  // {s['layer']}: {s['samples']} samples x "
                     f"{s['channels']} channels, {s['dtype']}, starts at {s['start_value']}")
    lists = {"uint16_t kEdgepickStreamStateBytes": [str(s["bytes"]) for s in d["states"]],
             "int8_t kEdgepickStreamStateStart": [str(int(s["start_value"])) for s in d["states"]]}
    for name, values in lists.items():
        lines.append(f"static const {name}[{max(1, len(values))}] = {{{', '.join(values) or '0'}}};")
    lines += [
        "// (kEdgepickStreamStateStart: an int8 state's zero point; a float state starts at 0.0f)", "",
        "// The student's pick rule (pipeline.model.picking.PickRule)",
        f"#define EDGEPICK_STREAM_P_THRESHOLD {float(rule.p_threshold)!r}f",
        f"#define EDGEPICK_STREAM_S_THRESHOLD {float(rule.s_threshold)!r}f",
        f"#define EDGEPICK_STREAM_PICK_TOP_TOLERANCE {-1.0 if rule.first_maximum else float(rule.top_tolerance)!r}f",
        f"#define EDGEPICK_STREAM_PICK_TOP_HALF_WIDTH {int(rule.top_half_width)}",
        f"#define EDGEPICK_STREAM_PICK_TOLERANCE_S {float(rule.match_tolerance_s)!r}f  // picks within this agree",
    ]
    if budget:
        lines += ["", f"// memory budget for board {budget['board']} ({budget['description']}), margin {budget['margin']:.0%}",
                  "// (the board a build runs on is EDGEPICK_BOARD_NAME; the firmware warns at boot when the two differ)",
                  f"#define EDGEPICK_STREAM_MODEL_BOARD \"{budget['board']}\""]
        for region in budget["regions"]:
            key = region["name"].upper()
            lines += [f"#define EDGEPICK_STREAM_BUDGET_{key}_CAPACITY {region['capacity']}u",
                      f"#define EDGEPICK_STREAM_BUDGET_{key}_USED {region['used']}u",
                      f"static_assert(EDGEPICK_STREAM_BUDGET_{key}_USED <= EDGEPICK_STREAM_BUDGET_{key}_CAPACITY, "
                      f"\"edgepick: {region['name']} budget exceeded on {budget['board']}\");"]
        lines.append("static_assert(EDGEPICK_STREAM_ARENA_ALLOC_BYTES >= EDGEPICK_STREAM_ARENA_BYTES, "
                     "\"edgepick: arena smaller than measured\");")
    lines += ["", "#endif  // EDGEPICK_STREAM_MODEL_CONFIG_H_", ""]
    return "\n".join(lines)


def stream_ops_header(ops: list[str]) -> str:
    """``stream_model_ops.h``: registers exactly the streaming model's ops (:func:`.c_array.model_ops_header`)."""
    return model_ops_header(ops, "streaming model", "STREAM", "RegisterStreamOps", "stream_c.py")


def stream_data_files(data: bytes, description: dict) -> dict[str, str]:
    header = (
        "// Generated by `make quantize` (pipeline/deploy/convert/stream_c.py). Do not edit.\n"
        "#ifndef EDGEPICK_STREAM_MODEL_DATA_H_\n#define EDGEPICK_STREAM_MODEL_DATA_H_\n\n"
        f"// {description['precision']} streaming model, {len(data)} bytes, sha256 {description['sha256']} (.tflite)\n"
        "extern const unsigned char g_edgepick_stream_model[];\nextern const unsigned int g_edgepick_stream_model_len;\n\n"
        "#endif  // EDGEPICK_STREAM_MODEL_DATA_H_\n"
    )
    source = (
        "// Generated by `make quantize` (pipeline/deploy/convert/stream_c.py). Do not edit.\n"
        "#include \"stream_model_data.h\"\n\n"
        f"alignas(16) const unsigned char g_edgepick_stream_model[] = {{\n{c_array('g_edgepick_stream_model', data)}\n}};\n"
        f"const unsigned int g_edgepick_stream_model_len = {len(data)};\n"
    )
    return {"stream_model_data.h": header, "stream_model_data.cc": source}


def stream_firmware_files(payload: bytes, description: dict, rule: PickRule, budget: dict | None = None,
                          quantize_id: str | None = None) -> dict[str, str]:
    """The streaming model's C sources and its state description: file name -> text (``budget``, ``quantize_id`` as
    in :func:`stream_config_header`)."""
    files = stream_data_files(payload, description)
    files["stream_model_config.h"] = stream_config_header(description, rule, budget, quantize_id)
    files["stream_model_ops.h"] = stream_ops_header(list(description["ops"]))
    files["stream_states.json"] = json.dumps(description, indent=2) + "\n"
    return files


def write_stream_firmware(out_dir: str | Path, payload: bytes, description: dict, rule: PickRule,
                          budget: dict | None = None, quantize_id: str | None = None) -> dict[str, str]:
    """The streaming model's C sources and its state description into ``out_dir``, atomically."""
    files = stream_firmware_files(payload, description, rule, budget, quantize_id)
    with atomic_dir(Path(out_dir)) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return files
