"""The benchmark stage: protocol-2 arithmetic on hand-made curves, the stage end to end on a small synthetic
dataset with tiny untrained models (PyTorch and TFLite Micro), continuous miniSEED, and bad input."""

import json
from pathlib import Path

import numpy as np
import obspy
import pytest
import torch

from pipeline.evaluate import metrics
from pipeline.model import annotation, runners
from pipeline.config import Config
from pipeline.deploy.convert import quantize_student
from pipeline.errors import EdgepickError
from pipeline.model.picking import PickRule
from pipeline.evaluate import live as live_pass
from pipeline.stages import benchmark as benchmark_stage
from pipeline.data.traces import load_labelled
from pipeline.data.normalization import normalize_windows
from pipeline.model.student import XiaoNet, default_blinding

PICK_TOP_TOLERANCE = PickRule.top_tolerance

SAMPLES = 1001
RECORD_FIELDS = {
    "model", "runtime", "precision", "reference", "subset", "subset_traces", "phase", "tolerance_s", "threshold",
    "n_labels", "n_picks", "tp", "fp", "fn", "pick_precision", "recall", "f1", "f1_ratio_to_teacher",
    "residual_mean_s", "residual_std_s", "residual_mae_s", "picks_per_hour",
}
LIVE_FIELDS = {"hop_samples", "lookahead_samples", "confirm_samples", "confirm_within_samples", "blinding", "warmup_samples", "skipped_start_samples", "latency_tolerance_s",
               "annotate_seconds", "rows", "compute"}
LIVE_ROW_FIELDS = {"model", "runtime", "precision", "phase", "n_labels", "n_picks_live", "n_retracted",
                   "retract_delay_median_s", "f1_live", "f1_kept", "f1_exact", "latency_median_s", "latency_p95_s",
                   "latency_n"}
MODEL_FIELDS = {
    "model", "runtime", "precision", "spec", "notes", "annotate_seconds", "parameters", "macs_per_window",
    "window_samples", "flatbuffer_bytes", "flatbuffer_expanded_bytes", "arena_bytes", "host_latency_ms",
    "esp32_latency_ms_est", "esp32s3_latency_ms_est", "esp32c3_latency_ms_est", "pick_top_tolerance", "blinding", "thresholds",
}


def tiny(seed):
    torch.manual_seed(seed)
    return XiaoNet(base_channels=4, in_samples=SAMPLES).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A saved tiny student and its TFLite FP32 + packed FP16 variants (no INT8: it is skipped)."""
    root = tmp_path_factory.mktemp("models")
    student = tiny(0)
    (root / "student").mkdir()
    student.save(str(root / "student" / "student"))
    rng = np.random.default_rng(0)
    windows = normalize_windows(rng.normal(size=(4, 3, SAMPLES)))
    result = quantize_student(student, windows, windows, precisions=("fp32", "fp16"), measure_arena=False)
    (root / "tflite").mkdir()
    (root / "tflite" / "model_fp32.tflite").write_bytes(result.flatbuffers["fp32"])
    (root / "tflite" / "model_fp16.ef16").write_bytes(result.flatbuffers["fp16"])
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from pipeline.config import DataConfig
    from pipeline.data.datasets import write_dataset
    from pipeline.data.sources import synthetic

    config = DataConfig(out=str(tmp_path_factory.mktemp("data") / "synthetic"))
    config.synthetic.n_traces = 24
    write_dataset(synthetic.records(config), config.out_dir(), config, "synthetic")
    return config.out_dir()


@pytest.fixture
def fake_teacher(monkeypatch):
    """The teacher is a second tiny untrained student, so the stage runs without ../shared."""
    monkeypatch.setattr(runners, "load_teacher", lambda spec: runners.BenchModel("teacher", "pytorch", "fp32", [tiny(1)], spec=spec))


def config_for(models, dataset_spec, out):
    config = Config.load(overrides=[
        f"benchmark.dataset={dataset_spec}", f"benchmark.out={out}", f"quantize.student={models / 'student'}",
        f"quantize.out={models / 'tflite'}", "benchmark.latency_repeats=2", "benchmark.pr_thresholds=3",
        "benchmark.example_traces=1",
        "live.p_confirm_samples=500", "live.s_confirm_samples=0",  # the tiny student's window is 1001 samples
    ])
    return config


# ------------------------------------------------------------------------------------------- protocol 2, by hand
def test_roc_auc_and_mcc_known_values():
    assert metrics.roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    assert metrics.roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert metrics.roc_auc([1, 1], [0.1, 0.2]) is None
    assert metrics.mcc([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(2 / np.sqrt(12))
    assert metrics.best_mcc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1])[0] == pytest.approx(1.0)


def test_protocol2_on_hand_made_curves():
    """Trace 0: P at 10 s, S at 25 s, the model's peaks 0.05 s late; trace 1: noise, a flat 0.1 curve."""
    rate, n = 100.0, 6000
    p, s = np.zeros(n, np.float32), np.zeros(n, np.float32)
    p[1000 + 5] = 0.9  # P peak 0.05 s after the label
    s[2500 + 5] = 0.8
    s[1000 + 5] = 0.2  # some S probability on the P: still identified as P (max P - max S > 0)
    curves = annotation.Curves(rate, PickRule(), [0, 0], [np.stack([p, s]), np.full((2, n), 0.1, np.float32)])
    truth = {"P": [np.array([10.0]), np.array([])], "S": [np.array([25.0]), np.array([])]}
    windows = metrics.protocol2_windows(truth, [60.0, 60.0], window_s=10.0, seed=3)
    assert [w[2] for w in windows["phase"]] == ["P", "S"] and all(w[4] for w in windows["phase"])
    # one positive (trace 0) and two negatives (pre-event noise of trace 0 is too short: only trace 1's window)
    assert sorted(label for _, _, label in windows["detection"]) == [0, 1]
    result = metrics.protocol2_scores(curves, windows, 10.0)
    assert result["detection"]["auc"] == pytest.approx(1.0)
    assert result["phase"]["mcc"] == pytest.approx(1.0)
    for phase in "PS":
        assert result[f"onset_{phase}"]["rmse_s"] == pytest.approx(0.05, abs=1e-6)
        assert result[f"onset_{phase}"]["mae_s"] == pytest.approx(0.05, abs=1e-6)
        assert result[f"onset_{phase}"]["within_0.1_s"] == 1.0
    # seeded: the same windows again
    assert metrics.protocol2_windows(truth, [60.0, 60.0], window_s=10.0, seed=3) == windows


