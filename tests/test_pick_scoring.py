"""Pick scoring (protocol 1, pipeline.evaluate.metrics): matching arithmetic on hand-made picks, then the real teacher."""

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluate.metrics import (FALSE_CLASSES, add_false_ratios, analyst_picks, component_masks, match_picks,
                                       pick_class_records, pick_classes, score_picks, scores)
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


def test_pick_classes_place_each_false_s_pick_against_the_analyst_p_and_s():
    truth = {"P": [arr(10.0), arr(10.0), arr(10.0), arr()], "S": [arr(11.5), arr(14.0), arr(), arr()]}
    predicted = [
        arr(3.0, 10.2, 11.6, 12.5, 20.0),  # noise before P, on P, the true S, S coda 1 s after S, late coda 8.5 s
        arr(9.7, 13.8, 13.9),  # 0.3 s before P (inside the tolerance: between P and S), true S, its duplicate
        arr(4.0, 12.0),  # trace without S: before P, then not judged
        arr(1.0),  # noise trace
    ]
    rows = pick_classes(truth, predicted, "S", tolerance=0.5, late_s=5.0)
    assert rows[0] == {"true": 1, "before_p": 1, "p_to_s": 1, "after_s": 1, "late_coda": 1, "no_s_label": 0,
                       "no_label": 0}
    assert (rows[1]["true"], rows[1]["p_to_s"]) == (1, 2)  # the duplicate 0.1 s off the analyst S is false
    assert (rows[2]["before_p"], rows[2]["no_s_label"]) == (1, 1)
    assert rows[3]["no_label"] == 1
    # the classes add up to the picks, and "true" is protocol 1's TP count
    assert sum(sum(r.values()) for r in rows) == sum(len(p) for p in predicted)
    tp, fp, _, _ = match_picks(truth["S"], predicted, 0.5)
    assert sum(r["true"] for r in rows) == tp
    assert sum(r[c] for r in rows for c in FALSE_CLASSES) + sum(r["no_s_label"] for r in rows) == fp
    with pytest.raises(EdgepickError, match="late_s"):
        pick_classes(truth, predicted, "S", 0.5, late_s=0)


def test_pick_class_records_by_subset_and_false_ratio_to_teacher():
    class M:
        def __init__(self, name):
            self.name, self.runtime, self.precision = name, "pytorch", "fp32"

    truth = {"P": [arr(10.0), arr(10.0)], "S": [arr(11.0), arr(18.0)]}
    teacher = {"P": [arr(10.0), arr(10.0)], "S": [arr(11.0), arr(3.0, 18.0)]}
    student = {"P": [arr(10.0), arr(10.0)], "S": [arr(2.0, 11.0, 30.0), arr(3.0, 4.0, 18.0)]}
    masks = {"all": np.array([True, True]), "S-P < 2 s": np.array([True, False])}
    records = pick_class_records(M("teacher"), truth, teacher, masks, 0.5)
    records += pick_class_records(M("student"), truth, student, masks, 0.5)
    add_false_ratios(records)
    by = {(r["model"], r["phase"], r["subset"]): r for r in records}
    assert by[("student", "S", "all")]["false"] == 4 and by[("teacher", "S", "all")]["false"] == 1
    assert by[("student", "S", "all")]["false_ratio_to_teacher"] == pytest.approx(4.0)
    assert by[("student", "S", "S-P < 2 s")]["classes"]["late_coda"] == 1
    assert by[("student", "S", "S-P < 2 s")]["false_ratio_to_teacher"] is None  # the teacher has none there
    assert by[("student", "P", "all")]["classes"]["true"] == 2


def test_component_masks_split_traces_missing_components_from_full_ones():
    metadata = pd.DataFrame({"trace_dead_channels": [np.nan, "NE", np.nan, "E"]})
    masks = component_masks(metadata)
    assert {k: v.tolist() for k, v in masks.items()} == {"3 components": [True, False, True, False],
                                                        "missing components": [False, True, False, True]}
    assert component_masks(pd.DataFrame({"trace_dead_channels": [np.nan, np.nan]})) == {}  # nothing to compare
    assert component_masks(pd.DataFrame({"other": [1]})) == {}
