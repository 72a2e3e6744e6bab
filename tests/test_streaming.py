"""The streaming (causal) student: the whole-window forward is the stream run block by block, nothing after a
block reaches its scores, the running normalisation is the per-window one of the window ending with each block,
and SeisBench's annotate of it is its stream."""

import numpy as np
import obspy
import pytest
import torch

from pipeline.data.normalization import normalize_windows
from pipeline.distill.loop import _loss, delayed_targets
from pipeline.errors import EdgepickError
from pipeline.config import DistillConfig
from pipeline.model import streaming
from pipeline.model.stream_step import StreamStep, stream_scores
from pipeline.model.student import XiaoNet, load_student
from pipeline.model.streaming import BLOCK, NORM_CLIP, RunningNormalizer, causal_reach, running_normalize


def causal_student(refine_blocks=0, delay=100, seed=0, **kwargs) -> XiaoNet:
    """A small causal student with BatchNorm statistics that are not the identity (as a trained one's)."""
    torch.manual_seed(seed)
    model = XiaoNet(base_channels=2, in_samples=3008, causal=True, output_delay=delay, activation="relu6",
                    refine_blocks=refine_blocks, **kwargs).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2)
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
    return model


def waveform(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, n)) * 300 + 40
    x[:, n // 2 :] += rng.normal(size=(3, n - n // 2)) * 3000 * np.exp(-np.arange(n - n // 2) / 400)
    return x


@pytest.mark.slow
@pytest.mark.parametrize("refine_blocks, antialias", [(0, False), (1, False), (0, True)])
def test_whole_window_forward_is_the_stream_block_by_block(refine_blocks, antialias):
    model = causal_student(refine_blocks, antialias=antialias)
    x = waveform(40 * BLOCK)
    with torch.no_grad():
        whole = torch.softmax(model.logits(torch.from_numpy(x).float()[None]), dim=1)[0].T.numpy()
    streamed = stream_scores(model, x)
    delay = model.output_delay
    assert np.isnan(streamed[-delay:]).all() and not np.isnan(streamed[:-delay]).any()
    np.testing.assert_allclose(streamed[:-delay], whole[delay:], atol=1e-5)
    # each convolution's kept context (kernel - stride); blurred, the stride-4 stages' and the upsampling's 4 longer
    # (the bottleneck's k3 / s4 then keeps 3 samples instead of dropping one)
    encoder = [6, 5, 5, 3] if antialias else [6, 1, 1]
    up = [8, 8, 8] if antialias else [4, 4, 4]
    assert [s[-1] for s in StreamStep(model).state_shapes()] == encoder + [2, 4, 6] + up + [4] * refine_blocks + [4]


@pytest.mark.slow
@pytest.mark.parametrize("refine_blocks, antialias", [(0, False), (1, False), (0, True)])
def test_no_score_sees_past_its_block_and_the_reach_is_traced(monkeypatch, refine_blocks, antialias):
    monkeypatch.setattr(streaming, "running_normalize", lambda x, *settings: x)  # the network alone
    model = causal_student(refine_blocks, antialias=antialias)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.abs_()  # positive weights and inputs: no ReLU is off, every path shows in the gradient
    x = torch.full((1, 3, 30 * BLOCK), 1e-3, requires_grad=True)
    scores = model.logits(x)[0, 0]
    reach, ahead = [], []
    for t in range(20 * BLOCK, 21 * BLOCK):
        (gradient,) = torch.autograd.grad(scores[t], x, retain_graph=True)
        seen = np.flatnonzero(gradient.abs().sum(dim=(0, 1)).numpy())
        reach.append(t - seen.min())
        ahead.append(seen.max() - t)
    assert max(reach) == causal_reach(refine_blocks, antialias=antialias)
    assert ahead == list(range(BLOCK - 1, -1, -1))  # each score sees up to its block's last sample, not after


def test_running_normalisation_is_the_window_ending_with_each_block():
    x = waveform(12 * BLOCK, seed=1)
    whole = running_normalize(x, 4, 1e-6)
    normalizer = RunningNormalizer(3, 4, 1e-6)
    for b in range(12):
        block = normalizer(x[:, b * BLOCK : (b + 1) * BLOCK])
        np.testing.assert_allclose(block, whole[:, b * BLOCK : (b + 1) * BLOCK], rtol=1e-5, atol=1e-6)
        window = x[:, max(0, b - 3) * BLOCK : (b + 1) * BLOCK]
        np.testing.assert_allclose(block, normalize_windows(window)[:, -BLOCK:], rtol=1e-4, atol=1e-5)
    assert np.abs(whole).max() <= 1.0 and running_normalize(np.zeros((3, BLOCK)), 4, 1e-6).max() == 0



def test_per_sample_normalisation_is_the_window_ending_with_each_sample():
    x = waveform(12 * BLOCK, seed=3)
    x[:, 7 * BLOCK + 40 :] *= 50  # an onset at sample 40 of block 7
    whole = running_normalize(x, 4, 1e-6, per_sample=True)
    normalizer = RunningNormalizer(3, 4, 1e-6, per_sample=True)
    blocks = np.concatenate([normalizer(x[:, b * BLOCK : (b + 1) * BLOCK]) for b in range(12)], axis=1)
    np.testing.assert_allclose(blocks, whole, rtol=1e-5, atol=1e-6)
    for t in (5, 100, 7 * BLOCK + 39, 7 * BLOCK + 40, 12 * BLOCK - 1):
        b = t // BLOCK
        mean = x[:, max(0, b - 4) * BLOCK : max(1, b) * BLOCK].mean(-1)  # the 4 blocks before (the first: its own)
        span = x[:, max(0, b - 3) * BLOCK : t + 1] - mean[:, None]
        np.testing.assert_allclose(whole[:, t], (x[:, t] - mean) / (np.abs(span).max() * (1 + 1e-6)), rtol=1e-5)
    # the noise before the onset keeps its scale; a peak per block divides it by the onset's from the block's start
    before = slice(7 * BLOCK, 7 * BLOCK + 40)
    assert np.abs(whole[:, before]).max() > 0.3
    assert np.abs(running_normalize(x, 4, 1e-6)[:, before]).max() < 0.1
    # and what a sample is given does not depend on the samples after it (past the first block)
    cut = running_normalize(x[:, : 8 * BLOCK], 4, 1e-6, per_sample=True)
    np.testing.assert_array_equal(cut, whole[:, : 8 * BLOCK])
    assert np.abs(whole).max() <= 1.0 and running_normalize(np.zeros((3, BLOCK)), 4, 1e-6, True).max() == 0


def test_a_lagged_normalisation_measures_an_onset_against_the_noise_before_it():
    x = waveform(12 * BLOCK, seed=4)
    onset = 7 * BLOCK + 40
    x[:, onset:] *= 50
    whole = running_normalize(x, 4, 1e-6, per_sample=True, lag=100)
    normalizer = RunningNormalizer(3, 4, 1e-6, per_sample=True, lag=100)
    blocks = np.concatenate([normalizer(x[:, b * BLOCK : (b + 1) * BLOCK]) for b in range(12)], axis=1)
    np.testing.assert_allclose(blocks, whole, rtol=1e-5, atol=1e-6)
    # for the lag's 100 samples the onset is measured against the noise: it stands out, up to the clip
    assert np.abs(whole[:, onset : onset + 100]).max() == NORM_CLIP
    assert np.abs(running_normalize(x, 4, 1e-6, per_sample=True)[:, onset : onset + 100]).max() <= 1
    assert np.median(np.abs(whole[:, onset + 200 :])) < 1  # and then against itself
    assert np.abs(whole[:, :onset]).max() <= NORM_CLIP
    for settings in ({"per_sample": False, "lag": 10}, {"per_sample": True, "lag": 3 * BLOCK}):
        with pytest.raises(EdgepickError, match="lag"):
            RunningNormalizer(3, 4, 1e-6, **settings)

@pytest.mark.slow
def test_annotate_of_a_causal_student_is_its_stream_from_the_first_sample():
    model = causal_student()
    x = waveform(5000, seed=2)
    start = obspy.UTCDateTime(2024, 1, 1)
    stream = obspy.Stream([obspy.Trace(x[i].astype(np.float32), header={
        "network": "OK", "station": "X", "channel": f"HH{c}", "sampling_rate": 100.0, "starttime": start})
        for i, c in enumerate("ZNE")])
    annotations = model.annotate(stream)
    p = annotations.select(channel="XiaoNet_P")[0]
    assert abs(p.stats.starttime - start) < 0.01  # scores from the trace's first sample (after the warm-up)
    pad = streaming.history(model) + BLOCK
    reference = stream_scores(model, streaming.warmup(x.astype(np.float32).astype(np.float64), pad, 100.0))[pad:]
    n = min(len(p.data), len(reference))
    finite = ~np.isnan(reference[:n, 0])
    assert finite.sum() > 4000
    np.testing.assert_allclose(p.data[:n][finite], reference[:n, 0][finite], atol=2e-5)


def test_causal_settings_are_saved_and_bad_ones_refused(tmp_path):
    model = causal_student(delay=150, norm_window=2048)
    model.save(tmp_path / "student")
    loaded = load_student(tmp_path / "student")
    assert (loaded.causal, loaded.output_delay, loaded.norm_window, loaded.s_output_delay) == (True, 150, 2048, 150)
    assert streaming.live_rule(loaded).saved() == {"hop": 64, "p_lookahead": 150, "s_lookahead": 150, "p_confirm": 0,
                                                   "s_confirm": 0, "confirm_within": 50}
    causal_student(s_output_delay=300).save(tmp_path / "late_s")
    loaded = load_student(tmp_path / "late_s")
    assert (loaded.output_delay, loaded.s_output_delay) == (100, 300)
    assert streaming.live_rule(loaded).lookaheads == {"P": 100, "S": 300}
    # windows keep the scores every class has: blinded and overlapped by the later delay
    assert loaded.default_args["blinding"][1] == 300
    assert XiaoNet(base_channels=2).s_output_delay == 0
    for kwargs, message in [(dict(output_delay=100), "causal"), (dict(causal=True, in_samples=3001), "blocks"),
                            (dict(causal=True, in_samples=3008, norm_window=100), "norm_window"),
                            (dict(causal=True, in_samples=3008, output_delay=0), "output_delay"),
                            (dict(causal=True, in_samples=1024, norm_window=1024), "history"),
                            (dict(s_output_delay=200), "causal"),
                            (dict(causal=True, in_samples=3008, s_output_delay=3008), "s_output_delay"),
                            (dict(causal=True, in_samples=3008, s_output_delay=2.5), "whole numbers")]:
        with pytest.raises(EdgepickError, match=message):
            XiaoNet(base_channels=2, **kwargs)
    with pytest.raises(EdgepickError, match="causal"):
        StreamStep(XiaoNet(base_channels=2))


def test_distillation_compares_a_delayed_score_with_the_target_it_is_of():
    torch.manual_seed(3)
    target = torch.softmax(torch.randn(2, 3, 640), dim=1)
    delay = 50
    late = torch.log(torch.cat([torch.full((2, 3, delay), 1 / 3), target[..., :-delay]], dim=-1))  # target, 50 late
    cfg = DistillConfig(temperature=1.0, alpha=1.0)
    assert _loss(cfg, late, target, None, (delay,) * 3) < 1e-6 < _loss(cfg, late, target, None, (0, 0, 0))


def test_s_scores_written_later_than_p_are_compared_with_the_targets_they_are_of():
    torch.manual_seed(4)
    target = torch.softmax(3 * torch.randn(2, 3, 640), dim=1)
    delays = (50, 170, 50)  # P, S, noise
    shifted = delayed_targets(target, delays)
    assert shifted.shape == (2, 3, 640 - 170)
    # sample t (from 170 on) holds P and S of t - 50 and t - 170, a distribution again
    torch.testing.assert_close(shifted.sum(dim=1), torch.ones(2, 640 - 170))
    t = 300
    raw = torch.stack([target[:, 0, t - 50], target[:, 1, t - 170], (1 - target[:, 0, t - 50] - target[:, 1, t - 170]).clamp_min(0)], 1)
    torch.testing.assert_close(shifted[..., t - 170], raw / raw.sum(1, keepdim=True))
    logits = torch.log(torch.cat([torch.full((2, 3, 170), 1 / 3), shifted], dim=-1).clamp_min(1e-8))
    cfg = DistillConfig(temperature=1.0, alpha=1.0)
    assert _loss(cfg, logits, target, None, delays) < 1e-6 < _loss(cfg, logits, target, None, (170,) * 3)
    assert delayed_targets(None, delays) is None


@pytest.mark.slow
def test_an_s_delay_of_its_own_moves_only_the_s_scores_back():
    model = causal_student(s_output_delay=260)
    assert streaming.channel_delays(model) == (100, 260, 100)
    x = waveform(40 * BLOCK, seed=5)
    with torch.no_grad():
        whole = torch.softmax(model.logits(torch.from_numpy(x).float()[None]), dim=1)[0].T.numpy()
    streamed = stream_scores(model, x)
    for c, d in enumerate((100, 260, 100)):
        assert np.isnan(streamed[-d:, c]).all() and not np.isnan(streamed[:-d, c]).any()
        np.testing.assert_allclose(streamed[:-d, c], whole[d:, c], atol=1e-5)


def test_a_blurred_depthwise_kernel_is_its_taps_convolved_with_the_low_pass():
    from pipeline.model.layers import BLUR, BlurredDepthwiseConv1d, DepthwiseConv1d

    torch.manual_seed(6)
    blurred = BlurredDepthwiseConv1d(3, 5, stride=4)
    weight = blurred.effective_weight().detach()
    assert weight.shape == (3, 1, 9) and blurred.effective_kernel == 9
    np.testing.assert_allclose(weight[1, 0].numpy(), np.convolve(blurred.weight[1, 0].detach().numpy(),
                                                                 np.array(BLUR) / sum(BLUR)), atol=1e-6)
    plain = DepthwiseConv1d(3, 9, 4)
    with torch.no_grad():
        plain.weight.copy_(weight)
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(blurred(x), plain(x))
    torch.testing.assert_close(blurred(x.unsqueeze(2)).squeeze(2), plain(x))  # the training layout (4-D)
    # the low-pass: a period-4 input (what a stride-4 stage folds onto 0 Hz) leaves ~nothing of itself
    period4 = torch.tensor([1.0, 0, -1, 0] * 16).repeat(1, 3, 1)
    with torch.no_grad():
        blurred.weight.fill_(1.0)
    assert blurred(period4)[..., 3:].abs().max() < 1e-6
    assert list(blurred.state_dict()) == ["weight"]  # the low-pass is not a parameter


def test_antialias_is_saved_and_only_for_a_causal_student(tmp_path):
    model = causal_student(antialias=True)
    model.save(tmp_path / "aa")
    loaded = load_student(tmp_path / "aa")
    assert loaded.antialias and loaded.enc2.kernel == 9 and loaded.up1.kernel == 9
    assert streaming.history(loaded) == loaded.norm_window + causal_reach(antialias=True) > streaming.history(
        causal_student())
    assert loaded.count_macs() > causal_student().count_macs()
    with pytest.raises(EdgepickError, match="antialias"):
        XiaoNet(base_channels=2, antialias=True)


def test_norm_settings_are_the_students_and_an_older_description_is_a_peak_per_block():
    model = causal_student(norm_window=512, sample_norm=True, norm_lag=100)
    norm = streaming.NormSettings.of(model)
    assert norm == streaming.NormSettings(8, model.norm_eps, True, 100)
    assert str(norm.normalizer()) == str(RunningNormalizer(3, 8, model.norm_eps, True, 100))
    older = {"norm_window_blocks": 16, "norm_eps": 1e-6}  # stream_states.json before sample_norm
    assert streaming.NormSettings.described(older) == streaming.NormSettings(16, 1e-6, False, 0)
    with pytest.raises(EdgepickError, match="norm_lag"):
        causal_student(norm_window=512, norm_lag=100)  # a lag without sample_norm


@pytest.mark.slow
def test_the_live_study_scores_a_causal_student_on_its_stream_not_on_a_grid(tmp_path):
    """`study live`: a causal student's live mode is its stream (a block a hop, look-ahead = each phase's delay, no
    retraction), whatever --grid says; its live picks are its exact ones, reported later."""
    from helpers import make_records
    from pipeline.config import DataConfig
    from pipeline.data.datasets import write_dataset
    from pipeline.studies import live as live_study

    write_dataset(make_records(), tmp_path / "ds", DataConfig(), "test")
    student = causal_student(delay=100, s_output_delay=200)
    rows = live_study.score_dataset(student, tmp_path / "ds", "", [(100, 100), (50, 200)], True, "phasenet:okla",
                                    2, confirm=(500,))
    assert [(r["phase"], r["hop"], r["lookahead"]) for r in rows] == [("P", BLOCK, 100), ("S", BLOCK, 200)]
    for r in rows:
        assert r["confirmed"] == {} and r["f1_live"] == r["f1_exact"]


def test_a_causal_students_live_picks_are_scored_on_the_span_a_whole_window_students_are():
    """The live pass drops picks at the join of warm-up and trace: for a causal student the same span as for a
    whole-window one (its stream blinds nothing), so that both live modes are scored on the same samples."""
    from pipeline.evaluate.live import live_skip_samples
    from pipeline.model.runners import BenchModel
    from pipeline.model.student import RECEPTIVE_RADIUS

    causal = BenchModel("student", "pytorch", "fp32", [causal_student()])
    whole = BenchModel("student", "pytorch", "fp32", [XiaoNet(base_channels=2, in_samples=3001)])
    assert live_skip_samples(causal) == live_skip_samples(whole) == RECEPTIVE_RADIUS
    assert live_skip_samples(causal, warmup=False) == live_skip_samples(whole, warmup=False) == 0
