"""The STA/LTA gate study (pipeline/studies/gate.py) on a synthetic trace: noise with one clear arrival."""

import numpy as np
import pandas as pd

from pipeline.studies import gate

RATE = 100.0
SETTING = gate.Setting(sta_s=0.5, lta_s=10.0, on=3.0, off=1.5)


def noise_with_arrival(seconds=600.0, arrival_s=300.0, seed=0):
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    z = rng.normal(0.0, 1.0, n)
    a = int(arrival_s * RATE)
    t = np.arange(n - a) / RATE
    z[a:] += 40.0 * np.exp(-t / 3.0) * np.sin(2 * np.pi * 5.0 * t)  # a 5 Hz arrival decaying over a few seconds
    return z, a


def test_the_gate_opens_around_the_arrival_only():
    z, a = noise_with_arrival()
    spans = gate.open_spans(z, RATE, SETTING, pre_roll_s=25.0, hold_s=30.0)
    assert len(spans) == 1
    start, end = spans[0]
    assert a - 26 * RATE <= start <= a - 24 * RATE  # on at the arrival, less the pre-roll
    assert a + 30 * RATE < end < a + 60 * RATE  # off a few seconds later, plus the hold
    assert 0.05 < gate.duty(spans, len(z)) < 0.2
    inside, far = a + 2 * RATE, a + 200 * RATE
    assert gate.kept(spans, [a, inside, far]).tolist() == [True, True, False]
    assert gate.kept(spans, [a - 20 * RATE, a - 40 * RATE]).tolist() == [True, False]  # pre-roll: 25 s back


def test_labelled_rows_warm_the_lta_with_pre_event_noise_and_count_short_traces():
    z, a = noise_with_arrival(seconds=60.0, arrival_s=8.0)  # under one LTA + pre-roll of noise before the arrival
    trace = np.stack([z, z, z]).astype(np.float32)
    flat_z = trace.copy()
    flat_z[0] = 0.0
    metadata = pd.DataFrame({"trace_p_arrival_sample": [a, 50, a], "trace_s_arrival_sample": [a + 400, np.nan, np.nan]})
    (row,) = gate.labelled_rows([trace, trace, flat_z], metadata, RATE, "ZNE", [SETTING], 25.0, 30.0, progress=False)
    assert row["short"] == 1  # the second trace: P at 0.5 s, no pre-event noise to warm the LTA
    assert row["flat_vertical"] == 1  # the third: gated on a horizontal
    assert row["P_n"] == 3 and row["S_n"] == 1
    assert row["S_missed"] == 0.0  # the warmed trace: its arrival triggers, S within the hold
    assert row["P_missed"] in (0.0, 1 / 3)  # the short one's P: kept only if the cold LTA still triggers in time


def test_merge_and_duty():
    spans = gate.merge(np.array([[50, 80], [0, 10], [5, 20]]))
    assert spans.tolist() == [[0, 20], [50, 80]]
    assert gate.duty(spans, 100) == 0.5
    assert gate.duty(gate.merge(np.zeros((0, 2), dtype=np.int64)), 100) == 0.0