def test_snr_parsing_and_bins():
    import pandas as pd

    snr = metrics.parse_snr_db(pd.DataFrame({"trace_snr_db": ["[56.79 55.9 57.3]", "[nan 4.0 6.0]", 12.5, "bad"]}))
    assert snr[0] == pytest.approx(np.mean([56.79, 55.9, 57.3])) and snr[1] == pytest.approx(5.0)
    assert snr[2] == 12.5 and np.isnan(snr[3])
    masks = metrics.bin_masks(snr, (10, 20), "SNR", "dB")
    assert {k: v.tolist() for k, v in masks.items()} == {
        "SNR < 10 dB": [False, True, False, False], "SNR 10-20 dB": [False, False, True, False],
        "SNR >= 20 dB": [True, False, False, False]}


def test_each_model_is_scored_with_its_own_pick_rule():
    student = runners.BenchModel("student", "pytorch", "fp32", [tiny(2)])
    # the centre of the peak's top, as the student's classify
    assert annotation.model_rule(student).top_tolerance == pytest.approx(PICK_TOP_TOLERANCE)
    import seisbench.models as sbm

    teacher = runners.BenchModel("teacher", "pytorch", "fp32", [sbm.PhaseNet()])
    assert annotation.model_rule(teacher).first_maximum  # SeisBench's first maximum
    assert annotation.model_rule(teacher).p_threshold == PickRule.p_threshold  # the reference table's 0.3
    from pipeline.evaluate.report import pick_rule_text

    assert pick_rule_text({"pick_top_tolerance": None}) == "first maximum"
    assert pick_rule_text({"pick_top_tolerance": 0.5}) == "midpoint at half maximum"
    flat = np.zeros((2, 400), np.float32)
    flat[0, 100:200] = 0.8  # a flat top: first maximum 100, centre 149
    assert annotation.Curves(100.0, PickRule(top_tolerance=0.02), [0], [flat]).picks(0.3)["P"][0].tolist() == [1.49]
    assert annotation.Curves(100.0, PickRule(top_tolerance=None), [0], [flat]).picks(0.3)["P"][0].tolist() == [1.0]
    flat[1, 250:300] = 0.6  # an S peak; and a gap: each finite run is picked on its own, as SeisBench annotates
    flat[:, 210:215] = np.nan
    curves = annotation.Curves(100.0, PickRule(top_tolerance=0.02), [50], [flat])
    rows = curves.pick_rows(0.3)
    assert rows["P"][0].tolist() == [[1.99, pytest.approx(0.8)]] and rows["S"][0].tolist() == [[3.24, pytest.approx(0.6)]]
    assert {phase: [r[:, 0].tolist() for r in per] for phase, per in rows.items()} == \
        {phase: [t.tolist() for t in per] for phase, per in curves.picks(0.3).items()}


