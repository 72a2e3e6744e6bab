"""The XiaoNet-style student: shapes, probabilities, SeisBench save/load/annotate/classify, MAC budget."""

import json

import numpy as np
import obspy
import pytest
import torch

from pipeline.config import Config
from pipeline.errors import EdgepickError
from pipeline.model.picking import PickRule
from pipeline.data.normalization import normalize_windows
from pipeline.model.student import XiaoNet, build_student, load_student, phasenet_macs


@pytest.mark.parametrize("samples", [1001, 3001])
def test_shapes_and_probabilities(samples):
    torch.manual_seed(0)
    model = XiaoNet(base_channels=4, in_samples=samples).eval()
    x = torch.randn(2, 3, samples)
    with torch.no_grad():
        probs = model(x)
        logits = model.logits(x)
    assert probs.shape == (2, 3, samples) and logits.shape == (2, 3, samples)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, samples), atol=1e-5)
    assert torch.allclose(torch.softmax(logits, dim=1), probs, atol=1e-6)
    assert (probs >= 0).all()


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = XiaoNet(base_channels=4, in_samples=1001).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save(tmp_path / "student")
    loaded = load_student(tmp_path / "student")
    assert loaded.in_samples == 1001 and loaded.base_channels == 4 and loaded.labels == "PSN"
    assert loaded.component_order == "ZNE" and loaded.sampling_rate == 100
    x = torch.randn(1, 3, 1001)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert load_student(tmp_path).in_samples == 1001  # a folder with one saved model
    (tmp_path / "distilled" / "student").mkdir(parents=True)
    model.save(tmp_path / "distilled" / "student" / "student")  # the distill stage's layout
    assert load_student(tmp_path / "distilled").base_channels == 4
    with pytest.raises(EdgepickError):
        load_student(tmp_path / "missing")


def test_annotate_and_classify_on_stream():
    torch.manual_seed(2)
    model = XiaoNet(base_channels=4, in_samples=1001).eval()
    rng = np.random.default_rng(0)
    start = obspy.UTCDateTime(2020, 1, 1)
    stream = obspy.Stream(
        [obspy.Trace(rng.normal(size=2500) * 1e-14, header={"network": "OK", "station": "X", "channel": f"HH{c}",
                                                            "sampling_rate": 100.0, "starttime": start})
         for c in "ZNE"]
    )
    annotations = model.annotate(stream)
    channels = sorted(tr.stats.channel for tr in annotations)
    assert channels == ["XiaoNet_N", "XiaoNet_P", "XiaoNet_S"]
    assert all(np.isfinite(tr.data).all() for tr in annotations)
    output = model.classify(stream, P_threshold=0.3, S_threshold=0.3)
    assert all(p.phase in ("P", "S") for p in output.picks)


def test_normalisation_is_relative():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 500)) * 1e-14
    y = normalize_windows(x)
    assert np.allclose(np.abs(y).max(axis=(-2, -1)), 1.0, atol=1e-5)  # not swamped by an absolute epsilon
    # one scale for all components: the vertical / horizontal amplitude ratio (P against S) survives
    demeaned = x - x.mean(axis=-1, keepdims=True)
    ratio_in = np.abs(demeaned[:, 0]).max(-1) / np.abs(demeaned[:, 1]).max(-1)
    ratio_out = np.abs(y[:, 0]).max(-1) / np.abs(y[:, 1]).max(-1)
    assert np.allclose(ratio_in, ratio_out, rtol=1e-3)
    t = normalize_windows(torch.tensor(x))
    assert np.allclose(t.numpy(), y, atol=1e-5)
    assert np.all(normalize_windows(np.zeros((3, 100))) == 0)


def test_default_config_macs_below_ten_percent_of_phasenet():
    model = build_student(Config().student)
    fraction = model.count_macs() / phasenet_macs(3001)
    assert model.in_samples == 3001 and model.base_channels == 8
    assert fraction <= 0.10, fraction


def peak_index(segment, top_tolerance, half_width=PickRule.top_half_width):
    return PickRule(top_tolerance=top_tolerance, top_half_width=half_width).peak(segment)


