"""The causal student's streaming model (issue 30): its step -> ONNX -> Keras -> TFLite FP32 / INT8, run block by
block in the real TFLite Micro interpreter with the states fed back, equal to the PyTorch stream; int8 states keep
one quantization in and out; MACs from hooks and from the graph; the quantize stage's files for the firmware."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.deploy import tflm, tflm_stream
from pipeline.deploy.convert import c_array, onnx_export, onnx_to_keras, stream_c
from pipeline.deploy.convert import stream_export as se
from pipeline.errors import EdgepickError
from pipeline.model.picking import PickRule
from pipeline.model.stream_step import StreamStep, stream_scores
from pipeline.model import streaming
from pipeline.model.streaming import BLOCK
from pipeline.model.student import XiaoNet
from test_quantize import _tiny_dataset
from test_streaming import causal_student, waveform

TFLM_OPS = {"ADD", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "RESHAPE", "SOFTMAX", "STRIDED_SLICE"}


@pytest.fixture(scope="module")
def heldout():
    return [waveform(40 * BLOCK + 17, seed=20 + k) for k in range(2)]


@pytest.fixture(scope="module")
def student(heldout):
    """A random causal student whose P and S curves swing across 0.5 with the signal (a random one's sit near
    1/3, and their picks flip on a difference of 1e-7): positive weights, and a head that maps the median to the
    95th percentile of its input's sum to 8 logits of P over S."""
    model = causal_student(refine_blocks=1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("weight") and ".bn." not in name:
                parameter.abs_()
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[0] = 1.0
        logits = torch.cat([model.logits(torch.from_numpy(x[:, : 40 * BLOCK]).float()[None])[0, 0] for x in heldout])
        low, high = np.quantile(logits.numpy(), [0.5, 0.95])
        gain = 8 / (high - low)
        model.head.weight[0], model.head.bias[0] = gain, -gain * (low + high) / 2
        model.head.weight[1], model.head.bias[1] = -gain, gain * (low + high) / 2 - 6
    return model


@pytest.fixture(scope="module")
def rule():
    return PickRule(p_threshold=0.5, s_threshold=0.5)


@pytest.fixture(scope="module")
def result(student, heldout, rule):
    """FP32 of the picking student, its picks compared; INT8 of a plain random causal student (the picking one's
    head multiplies its input's int8 step by ~100 logits)."""
    calibration = [waveform(50 * BLOCK, seed=k) for k in range(4)]
    fp32 = se.stream_export(student, calibration, heldout, ("fp32",), rule=rule)
    plain = se.stream_export(causal_student(refine_blocks=1), calibration, heldout, se.STREAM_PRECISIONS)
    fp32.variants["fp32"]["plain_student"] = plain.variants["fp32"]
    for precision in ("int8", "int8_float_io"):
        fp32.variants[precision], fp32.flatbuffers[precision] = plain.variants[precision], plain.flatbuffers[precision]
    return fp32


@pytest.mark.slow
def test_fp32_stream_in_tflite_micro_equals_the_pytorch_stream(result, student):
    info = result.variants["fp32"]
    assert result.onnx_max_error <= 1e-5 and result.keras_max_error <= 1e-5
    assert info["max_abs_error"] <= 1e-5 and info["compared_samples"] > 2 * 30 * BLOCK
    assert info["reference_picks"] > 50 and info["pick_agreement"] == 1.0
    assert set(info["ops"]) <= TFLM_OPS  # each a TFLite Micro builtin (none is CUSTOM or a Flex op)
    assert info["ops"]["CONCATENATION"] == len(StreamStep(student).state_shapes())


@pytest.mark.slow
@pytest.mark.parametrize("precision", se.STREAM_PRECISIONS)
def test_interface_is_the_steps_order_and_the_arena_is_measured_and_small(result, precision):
    info, flatbuffer = result.variants[precision], result.flatbuffers[precision]
    io = info["io"]
    assert [d["shape"] for d in io["inputs"][1:]] == [[1, k, 1, c] for _, c, k in result.state_shapes]
    assert io["inputs"][0]["shape"] == io["outputs"][0]["shape"] == [1, BLOCK, 1, 3]
    assert len(result.state_layers) == len(result.state_shapes) and result.state_layers[-1] == "smoothing"
    arena = info["arena_bytes"]
    assert 0 < arena < 40_000  # the whole-window model needs 85 KB (README); a block's tensors are tiny
    assert tflm.load(flatbuffer, arena)[0] is not None
    assert tflm.load(flatbuffer, arena - 1)[0] is None, "the measured arena is not minimal"


@pytest.mark.slow
def test_int8_states_keep_one_quantization_and_float_state_io_only_costs(result):
    int8, float_io = result.variants["int8"], result.variants["int8_float_io"]
    ins, outs = int8["io"]["inputs"], int8["io"]["outputs"]
    assert all(d["dtype"] == "int8" for d in ins + outs)
    assert max(int8["equalization"].values()) > 1.0  # the depthwise outputs were equalised (exact in float)
    for i, o in zip(ins[1:], outs[1:]):
        assert (np.float32(i["scale"]), i["zero_point"]) == (np.float32(o["scale"]), o["zero_point"])
    assert int8["max_abs_error"] <= se.STREAM_TOLERANCE["int8"] and result.variants["fp32"]["plain_student"]["max_abs_error"] <= 1e-5
    # float states cross the boundary through QUANTIZE / DEQUANTIZE at the same scales: the same probabilities,
    # two more ops per state, a bigger model and arena
    assert all(d["dtype"] == "float32" for d in float_io["io"]["inputs"] + float_io["io"]["outputs"])
    assert abs(float_io["max_abs_error"] - int8["max_abs_error"]) <= 1 / 256
    assert float_io["ops"]["QUANTIZE"] == float_io["ops"]["DEQUANTIZE"] == len(ins)
    assert float_io["bytes"] > int8["bytes"] and float_io["arena_bytes"] > int8["arena_bytes"]


@pytest.mark.slow
def test_a_state_quantized_differently_in_and_out_fails_loudly(result):
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(result.flatbuffers["int8"]))
    graph = model.subgraphs[0]
    tensor = graph.tensors[graph.outputs[2]]  # the second state's output: scale doubled, as a requantizing converter
    tensor.quantization.scale = tensor.quantization.scale * 2
    edited = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    with pytest.raises(EdgepickError, match="state 1: the converter quantized its input") as error:
        tflm_stream.check_io(tflm_stream.io_lists(edited), result.state_shapes)
    assert "\n" not in str(error.value)
    with pytest.raises(EdgepickError, match="state 0 is"):
        tflm_stream.check_io(result.variants["int8"]["io"], [(1, 3, 5)] + result.state_shapes[1:])


