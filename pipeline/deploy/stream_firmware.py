"""A streaming model in the firmware's model folder, read back and checked, and the Python twin of the firmware's
streaming mode on it (``make firmware-sim``, tests).

The folder (``quantize.firmware_dir``, written by pipeline/deploy/stream_quantize.py) holds the flatbuffer
(``stream_model_data.cc``), its constants (``stream_model_config.h``) and its state description
(``stream_states.json``). :func:`read` refuses, in one line, a folder whose three disagree: a JSON of another model,
a block that is not 64 samples, states of other shapes or quantization than the flatbuffer's, delays or a window
the header does not have. :func:`twin_picks` is what the firmware prints on a gap-free stream: the model in the
``tflite-micro`` interpreter block by block (pipeline.deploy.tflm_stream.run_stream_blocks), then the block picker
(pipeline.model.block_picks).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.deploy import tflm_stream
from pipeline.deploy.convert.c_array import parse_c_array, read_model_config
from pipeline.errors import EdgepickError
from pipeline.model.block_picks import block_stream_picks, flat_blocks
from pipeline.model.picking import LiveRule, PickRule
from pipeline.model.streaming import BLOCK, NormSettings, block_live_rule

CONFIG_HEADER, STATES_JSON, DATA_SOURCE = "stream_model_config.h", "stream_states.json", "stream_model_data.cc"


def is_stream_model(model_dir: str | Path) -> bool:
    """Whether the firmware built from ``model_dir`` runs its streaming mode (firmware/src/model_picker.h)."""
    return (Path(model_dir) / CONFIG_HEADER).is_file()


@dataclass(frozen=True)
class StreamModel:
    values: dict[str, str]  # stream_model_config.h's #defines
    description: dict  # stream_states.json
    flatbuffer: bytes

    def number(self, name: str) -> float:
        return float(self.values[f"EDGEPICK_STREAM_{name}"].rstrip("fu"))

    @property
    def rate(self) -> float:
        return self.number("SAMPLING_RATE_HZ")

    @property
    def live_rule(self) -> LiveRule:
        return block_live_rule(int(self.number("WINDOW_SAMPLES")), int(self.number("OUTPUT_DELAY")),
                               int(self.number("S_OUTPUT_DELAY")))

    @property
    def pick_rule(self) -> PickRule:
        top = self.number("PICK_TOP_TOLERANCE")
        return PickRule(p_threshold=self.number("P_THRESHOLD"), s_threshold=self.number("S_THRESHOLD"),
                        top_tolerance=None if top < 0 else top, top_half_width=int(self.number("PICK_TOP_HALF_WIDTH")))


def read(model_dir: str | Path) -> StreamModel:
    """The streaming model of ``model_dir``, its header, JSON and flatbuffer checked against each other."""
    model_dir = Path(model_dir)
    values = read_model_config(model_dir / CONFIG_HEADER)
    try:
        description = json.loads((model_dir / STATES_JSON).read_text())
    except (OSError, ValueError) as error:
        raise EdgepickError(f"{model_dir / STATES_JSON} cannot be read ({error}): run `make quantize` again") from None
    if not (model_dir / DATA_SOURCE).is_file():
        raise EdgepickError(f"{model_dir / DATA_SOURCE} is missing: run `make quantize` again")
    flatbuffer = parse_c_array((model_dir / DATA_SOURCE).read_text(), "g_edgepick_stream_model")
    model = StreamModel(values, description, flatbuffer)
    check(model, model_dir)
    return model


def check(model: StreamModel, where: Path) -> None:
    """One error line where the JSON, the header and the flatbuffer of a streaming model disagree."""
    d, v = model.description, model.values

    def refuse(what: str):
        raise EdgepickError(f"{where}: the streaming model's {what} (run `make quantize` again)")

    try:
        if d.get("block_samples") != BLOCK:
            refuse(f"block is {d.get('block_samples')} samples in {STATES_JSON}; the firmware runs {BLOCK}")
        if v.get("EDGEPICK_STREAM_BLOCK_SAMPLES") != str(BLOCK):
            refuse(f"block is {v.get('EDGEPICK_STREAM_BLOCK_SAMPLES')} samples in {CONFIG_HEADER}; the firmware runs {BLOCK}")
        if d.get("sha256") != hashlib.sha256(model.flatbuffer).hexdigest():
            refuse(f"{STATES_JSON} describes another flatbuffer (sha256 {str(d.get('sha256'))[:12]}) than {DATA_SOURCE}'s")
        for key, name in (("output_delay_samples", "OUTPUT_DELAY"), ("s_output_delay_samples", "S_OUTPUT_DELAY"),
                          ("window_samples", "WINDOW_SAMPLES"), ("norm_window_blocks", "NORM_WINDOW_BLOCKS")):
            if key not in d or f"EDGEPICK_STREAM_{name}" not in v:
                refuse(f"{key} / EDGEPICK_STREAM_{name} is missing")
            if int(d[key]) != int(model.number(name)):
                refuse(f"{key} is {d[key]} in {STATES_JSON}, EDGEPICK_STREAM_{name} {v[f'EDGEPICK_STREAM_{name}']}")
        for key, name in (("norm_per_sample", "NORM_PER_SAMPLE"), ("norm_lag_samples", "NORM_LAG")):  # 0: older folders
            if int(d.get(key, 0)) != int(v.get(f"EDGEPICK_STREAM_{name}", "0")):
                refuse(f"{key} is {d.get(key, 0)} in {STATES_JSON}, EDGEPICK_STREAM_{name} "
                       f"{v.get(f'EDGEPICK_STREAM_{name}', 'missing')} in {CONFIG_HEADER}")
        io = tflm_stream.io_lists(model.flatbuffer)
        tflm_stream.check_io(io, [(1, s["channels"], s["samples"]) for s in d["states"]])
        for k, (state, tensor) in enumerate(zip(d["states"], io["inputs"][1:])):
            if state["dtype"] != tensor["dtype"] or state["zero_point"] != tensor["zero_point"] or \
                    not np.float32(state["scale"]) == np.float32(tensor["scale"]):
                refuse(f"state {k} is {state['dtype']} (scale {state['scale']}, zero point {state['zero_point']}) in "
                       f"{STATES_JSON}, {tensor['dtype']} ({tensor['scale']}, {tensor['zero_point']}) in the flatbuffer")
        for name, tensor in (("input", io["inputs"][0]), ("output", io["outputs"][0])):
            mine = d[name]
            if mine["dtype"] != tensor["dtype"] or mine["zero_point"] != tensor["zero_point"]:
                refuse(f"{name} is {mine['dtype']} (zero point {mine['zero_point']}) in {STATES_JSON}, "
                       f"{tensor['dtype']} ({tensor['zero_point']}) in the flatbuffer")
    except (KeyError, TypeError, ValueError) as error:
        refuse(f"{STATES_JSON} or {CONFIG_HEADER} lacks or mangles {error}")


def twin_picks(model: StreamModel, waveform: np.ndarray, t0: float = 0.0) -> list[dict]:
    """The picks the firmware's streaming mode prints on ``waveform`` (3, n) from sample 0, then "#end": each dict
    as :meth:`PickRule.picks` with "reported". The samples are taken as the firmware parses them (float32)."""
    d = model.description
    x = np.asarray(waveform, dtype=np.float32)
    written = tflm_stream.run_stream_blocks(model.flatbuffer, x.astype(np.float64), NormSettings.described(d))
    live = model.live_rule
    flat = flat_blocks(x, live.in_samples) if d.get("s_needs_horizontals") else None
    picks, _ = block_stream_picks(written, x.shape[1], live, model.pick_rule, model.rate, t0, flat)
    return picks