@pytest.mark.slow
def test_tflite_variants_pick_as_their_student(models):
    """A student saved with another pick rule: its TFLite variants are scored with that rule, not the default."""
    from pipeline.model.student import load_student

    student = load_student(models / "student" / "student")
    student.default_args.update(PickRule(top_tolerance=0.02, p_threshold=0.4).annotate_args())
    [variant] = runners.tflite_variants(models / "tflite", student, ("fp32",), say=lambda *a: None)
    assert annotation.model_rule(variant).top_tolerance == pytest.approx(0.02) != PICK_TOP_TOLERANCE
    assert annotation.model_rule(variant).p_threshold == pytest.approx(0.4)


def test_curve_picks_equal_seisbench_classify():
    """Protocol 1 from the annotate curves is exactly what the model's own classify picks."""
    model = tiny(2)
    rng = np.random.default_rng(5)
    traces = [rng.normal(size=(3, 4000)).astype(np.float32) for _ in range(3)]
    for trace in traces:
        trace[:, 2000:] *= 20
    bench = runners.BenchModel("student", "pytorch", "fp32", [model])
    curves = annotation.dataset_curves(bench, traces, 100.0, "ZNE", progress=False)
    for threshold in (0.2, 0.35):
        mine = curves.picks(threshold)
        theirs = annotation.predict_picks(model, traces, 100.0, "ZNE", threshold)
        for phase in "PS":
            assert [np.round(a, 6).tolist() for a in mine[phase]] == [np.round(b, 6).tolist() for b in theirs[phase]]


# ------------------------------------------------------------------------------------------- the live pass
class SquareStudent(XiaoNet):
    """P = 0.9 z^2, S = 0.9 n^2 of the normalised window (the host driver's "square" model): many sharp picks."""

    def forward(self, x, logits=False):
        p, s = 0.9 * x[:, 0] ** 2, 0.9 * x[:, 1] ** 2
        return torch.stack([p, s, 1 - p - s], dim=1)


def square_traces(n_traces=3, samples=4000, seed=5):
    rng = np.random.default_rng(seed)
    t = np.arange(samples)
    traces = []
    for _ in range(n_traces):
        x = rng.normal(0, 0.05, (3, samples)).astype(np.float32)
        # six events, the last 2 s before the end: where SeisBench's own last window would reach, not the firmware's
        for k, center in enumerate([*rng.uniform(200, samples - 400, 5), samples - 200]):
            x[k % 2] += (2 * np.exp(-0.5 * ((t - center) / 8.0) ** 2) * np.sin(t / 2.0)).astype(np.float32)
        traces.append(x)
    return traces


