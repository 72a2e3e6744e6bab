"""End to end over a pseudo-terminal: python -m pipeline replay against the host program serving the serial
protocol (its stand-in model, a real .tflite in the tflite-micro interpreter); replay's miniSEED and dataset input."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import numpy as np
import pytest


from host_core import (EPS, HOP, IN_SAMPLES, compare_picks, int8_student_tflite, run, square_model, stream_args,
                       stream_reference, synthetic_stream, tiny_tflite_model)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no host g++")


# ---------------------------------------------------------------------------------------------------------------
# End to end over a pseudo-terminal: the replay script against the host program serving the serial protocol
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="no pseudo-terminals")
def test_replay_over_pty(driver, tmp_path):
    import tty

    from pipeline.deploy import replay
    master, slave = os.openpty()
    tty.setraw(slave)
    slave_name = os.ttyname(slave)
    env = dict(os.environ, EDGEPICK_TTY=slave_name)
    server = subprocess.Popen([str(driver), "serve", *map(str, stream_args()[1:])], env=env, stderr=subprocess.PIPE)
    try:
        x = synthetic_stream()
        picks, messages = replay.replay_array(os.fdopen(master, "r+b", buffering=0), x, timeout=30.0)
    finally:
        server.kill()
        server.wait()
        os.close(slave)
    ref, _ = stream_reference(x, square_model, IN_SAMPLES, HOP, 0.3, EPS)
    compare_picks(picks, ref)
    assert any(m.get("msg", "").startswith("end:") for m in messages)



@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "openpty") or not hasattr(os, "mkfifo"), reason="no pseudo-terminals / fifos")
@pytest.mark.parametrize("model", ["mul-softmax", "int8-student"])
def test_replay_over_pty_with_tflite_micro(driver, tmp_path, model):
    """End to end: replay.py -> pseudo-terminal -> host program (the portable core) whose model is a real .tflite
    run by the tflite-micro interpreter (the reference kernels of the microcontroller) -> picks equal to the
    Python pipeline's on the same model. Models: a two-op float flatbuffer, and an INT8 student of the XiaoNet
    family from the quantize stage (int8 input quantised and output dequantised as the firmware does)."""
    import tty

    runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    from pipeline.deploy import replay
    if model == "mul-softmax":
        interpreter = runtime.Interpreter.from_bytes(tiny_tflite_model(IN_SAMPLES), arena_size=64 * 1024)

        def tflm(window_nw: np.ndarray) -> np.ndarray:  # (n, 3) normalised -> (n, 3) probabilities
            interpreter.set_input(np.ascontiguousarray(window_nw, dtype=np.float32).reshape(1, IN_SAMPLES, 1, 3), 0)
            interpreter.invoke()
            return np.asarray(interpreter.get_output(0), dtype=np.float32).reshape(IN_SAMPLES, 3)
    else:
        from pipeline.deploy import tflm as runtime_tflm

        flatbuffer = int8_student_tflite(IN_SAMPLES)

        def tflm(window_nw: np.ndarray) -> np.ndarray:
            return runtime_tflm.run(flatbuffer, np.ascontiguousarray(window_nw.T, dtype=np.float32)[None])[0].T

    x = synthetic_stream()
    ref, _ = stream_reference(x, lambda w: tflm(w.T), IN_SAMPLES, HOP, 0.3, EPS)
    assert len(ref) >= 3

    request, reply = tmp_path / "request", tmp_path / "reply"
    os.mkfifo(request)
    os.mkfifo(reply)
    windows_served = []

    def serve():
        with open(request, "rb") as req, open(reply, "wb") as rep:
            size = IN_SAMPLES * 3 * 4
            while True:
                data = req.read(size)
                if len(data) < size:
                    return
                window = np.frombuffer(data, dtype="<f4").reshape(IN_SAMPLES, 3)
                windows_served.append(window)
                rep.write(tflm(window).astype("<f4").tobytes())
                rep.flush()

    model_server = threading.Thread(target=serve, daemon=True)
    model_server.start()
    master, slave = os.openpty()
    tty.setraw(slave)
    env = dict(os.environ, EDGEPICK_TTY=os.ttyname(slave))
    args = [*map(str, stream_args()[1:-1]), "pipe", str(request), str(reply)]
    server = subprocess.Popen([str(driver), "serve", *args], env=env, stderr=subprocess.PIPE)
    try:
        picks, messages = replay.replay_array(os.fdopen(master, "r+b", buffering=0), x, timeout=30.0)
    finally:
        server.kill()
        server.wait()
        os.close(slave)
    compare_picks(picks, ref)
    assert len(windows_served) == len(range(0, x.shape[1] - IN_SAMPLES + 1, HOP)) + 1  # + SeisBench's last window



def test_replay_reads_miniseed_gaps_as_gaps_and_opens_datasets(driver, tmp_path):
    """scripts/replay.py reads miniSEED as the data stage does: a gap stays a gap (an index jump the firmware
    reports), never interpolated; and --dataset opens an edgepick dataset (it used to refuse every one)."""
    obspy = pytest.importorskip("obspy")
    from pipeline.deploy import replay
    from pipeline.config import DataConfig
    from pipeline.data.datasets import write_dataset
    from pipeline.deploy.serial_protocol import sample_lines

    rng = np.random.default_rng(3)
    start = obspy.UTCDateTime(2020, 1, 1)
    stream = obspy.Stream()
    for component in "ZNE":
        for offset, n in ((0.0, 4000), (42.0, 3000)):  # 40 s of data, a 2 s gap, 30 s more
            stream.append(obspy.Trace(rng.normal(size=n).astype(np.float32), header={
                "network": "XX", "station": "A", "channel": f"HH{component}", "sampling_rate": 100.0,
                "starttime": start + offset}))
    stream.write(str(tmp_path / "gap.mseed"), format="MSEED")
    segments, t0 = replay.load_mseed(str(tmp_path / "gap.mseed"))
    assert t0 == pytest.approx(start.timestamp)
    assert [(first, data.shape) for first, data in segments] == [(0, (3, 4000)), (4200, (3, 3000))]
    out = run(driver, *stream_args(), stdin="".join(sample_lines(segments)))
    assert "gap of 200 samples" in out
    with pytest.raises(replay.EdgepickError, match="cannot read"):
        replay.load_mseed(str(tmp_path / "missing.mseed"))

    def records():
        for i in range(3):
            yield {"trace_name": f"t{i}", "trace_sampling_rate_hz": 100.0, "source_id": f"e{i}"}, rng.normal(size=(3, 4000))

    write_dataset(records(), tmp_path / "ds", DataConfig(), "test")
    x, _ = replay.load_dataset_trace(str(tmp_path / "ds"), 1)
    assert x.shape == (3, 4000)
