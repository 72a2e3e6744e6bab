"""The conversion chain and the quantize stage on a small untrained student: ONNX and Keras parity, TFLite Micro loading with the measured
arena, FP16 packing, the C array round trip, and the board budget check."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import seisbench.data as sbd
import torch
import torch.nn as nn

from pipeline.deploy import boards, convert, tflm
from pipeline.cli import main
from pipeline.deploy.convert import c_array, fp16_pack, int8, onnx_export, onnx_to_keras, tflite
from pipeline.errors import EdgepickError
from pipeline.model.picking import LiveRule, PickRule
from pipeline.data.normalization import normalize_windows
from pipeline.model.student import XiaoNet, hop_samples

SAMPLES = 1001
# the 1001-sample student has no room for the default 10 s confirming look-ahead (live.*_confirm_samples)
TINY_LIVE = ["--set", "live.p_confirm_samples=500", "--set", "live.s_confirm_samples=400"]


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    model = XiaoNet(base_channels=4, in_samples=SAMPLES).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding is exercised
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model


@pytest.fixture(scope="module")
def windows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3, SAMPLES))
    x[:, :, 500:] *= 8  # an "onset"
    return normalize_windows(x)


@pytest.fixture(scope="module")
def result(student, windows):
    return convert.quantize_student(student, windows[:6], windows[6:])


@pytest.mark.slow
def test_onnx_checked_and_matches_pytorch(result):
    import onnx

    model = onnx.load_from_string(result.onnx_bytes)
    onnx.checker.check_model(model)
    assert {n.op_type for n in model.graph.node} <= set(onnx_to_keras.SUPPORTED_ONNX_OPS)
    assert result.onnx_max_error <= 1e-4


def test_keras_twin_matches_onnxruntime(student, windows):
    onnx_model = onnx_export.export_onnx(student)
    keras_model = onnx_to_keras.onnx_to_keras(onnx_model)
    diff = np.abs(onnx_to_keras.keras_run(keras_model, windows[:2]) - onnx_export.onnxruntime_run(onnx_model, windows[:2])).max()
    assert diff <= 1e-4
    pairs = int8.depthwise_pointwise_pairs(onnx_model)
    assert ("enc1_dw_Conv", "enc1_pw_Conv") in pairs and len(pairs) == 7
    scales = int8.equalize_depthwise(keras_model, pairs, windows[:4], alpha=1.0)
    assert max(scales.values()) > 1.0  # it did rescale, and the float function is unchanged:
    assert np.abs(onnx_to_keras.keras_run(keras_model, windows[:2]) - onnx_export.onnxruntime_run(onnx_model, windows[:2])).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("precision", convert.PRECISIONS)
def test_each_precision_loads_in_tflm_with_measured_arena(result, windows, precision):
    info = result.variants[precision]
    runnable = result.flatbuffers["fp16_expanded" if precision == "fp16" else precision]
    assert set(info["ops"]) <= {"CONV_2D", "DEPTHWISE_CONV_2D", "HARD_SWISH", "ADD", "PAD", "RESHAPE",
                                "STRIDED_SLICE", "SOFTMAX"}
    arena = info["arena_bytes"]
    sample = tflm.quantize_input(windows[6], info["io"]["input"])
    interpreter, _, _ = tflm.load(runnable, arena)
    assert interpreter is not None
    interpreter.set_input(sample, 0)
    interpreter.invoke()
    too_small, _, _ = tflm.load(runnable, arena - 1)
    assert too_small is None, "the measured arena is not minimal"
    tolerance = 5e-2 if precision == "int8" else 1e-3
    assert info["max_abs_error"] <= tolerance
    if precision == "int8":
        assert info["io"]["input"]["dtype"] == "int8" and info["io"]["output"]["dtype"] == "int8"


@pytest.mark.slow
def test_fp16_packing_round_trips(result):
    fp32 = result.flatbuffers["fp32"]
    representable = fp16_pack.round_float_weights_to_fp16(fp32)
    packed = fp16_pack.pack_fp16(representable)
    assert len(packed) < 0.75 * len(representable)
    assert fp16_pack.expand_fp16(packed) == representable  # exact for float16-representable weights
    assert fp16_pack.expand_fp16(result.flatbuffers["fp16"]) == result.flatbuffers["fp16_expanded"]
    bits = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0x7C00, 0xFC00, 0x7E00]
    expect = np.array(bits, dtype=np.uint16).view(np.float16).astype(np.float32).view(np.uint32)
    assert [fp16_pack.half_to_float_bits(b) for b in bits] == [int(v) for v in expect]
    with pytest.raises(EdgepickError):
        fp16_pack.expand_fp16(packed[:-1])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler")
def test_firmware_expander_matches_python(result, tmp_path):
    """The firmware's own FP16 expansion (lib/edgepick_core/src/ep_fp16) gives the Python twin's flatbuffer."""
    core = Path(__file__).resolve().parents[1] / "firmware" / "lib" / "edgepick_core" / "src"
    packed = result.flatbuffers["fp16"]
    (tmp_path / "main.cc").write_text(
        '#include <cstdio>\n#include <vector>\n#include "ep_fp16.h"\n'
        "int main(int argc, char** argv) { FILE* f = fopen(argv[1], \"rb\"); std::vector<uint8_t> in(1 << 20);\n"
        "size_t n = fread(in.data(), 1, in.size(), f); fclose(f); std::vector<uint8_t> out(1 << 21); size_t m = 0;\n"
        "if (edgepick::Fp16Expand(in.data(), n, out.data(), out.size(), &m) != edgepick::Fp16Status::kOk) return 1;\n"
        "fwrite(out.data(), 1, m, stdout); return 0; }\n"
    )
    subprocess.run(["g++", "-std=c++17", "-O1", f"-I{core}", "-o", str(tmp_path / "expand"), str(tmp_path / "main.cc"),
                    str(core / "ep_fp16.cpp")], check=True)
    (tmp_path / "model.ef16").write_bytes(packed)
    out = subprocess.run([str(tmp_path / "expand"), str(tmp_path / "model.ef16")], capture_output=True, check=True)
    assert out.stdout == fp16_pack.expand_fp16(packed)


@pytest.mark.slow
def test_c_array_round_trip_and_config_header(result, tmp_path):
    info = dict(result.variants["int8"], hop_samples=hop_samples(XiaoNet(2, SAMPLES)), sampling_rate=100.0)
    rule = PickRule(p_threshold=0.25, s_threshold=0.35, top_half_width=128, blinding=(120, 130))
    budget = boards.check_budget(boards.get_board("esp32"), info)
    files = c_array.write_firmware(tmp_path / "model", result.flatbuffers["int8"], info, rule, budget, 1e-6)
    assert "#define EDGEPICK_BLIND_PRE 120 " in files["model_config.h"]
    # the board a build runs on comes from its platformio.ini environment, not from the model's header
    assert "EDGEPICK_BOARD_NAME" not in files["model_config.h"].replace("is EDGEPICK_BOARD_NAME", "")
    assert '#define EDGEPICK_MODEL_BOARD "esp32"' in files["model_config.h"]
    # the resolver registers exactly the converted model's ops, each once
    ops = info["ops"]
    assert f"kEdgepickModelOpCount = {len(ops)};" in files["model_ops.h"]
    assert sorted(files["model_ops.h"].count(f"resolver.{c_array.resolver_method(op)}()") for op in ops) == [1] * len(ops)
    assert "#define EDGEPICK_BLIND_POST 130 " in files["model_config.h"]
    # every pick setting comes from the rule, none from a module constant
    assert "#define EDGEPICK_P_THRESHOLD 0.25f " in files["model_config.h"]
    assert "#define EDGEPICK_S_THRESHOLD 0.35f " in files["model_config.h"]
    assert "#define EDGEPICK_PICK_TOP_HALF_WIDTH 128 " in files["model_config.h"]
    assert c_array.parse_c_array((tmp_path / "model" / "model_data.cc").read_text()) == result.flatbuffers["int8"]
    assert "alignas(16)" in files["model_data.cc"]
    if shutil.which("g++"):
        macros = [line.split()[1] for line in files["model_config.h"].splitlines() if line.startswith("#define EDGEPICK_")
                  and len(line.split()) > 2]
        uses = "\n".join(f"  auto v{i} = {name}; (void)v{i};" for i, name in enumerate(macros))
        (tmp_path / "check.cc").write_text(
            f'#include "model_config.h"\n#include "model_data.h"\nint main() {{\n{uses}\n  return 0;\n}}\n'
        )
        subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-I", str(tmp_path / "model"), str(tmp_path / "check.cc")],
                       check=True)
        subprocess.run(["g++", "-std=c++17", "-fsyntax-only", str(tmp_path / "model" / "model_data.cc")], check=True)


def test_budget_refuses_an_over_budget_board():
    info = {"precision": "fp32", "bytes": 300_000, "arena_bytes": 400_000, "in_samples": 3001, "sampling_rate": 100.0}
    with pytest.raises(EdgepickError, match="overflows by"):
        boards.check_budget(boards.get_board("esp32"), info)
    ok = boards.check_budget(boards.get_board("esp32s3-psram8"), info)
    assert not ok["overflow"] and ("arena", ok["arena_alloc_bytes"]) in ok["regions"][1]["items"]


def test_latency_estimate_follows_its_cited_sources():
    # ESP32-S3 (and float): the published person-detection timings, reproduced for the person-detection model itself
    reference = boards.estimate_latency(int(boards.PERSON_DETECTION_MACS), "int8", hop_seconds=1.0)
    assert reference["esp32s3"]["ms"] == pytest.approx(54, rel=1e-3)
    assert boards.estimate_latency(int(boards.PERSON_DETECTION_MACS), "fp32", 1.0)["esp32"]["ms"] == pytest.approx(4084, rel=1e-3)
    # INT8 on ESP32 and ESP32-C3: the emulator's instruction count (32.0 M for the demo student's 1.88 M MACs) at
    # one cycle per instruction and the chip's clock
    student = boards.estimate_latency(1_883_008, "int8", hop_seconds=15.0)
    assert student["esp32c3"]["ms"] == pytest.approx(32_029_208 / 160e6 * 1e3, rel=1e-4)
    assert student["esp32"]["ms"] == pytest.approx(32_029_208 / 240e6 * 1e3, rel=1e-4)
    assert student["esp32"]["real_time_factor"] == pytest.approx(student["esp32"]["ms"] / 15_000, rel=1e-3)
    assert "esp32c3" not in boards.estimate_latency(1_883_008, "fp32", 15.0)  # no FPU, no figure
    assert boards.estimate_latency(1_883_008, "fp32", 15.0)["esp32"]["ms"] > 5 * student["esp32"]["ms"]


def test_unsupported_op_names_op_and_layer():
    class WithTanh(XiaoNet):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.enc2.act = nn.Tanh()

    model = WithTanh(base_channels=2, in_samples=128).eval()
    with pytest.raises(EdgepickError, match=r"Tanh.*enc2\.act"):
        onnx_to_keras.onnx_to_keras(onnx_export.export_onnx(model))


def _tiny_dataset(path, traces=12, samples=1500):
    rng = np.random.default_rng(1)
    with sbd.WaveformDataWriter(path / "metadata.csv", path / "waveforms.hdf5") as writer:
        writer.data_format = {"dimension_order": "CW", "component_order": "ZNE", "measurement": "velocity",
                              "unit": "counts", "instrument_response": "not restituted"}
        for i in range(traces):
            writer.add_trace({"trace_name": f"t{i}", "trace_sampling_rate_hz": 100.0, "trace_p_arrival_sample": 600,
                              "split": "train" if i < 8 else "test", "source_id": f"e{i}"},
                             rng.normal(size=(3, samples)))


@pytest.mark.slow
def test_cli_refuses_over_budget_and_writes_nothing(tmp_path):
    _tiny_dataset(tmp_path)
    torch.manual_seed(0)
    XiaoNet(base_channels=48, in_samples=SAMPLES).save(tmp_path / "student")
    firmware = tmp_path / "firmware"
    args = ["quantize", "--set", f"quantize.student={tmp_path / 'student'}", "--set", f"quantize.dataset={tmp_path}",
            "--set", f"quantize.out={tmp_path / 'tflite'}", "--set", f"quantize.firmware_dir={firmware}",
            "--set", "quantize.precisions=fp32", "--set", "quantize.firmware_precision=fp32",
            "--set", "quantize.calibration_windows=4", "--set", "quantize.heldout_windows=2", "--set", "board.name=esp32"]
    assert main(args) == 2
    assert not firmware.exists() and not (tmp_path / "tflite").exists()


@pytest.mark.slow
def test_refined_int8_ranges_stay_valid(student, windows, result):
    info = result.variants["int8"]
    assert info["activation_percentile"] in int8.PERCENTILE_CANDIDATES
    onnx_model = onnx_export.export_onnx(student)
    keras_model = onnx_to_keras.onnx_to_keras(onnx_model)
    raw = tflite.convert_int8(keras_model, windows[:6])
    refined = int8.refine_activation_ranges(raw, keras_model, windows[:6], 99.0)
    assert refined != raw
    before, after = tflm.io_details(raw), tflm.io_details(refined)
    assert before == after  # model input and softmax output keep their quantization
    out = tflm.run(tflite.strip_strings(refined), windows[6:8])
    assert np.isfinite(out).all() and np.allclose(out.sum(axis=1), 1.0, atol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu6", "relu"])
def test_relu_students_convert_with_fused_activations(windows, activation):
    torch.manual_seed(3)
    model = XiaoNet(base_channels=4, in_samples=SAMPLES, activation=activation).eval()
    result = convert.quantize_student(model, windows[:4], windows[6:8], precisions=("int8",), measure_arena=False)
    ops = result.variants["int8"]["ops"]
    assert "HARD_SWISH" not in ops and "RELU6" not in ops and "RELU" not in ops
    assert result.onnx_max_error <= 1e-4 and result.keras_max_error <= 1e-4


def test_non_finite_weights_are_refused(windows):
    model = XiaoNet(base_channels=2, in_samples=SAMPLES).eval()
    with torch.no_grad():
        model.head.weight[0, 0, 0] = float("nan")
    with pytest.raises(EdgepickError, match="NaN or inf"):
        convert.quantize_student(model, windows[:4], windows[4:6], precisions=("fp32",))


def test_tiny_calibration_set_and_missing_student_are_one_line_errors(tmp_path, capsys):
    _tiny_dataset(tmp_path)
    common = ["--set", f"quantize.dataset={tmp_path}", "--set", f"quantize.out={tmp_path / 'tflite'}",
              "--set", f"quantize.firmware_dir={tmp_path / 'firmware'}", *TINY_LIVE]
    assert main(["quantize", "--set", f"quantize.student={tmp_path / 'nowhere'}", *common]) == 2
    assert "no saved student" in capsys.readouterr().err
    XiaoNet(base_channels=2, in_samples=SAMPLES).save(tmp_path / "student")
    assert main(["quantize", "--set", f"quantize.student={tmp_path / 'student'}", *common,
                 "--set", "quantize.calibration_windows=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibration windows" in err[0]
    assert not (tmp_path / "firmware").exists() and not (tmp_path / "tflite").exists()


@pytest.mark.slow
def test_stage_takes_windows_from_a_mixture_of_datasets(tmp_path, capsys):
    """distill trains on a mixture "a,b"; quantize's calibration and held-out windows then come from each folder
    (this ended in "dataset a,b does not exist"), and the resolved configuration is saved beside the variants."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _tiny_dataset(tmp_path / name)
    XiaoNet(base_channels=2, in_samples=SAMPLES).save(tmp_path / "student")
    args = ["quantize", "--set", f"quantize.student={tmp_path / 'student'}",
            "--set", f"distill.dataset={tmp_path / 'a'},{tmp_path / 'b'}", "--set", f"quantize.out={tmp_path / 'tflite'}",
            "--set", f"quantize.firmware_dir={tmp_path / 'firmware'}", "--set", "quantize.precisions=fp32",
            "--set", "quantize.firmware_precision=fp32", "--set", "quantize.calibration_windows=5",
            "--set", "quantize.min_calibration_windows=1", "--set", "quantize.heldout_windows=3", *TINY_LIVE]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "tflite" / "quantize_report.json").read_text())
    assert report["calibration_windows"] == 5 and report["heldout_windows"] == 3
    assert (tmp_path / "tflite" / "edgepick_config.yaml").is_file()
    header = (tmp_path / "firmware" / "model_config.h").read_text()
    assert "#define EDGEPICK_P_THRESHOLD 0.3f " in header
    for line in ("#define EDGEPICK_LIVE_P_CONFIRM_POST 500 ", "#define EDGEPICK_LIVE_S_CONFIRM_POST 400 ",
                 "#define EDGEPICK_LIVE_CONFIRM_WITHIN 50 "):  # the retraction's settings
        assert line in header, line
    # its confirming stitch buffer (a hop per confirming phase) is in the budget: 2 x 100 samples x 6 bytes
    stitch = dict(report["budgets"]["fp32"]["regions"][0]["items"])["stitch buffer"]
    assert stitch == ((2 * SAMPLES + 2 * 100) * 6 + 15) // 16 * 16


