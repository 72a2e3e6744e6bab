"""The whole firmware cross-built for an emulated RV32IMC board (ESP32-C3 class) and run under qemu-system-riscv32
(pipeline/deploy/emulator.py, firmware/sim): picks equal to the Python stream reference, INT8 tensors bit-exact with the
Python tflite-micro interpreter, a board too small refused at boot in one whole line, an image too big refused at
link time naming the region, the instruction count per window recorded. Skips without the Debian toolchain / QEMU
or without ../shared/vendor (TensorFlow Lite Micro sources); the first run builds TFLite Micro (~5 min on 2
cores), later runs take it from the cache."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pipeline.deploy import boards, emulator, tflm
from pipeline.errors import EdgepickError
from pipeline.model.picking import LiveRule, PickRule
from pipeline.deploy.serial_protocol import sample_lines

pytestmark = pytest.mark.slow  # the emulator, and a quantized student built for it

IN_SAMPLES = 1024  # a short window keeps each emulated Invoke to a few million instructions


@pytest.fixture(scope="module")
def tflm_lib():
    missing = emulator.missing_tools()
    if missing:
        pytest.skip(f"no RISC-V toolchain / QEMU: {', '.join(missing)}")
    try:
        emulator.vendor_roots()
    except EdgepickError as error:
        pytest.skip(str(error))
    return emulator.build_tflm()


def synthetic_stream(n: int, seed: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = rng.normal(0, 0.05, (3, n)) + [[4.0], [-2.0], [0.5]]
    for center, comp, amp in [(500, 0, 3.0), (800, 1, 2.0), (1700, 0, 1.0), (1760, 1, 2.5), (2900, 0, 2.0)]:
        x[comp] += amp * np.exp(-0.5 * ((t - center) / 10.0) ** 2) * np.sin(t / 2.0)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A real INT8 student of the XiaoNet family converted by the quantize stage, its head scaled so that an
    untrained network crosses the thresholds often (picks to compare, not skill), written by make quantize's own
    C-array writer for the ESP32-C3."""
    torch = pytest.importorskip("torch")
    from pipeline.deploy.convert import c_array, quantize_student
    from pipeline.data.normalization import normalize_windows
    from pipeline.model.student import XiaoNet

    torch.manual_seed(3)
    model = XiaoNet(base_channels=2, in_samples=IN_SAMPLES).eval()
    with torch.no_grad():
        model.head.weight.mul_(40.0)
    windows = np.stack([normalize_windows(synthetic_stream(IN_SAMPLES + 300, seed=k)[:, :IN_SAMPLES], 1e-6)
                        for k in range(8)])
    result = quantize_student(model, windows, windows[:2], ("int8",))
    info = dict(result.variants["int8"], hop_samples=IN_SAMPLES // 2, sampling_rate=100.0)
    budget = boards.check_budget(boards.get_board("esp32c3"), info)
    out = tmp_path_factory.mktemp("model")
    c_array.write_firmware(out, result.flatbuffers["int8"], info, PickRule(p_threshold=0.3, s_threshold=0.35), budget,
                           1e-6)
    return out, result.flatbuffers["int8"], info, budget


@pytest.fixture(scope="module")
def images(tflm_lib, model_dir, tmp_path_factory):
    return emulator.build_firmware(boards.get_board("esp32c3"), model_dir[0], tmp_path_factory.mktemp("build"),
                                   tflm_lib, trace_tensors=True)


def run_stream(elf, x, tmp_path):
    status, lines = emulator.run_firmware(elf, list(sample_lines(x)), tmp_path)
    objects = [json.loads(line) for line in lines if line.startswith("{")]
    return status, objects, lines


def test_picks_equal_python_reference_and_tensors_bit_exact(images, model_dir, tmp_path):
    from pipeline.deploy.convert.c_array import read_model_config
    from pipeline.stages.firmware_sim import firmware_run, python_picks, rule_from_header

    folder, flatbuffer = model_dir[:2]
    values = read_model_config(folder / "model_config.h")
    x = synthetic_stream(3300)
    reference = python_picks(x, flatbuffer, values, rule_from_header(values))
    assert len(reference) >= 3
    from pipeline.data.normalization import normalize_windows
    from pipeline.model.picking import window_offsets

    io = tflm.io_details(flatbuffer)
    interpreter, _, err = tflm.load(flatbuffer, tflm.MAX_ARENA)
    assert interpreter is not None, err
    counts = {}
    for kernels, elf in images.elf.items():
        status, objects, lines = run_stream(elf, x, tmp_path / kernels)
        assert status == 0, lines[-5:]
        assert firmware_run(lines)["picks"] == reference, kernels
        tensors = {}
        for o in objects:
            if o["type"] == "tensor":
                tensors.setdefault(o["window"], {}).update(o)
        offsets = window_offsets(x.shape[1], IN_SAMPLES, IN_SAMPLES // 2)
        assert sorted(tensors) == list(range(len(offsets))) and len(offsets) == 6
        for k, t in tensors.items():
            window = np.frombuffer(bytes.fromhex(t["input"]), dtype=np.int8).reshape(1, IN_SAMPLES, 1, 3)
            # the firmware's normalisation and int8 quantization are Python's, bit for bit
            expected_input = tflm.quantize_input(normalize_windows(x[:, offsets[k]: offsets[k] + IN_SAMPLES], 1e-6),
                                                 io["input"])
            assert np.array_equal(window, expected_input), (kernels, k)
            # the firmware's own int8 input, run by the Python tflite-micro interpreter
            interpreter.set_input(window, 0)
            interpreter.invoke()
            expected = np.asarray(interpreter.get_output(0), dtype=np.int8).ravel()
            assert np.array_equal(np.frombuffer(bytes.fromhex(t["output"]), dtype=np.int8), expected), kernels
        counts[kernels] = [o["instructions"] for o in objects if o["type"] == "timing"]
        assert objects[-1]["type"] == "emulator" and 0 < objects[-1]["stack_used"] < objects[-1]["stack_size"]
        assert not objects[-1]["stack_overflow"] and objects[-1]["libc_heap"] > 0
    # the instruction count per window is recorded, exact and repeatable; ESP-NN's kernels need fewer
    assert all(n > 1e5 for n in counts["esp_nn"]) and np.median(counts["esp_nn"]) < np.median(counts["reference"])
    _, again, _ = run_stream(images.elf["esp_nn"], x, tmp_path / "again")
    assert [o["instructions"] for o in again if o["type"] == "timing"] == counts["esp_nn"]


def test_board_too_small_is_refused_at_boot_in_one_whole_line(tflm_lib, model_dir, tmp_path):
    # static data and stack fit, the arena and buffers do not: PlanMemory refuses before allocating anything
    small = dataclasses.replace(boards.get_board("esp32c3"), name="esp32c3-small", sram_bytes=64 * 1024)
    built = emulator.build_firmware(small, model_dir[0], tmp_path / "build", tflm_lib)
    status, objects, lines = run_stream(built.elf["esp_nn"], synthetic_stream(1200), tmp_path / "run")
    assert status == 1
    errors = [o["msg"] for o in objects if o["type"] == "error"]
    assert len(errors) == 1 and errors[0].startswith("does not fit in internal RAM") and errors[0].endswith("smaller model")
    assert not [o for o in objects if o["type"] in ("pick", "timing")]


def test_image_too_big_fails_at_link_time_naming_the_region(tflm_lib, model_dir, tmp_path):
    tiny = dataclasses.replace(boards.get_board("esp32c3"), name="esp32c3-tiny-flash", app_partition_bytes=64 * 1024)
    with pytest.raises(EdgepickError, match=r"does not fit board esp32c3-tiny-flash .*region flash overflowed by \d+ bytes"):
        emulator.build_firmware(tiny, model_dir[0], tmp_path / "build", tflm_lib)


def test_resolver_registers_exactly_the_models_ops(model_dir):
    from pipeline.deploy.convert import c_array

    header = (model_dir[0] / "model_ops.h").read_text()
    ops = tflm.op_counts(model_dir[1])
    assert f"kEdgepickModelOpCount = {len(ops)};" in header
    assert sorted(header.count(f"resolver.{c_array.resolver_method(op)}()") for op in ops) == [1] * len(ops)
    try:
        tflm_root, _ = emulator.vendor_roots()
    except EdgepickError as error:
        pytest.skip(str(error))
    resolver = (tflm_root / "tensorflow/lite/micro/micro_mutable_op_resolver.h").read_text()
    for op in ops:  # every method the header calls exists in TFLite Micro 1.3.4
        assert f"TfLiteStatus {c_array.resolver_method(op)}(" in resolver, op


def test_stage_streams_a_dataset_and_reports(images, model_dir, tmp_path, capsys):
    """`make firmware-sim` itself: the data stage's synthetic traces through the emulated firmware, picks compared with
    Python, the memory table and the instruction counts in its report."""
    from pipeline.config import Config
    from pipeline.stages import data, firmware_sim

    config = Config()
    config.set("data.out", str(tmp_path / "data"))
    config.set("data.synthetic.n_traces", 3)
    config.set("data.synthetic.trace_seconds", 40.0)
    data.run(config)
    for key, value in (("quantize.firmware_dir", str(model_dir[0])), ("board.name", "esp32c3"),
                       ("firmware_sim.dataset", str(tmp_path / "data")), ("firmware_sim.traces", 2),
                       ("firmware_sim.build_dir", str(tmp_path / "build")), ("firmware_sim.out", str(tmp_path / "out"))):
        config.set(key, value)
    report = firmware_sim.run(config)
    assert report["picks_equal"] and len(report["traces"]) == 2
    saved = json.loads((tmp_path / "out" / "esp32c3.json").read_text())
    assert saved["instructions_per_window"] == report["instructions_per_window"]
    # per second of data: the measured window x the exact replay's windows per second (hop IN_SAMPLES // 2) and the
    # live mode's (this header has no live settings: live.hop_samples, 100)
    n = report["instructions_per_window"]["esp_nn"]
    assert saved["instructions_per_second_of_data"]["esp_nn"] == pytest.approx(
        {"exact_replay": n * 100 / (IN_SAMPLES // 2), "live": n * 100 / 100})
    assert saved["energy_est"]["esp_nn"]["live"]["cpu_duty_est"] == pytest.approx(n / 160e6)
    assert (tmp_path / "out" / "esp32c3.energy.md").read_text().strip() == saved["energy_table_md"]
    rows = {m["item"].split(" (")[0]: m for m in report["memory"]}
    assert 0 < rows["RAM: total"]["bytes"] <= rows["RAM: total"]["capacity"] == boards.get_board("esp32c3").sram_bytes
    assert rows["flash: model"]["bytes"] == len(model_dir[1])
    assert report["instructions_per_window"]["esp_nn"] < report["instructions_per_window"]["reference"]
    assert "instructions per window" in capsys.readouterr().out

    config.set("firmware_sim.traces", 0)
    with pytest.raises(EdgepickError, match="nothing to stream"):
        firmware_sim.run(config)
    config.set("quantize.firmware_dir", str(tmp_path / "no-model"))
    with pytest.raises(EdgepickError, match="run `make quantize` first"):
        firmware_sim.run(config)


def test_stage_in_live_mode_picks_as_the_live_python_twin(tflm_lib, model_dir, tmp_path):
    """A header written with live settings (retraction on) builds the live firmware; the stage then compares its
    picks and retractions with pipeline.model.picking.live_stream_picks (not the exact replay) and counts its real-time
    factor at the live hop."""
    from pipeline.config import Config
    from pipeline.deploy.convert import c_array
    from pipeline.stages import data, firmware_sim

    _, flatbuffer, info, budget = model_dir
    live_dir = tmp_path / "live-model"
    c_array.write_firmware(live_dir, flatbuffer, info, PickRule(p_threshold=0.3, s_threshold=0.35), budget, 1e-6,
                           live=LiveRule(info["in_samples"], 100, 100, 200, 500, 500, 50))
    config = Config()
    config.set("data.out", str(tmp_path / "data"))
    config.set("data.synthetic.n_traces", 2)
    config.set("data.synthetic.trace_seconds", 40.0)
    data.run(config)
    for key, value in (("quantize.firmware_dir", str(live_dir)), ("board.name", "esp32c3"),
                       ("firmware_sim.dataset", str(tmp_path / "data")), ("firmware_sim.traces", 1),
                       ("firmware_sim.build_dir", str(tmp_path / "build")), ("firmware_sim.out", str(tmp_path / "out"))):
        config.set(key, value)
    report = firmware_sim.run(config)
    assert report["live"] and report["hop_s"] == 1.0
    assert report["picks_equal"], report["traces"]
    # the emulated board's serial log through `make listen` into QuakeML, read back by obspy with the same picks
    import obspy

    from pipeline import cli

    log = tmp_path / "build" / "esp32c3" / "run-esp_nn" / emulator.OUTPUT_FILE
    assert cli.main(["listen", "--set", f"listen.port={log}", "--set", "listen.station=XX.SIM..HH",
                     "--set", f"listen.out={tmp_path / 'listen'}", "--set", "listen.formats=quakeml"]) == 0
    picks = obspy.read_events(str(next((tmp_path / "listen").glob("*.quakeml.xml"))))[0].picks
    emulated = report["traces"][-1]["esp_nn_kernels"]
    assert sorted((p.phase_hint, round(p.time.timestamp * 100)) for p in picks) == \
        sorted((phase, sample) for phase, sample, _, _ in emulated)
    assert all(p.evaluation_status == ("rejected" if retracted else None)
               for p, (*_, retracted) in zip(sorted(picks, key=lambda p: p.time), sorted(emulated, key=lambda e: e[1])))
    assert picks and all(p.time_errors.uncertainty > 0 and p.waveform_id.station_code == "SIM" for p in picks)


def test_a_killed_tflm_build_leaves_nothing_in_the_cache_and_folders_follow_the_umask(tmp_path, monkeypatch):
    """Issue 31, item 10: a TFLite Micro build killed with -9 left `.tflm-<key>.<random>/` in the cache for good, and
    the cache folder came out 0700 under umask 022. The build folder is now named for its process, so the next
    build removes it (and an earlier edgepick's unnamed ones once an hour old)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEPICK_CACHE", str(cache))
    child = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom pipeline.deploy import emulator\n"
        "emulator._require_tools = lambda: None\nemulator.vendor_roots = lambda vendor=None: ('a', 'b')\n"
        "emulator.tflm_key = lambda *args: '0123'\nemulator._run_build = lambda *args, **kw: time.sleep(600)\n"
        "emulator.build_tflm()\n")], env={**os.environ, "EDGEPICK_CACHE": str(cache)})
    for _ in range(600):
        if cache.is_dir() and any(p.name.startswith(".tflm-0123.") for p in cache.iterdir()):
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".tflm-0123.")], "the killed build left its folder"
    legacy = cache / ".tflm-0123.abcd_123"  # an earlier edgepick's build folder, two hours old
    legacy.mkdir()
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))

    def fake_build(args, what, progress=None):
        if "--build" in args:
            for kernel in emulator.KERNELS:
                (Path(args[2]) / f"libtflm_{kernel}.a").write_bytes(b"!<arch>\n")
        return ""

    monkeypatch.setattr(emulator, "_require_tools", lambda: None)
    monkeypatch.setattr(emulator, "vendor_roots", lambda vendor=None: (tmp_path / "a", tmp_path / "b"))
    monkeypatch.setattr(emulator, "tflm_key", lambda *args: "0123")
    monkeypatch.setattr(emulator, "_run_build", fake_build)
    old_umask = os.umask(0o022)
    try:
        target = emulator.build_tflm()
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in cache.iterdir()) == ["tflm-0123"]
    assert target.stat().st_mode & 0o777 == 0o755
