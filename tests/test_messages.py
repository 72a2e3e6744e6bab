"""What a user sees: edgepick's own lines, one line per error; the libraries' chatter only with -v."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def edgepick(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})}, cwd=cwd or REPO)


@pytest.mark.slow
def test_missing_teacher_weights_is_one_line(tmp_path):
    """The missing-weights error used to follow eight lines of SeisBench's download warnings."""
    result = edgepick("soft-labels", "--set", "teacher.name=phasenet:nosuchweights", "--set",
                      f"distill.dataset={tmp_path / 'data'}", env={"SEISBENCH_CACHE_ROOT": str(tmp_path / "cache")})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgepick soft-labels: error:"), result.stderr


@pytest.mark.slow
def test_data_stage_prints_no_library_warnings(tmp_path):
    result = edgepick("data", "--set", "data.synthetic.n_traces=20", "--set", f"data.out={tmp_path / 'd'}")
    assert result.returncode == 0, result.stderr
    assert "seisbench" not in result.stderr.lower() and "Output component order" not in result.stderr


def test_converter_chatter_is_hidden_unless_verbose(capfd):
    """TensorFlow's converter prints `fully_quantize: 0, ...` and absl lines from C++; they are held back."""
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    from pipeline.deploy.convert import tflite

    inputs = tf.keras.Input((64, 1, 3))
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(3, (3, 1), padding="same")(inputs))
    flatbuffer = tflite.convert_int8(model, np.random.default_rng(0).normal(size=(4, 3, 64)).astype(np.float32))
    assert flatbuffer[4:8] == b"TFL3"
    captured = capfd.readouterr()
    assert "fully_quantize" not in captured.out + captured.err


def test_an_interrupted_dataset_write_names_no_deleted_file(tmp_path, capfd):
    """On Ctrl-C SeisBench's writer says it 'saved current progress to .../metadata.csv' in a temporary folder that
    is deleted right after; edgepick keeps that line out and leaves nothing behind."""
    import logging

    from pipeline import cli
    from pipeline.config import DataConfig
    from pipeline.data.datasets import write_dataset

    seisbench_logger = logging.getLogger("seisbench")
    level, filters, propagate = seisbench_logger.level, list(seisbench_logger.filters), seisbench_logger.propagate
    cli.quiet_libraries(verbose=False)

    def interrupted():
        yield {"trace_name": "a", "trace_sampling_rate_hz": 100.0, "source_id": "e1"}, np.zeros((3, 4000), np.float32)
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            write_dataset(interrupted(), tmp_path / "out", DataConfig(), "synthetic")
    finally:
        seisbench_logger.setLevel(level)
        seisbench_logger.filters[:] = filters
        seisbench_logger.propagate = propagate
    assert "Saved current progress" not in capfd.readouterr().err
    assert not any(tmp_path.iterdir()) or [p.name for p in tmp_path.iterdir()] == [".out.lock"]


# Issue 31, item 9: messages that pointed the wrong way
def _write_mseed(path, stations=("AAA",), samples=3000, damage=False):
    import obspy

    stream = obspy.Stream()
    for station in stations:
        for component in "ZNE":
            data = (np.random.default_rng(0).normal(size=samples) * 100).astype(np.int32)
            stream.append(obspy.Trace(data, header={"network": "XX", "station": station, "channel": f"HH{component}",
                                                    "sampling_rate": 100.0, "starttime": obspy.UTCDateTime(2020, 1, 1)}))
    stream.write(str(path), format="MSEED", reclen=512)
    if damage:  # a stretch of zeros between records: libmseed warns of every record it skips
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] + b"\0" * 700 + data[len(data) // 2:])
    return path


def test_an_unknown_board_names_the_boards_not_make_quantize(capsys):
    from pipeline.cli import main

    assert main(["firmware", "--set", "board.name=esp64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown board 'esp64'; known: esp32, esp32-psram2" in err[0], err
    assert "make quantize" not in err[0]


def test_replay_names_an_unreadable_file_as_unreadable(tmp_path, capsys):
    from pipeline.deploy import replay

    bad = tmp_path / "day.mseed"
    bad.write_bytes(np.random.default_rng(0).bytes(3000))
    assert replay.main(["--port", str(tmp_path / "port"), "--mseed", str(bad), "--quakeml", str(tmp_path / "q.xml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read day.mseed" in err[0] and "--waveform-id" not in err[0], err


def test_firmware_sim_on_two_stations_points_at_its_own_setting(tmp_path):
    from pipeline.config import Config
    from pipeline.stages import firmware_sim

    path = _write_mseed(tmp_path / "two.mseed", stations=("AAA", "BBB"))
    config = Config.load(None, [f"firmware_sim.mseed={path}"])
    with pytest.raises(Exception, match=r"holds 2 stations \(XX.AAA, XX.BBB\): pick one \(firmware_sim.station="):
        firmware_sim.streamed_traces(config, 100.0)


def test_a_teacher_folder_as_student_says_it_is_not_a_student(tmp_path, capsys):
    import seisbench.models as sbm

    from pipeline.cli import main
    from pipeline.distill.training import save_model

    save_model(sbm.PhaseNet(phases="PSN", norm="peak", component_order="ENZ", sampling_rate=100), tmp_path, "teacher")
    assert main(["quantize", "--set", f"quantize.student={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an edgepick student" in err[0] and "in_channels" not in err[0], err


@pytest.mark.slow
def test_obspy_record_warnings_show_with_v_only(tmp_path):
    (tmp_path / "in").mkdir()
    _write_mseed(tmp_path / "in" / "a.mseed", samples=60000, damage=True)
    args = ["data", "--set", "data.source=miniseed", "--set", f"data.miniseed.path={tmp_path / 'in'}",
            "--set", f"data.out={tmp_path / 'out'}"]
    assert "InternalMSEEDWarning" not in edgepick(*args).stderr
    assert "InternalMSEEDWarning" in edgepick("-v", *args).stderr


# Issue 31, item 10: quiet no-ops
@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("target", ["labelled", "recipe"])
def test_make_labelled_without_labelled_sets_fails_in_one_line(tmp_path, target):
    """It printed `true` and exited 0, so make recipe went on to benchmark nothing."""
    result = subprocess.run(["make", "--no-print-directory", target, f"REAL_DATASETS={tmp_path}"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.splitlines()[0] == (f"make labelled: error: no labelled sets in {tmp_path} (SeisBench-format "
                                             "folders, <set>/metadata.csv); copy them there or give REAL_DATASETS=<folder>")