def test_config_header_writes_the_live_mode_and_refuses_what_does_not_fit():
    """model_config.h's live lines come from the live settings (EDGEPICK_LIVE guarded so a build flag can override it;
    blinding = (window - hop - look-ahead, look-ahead)); a header without them replays exactly."""
    info = {"precision": "int8", "bytes": 100, "sha256": "abc", "arena_bytes": 1000, "in_samples": SAMPLES,
            "hop_samples": 501, "sampling_rate": 100.0, "io": {"input": {"dtype": "int8", "scale": 0.01, "zero_point": 0},
                                                              "output": {"dtype": "int8", "scale": 0.004, "zero_point": -128}}}
    budget = boards.check_budget(boards.get_board("esp32s3-psram8"), info)

    def header(hop, lookahead, enabled=True, confirm=0):
        live = LiveRule.of(SAMPLES, hop, lookahead, confirm)
        return c_array.model_config_header(info, PickRule(blinding=(300, 300)), budget, 1e-6, live, enabled)

    text = header(50, {"P": 120, "S": 240}, confirm={"P": 600, "S": 0})
    assert "#define EDGEPICK_LIVE_P_CONFIRM_POST 600 " in text and "#define EDGEPICK_LIVE_S_CONFIRM_POST 0 " in text
    for confirm in ({"P": 600, "S": 240}, {"P": 100, "S": 0}, SAMPLES - 50):  # not longer than its own, or no room
        with pytest.raises(EdgepickError, match="live mode") as error:
            header(50, {"P": 120, "S": 240}, confirm=confirm)
        assert "\n" not in str(error.value)

    text = header(50, {"P": 120, "S": 240})
    for line in ("#ifndef EDGEPICK_LIVE\n#define EDGEPICK_LIVE 1 ", "#define EDGEPICK_LIVE_HOP_SAMPLES 50 ",
                 f"#define EDGEPICK_LIVE_P_BLIND_PRE {SAMPLES - 50 - 120} ", "#define EDGEPICK_LIVE_P_BLIND_POST 120 ",
                 f"#define EDGEPICK_LIVE_S_BLIND_PRE {SAMPLES - 50 - 240} ", "#define EDGEPICK_LIVE_S_BLIND_POST 240 ",
                 "#define EDGEPICK_HOP_SAMPLES 501 ", "#define EDGEPICK_BLIND_PRE 300 "):  # the exact replay's stay
        assert line in text, line
    assert "#define EDGEPICK_LIVE_S_BLIND_POST 120 " in header(50, 120)  # one look-ahead for both phases
    assert "#define EDGEPICK_LIVE 0 " in header(50, 120, enabled=False)
    replay = c_array.model_config_header(info, PickRule(), budget, 1e-6)
    assert "#define EDGEPICK_LIVE 0 " in replay and "#define EDGEPICK_LIVE_HOP_SAMPLES" not in replay
    assert "#define EDGEPICK_S_NEEDS_HORIZONTALS 0 " in replay  # the vertical-only S rule: off unless the student's
    gated = c_array.model_config_header(dict(info, s_needs_horizontals=True), PickRule(), budget, 1e-6)
    assert "#define EDGEPICK_S_NEEDS_HORIZONTALS 1 " in gated
    for hop, lookahead in ((0, 100), (100, 0), (-5, 100), (SAMPLES - 100, 100), (2.5, 100), (100, {"P": 100}),
                           (100, {"P": 100, "S": SAMPLES - 100})):
        with pytest.raises(EdgepickError, match="live mode") as error:
            header(hop, lookahead)
        assert "\n" not in str(error.value)


