"""pipeline.model.block_picks, the Python twin of the firmware's block picker: its curves are the live rule of a
causal student (pipeline.model.streaming.live_rule: a window every block keeping its last block's scores, each
phase's look-ahead its delay) computed from the stream; the warm-up, the per-phase delays and the reported samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import EdgepickError
from pipeline.model.block_picks import block_curves, block_stream_picks, flat_blocks
from pipeline.model.picking import PickRule, live_blinding, live_offsets, live_reported_sample
from pipeline.model.stream_step import StreamStep
from pipeline.model.streaming import BLOCK, RunningNormalizer, block_live_rule, live_rule

from test_streaming import causal_student, waveform


def written_scores(student, x: np.ndarray) -> np.ndarray:
    """The PyTorch stream's probabilities at each block sample (not moved back by the delay)."""
    step, normalizer = StreamStep(student), RunningNormalizer(3, student.norm_window // BLOCK, student.norm_eps)
    states, out = step.zero_states(), []
    with torch.no_grad():
        for start in range(0, x.shape[1] // BLOCK * BLOCK, BLOCK):
            logits, *states = step(torch.from_numpy(normalizer(x[:, start:start + BLOCK]))[None], *states)
            out.append(torch.softmax(logits, 1)[0].T.numpy())
    return np.concatenate(out)


@pytest.fixture
def one_thread():
    """One torch thread for the test (a stage run earlier in the session may leave more, and small convolutions
    then wait on a busy second core: 0.1 s became 9 s after tests/test_benchmark.py with a training beside it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_curves_are_the_live_rules_windows(one_thread):
    """Each live window (in_samples, every 64 samples) run whole by the student, its scores moved back by the delay
    as its annotate does, kept with the live blinding: the twin's curve from the stream, sample for sample."""
    student = causal_student(delay=70, norm_window=512)
    n = student.in_samples + 6 * BLOCK + 30
    x = waveform(n, seed=3)
    live = live_rule(student)
    assert live == block_live_rule(student.in_samples, 70, 70)
    curves = block_curves(written_scores(student, x), live)
    pre, post = live_blinding(student.in_samples, BLOCK, 70)
    windowed = np.full_like(curves, np.nan)
    with torch.no_grad():
        for offset in live_offsets(n, student.in_samples, BLOCK):
            scores = student(torch.from_numpy(x[:, offset:offset + student.in_samples]).float()[None])[0].T.numpy()
            shifted = scores[70:]  # the score at t is of t - 70 (annotate_batch_post)
            windowed[offset + pre: offset + student.in_samples - post] = shifted[pre: student.in_samples - post]
    assert len(curves) == n // BLOCK * BLOCK and np.isnan(curves[:pre]).all() and np.isnan(curves[-70:]).all()
    np.testing.assert_allclose(curves, windowed, atol=2e-5)


def test_per_phase_delays_warm_up_and_reports():
    """S written at block sample t is of t - s_delay: its curve starts and ends s_delay - p_delay earlier than P's;
    a pick is reported with the block that closes its trigger, or at the stream's end."""
    blocks, in_samples = 40, 1024
    written = np.zeros((blocks * BLOCK, 3), dtype=np.float32)
    written[:, 2] = 1.0
    written[1500:1520, 0] = 0.9  # P peaks written at 1500..1519: of samples 1400..1419 (delay 100)
    written[1500:1520, 1] = 0.8  # S peaks written there: of samples 1320..1339 (delay 180)
    written[-10:, 1] = 0.7  # an S open at the end: closed at "#end"
    live = block_live_rule(in_samples, 100, 180)
    curves = block_curves(written, live)
    assert np.isnan(curves[: in_samples - BLOCK - 100, 0]).all() and not np.isnan(curves[in_samples - BLOCK - 100, 0])
    assert np.isnan(curves[: in_samples - BLOCK - 180, 1]).all() and not np.isnan(curves[in_samples - BLOCK - 180, 1])
    assert np.isnan(curves[-100:, 0]).all() and np.isnan(curves[-180:, 1]).all()
    n = blocks * BLOCK + 17  # and a partial block
    picks, _ = block_stream_picks(written, n, live, PickRule(p_threshold=0.5, s_threshold=0.5))
    by_phase = {p["phase"]: p for p in picks if p["sample"] < 2000}
    assert (by_phase["P"]["on"], by_phase["P"]["off"]) == (1400, 1419)
    assert (by_phase["S"]["on"], by_phase["S"]["off"]) == (1320, 1339)
    # closed by the first sample below half the threshold, 1420 (P) / 1340 (S): its block is the one holding 1520
    assert by_phase["P"]["reported"] == by_phase["S"]["reported"] == 1535
    assert by_phase["P"]["reported"] == live_reported_sample(1420, n, in_samples, BLOCK, 100)
    last = [p for p in picks if p["sample"] > 2000]
    assert [p["phase"] for p in last] == ["S"] and last[0]["reported"] == n - 1


def test_flat_horizontals_and_bad_input():
    x = np.ones((3, 20 * BLOCK), dtype=np.float32)
    x[0] = np.arange(x.shape[1])
    x[1, 3 * BLOCK] = 2.0  # N moves once, at sample 192: windows of 512 samples ending after 192 + 512 are flat
    flat = flat_blocks(x, 512)
    assert not flat[:11].any() and flat[11:].all()  # block 11 ends at 768: its window starts at 256 > 192
    written = np.full((20 * BLOCK, 3), 1 / 3, dtype=np.float32)
    curves = block_curves(written, block_live_rule(512, 50, 50), flat)
    assert (curves[768 - BLOCK - 50: 20 * BLOCK - 50, 1] == 0).all()
    assert (curves[512 - BLOCK - 50: 768 - BLOCK - 50, 1] == np.float32(1 / 3)).all()
    with pytest.raises(EdgepickError, match="whole 64-sample blocks"):
        block_curves(written[:100], block_live_rule(512, 50, 50))
    with pytest.raises(EdgepickError, match="without retraction"):
        block_stream_picks(written, 1280, block_live_rule(512, 50, 50).with_confirm(200), PickRule())
