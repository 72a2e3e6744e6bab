"""The firmware's streaming mode cross-built for the emulated RV32IMC board (firmware/src/stream_model.cc, the real
TFLite Micro): a tiny causal student's INT8 streaming model, one 64-sample block per Invoke with its states carried,
picks equal to the Python twin's (pipeline/deploy/stream_firmware.py) for both kernel sets, per-phase delays
included; each block's instructions in and outside Invoke; a model folder whose JSON or header does not match its
flatbuffer refused in one line, by Python and by the firmware at boot. Skips as tests/test_emulator.py does."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from pipeline.deploy import boards, emulator, stream_firmware
from pipeline.deploy.serial_protocol import sample_lines
from pipeline.errors import EdgepickError
from pipeline.model.picking import PickRule
from pipeline.stages.firmware_sim import STREAM_PARTS, firmware_run, stream_throughput

from host_core import picking_causal_stream
from test_emulator import tflm_lib  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow  # the emulator, and a streaming student converted for it


@pytest.fixture(scope="module")
def stream_model(tmp_path_factory):
    """The model folder make quantize writes for a causal student (stream_c.py's writer, the ESP32-C3's budget): S
    picked 40 samples later than P (student.s_output_delay), its input normalised per sample with a lag
    (student.sample_norm, student.norm_lag)."""
    from pipeline.deploy.convert import stream_c

    x, student, result = picking_causal_stream(80, 512, s_delay=120, measure_arena=True, sample_norm=True,
                                               norm_lag=100)
    student.default_args.update(PickRule(p_threshold=0.4, s_threshold=0.4).annotate_args())
    description = stream_c.state_description(result.variants["int8"], result.state_layers, student)
    budget = boards.check_stream_budget(boards.get_board("esp32c3"), description)
    folder = tmp_path_factory.mktemp("stream_model")
    stream_c.write_stream_firmware(folder, result.flatbuffers["int8"], description, student.pick_rule, budget, "feedbeef")
    return folder, x


@pytest.fixture(scope="module")
def images(tflm_lib, stream_model, tmp_path_factory):  # noqa: F811 (tflm_lib: the fixture)
    return emulator.build_firmware(boards.get_board("esp32c3"), stream_model[0], tmp_path_factory.mktemp("build"),
                                   tflm_lib)


def test_emulated_streaming_mode_picks_as_its_twin(images, stream_model, tmp_path):
    folder, x = stream_model
    model = stream_firmware.read(folder)
    assert model.live_rule.lookaheads == {"P": 80, "S": 120}
    assert model.description["norm_per_sample"] and model.description["norm_lag_samples"] == 100
    reference = sorted((p["phase"], int(p["sample"]), int(p["fwhm"]), False) for p in stream_firmware.twin_picks(model, x))
    assert len(reference) >= 3
    results = {}
    for kernels, elf in images.elf.items():
        status, lines = emulator.run_firmware(elf, list(sample_lines(x)), tmp_path / kernels)
        assert status == 0, lines[-5:]
        outcome = firmware_run(lines)
        assert outcome["picks"] == reference, kernels
        assert not outcome["errors"] and any("streaming mode" in m for m in outcome["info"])
        assert len(outcome["instructions"]) == x.shape[1] // 64  # one Invoke per whole block, the partial one not run
        assert all(t[part] > 0 for t in outcome["timings"] for part in STREAM_PARTS)
        results[kernels] = [outcome]
    counts = stream_throughput(results, 100.0, x.shape[1] / 100.0)
    per_second = counts["instructions_per_second_of_data"]
    assert per_second["esp_nn"]["streaming"] < per_second["reference"]["streaming"]
    assert counts["instructions_outside_invoke_per_block"]["esp_nn"] == counts["instructions_outside_invoke_per_block"]["reference"]


def test_a_model_folder_that_does_not_match_is_refused_in_one_line(stream_model, images, tflm_lib, tmp_path):  # noqa: F811
    folder, x = stream_model
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    description = json.loads((bad / "stream_states.json").read_text())
    for change, message in (({"block_samples": 32}, "block is 32 samples"),
                            ({"s_output_delay_samples": 7}, "s_output_delay_samples is 7"),
                            ({"sha256": "0" * 64}, "describes another flatbuffer")):
        (bad / "stream_states.json").write_text(json.dumps({**description, **change}))
        with pytest.raises(EdgepickError, match=message) as error:
            stream_firmware.read(bad)
        assert "\n" not in str(error.value)
    states = [dict(s) for s in description["states"]]
    states[0]["zero_point"] += 1
    (bad / "stream_states.json").write_text(json.dumps({**description, "states": states}))
    with pytest.raises(EdgepickError, match="state 0"):
        stream_firmware.read(bad)

    # the firmware itself: a header whose state sizes are not the flatbuffer's stops at boot, in one error line
    (bad / "stream_states.json").write_text(json.dumps(description))
    header = (bad / "stream_model_config.h").read_text()
    sizes = re.search(r"kEdgepickStreamStateBytes\[\d+\] = \{(\d+)", header)
    header = header.replace(sizes.group(0), sizes.group(0)[: -len(sizes.group(1))] + str(int(sizes.group(1)) + 8))
    (bad / "stream_model_config.h").write_text(header)
    broken = emulator.build_firmware(boards.get_board("esp32c3"), bad, tmp_path / "build", tflm_lib)
    status, lines = emulator.run_firmware(broken.elf["esp_nn"], list(sample_lines(x[:, :640])), tmp_path / "run")
    errors = [json.loads(line)["msg"] for line in lines if line.startswith('{"type":"error"')]
    assert status == 1 and len(errors) == 1 and "does not match stream_model_config.h: state 0" in errors[0]