@pytest.mark.parametrize("warmup", [True, False])
def test_live_pass_picks_as_the_firmware_twin(warmup):
    """The benchmark's live picks (the student's own SeisBench annotate, a window every hop, the live blinding),
    when each is reported and when each retracted one is withdrawn are pipeline.model.picking.live_stream_picks' (what
    the firmware's live mode emits; the host test checks the core against it), on each trace after its warm-up,
    picks on the warm-up dropped."""
    from pipeline.model.picking import LiveRule, live_blinding, live_stream_picks

    model = SquareStudent(base_channels=1, in_samples=SAMPLES).eval()
    hop, lookahead = 100, {"P": 150, "S": 230}  # each phase its own look-ahead, as the firmware's live mode
    confirm, within = {"P": 500, "S": 0}, 50  # S never retracted
    traces = square_traces()
    bench = runners.BenchModel("student", "pytorch", "fp32", [model])
    live = LiveRule.of(SAMPLES, hop, lookahead, confirm, within)
    annotated = {}
    times, reported, retracted = live_pass.live_pick_times(bench, traces, 100.0, "ZNE", live, warmup,
                                                           annotated=annotated)
    assert sorted(key[2] for key in annotated) == [150, 230, 500]  # one annotate per look-ahead, the confirming one too
    pad = live_blinding(SAMPLES, hop, 150)[0] if warmup else 0  # the smallest look-ahead's: every phase covered

    def forward(window):
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(window[None], dtype=np.float32))).numpy()[0].T

    total = withdrawn = 0
    for i, trace in enumerate(traces):
        padded = live_pass.warmup_padded(trace, pad, 100.0)
        assert padded.shape[1] == trace.shape[1] + pad and np.array_equal(padded[:, pad:], trace)
        ref, _ = live_stream_picks(padded, forward, live, model.pick_rule, model.norm_eps)
        for phase in "PS":
            want = [((p["sample"] - pad) / 100, (p["reported"] - pad) / 100,
                     np.nan if p["retracted"] is None else (p["retracted"] - pad) / 100)
                    for p in ref if p["phase"] == phase and p["sample"] >= pad]
            got = list(zip(times[phase][i], reported[phase][i], retracted[phase][i]))
            assert len(got) == len(want), (i, phase, got, want)
            assert np.allclose(np.reshape(got, (-1, 3)), np.reshape(want, (-1, 3)), atol=1e-9, equal_nan=True), (i, phase)
            total += len(want)
            withdrawn += sum(not np.isnan(w[2]) for w in want)
            assert phase == "P" or all(np.isnan(w[2]) for w in want)
    assert total >= 10 and withdrawn >= 1
    # picks in the span the exact replay blinds at a trace's start are dropped when asked (the stage's live pass)
    skip = 1200
    kept, kept_reported, _ = live_pass.live_pick_times(bench, traces, 100.0, "ZNE", live, warmup,
                                                       skip_samples=skip, annotated=annotated)
    assert len(annotated) == 3  # the streams of the first call served this one
    dropped = 0
    for phase in "PS":
        for i in range(len(traces)):
            late = times[phase][i] >= skip / 100 - 1e-9
            assert np.array_equal(kept[phase][i], times[phase][i][late])
            assert np.array_equal(kept_reported[phase][i], reported[phase][i][late])
            dropped += int((~late).sum())
    assert dropped >= 1


def test_live_latency_of_matched_picks_by_hand():
    """Latency = reported time - analyst onset of the live picks that protocol 1 matches (the same one-to-one rule)."""
    truth = [np.array([10.0, 20.0]), np.array([5.0]), np.array([])]
    picks = [np.array([10.2, 19.0, 30.0]), np.array([5.6]), np.array([3.0])]
    reported = [np.array([11.5, 21.0, 31.0]), np.array([6.0]), np.array([4.0])]
    assert metrics.matched_pairs(truth[0], picks[0], 0.5) == [(0, 0)]
    for tolerance in (0.5, 1.0):
        matched = sum(len(metrics.matched_pairs(t, p, tolerance)) for t, p in zip(truth, picks))
        assert matched == metrics.match_picks(truth, picks, tolerance)[0]
    latencies = metrics.pick_latencies(truth, picks, reported, 1.0)
    assert sorted(latencies.tolist()) == pytest.approx([1.0, 1.0, 1.5])  # 21 - 20, 6 - 5, 11.5 - 10
    summary = metrics.latency_summary(latencies)
    assert summary["n"] == 3 and summary["median_s"] == pytest.approx(1.0) and summary["p95_s"] == pytest.approx(1.45)
    assert metrics.latency_summary(np.array([])) == {"n": 0, "median_s": None, "p95_s": None}


