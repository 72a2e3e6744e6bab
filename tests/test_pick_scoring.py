"""Pick scoring (protocol 1, pipeline.evaluate.metrics): matching arithmetic on hand-made picks, then the real teacher."""

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluate.metrics import analyst_picks, match_picks, score_picks, scores
from pipeline.errors import EdgepickError


def arr(*values):
    return np.asarray(values, dtype=float)


def test_match_counts_tp_fp_fn():
    analyst = [arr(10.0), arr(20.0), arr(30.0), arr()]  # the last trace is a noise trace
    predicted = [arr(10.3), arr(21.0), arr(29.95, 35.0), arr(5.0, 6.0)]
    tp, fp, fn, residuals = match_picks(analyst, predicted, 0.5)
    # trace 0: matched; trace 1: 1.0 s off -> FN + FP; trace 2: 29.95 matched, 35.0 FP; trace 3: two FPs
    assert (tp, fp, fn) == (2, 4, 1)
    assert sorted(np.round(residuals, 3)) == [-0.05, 0.3]
    tp, fp, fn, _ = match_picks(analyst, predicted, 0.1)
    assert (tp, fp, fn) == (1, 5, 2)


def test_nearest_prediction_is_matched_and_used_once():
    # two predictions near one analyst pick: only the nearest matches, the other is a FP
    tp, fp, fn, residuals = match_picks([arr(10.0)], [arr(9.8, 10.1)], 0.5)
    assert (tp, fp, fn) == (1, 1, 0)
    assert residuals.tolist() == pytest.approx([0.1])
    # two analyst picks (two events) and one prediction between them: it serves the closer one only
    tp, fp, fn, residuals = match_picks([arr(10.0, 10.6)], [arr(10.4)], 0.5)
    assert (tp, fp, fn) == (1, 0, 1)
    assert residuals.tolist() == pytest.approx([-0.2])


def test_scores_f1_and_residuals():
    s = scores(tp=8, fp=2, fn=4, residuals=arr(0.1, -0.1, 0.2, -0.2))
    assert s["precision"] == pytest.approx(0.8)
    assert s["recall"] == pytest.approx(8 / 12)
    assert s["f1"] == pytest.approx(2 * 0.8 * (8 / 12) / (0.8 + 8 / 12))
    assert s["residual_mean_s"] == pytest.approx(0.0)
    assert s["residual_mae_s"] == pytest.approx(0.15)
    empty = scores(0, 0, 3, arr())
    assert empty["f1"] == 0.0 and math.isnan(empty["residual_mean_s"])


def test_score_picks_per_phase_and_tolerance():
    analyst = {"P": [arr(5.0), arr()], "S": [arr(9.0), arr()]}
    predicted = {"P": [arr(5.2), arr()], "S": [arr(), arr(3.0)]}
    result = score_picks(analyst, predicted, (0.1, 0.5))
    assert result["P"][0.5]["f1"] == pytest.approx(1.0)
    assert result["P"][0.1]["f1"] == 0.0
    assert (result["S"][0.5]["tp"], result["S"][0.5]["fp"], result["S"][0.5]["fn"]) == (0, 1, 1)


def test_analyst_picks_reads_second_event_and_drops_nan_and_outside():
    meta = pd.DataFrame(
        {
            "trace_p_arrival_sample": [100.0, np.nan, 500.0],
            "trace_s_arrival_sample": [300.0, np.nan, 7000.0],
            "trace_p2_arrival_sample": [np.nan, np.nan, 4000.0],
            "trace_s2_arrival_sample": [np.nan, np.nan, np.nan],
        }
    )
    picks = analyst_picks(meta, [6000, 6000, 6000])
    assert [p.tolist() for p in picks["P"]] == [[100.0], [], [500.0, 4000.0]]
    assert [p.tolist() for p in picks["S"]] == [[300.0], [], []]


def test_bad_input_raises_one_clear_error():
    with pytest.raises(EdgepickError):
        match_picks([arr(1.0)], [], 0.5)
    with pytest.raises(EdgepickError):
        match_picks([arr(1.0)], [arr(1.0)], 0.0)


@pytest.mark.shared
@pytest.mark.slow
def test_okla_teacher_picks_synthetic_traces(teacher_cache, tmp_path):
    """The real Oklahoma PhaseNet finds the synthetic P and S arrivals (F1 >= 0.9 at 0.5 s) under protocol 1."""
    import seisbench.models as sbm

    from pipeline.model.annotation import evaluate_picker
    from pipeline.config import DataConfig
    from pipeline.data.datasets import open_dataset, write_dataset
    from pipeline.data.sources import synthetic

    config = DataConfig(out=str(tmp_path / "synthetic"))
    config.synthetic.n_traces = 300
    write_dataset(synthetic.records(config), config.out_dir(), config, "synthetic")
    model = sbm.PhaseNet.from_pretrained("okla")
    result = evaluate_picker(model, open_dataset(config.out_dir()), threshold=0.3, tolerances=(0.1, 0.5))
    f1 = {phase: result["scores"][phase][0.5]["f1"] for phase in ("P", "S")}
    assert f1["P"] >= 0.9 and f1["S"] >= 0.9, f1