def test_peak_index_is_the_centre_of_the_top():

    flat = np.array([0.4, 0.80, 0.85, 0.86, 0.85, 0.851, 0.86, 0.84, 0.5], dtype=np.float32)
    assert peak_index(flat, None) == 3  # SeisBench: the first maximum
    assert peak_index(flat, 0.02) == (2 + 6) // 2  # samples >= 0.98 x 0.86: indices 2..6
    assert peak_index(flat, 0.0) == 3  # the top is the maximum itself where no neighbour ties
    sharp = np.exp(-0.5 * ((np.arange(200) - 120) / 3.0) ** 2).astype(np.float32)
    assert peak_index(sharp, 0.02) == 120  # a symmetric peak keeps its maximum
    assert peak_index(np.full(1000, 0.9, np.float32), 0.02, half_width=256) == 128  # capped at 256 each side
    broad = (0.8 * np.exp(-0.5 * ((np.arange(240) - 120) / 20.0) ** 2)).astype(np.float32)
    broad[112] = 0.81  # a ripple on a broad top moves the first maximum ...
    assert peak_index(broad, None) == 112
    assert peak_index(broad, 0.3) == 120  # ... not the centre of the top 30 % (samples 104..136)
    assert peak_index(broad, 0.5) == 120  # ... nor the midpoint at half maximum (samples 97..143)
    assert peak_index(broad, PickRule.top_tolerance) == 120  # the student's default


@pytest.mark.slow
@pytest.mark.parametrize("samples", [3001, 1001])
def test_training_layout_gives_the_same_scores_and_gradients(samples):
    """Training runs channels-last (B, C, 1, N) 2-D ops, evaluation and export the 1-D layers: same numbers."""
    torch.manual_seed(0)
    model = XiaoNet(base_channels=4, in_samples=samples)
    model.train()
    x = torch.randn(6, 3, samples)
    scores, grads = [], []
    for channels_last in (True, False):
        model.zero_grad()
        out = model.logits(x, channels_last=channels_last)
        assert out.shape == (6, 3, samples)
        out.square().mean().backward()
        scores.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert torch.allclose(scores[0], scores[1], atol=1e-5)
    for got, want in zip(*grads):
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-6)
    model.eval()
    assert torch.allclose(model.logits(x, channels_last=True), model.logits(x), atol=1e-5)
    seen = []
    model.up1.dw.register_forward_hook(lambda module, args, out: seen.append(args[0].dim()))
    model.logits(x)
    model.train()
    model.logits(x)
    assert seen == [3, 4]  # evaluation (and the export) runs the 1-D layers by default, training the 2-D ones


