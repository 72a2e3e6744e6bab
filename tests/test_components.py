"""s_needs_horizontals: no S where a window's N and E are flat (a vertical-only station), in the student's annotate,
its TFLite variants' and the firmware header; off by default and with live horizontals nothing changes."""

import numpy as np
import obspy
import torch

from pipeline.model.components import horizontals_flat, without_s
from pipeline.model.student import XiaoNet


def stream(flat: bool) -> obspy.Stream:
    rng = np.random.default_rng(0)
    start = obspy.UTCDateTime(2024, 1, 1)
    data = rng.normal(size=(3, 4000))
    if flat:
        data[1:] = 0.0
    return obspy.Stream([obspy.Trace(data[i].astype(np.float32), header={
        "network": "OK", "station": "X", "channel": f"HH{c}", "sampling_rate": 100.0, "starttime": start})
        for i, c in enumerate("ZNE")])


def s_curve(model, flat: bool) -> np.ndarray:
    return model.annotate(stream(flat)).select(channel="XiaoNet_S")[0].data


def test_a_vertical_only_window_gives_no_s_with_the_rule_only():
    torch.manual_seed(0)
    plain = XiaoNet(base_channels=2, in_samples=1001).eval()
    gated = XiaoNet(base_channels=2, in_samples=1001, s_needs_horizontals=True).eval()
    gated.load_state_dict(plain.state_dict())
    assert not plain.default_args.get("s_needs_horizontals", False)  # off by default
    assert np.nanmax(s_curve(plain, flat=True)) > 0.01  # an untrained student fires S anywhere
    assert np.nanmax(s_curve(gated, flat=True)) == 0.0
    np.testing.assert_array_equal(s_curve(gated, flat=False), s_curve(plain, flat=False))
    p_plain = plain.annotate(stream(True)).select(channel="XiaoNet_P")[0].data
    p_gated = gated.annotate(stream(True)).select(channel="XiaoNet_P")[0].data
    np.testing.assert_array_equal(p_plain, p_gated)  # P untouched


def test_flags_and_the_moved_probability():
    batch = torch.randn(3, 3, 50)
    batch[1, 1:] = 2.5  # constant, not zero: flat too
    assert horizontals_flat(batch).tolist() == [False, True, False]
    probs = torch.softmax(torch.randn(3, 50, 3), dim=-1)
    out = without_s(probs, horizontals_flat(batch))
    assert (out[1, :, 1] == 0).all() and torch.allclose(out.sum(-1), torch.ones(3, 50))
    assert torch.equal(out[0], probs[0]) and without_s(probs, None) is probs
