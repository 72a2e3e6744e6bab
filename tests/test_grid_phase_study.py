"""The grid-phase study (pipeline/studies/grid_phase.py): the same arrival on each phase of a causal student's
64-sample block grid."""

import numpy as np
import pytest

from pipeline.errors import EdgepickError
from pipeline.model import streaming
from pipeline.studies import grid_phase
from test_streaming import causal_student, waveform


@pytest.mark.slow
def test_each_shift_moves_the_grid_not_the_samples():
    model = causal_student()
    x = waveform(20 * streaming.BLOCK, seed=9)
    step = grid_phase.StreamStep(model)
    same = grid_phase.phase_scores(model, x, 0, 100.0, step)
    assert same.shape == (x.shape[1], 3)
    # a whole block more is the same grid: the same scores wherever the history lies inside the trace
    block = grid_phase.phase_scores(model, x, streaming.BLOCK, 100.0, step)
    inside = slice(streaming.history(model), None)
    np.testing.assert_allclose(block[inside], same[inside], atol=1e-6)
    # a part block more of warm-up puts the grid elsewhere: other scores of the same samples
    late = grid_phase.phase_scores(model, x, 16, 100.0, step)
    finite = ~np.isnan(same).any(1) & ~np.isnan(late).any(1)
    assert np.abs(late[finite] - same[finite]).max() > 1e-4


@pytest.mark.slow
def test_one_phase_has_no_spread_and_every_phase_is_scored():
    model = causal_student(delay=100)
    rate, n = 100.0, 30 * streaming.BLOCK
    waveforms = [waveform(n, seed=s) for s in range(2)]
    arrival = (n // 2) / rate  # the waveform's burst starts at its middle
    truth = {"P": [np.array([arrival])] * 2, "S": [np.array([])] * 2}
    one = grid_phase.study(model, waveforms, truth, rate, 1)
    assert one["P"]["peak_spread"] == 0.0 and one["P"]["picks"] == 2 and len(one["P"]["f1_0.5"]["per_phase"]) == 1
    four = grid_phase.study(model, waveforms, truth, rate, 4)
    assert len(four["P"]["f1_0.5"]["per_phase"]) == 4 and four["P"]["peak_spread"] > 0
    assert four["P"]["f1_0.5"]["min"] <= four["P"]["f1_0.5"]["mean"] <= four["P"]["f1_0.5"]["max"]
    assert four["S"]["picks"] == 0 and four["S"]["peak_spread"] is None


def test_bad_arguments_are_one_error_line(tmp_path):
    with pytest.raises(EdgepickError, match="needs --student"):
        grid_phase.main([])
    with pytest.raises(EdgepickError, match="--phases"):
        grid_phase.main(["--student", "x", "--phases", "65"])
    from pipeline.model.student import XiaoNet

    XiaoNet(base_channels=2).save(tmp_path / "plain")
    with pytest.raises(EdgepickError, match="not a causal student"):
        grid_phase.main(["--student", str(tmp_path / "plain")])