def _measured_reach(model) -> int:
    """How far the output at a sample looks past it (either side), measured by gradients."""
    reach, n = 0, model.in_samples
    for centre in range(n // 2 - 32, n // 2 + 32):  # every phase of the 64-sample internal grid
        x = torch.randn(1, 3, n, requires_grad=True)
        model.logits(x)[0, 0, centre].backward()
        seen = (x.grad.abs().sum(dim=1)[0] > 0).nonzero().flatten()
        reach = max(reach, centre - int(seen.min()), int(seen.max()) - centre)
    return reach


@pytest.mark.slow
def test_blinding_is_the_receptive_field_and_no_pick_comes_from_a_stream_start(tmp_path):
    """Default blinding = how far the network looks past a sample (measured here by gradients), at most half the
    overlap; saved with the student, added to students saved before it existed; no picks at a stream's start."""
    from pipeline.model.student import RECEPTIVE_RADIUS, default_blinding

    torch.manual_seed(0)
    model = XiaoNet(base_channels=2, in_samples=1001).eval()
    assert _measured_reach(model) == RECEPTIVE_RADIUS
    assert XiaoNet(base_channels=2).default_args["blinding"] == (RECEPTIVE_RADIUS, RECEPTIVE_RADIUS)  # 3001, overlap 1500
    assert model.default_args["blinding"] == (250, 250) == (default_blinding(500),) * 2  # 1001: half the overlap
    model.save(str(tmp_path / "s"))
    assert tuple(load_student(tmp_path / "s").default_args["blinding"]) == (250, 250)
    saved = json.loads((tmp_path / "s.json").read_text())
    saved["default_args"].pop("blinding")  # a student saved before blinding existed
    (tmp_path / "s.json").write_text(json.dumps(saved))
    assert tuple(load_student(tmp_path / "s").default_args["blinding"]) == (250, 250)

    step = np.zeros((3, 4000), dtype=np.float32)
    step[:, :50] = 0.0
    step[:, 50:] = np.random.default_rng(0).normal(size=(3, 3950))  # data starts flat, then noise: no onset
    stream = obspy.Stream([obspy.Trace(step[i], header={"channel": f"HH{c}", "sampling_rate": 100.0})
                           for i, c in enumerate("ZNE")])
    annotations = XiaoNet(base_channels=2).eval().annotate(stream)
    p = annotations.select(channel="XiaoNet_P")[0]
    assert p.stats.starttime - stream[0].stats.starttime == pytest.approx(RECEPTIVE_RADIUS / 100)  # nothing before
    assert p.stats.endtime - stream[0].stats.endtime == pytest.approx(-RECEPTIVE_RADIUS / 100)
    assert np.isfinite(p.data).all()  # ... and every sample in between is covered by some window's interior


def test_pick_rule_comes_from_the_config_and_is_saved(tmp_path):
    assert Config().student.pick_top_tolerance == PickRule.top_tolerance  # one default
    assert Config().student.p_threshold == XiaoNet(base_channels=2).pick_rule.p_threshold == PickRule.p_threshold
    config = Config.load(None, ["student.pick_top_tolerance=0.3", "student.base_channels=2",
                                "student.p_threshold=0.25", "student.s_threshold=0.4"])
    model = build_student(config.student)
    model.save(str(tmp_path / "s"))
    saved = load_student(tmp_path / "s").pick_rule
    assert saved.top_tolerance == pytest.approx(0.3)
    assert (saved.p_threshold, saved.s_threshold) == (0.25, 0.4)
    assert saved.blinding == model.pick_rule.blinding
    with pytest.raises(EdgepickError, match="top_tolerance must be < 1"):
        XiaoNet(base_channels=2, pick_top_tolerance=1.0)
    with pytest.raises(EdgepickError, match="s_threshold must lie in"):
        build_student(Config.load(None, ["student.s_threshold=1.5"]).student)


def test_student_saved_before_the_pick_rule_moved_loads_with_its_rule(tmp_path):
    """Students saved with ``pick_top_tolerance`` as a model argument (and no thresholds) load with that
    tolerance, PickRule's default thresholds and their saved blinding."""
    model = XiaoNet(base_channels=2)
    model.save(str(tmp_path / "old"))
    meta = json.loads((tmp_path / "old.json").read_text())
    meta["model_args"]["pick_top_tolerance"] = 0.02
    meta["default_args"] = {"overlap": 1500, "blinding": [302, 302]}
    (tmp_path / "old.json").write_text(json.dumps(meta))
    rule = load_student(tmp_path / "old").pick_rule
    assert rule.top_tolerance == pytest.approx(0.02)
    assert (rule.p_threshold, rule.s_threshold, rule.blinding) == (0.3, 0.3, (302, 302))


@pytest.mark.slow
def test_refine_blocks_widen_the_receptive_field_and_blinding_and_are_saved(tmp_path):
    """Full-resolution refine blocks: the blinding follows the measured receptive field, the MACs grow by what the
    blocks cost, and a saved student loads with them (a student without them keeps XiaoNet's layout)."""
    from pipeline.model.student import receptive_radius

    torch.manual_seed(0)
    model = XiaoNet(base_channels=2, in_samples=1001, refine_blocks=2).eval()
    assert _measured_reach(model) == receptive_radius(2) == 306
    assert XiaoNet(base_channels=2, refine_blocks=2).default_args["blinding"] == (306, 306)
    plain = XiaoNet(base_channels=8)
    refined = XiaoNet(base_channels=8, refine_blocks=1)
    internal = 3008  # 3001 padded to a multiple of 64
    assert refined.count_macs() - plain.count_macs() == internal * 8 * (5 + 8)  # depthwise k5 + pointwise 8 -> 8
    refined.save(str(tmp_path / "r"))
    loaded = load_student(tmp_path / "r")
    assert loaded.refine_blocks == 1 and len(loaded.refine) == 1
    x = torch.randn(2, 3, 3001)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), refined.eval()(x))
    config = Config()
    config.student.refine_blocks = 1
    assert build_student(config.student).refine_blocks == 1
    with pytest.raises(EdgepickError, match="refine_blocks"):
        XiaoNet(refine_blocks=-1)