@pytest.mark.slow
def test_int8_stream_follows_the_pytorch_stream_block_by_block(result, heldout):
    """run_stream from zero states (the zero point of each int8 state) is the stream: its probabilities track the
    float ones on every finished sample, and its first blocks are the same as a fresh interpreter's."""
    student = causal_student(refine_blocks=1)
    flatbuffer = result.flatbuffers["int8"]
    io = result.variants["int8"]["io"]
    assert [int(tflm_stream.zero_state(d).ravel()[0]) for d in io["inputs"][1:]] == [d["zero_point"] for d in io["inputs"][1:]]
    x = heldout[0]
    delays = streaming.channel_delays(student)
    norm = streaming.NormSettings.of(student)
    whole = tflm_stream.run_stream(flatbuffer, x, norm, delays)
    head = tflm_stream.run_stream(flatbuffer, x[:, : 10 * BLOCK], norm, delays)
    finite = ~np.isnan(head[:, 0])
    np.testing.assert_array_equal(head[finite], whole[: len(head)][finite])
    reference = stream_scores(student, x)
    done = ~np.isnan(reference[:, 0])
    assert np.isnan(whole[~done]).all() and np.abs(whole[done] - reference[done]).max() <= se.STREAM_TOLERANCE["int8"]


@pytest.mark.slow
def test_macs_from_hooks_equal_the_graphs_and_the_whole_window_per_block(result, student):
    for precision in se.STREAM_PRECISIONS:  # the same architecture in each
        assert result.macs_per_block == result.variants[precision]["graph_macs_per_block"]
    # each sample computed once: a whole window of n blocks costs n steps
    assert student.count_macs() == student.in_samples // BLOCK * result.macs_per_block