# ---------------------------------------------------------------------------------------------- the stage
@pytest.mark.slow
def test_stage_writes_reports_with_documented_fields(models, dataset, fake_teacher, tmp_path, capsys):
    report = benchmark_stage.run(config_for(models, f"{dataset}:train", tmp_path / "reports"))
    printed = capsys.readouterr().out
    assert "skipping TFLite int8" in printed
    # a folder per dataset and student, its path printed
    out = tmp_path / "reports" / f"{dataset.name}_train__student"
    assert report["folder"] == str(out) and f"report: {out / 'benchmark.md'}" in printed
    for name in ("benchmark.md", "benchmark.json", "benchmark_residuals.png", "benchmark_pr.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "benchmark.json").read_text())
    assert data["schema"] == "edgepick-benchmark/1"
    assert [(m["runtime"], m["precision"]) for m in data["models"]] == [
        ("pytorch", "fp32"), ("pytorch", "fp32"), ("tflm", "fp32"), ("tflm", "fp16")]
    assert all(MODEL_FIELDS <= set(m) for m in data["models"])
    assert all(set(r) == RECORD_FIELDS for r in data["records"])
    tflm = [m for m in data["models"] if m["runtime"] == "tflm"]
    assert all(m["arena_bytes"] > 0 and m["flatbuffer_bytes"] > 0 for m in tflm)
    assert tflm[1]["flatbuffer_bytes"] < tflm[0]["flatbuffer_bytes"]  # packed FP16 is smaller
    # each model's own pick rule (the fake teacher is a student too)
    assert [m["pick_top_tolerance"] for m in data["models"]] == [PICK_TOP_TOLERANCE] * 4
    assert [m["thresholds"] for m in data["models"]] == [{"P": 0.3, "S": 0.3}] * 4
    blind = default_blinding(SAMPLES // 2)
    assert [m["blinding"] for m in data["models"]] == [[blind, blind]] * 4  # the TFLite variants blind as the student
    assert f"| P 0.3 / S 0.3; midpoint at half maximum; blinds {blind} / {blind} samples |" in (out / "benchmark.md").read_text()
    keys = {(r["model"], r["runtime"], r["precision"], r["reference"], r["phase"], r["tolerance_s"])
            for r in data["records"] if r["subset"] == "all"}
    assert ("student", "tflm", "fp16", "analyst", "S", 0.1) in keys and ("student", "tflm", "fp32", "teacher", "P", 0.5) in keys
    assert {p["model"] for p in data["protocol2"]} == {"teacher", "student"}
    # the pick classes: every model, both phases, "all" and the S-P bins; they add up to protocol 1's pick counts
    classes = {(r["model"], r["runtime"], r["precision"], r["phase"], r["subset"]): r for r in data["pick_classes"]}
    assert ("student", "tflm", "fp16", "S", "all") in classes and ("teacher", "pytorch", "fp32", "S", "all") in classes
    assert {k[4] for k in classes} - {"all"} == {r["subset"] for r in data["records"] if r["subset"].startswith("S-P")}
    for r in data["records"]:
        if r["reference"] == "analyst" and r["subset"] == "all" and r["tolerance_s"] == 0.5:
            c = classes[(r["model"], r["runtime"], r["precision"], r["phase"], "all")]
            assert sum(c["classes"].values()) == r["n_picks"] and c["classes"]["true"] == r["tp"]
            assert c["false"] + c["classes"]["no_s_label"] == r["fp"]
    assert "## Pick classes (tolerance 0.5 s)" in (out / "benchmark.md").read_text()
    assert data["dataset"]["split"] == "train" and not data["dataset"]["agreement_only"]
    assert report["dataset"]["traces"] == data["dataset"]["traces"]
    # the TFLite FP32 student sees what the PyTorch student sees: identical picks
    by = {(r["runtime"], r["precision"], r["phase"], r["tolerance_s"]): r for r in data["records"]
          if r["reference"] == "analyst" and r["subset"] == "all" and r["model"] == "student"}
    for phase in "PS":
        assert by[("tflm", "fp32", phase, 0.5)]["n_picks"] == by[("pytorch", "fp32", phase, 0.5)]["n_picks"]
    # the live pass (live.* defaults): the PyTorch student only, per phase F1 live and exact, the latency of live picks
    live = data["live"]
    assert (live["hop_samples"], live["lookahead_samples"]) == (100, {"P": 100, "S": 200})
    assert live["blinding"] == {"P": [SAMPLES - 200, 100], "S": [SAMPLES - 300, 200]}
    assert live["warmup_samples"] == SAMPLES - 200
    assert live["skipped_start_samples"] == blind  # the span the exact replay blinds at each trace's start
    assert set(live) == LIVE_FIELDS and all(set(r) == LIVE_ROW_FIELDS for r in live["rows"])
    assert [(r["runtime"], r["phase"]) for r in live["rows"]] == [("pytorch", "P"), ("pytorch", "S")]
    assert (live["confirm_samples"], live["confirm_within_samples"]) == ({"P": 500, "S": 0}, 50)
    for r in live["rows"]:
        assert set(r["f1_exact"]) == set(r["f1_live"]) == set(r["f1_kept"]) == {"0.1", "0.5"}
        assert r["n_retracted"] <= r["n_picks_live"] and (r["phase"] == "P" or r["n_retracted"] == 0)
        assert (r["n_retracted"] == 0) == (r["retract_delay_median_s"] is None)
        assert r["f1_exact"]["0.5"] == by[("pytorch", "fp32", r["phase"], 0.5)]["f1"]
        assert r["latency_n"] == 0 or r["latency_median_s"] <= r["latency_p95_s"]
    # what the live mode costs on each board with an estimate: windows every hop
    compute = {(c["precision"], c["board"]): c for c in live["compute"]}
    assert set(compute) == {("fp32", "esp32"), ("fp32", "esp32s3"), ("fp16", "esp32"), ("fp16", "esp32s3")}
    row = next(m for m in data["models"] if m["runtime"] == "tflm" and m["precision"] == "fp32")
    c = compute[("fp32", "esp32")]
    assert c["windows_per_s"] == 1.0 and c["ms_per_window_est"] == pytest.approx(row["esp32_latency_ms_est"], abs=0.1)
    assert c["real_time_factor_est"] == pytest.approx(c["ms_per_window_est"] / 1e3)
    assert c["real_time_factor_exact_est"] == pytest.approx(c["real_time_factor_est"] * 100 / (SAMPLES - SAMPLES // 2))
    text = (out / "benchmark.md").read_text()
    assert f"live picks in its first {blind} samples (the span a whole-window student's exact replay blinds) dropped" in text
    assert "## Live picks (hop 100, look-ahead P 100, S 200 samples)" in text and "| student pytorch-fp32 | P |" in text
    assert "live student pytorch-fp32 P: F1@0.1" in printed


@pytest.mark.slow
def test_a_second_benchmark_keeps_the_first_report(models, dataset, fake_teacher, tmp_path):
    first = benchmark_stage.run(config_for(models, f"{dataset}:train", tmp_path / "r"))
    write_miniseed(tmp_path / "mseed")
    second = benchmark_stage.run(config_for(models, str(tmp_path / "mseed"), tmp_path / "r"))
    assert first["folder"] != second["folder"]
    assert json.loads((Path(first["folder"]) / "benchmark.json").read_text())["dataset"]["kind"] == "labelled"
    config = config_for(models, f"{dataset}:train", tmp_path / "r")
    config.set("benchmark.name", "mine")  # or a name the user gives
    config.set("live.benchmark", False)  # ... and without the live pass
    mine = benchmark_stage.run(config)
    assert mine["folder"] == str(tmp_path / "r" / "mine") and "live" not in mine
    assert "Live picks" not in (tmp_path / "r" / "mine" / "benchmark.md").read_text()
    assert (tmp_path / "r" / "mine" / "benchmark.md").is_file() and (Path(first["folder"]) / "benchmark.md").is_file()


@pytest.mark.slow
def test_dataset_without_picks_is_agreement_only(models, dataset, fake_teacher, tmp_path):
    import shutil

    import pandas as pd

    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(dataset, unlabelled)
    meta = pd.read_csv(unlabelled / "metadata.csv")
    meta = meta.drop(columns=[c for c in meta.columns if "arrival_sample" in c])
    meta.to_csv(unlabelled / "metadata.csv", index=False)
    report = benchmark_stage.run(config_for(models, str(unlabelled), tmp_path / "r"))
    assert report["dataset"]["agreement_only"] and report["protocol2"] == []
    assert {r["reference"] for r in report["records"]} == {"teacher"}
    assert "Agreement-only" in (Path(report["folder"]) / "benchmark.md").read_text()


def write_miniseed(folder, rate=100.0, seconds=120):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for component in "ZNE":
        data = rng.normal(size=int(seconds * rate)).astype(np.float32)
        data[int(40 * rate):] *= 10
        trace = obspy.Trace(data, header={"network": "XX", "station": "ABC", "channel": f"HH{component}",
                                          "sampling_rate": rate, "starttime": obspy.UTCDateTime(2020, 1, 1)})
        trace.write(str(folder / f"XX.ABC.HH{component}.mseed"), format="MSEED")


@pytest.mark.slow
def test_continuous_miniseed_reports_agreement_and_picks_per_hour(models, fake_teacher, tmp_path):
    write_miniseed(tmp_path / "mseed")
    report = benchmark_stage.run(config_for(models, str(tmp_path / "mseed"), tmp_path / "r"))
    assert report["dataset"]["kind"] == "continuous" and report["dataset"]["agreement_only"]
    assert report["dataset"]["hours"] == pytest.approx(120 / 3600)
    teacher = [r for r in report["records"] if r["model"] == "teacher"]
    assert teacher and all(r["picks_per_hour"] is not None for r in teacher)
    assert "no analyst labels" in (Path(report["folder"]) / "benchmark.md").read_text()


@pytest.mark.slow
def test_bad_input_is_one_clear_error(models, dataset, fake_teacher, tmp_path):
    with pytest.raises(EdgepickError, match="holds no trace"):
        benchmark_stage.run(config_for(models, f"{dataset}:nosuchsplit", tmp_path / "r"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgepickError, match="nothing to benchmark"):
        benchmark_stage.run(config_for(models, str(tmp_path / "empty"), tmp_path / "r"))
    write_miniseed(tmp_path / "slow", rate=50.0)
    with pytest.raises(EdgepickError, match="50 Hz"):
        benchmark_stage.run(config_for(models, str(tmp_path / "slow"), tmp_path / "r"))
    assert not (tmp_path / "r").exists()  # nothing half-written


@pytest.mark.slow
def test_wrong_model_files_are_refused(tmp_path, models):
    bad = tmp_path / "tflite"
    bad.mkdir()
    (bad / "model_fp32.tflite").write_text("not a model")
    with pytest.raises(EdgepickError, match="not a TFLite flatbuffer"):
        runners.tflite_variants(bad, None, ("fp32",))
    (bad / "model_fp16.ef16").write_bytes((models / "tflite" / "model_fp32.tflite").read_bytes())
    with pytest.raises(EdgepickError, match="not a packed FP16"):
        runners.tflite_variants(bad, None, ("fp16",))
    (bad / "model_int8.tflite").write_bytes((models / "tflite" / "model_fp32.tflite").read_bytes())
    with pytest.raises(EdgepickError, match="int8 variant"):
        runners.tflite_variants(bad, None, ("int8",))
    with pytest.raises(EdgepickError):
        runners.load_student_model(bad / "model_fp32.tflite")


# ------------------------------------------------------------------------------------- real teacher, real data
@pytest.mark.shared
def test_teacher_on_stead50_agrees_with_notes(teacher_cache, shared, tmp_path):
    """Protocol 1 of the stage reproduces the independent PhaseNet okla figures (docs/benchmark.md, "Reference figures"; +-0.03 F1)."""
    waveforms, metadata, rate, order = load_labelled(shared / "datasets" / "stead50", "")
    teacher = runners.load_teacher("phasenet:okla")
    curves = annotation.dataset_curves(teacher, waveforms, rate, order, progress=False)
    truth = {p: [x / rate for x in rows] for p, rows in metrics.analyst_picks(metadata).items()}
    scored = metrics.score_picks(truth, curves.picks(0.3), (0.1, 0.5))
    notes = {("P", 0.5): 0.871, ("S", 0.5): 0.970, ("P", 0.1): 0.713, ("S", 0.1): 0.594}
    for (phase, tol), f1 in notes.items():
        assert scored[phase][tol]["f1"] == pytest.approx(f1, abs=0.03), (phase, tol)


@pytest.mark.slow
@pytest.mark.parametrize("study", ["score", "quantize", "kd_vs_hard", "live", "s_picks"])
def test_studies_end_bad_input_with_one_line(study, tmp_path):
    """A study given a student or dataset that is not there: one line on stderr, exit 2, no traceback."""
    import subprocess
    import sys

    missing = str(tmp_path / "missing")
    args = {"score": ["--student", missing, "--dataset", missing, "--json", str(tmp_path / "out.json")],
            "quantize": ["--student", missing],
            "kd_vs_hard": ["--dataset", missing, "--json", str(tmp_path / "out.json")],
            "live": ["--student", missing, "--datasets", missing, "--json", str(tmp_path / "out.json")],
            "s_picks": ["--student", missing, "--dataset", f"{missing}:dev", "--out", str(tmp_path / "out.json")]}[study]
    result = subprocess.run([sys.executable, "-m", "pipeline", "study", study, *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"study {study}: error: ") and "missing" in lines[0], result.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("old", ["dev", "student", "blinding"])
def test_merged_studies_name_the_score_command(old, capsys):
    """The studies merged into study score: one error line naming the command that prints their figures."""
    from pipeline import cli
    from pipeline.studies import MERGED

    assert cli.main(["study", old, "--student", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"study {old} is merged into study score" in err[0]
    assert f"python -m pipeline study {MERGED[old]}" in err[0]