def test_stage_refuses_a_live_hop_that_does_not_fit_before_converting(tmp_path, capsys):
    _tiny_dataset(tmp_path)
    XiaoNet(base_channels=2, in_samples=SAMPLES).save(tmp_path / "student")
    capsys.readouterr()  # the dataset writer's progress lines
    args = ["quantize", "--set", f"quantize.student={tmp_path / 'student'}", "--set", f"quantize.dataset={tmp_path}",
            "--set", f"quantize.out={tmp_path / 'tflite'}", "--set", f"quantize.firmware_dir={tmp_path / 'firmware'}",
            "--set", "live.hop_samples=950", "--set", "live.p_lookahead_samples=40", "--set", "live.s_lookahead_samples=100"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hop + look-ahead (950 + 100 samples)" in err[0] and f"{SAMPLES}-sample window" in err[0]
    assert not (tmp_path / "firmware").exists() and not (tmp_path / "tflite").exists()
    # the retraction's settings likewise: a confirming look-ahead no longer than the phase's own, one with no room in
    # the window (the default 500 + hop 100 fits; 950 does not), a negative reach
    base = args[:9]  # the student, dataset and output folders
    for bad, says in ((["live.p_confirm_samples=100"], "P's confirming look-ahead (100 samples) must be longer"),
                      (["live.s_confirm_samples=950"], "hop + look-ahead (100 + 950 samples)"),
                      (["live.confirm_within_samples=-1"], "live.confirm_within_samples must be a whole number")):
        assert main([*base, *(x for item in bad for x in ("--set", item))]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
        assert not (tmp_path / "firmware").exists() and not (tmp_path / "tflite").exists()


@pytest.mark.slow
def test_tflite_and_firmware_folders_change_together_and_make_firmware_checks_they_match(tmp_path, capsys,
                                                                                          monkeypatch):
    """Issue 31, item 6: a firmware folder that cannot be written used to leave quantize.out replaced by the new run
    beside the old firmware model; now both change or neither, and make firmware refuses a pair of two runs."""
    from pipeline.config import Config
    from pipeline.stages import firmware as flash

    _tiny_dataset(tmp_path)
    XiaoNet(base_channels=2, in_samples=SAMPLES).save(tmp_path / "student")
    tflite_dir, firmware = tmp_path / "tflite", tmp_path / "firmware"
    args = ["quantize", "--set", f"quantize.student={tmp_path / 'student'}", "--set", f"quantize.dataset={tmp_path}",
            "--set", f"quantize.out={tflite_dir}", "--set", "quantize.precisions=fp32",
            "--set", "quantize.firmware_precision=fp32", "--set", "quantize.calibration_windows=4",
            "--set", "quantize.min_calibration_windows=1", "--set", "quantize.heldout_windows=2", *TINY_LIVE]
    assert main([*args, "--set", f"quantize.firmware_dir={firmware}"]) == 0, capsys.readouterr().err
    run_id = json.loads((tflite_dir / "quantize_report.json").read_text())["quantize_id"]
    assert f'#define EDGEPICK_QUANTIZE_ID "{run_id}"' in (firmware / "model_config.h").read_text()
    before = {p.name: p.read_bytes() for p in tflite_dir.iterdir()}
    capsys.readouterr()

    (tmp_path / "not-a-folder").write_text("")  # a firmware folder that cannot be made: refused before converting
    XiaoNet(base_channels=3, in_samples=SAMPLES).save(tmp_path / "student")  # another student
    assert main([*args, "--set", f"quantize.firmware_dir={tmp_path / 'not-a-folder' / 'model'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create a folder beside" in err[0], err
    assert {p.name: p.read_bytes() for p in tflite_dir.iterdir()} == before
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary left behind

    monkeypatch.setattr(flash, "MODEL_CONFIG", firmware / "model_config.h")
    monkeypatch.setattr(flash, "pio_executable", lambda: (_ for _ in ()).throw(EdgepickError("no PlatformIO here")))
    config = Config.load(None, [f"quantize.out={tflite_dir}"])
    with pytest.raises(EdgepickError, match="no PlatformIO here"):  # the pair matches: on to the build
        flash.build(config)
    # the new variants without the firmware's new model (a run killed between the two renames)
    report = json.loads((tflite_dir / "quantize_report.json").read_text())
    (tflite_dir / "quantize_report.json").write_text(json.dumps({**report, "quantize_id": "0000000000000000"}))
    with pytest.raises(EdgepickError, match=f"quantize id {run_id}.*quantize id 0000000000000000.* are not from the "
                                            "same `make quantize` run"):
        flash.build(config)