def test_converter_keeps_one_input_models_and_refuses_what_it_cannot_map():
    import onnx

    plain = onnx_export.export_onnx(XiaoNet(base_channels=2, in_samples=128).eval())
    keras_model = onnx_to_keras.onnx_to_keras(plain)
    assert keras_model.name == "edgepick_student" and keras_model.input.name == "window"
    node = next(n for n in se.export_stream_onnx(StreamStep(causal_student())).graph.node if n.op_type == "Concat")
    bad = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Concat", ["a", "b"], ["c"], axis=1, name=node.name)], "g",
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 3, 4]) for n in "ab"],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1, 6, 4])]))
    with pytest.raises(EdgepickError, match="only concatenation along time"):
        onnx_to_keras.onnx_to_keras(bad)


def test_bad_input_is_one_error_line(student):
    plain = XiaoNet(base_channels=2, in_samples=128)
    for call, says in ((lambda: se.stream_export(plain, [], [waveform(BLOCK)]), "causal student"),
                       (lambda: se.stream_export(student, [], [np.zeros((2, 500))]), r"\(3, n >= 64\)"),
                       (lambda: se.stream_export(student, [], [waveform(BLOCK)], ("int8",)), "calibration traces"),
                       (lambda: se.stream_export(student, [], [waveform(BLOCK)], ("fp16",)), "unknown streaming"),
                       (lambda: tflm_stream.run_stream(b"", np.zeros((3, 64)), streaming.NormSettings(16, 1e-6),
                                                       (100,) * 3), "cannot load")):
        with pytest.raises(EdgepickError, match=says) as error:
            call()
        assert "\n" not in str(error.value)


@pytest.mark.slow
def test_state_description_and_header_for_the_firmware(result, student, tmp_path):
    info = result.variants["int8"]
    description = stream_c.state_description(info, result.state_layers, student)
    assert [s["layer"] for s in description["states"]][:3] == ["enc1", "enc2", "enc3"]
    assert description["state_bytes"] == sum(int(np.prod(s)) for s in result.state_shapes)
    assert [s["start_value"] for s in description["states"]] == [d["zero_point"] for d in info["io"]["inputs"][1:]]
    assert description["macs_per_second"] == pytest.approx(result.macs_per_block * 100 / 64)
    files = stream_c.write_stream_firmware(tmp_path / "fw", result.flatbuffers["int8"], description, student.pick_rule)
    header = files["stream_model_config.h"]
    for line in (f"#define EDGEPICK_STREAM_OUTPUT_DELAY {student.output_delay} ", "#define EDGEPICK_STREAM_BLOCK_SAMPLES 64 ",
                 f"#define EDGEPICK_STREAM_NORM_WINDOW_BLOCKS {student.norm_window // 64}",
                 f"#define EDGEPICK_STREAM_STATE_COUNT {len(result.state_shapes)}", "#define EDGEPICK_STREAM_STATES_INT8 1"):
        assert line in header, line
    assert json.loads((tmp_path / "fw" / "stream_states.json").read_text())["sha256"] == info["sha256"]
    data = (tmp_path / "fw" / "stream_model_data.cc").read_text().replace("g_edgepick_stream_model", "g_edgepick_model")
    from pipeline.deploy.convert.c_array import parse_c_array
    assert parse_c_array(data) == result.flatbuffers["int8"]
    if shutil.which("g++"):
        (tmp_path / "check.cc").write_text('#include "stream_model_config.h"\n#include "stream_model_data.h"\n'
                                           "int main() { return kEdgepickStreamStateBytes[0] + EDGEPICK_STREAM_STATE_COUNT"
                                           " + (int)EDGEPICK_STREAM_NORM_EPS; }\n")
        for source in ("check.cc", "fw/stream_model_data.cc"):
            subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-I", str(tmp_path / "fw"), str(tmp_path / source)],
                           check=True)


