"""What a user sees: edgepick's own lines, one line per error; the libraries' chatter only with -v."""

from __future__ import annotations

import os
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
