"""pipeline.evaluate.s_diagnosis: the S-curve statistics of the near-field study on hand-made curves, and its figures."""

import math

import numpy as np
import pytest

from pipeline.errors import EdgepickError
from pipeline.evaluate import s_diagnosis
from pipeline.model import annotation
from pipeline.model.picking import PickRule

RATE = 100.0


def curves_of(*pairs):
    """Curves over 60 s traces from (P curve, S curve) pairs."""
    return annotation.Curves(RATE, PickRule(), [0] * len(pairs), [np.stack([p, s]).astype(np.float32) for p, s in pairs])


def bump(centre_s, height, n=6000, width=20):
    t = np.arange(n)
    return height * np.exp(-0.5 * ((t - centre_s * RATE) / width) ** 2)


def test_trace_stats_read_each_region_of_the_s_curve():
    # trace 0: P at 20 s, S at 21.5 s (near field); a false S bump in the noise at 5 s and in the late coda at 40 s,
    # S probability on the P itself 0.3; trace 1: P only (no S label): every stat NaN
    s0 = bump(21.5, 0.8) + bump(5.0, 0.45) + bump(40.0, 0.6) + bump(20.0, 0.3)
    p0 = bump(20.0, 0.9) + bump(4.0, 0.2)
    wave = np.random.default_rng(0).normal(0, 1, (3, 6000))
    wave[:, 2000:] *= 100  # the event is 40 dB above the noise
    curves = curves_of((p0, s0), (bump(20.0, 0.9), np.zeros(6000)))
    truth = {"P": [np.array([20.0]), np.array([20.0])], "S": [np.array([21.5]), np.array([])]}
    rows = s_diagnosis.trace_stats(curves, [wave, wave], truth)
    r = rows[0]
    assert r["at_s"] == pytest.approx(0.8, abs=0.01)
    assert r["noise_s"] == pytest.approx(0.45, abs=0.01) and r["noise_p"] == pytest.approx(0.2, abs=0.01)
    assert r["coda_s"] == pytest.approx(0.6, abs=0.01)
    assert r["s_at_p"] == pytest.approx(0.3, abs=0.02)
    assert r["between"] < 0.05  # S-P 1.5 s > 2 x 0.5 s: the span 20.5-21.0 s is measured, and the S curve dips there
    assert -45 < r["quiet_db"] < -35
    assert all(math.isnan(v) for v in rows[1].values())
    with pytest.raises(EdgepickError, match="trace_stats"):
        s_diagnosis.trace_stats(curves, [wave], truth)


def test_between_is_the_dip_of_the_s_curve_between_p_and_s():
    s_curve = np.zeros(6000)
    s_curve[2000:2400] = 0.5  # S probability stays up from P (20 s) to S (24 s): one trigger for both
    curves = curves_of((bump(20.0, 0.9), s_curve), (bump(20.0, 0.9), bump(24.0, 0.9)))
    truth = {"P": [np.array([20.0])] * 2, "S": [np.array([24.0])] * 2}
    wave = np.ones((3, 6000))
    rows = s_diagnosis.trace_stats(curves, [wave, wave], truth)
    assert rows[0]["between"] == pytest.approx(0.5) and rows[1]["between"] < 0.01


def test_summary_shares_and_medians_by_bin_and_table():
    rows = [dict(zip(s_diagnosis.STATS, values)) for values in
            [(0.5, 0.1, 0.9, 0.2, math.nan, 0.1, -40.0), (0.1, 0.1, 0.2, 0.1, 0.0, 0.6, -20.0),
             (0.2, 0.0, 0.7, 0.0, 0.1, 0.0, -30.0), (math.nan,) * 7]]
    masks = {"all": np.array([True] * 4), "S-P < 2 s": np.array([True, True, False, False])}
    table = s_diagnosis.summary(rows, masks, s_threshold=0.4)
    assert table["all"]["traces"] == 3  # the trace without an S peak statistic does not count
    assert table["all"]["s_found"] == pytest.approx(2 / 3)
    assert table["all"]["noise_s_fires"] == pytest.approx(1 / 3) and table["all"]["coda_s_fires"] == pytest.approx(1 / 3)
    assert table["S-P < 2 s"]["median_at_s"] == pytest.approx(0.55)
    assert table["S-P < 2 s"]["median_between"] == pytest.approx(0.0)
    text = s_diagnosis.format_summary({"teacher": table, "student": table})
    assert text.count("| S-P < 2 s |") == 2 and "| all | teacher | 3 | 0.70 | 0.67 |" in text


def test_figures_draw(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    curves = {"teacher": curves_of((bump(20.0, 0.9), bump(21.5, 0.8))),
              "student": curves_of((bump(20.0, 0.7), bump(22.0, 0.5)))}
    truth = {"P": [np.array([20.0])], "S": [np.array([21.5])]}
    waves = [np.random.default_rng(1).normal(0, 1, (3, 6000))]
    fig = s_diagnosis.figure_traces(waves, "ZNE", RATE, truth, curves, [0])
    assert len(fig.axes) == 1 and fig.axes[0].get_xlim() == pytest.approx((14.0, 33.5))
    stats = {k: s_diagnosis.trace_stats(c, waves, truth) for k, c in curves.items()}
    fig2 = s_diagnosis.figure_summary(stats, np.array([1.5]), {"teacher": 0.3, "student": 0.35})
    assert len(fig2.axes) == 3


@pytest.mark.slow
def test_s_picks_study_writes_classes_statistics_and_figures(labelled, tmp_path, monkeypatch, capsys):
    """python -m pipeline study s_picks on a dev split: pick classes per model that add up to its picks, the curve
    statistics per bin, and the figures; a test split is refused (it is what gets reported)."""
    import json

    import torch

    from pipeline.model import runners
    from pipeline.model.student import XiaoNet
    from pipeline.studies import s_picks

    torch.manual_seed(0)
    (tmp_path / "student").mkdir()
    XiaoNet(base_channels=4, in_samples=1001).eval().save(str(tmp_path / "student" / "student"))
    teacher = XiaoNet(base_channels=4, in_samples=1001).eval()
    monkeypatch.setattr(runners, "load_teacher",
                        lambda spec: runners.BenchModel("teacher", "pytorch", "fp32", [teacher], spec=spec))
    out = tmp_path / "study"
    s_picks.main(["--student", str(tmp_path / "student"), "--dataset", f"{labelled}:dev", "--out", str(out),
                  "--examples", "2"])
    result = json.loads((out / "diagnosis.json").read_text())[0]
    models = {r["model"] for r in result["pick_classes"]}
    assert models == {"teacher", "student:student"}
    for r in result["pick_classes"]:
        assert r["false"] == sum(r["classes"][c] for c in ("before_p", "p_to_s", "after_s", "late_coda", "no_label"))
    assert set(result["curve_stats"]["teacher pytorch-fp32"]["all"]) >= {"traces", "median_at_s", "noise_s_fires"}
    assert (out / "s_summary.png").stat().st_size > 0 and "## " in (out / "diagnosis.md").read_text()
    capsys.readouterr()
    with pytest.raises(EdgepickError, match="no student in"):  # the one error line, nothing printed before it
        s_picks.main(["--student", str(tmp_path / "missing"), "--dataset", f"{labelled}:dev", "--out", str(out)])
    assert capsys.readouterr().out == ""
    with pytest.raises(EdgepickError, match="only a dev split"):
        s_picks.main(["--student", str(tmp_path / "student"), "--dataset", f"{labelled}:test", "--out", str(out)])