@pytest.mark.slow
def test_quantize_stage_writes_the_streaming_model_of_a_causal_student(tmp_path, capsys):
    _tiny_dataset(tmp_path, traces=12, samples=30 * BLOCK)
    causal_student().save(tmp_path / "student")
    firmware = tmp_path / "firmware"
    common = ["quantize", "--set", f"quantize.student={tmp_path / 'student'}", "--set", f"quantize.dataset={tmp_path}",
              "--set", f"quantize.out={tmp_path / 'tflite'}", "--set", f"quantize.firmware_dir={firmware}",
              "--set", "quantize.calibration_windows=3", "--set", "quantize.min_calibration_windows=3",
              "--set", "quantize.heldout_windows=2"]
    capsys.readouterr()
    firmware.mkdir()  # a whole-window model there before, and a file of the user's
    for name in (*c_array.WINDOW_FILES, "notes.txt"):
        (firmware / name).write_text("// old\n")
    assert main([*common, "--set", "quantize.firmware_precision=fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "streaming model is built in fp32 / int8" in err[0]
    assert main(common) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "per 64-sample block" in printed and "per second of data" in printed
    out = tmp_path / "tflite"
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["streaming"] and set(report["variants"]) == {"fp32", "int8"} and report["calibration_traces"] == 3
    assert report["variants"]["fp32"]["max_abs_error"] <= 1e-5
    for precision in ("fp32", "int8"):
        flatbuffer = (out / f"model_stream_{precision}.tflite").read_bytes()
        states = json.loads((out / f"model_stream_{precision}.json").read_text())
        assert states["bytes"] == len(flatbuffer) and len(states["states"]) == 10
        assert tflm.load(flatbuffer, states["arena_bytes"])[0] is not None
    assert (out / "edgepick_config.yaml").is_file() and report["budgets"]["int8"]["board"] == "esp32-psram4"
    # the firmware's model folder now holds the streaming model (its whole-window files taken out), paired by the id
    assert sorted(p.name for p in firmware.iterdir()) == sorted(c_array.STREAM_FILES + ("notes.txt",))
    header = (firmware / "stream_model_config.h").read_text()
    assert f'#define EDGEPICK_STREAM_QUANTIZE_ID "{report["quantize_id"]}"' in header
    assert "#define EDGEPICK_STREAM_S_OUTPUT_DELAY 100 " in header and "EDGEPICK_STREAM_BUDGET_SRAM_USED" in header


@pytest.mark.slow
def test_a_blurred_student_with_a_later_s_exports_to_the_same_stream(heldout):
    """student.antialias (the low-pass folded into each blurred depthwise kernel by the export),
    student.s_output_delay (S moved back by its own delay in the TFLite run too) and student.sample_norm (the TFLite
    run normalises with the peak up to each sample too): FP32 equals the PyTorch stream."""
    model = causal_student(antialias=True, s_output_delay=260, sample_norm=True)
    calibration = [waveform(50 * BLOCK, seed=k) for k in range(2)]
    export = se.stream_export(model, calibration, heldout, ("fp32",))
    info = export.variants["fp32"]
    assert export.onnx_max_error <= 1e-5 and info["max_abs_error"] <= 1e-5
    assert set(info["ops"]) <= TFLM_OPS and info["ops"]["CONCATENATION"] == len(StreamStep(model).state_shapes())
    assert export.macs_per_block == info["graph_macs_per_block"]
    assert model.count_macs() == model.in_samples // BLOCK * export.macs_per_block
    per_sample = stream_scores(model, heldout[0])
    model.sample_norm = False  # the same weights on a peak per block: scores 10x further off than the FP32 check
    assert np.nanmax(np.abs(stream_scores(model, heldout[0]) - per_sample)) > 10 * 1e-5
