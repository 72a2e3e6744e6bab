"""The PlatformIO project and the firmware stage (platformio.ini parses, the stage's errors are one line) and the
firmware glue's syntax against the host stubs of ESP-IDF and TFLite Micro (exact replay and live mode)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from pipeline.model.picking import LiveRule, PickRule

from host_core import CORE, FIRMWARE, pio

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no host g++")


# ---------------------------------------------------------------------------------------------------------------
# PlatformIO project and the firmware stage
# ---------------------------------------------------------------------------------------------------------------

def test_platformio_ini_is_valid():
    result = subprocess.run([pio(), "project", "config", "--json-output"], cwd=FIRMWARE, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    sections = {name: dict(options) for name, options in json.loads(result.stdout)}
    envs = {name.split(":", 1)[1]: opts for name, opts in sections.items() if name.startswith("env:")}
    from pipeline.deploy import boards

    assert set(envs) >= set(boards.BOARDS)  # one environment per board, named as the board
    for name in boards.BOARDS:  # ... that says which board it is (model_config.h no longer overrides it)
        assert f'-DEDGEPICK_BOARD_NAME=\\"{name}\\"' in " ".join(envs[name]["build_flags"]), name
    assert envs["esp32c3"]["board"] == "esp32-c3-devkitm-1"
    for opts in envs.values():
        assert opts["framework"] == ["espidf"] and opts["platform"].startswith("espressif32")
    wrover_flags = " ".join(envs["esp32-psram4"]["build_flags"])
    assert "-DBOARD_HAS_PSRAM" in wrover_flags and "-mfix-esp32-psram-cache-issue" in wrover_flags
    assert envs["esp32s3-psram8"]["board_build.psram_type"] == "opi"
    assert "BOARD_HAS_PSRAM" not in " ".join(envs["esp32"].get("build_flags", []))
    component = (FIRMWARE / "src" / "idf_component.yml").read_text()
    assert "espressif/esp-tflite-micro" in component
    for name, mode in (("esp32-psram4", "CONFIG_SPIRAM_MODE_QUAD=y"), ("esp32s3-psram8", "CONFIG_SPIRAM_MODE_OCT=y")):
        files = envs[name]["board_build.cmake_extra_args"].split("=", 1)[1].split(";")
        text = "".join((FIRMWARE / f).read_text() for f in files)
        assert "CONFIG_SPIRAM=y" in text and mode in text, name
    assert "CONFIG_SPIRAM" not in (FIRMWARE / "sdkconfig.defaults").read_text()


def test_firmware_stage_errors_are_one_line(tmp_path, monkeypatch):
    from pipeline.config import Config
    from pipeline.stages import firmware as flash
    from pipeline.errors import EdgepickError

    monkeypatch.setattr(flash, "MODEL_CONFIG", tmp_path / "missing.h")
    with pytest.raises(EdgepickError, match="make quantize"):
        flash.read_model_config(flash.MODEL_CONFIG)
    header = tmp_path / "model_config.h"
    header.write_text("#define EDGEPICK_BUDGET_SRAM_CAPACITY 100u\n#define EDGEPICK_BUDGET_SRAM_USED 200u\n")
    with pytest.raises(EdgepickError, match="budget exceeded"):
        flash.budget_lines(flash.read_model_config(header))
    with pytest.raises(EdgepickError, match="unknown board 'arduino-uno'"):
        flash.pio_env("arduino-uno")
    monkeypatch.setattr(flash, "read_model_config", lambda path=None: {"EDGEPICK_BUDGET_SRAM_CAPACITY": "300u",
                                                                      "EDGEPICK_BUDGET_SRAM_USED": "200u",
                                                                      "EDGEPICK_QUANTIZE_ID": "0123abcd"})

    def no_pio():
        raise EdgepickError("PlatformIO is not installed: pip install platformio")

    monkeypatch.setattr(flash, "pio_executable", no_pio)
    config = Config()
    config.board.name = "esp32-psram4"
    with pytest.raises(EdgepickError, match="predates model_ops.h"):  # a model folder of an older make quantize
        flash.build(config)
    (tmp_path / "model_ops.h").write_text("// ops\n")
    config.quantize.out = str(tmp_path / "tflite")  # the TFLite folder of the same make quantize run
    (tmp_path / "tflite").mkdir()
    (tmp_path / "tflite" / "quantize_report.json").write_text('{"quantize_id": "0123abcd"}')
    with pytest.raises(EdgepickError, match="PlatformIO is not installed"):
        flash.build(config)
    for output in ("PlatformIO: HTTPClientError: could not resolve registry", "Error: Unknown board ID 'esp32dev'"):
        message = flash._explain_pio_failure(output, "esp32")
        assert "\n" not in message and "espressif32" in message



@pytest.mark.parametrize("defines,precision", [(["-DEDGEPICK_SAMPLE_SOURCE=0"], "fp16"),
                                               (["-DEDGEPICK_SAMPLE_SOURCE=1", "-DBOARD_HAS_PSRAM", "-DCONFIG_SPIRAM"],
                                                "int8")])
def test_firmware_glue_syntax(defines, precision, tmp_path):
    """A typo check of firmware/src/*.cc against the one fake of ESP-IDF (firmware/sim/port, the emulator's),
    minimal stand-ins of TFLite Micro's headers (firmware/lib/edgepick_core/host/stubs) and a model_config.h from
    the quantize stage's own writer: the real build needs the espressif32 platform."""
    from pipeline.deploy import boards
    from pipeline.deploy.convert import c_array

    dtype, scale = ("int8", 0.0078125) if precision == "int8" else ("float32", 0.0)
    info = {"precision": precision, "bytes": 100, "expanded_bytes": 200 if precision == "fp16" else 0,
            "sha256": "abc", "arena_bytes": 1000, "in_samples": 3001, "hop_samples": 1501, "sampling_rate": 100.0,
            "ops": {"CONV_2D": 9, "RESHAPE": 2, "SOFTMAX": 1, "TRANSPOSE_CONV": 1},
            "io": {"input": {"dtype": dtype, "scale": scale, "zero_point": 0},
                   "output": {"dtype": dtype, "scale": scale / 2, "zero_point": -128}}}
    budget = boards.check_budget(boards.get_board("esp32s3-psram8"), info)
    model_dir = tmp_path / "model"
    c_array.write_firmware(model_dir, bytes(100), info, PickRule(blinding=(302, 302)), budget, 1e-6)
    stubs = CORE / "host" / "stubs"  # TFLite Micro stand-ins; ESP-IDF is the emulator's port layer
    port = FIRMWARE / "sim" / "port"
    for source in sorted((FIRMWARE / "src").glob("*.cc")):
        cmd = ["g++", "-std=gnu++17", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-fsyntax-only", *defines,
               f"-I{stubs}", f"-I{port}", f"-I{model_dir}", f"-I{FIRMWARE / 'src'}", f"-I{CORE / 'src'}", str(source)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, f"{source.name}: {result.stderr}"



def test_firmware_glue_syntax_live_mode(tmp_path):
    """firmware/src/window_model.cc with a model_config.h in live mode (the default of `make quantize`), and the
    one-line refusal of -DEDGEPICK_LIVE=1 with a header written without live settings."""
    from pipeline.deploy import boards
    from pipeline.deploy.convert import c_array

    info = {"precision": "int8", "bytes": 100, "expanded_bytes": 0, "sha256": "abc", "arena_bytes": 1000,
            "in_samples": 3001, "hop_samples": 1501, "sampling_rate": 100.0, "ops": {"CONV_2D": 9, "SOFTMAX": 1},
            "io": {"input": {"dtype": "int8", "scale": 0.0078125, "zero_point": 0},
                   "output": {"dtype": "int8", "scale": 0.00390625, "zero_point": -128}}}
    budget = boards.check_budget(boards.get_board("esp32s3-psram8"), info)
    stubs = CORE / "host" / "stubs"  # TFLite Micro stand-ins; ESP-IDF is the emulator's port layer
    port = FIRMWARE / "sim" / "port"

    def compile_glue(model_dir, *defines):
        cmd = ["g++", "-std=gnu++17", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-fsyntax-only",
               "-DEDGEPICK_SAMPLE_SOURCE=0", *defines, f"-I{stubs}", f"-I{port}", f"-I{model_dir}", f"-I{FIRMWARE / 'src'}",
               f"-I{CORE / 'src'}", str(FIRMWARE / "src" / "window_model.cc")]
        return subprocess.run(cmd, capture_output=True, text=True)

    live = LiveRule.of(info["in_samples"], 100, {"P": 100, "S": 200})
    files = c_array.write_firmware(tmp_path / "live", bytes(100), info, PickRule(blinding=(302, 302)), budget, 1e-6, live)
    assert "#define EDGEPICK_LIVE_P_BLIND_PRE 2801 " in files["model_config.h"]
    assert "#define EDGEPICK_LIVE_S_BLIND_PRE 2701 " in files["model_config.h"]
    for defines in ((), ("-DEDGEPICK_LIVE=0",)):
        result = compile_glue(tmp_path / "live", *defines)
        assert result.returncode == 0, result.stderr
    c_array.write_firmware(tmp_path / "replay", bytes(100), info, PickRule(blinding=(302, 302)), budget, 1e-6)
    result = compile_glue(tmp_path / "replay", "-DEDGEPICK_LIVE=1")
    assert result.returncode != 0 and "model_config.h has no live settings" in result.stderr


def stream_student(s_output_delay=None):
    """What stream_c.state_description reads of a causal student (s_output_delay: the S channel's own delay)."""
    from types import SimpleNamespace

    student = SimpleNamespace(output_delay=100, norm_window=2048, norm_eps=1e-6, sampling_rate=100, in_samples=3008,
                              default_args={"s_needs_horizontals": True})
    if s_output_delay is not None:
        student.s_output_delay = s_output_delay
    return student


def stream_info(precision="int8") -> dict:
    """A streaming model variant's info (stream_export's) with two states."""
    int8 = precision == "int8"
    dtype = "int8" if int8 else "float32"

    def tensor(shape, scale, zero):
        return {"shape": shape, "dtype": dtype, "scale": scale if int8 else 0.0, "zero_point": zero if int8 else 0}

    states = [tensor([1, 6, 1, 8], 0.02, -5), tensor([1, 4, 1, 16], 0.05, -128)]
    return {"precision": precision, "bytes": 100, "sha256": "ab" * 32, "arena_bytes": 20000, "macs_per_block": 40064,
            "ops": {"CONCATENATION": 2, "CONV_2D": 3, "SOFTMAX": 1, "STRIDED_SLICE": 2},
            "io": {"inputs": [tensor([1, 64, 1, 3], 0.0078125, -1), *states],
                   "outputs": [tensor([1, 64, 1, 3], 0.00390625, -128), *states]}}


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_firmware_glue_syntax_stream_model(precision, tmp_path):
    """firmware/src/*.cc with a streaming model's sources (stream_c.py's writer): model_picker.h picks the streaming
    mode, stream_model.cc compiles, window_model.cc compiles to nothing; a folder holding both kinds builds the
    streaming one, and a whole-window make quantize into it takes the streaming files out."""
    from pipeline.deploy import boards
    from pipeline.deploy.convert import c_array, stream_c

    info = stream_info(precision)
    description = stream_c.state_description(info, ["enc1", "enc2"], stream_student())
    budget = boards.check_stream_budget(boards.get_board("esp32c3"), {**description, "arena_bytes": 20000})
    files = stream_c.write_stream_firmware(tmp_path / "model", bytes(100), description, PickRule(), budget, "0123abcd")
    header = files["stream_model_config.h"]
    for line in ("#define EDGEPICK_STREAM_OUTPUT_DELAY 100 ", "#define EDGEPICK_STREAM_S_OUTPUT_DELAY 100 ",
                 "#define EDGEPICK_STREAM_WINDOW_SAMPLES 3008 ", "#define EDGEPICK_STREAM_S_NEEDS_HORIZONTALS 1 ",
                 "#define EDGEPICK_STREAM_NORM_EPS 1e-06\n", '#define EDGEPICK_STREAM_MODEL_BOARD "esp32c3"',
                 '#define EDGEPICK_STREAM_QUANTIZE_ID "0123abcd"', "static_assert(EDGEPICK_STREAM_BUDGET_SRAM_USED"):
        assert line in header, line
    assert json.loads(files["stream_states.json"])["s_output_delay_samples"] == 100
    stubs, port = CORE / "host" / "stubs", FIRMWARE / "sim" / "port"

    def compile_glue(source):
        cmd = ["g++", "-std=gnu++17", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-fsyntax-only",
               "-DEDGEPICK_SAMPLE_SOURCE=0", f"-I{stubs}", f"-I{port}", f"-I{tmp_path / 'model'}",
               f"-I{FIRMWARE / 'src'}", f"-I{CORE / 'src'}", str(source)]
        return subprocess.run(cmd, capture_output=True, text=True)

    for source in sorted((FIRMWARE / "src").glob("*.cc")):
        result = compile_glue(source)
        assert result.returncode == 0, f"{source.name}: {result.stderr}"
    window_info = {"precision": "int8", "bytes": 100, "expanded_bytes": 0, "sha256": "abc", "arena_bytes": 1000,
                   "in_samples": 3001, "hop_samples": 1501, "sampling_rate": 100.0, "ops": {"CONV_2D": 9},
                   "io": {"input": {"dtype": "int8", "scale": 0.0078125, "zero_point": 0},
                          "output": {"dtype": "int8", "scale": 0.00390625, "zero_point": -128}}}
    for name, text in c_array.firmware_files(bytes(100), window_info, PickRule(), boards.check_budget(
            boards.get_board("esp32c3"), window_info), 1e-6).items():
        (tmp_path / "model" / name).write_text(text)  # both kinds in one folder: the streaming one is built
    (tmp_path / "kind.cc").write_text('#include "model_picker.h"\nstatic_assert(EDGEPICK_STREAM_MODEL == 1, "");\n')
    result = compile_glue(tmp_path / "kind.cc")
    assert result.returncode == 0, result.stderr
    c_array.write_firmware(tmp_path / "model", bytes(100), window_info, PickRule(), boards.check_budget(
        boards.get_board("esp32c3"), window_info), 1e-6)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(c_array.WINDOW_FILES)


def test_stream_header_takes_the_s_channels_own_delay():
    """student.s_output_delay (the S channel's delay) goes into the JSON and the header; a student without one (or
    None) has S at output_delay."""
    from pipeline.deploy.convert import stream_c

    for student, delay in ((stream_student(), 100), (stream_student(None), 100), (stream_student(180), 180)):
        description = stream_c.state_description(stream_info(), ["enc1", "enc2"], student)
        assert description["s_output_delay_samples"] == delay and description["output_delay_samples"] == 100
        assert f"#define EDGEPICK_STREAM_S_OUTPUT_DELAY {delay} " in stream_c.stream_config_header(description, PickRule())
