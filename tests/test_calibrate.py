"""make calibrate: per-phase thresholds chosen on a dev split by the mean F1 over the tolerances, saved with the
student (and so in what make quantize and the benchmark use); the test split and unsaved students are refused."""

import json

import numpy as np
import pytest
import torch

from pipeline.model import annotation
from pipeline.config import Config
from pipeline.data.datasets import write_dataset
from pipeline.errors import EdgepickError
from pipeline.model.picking import PickRule
from pipeline.evaluate import dev_split
from pipeline.stages import calibrate
from pipeline.model.student import XiaoNet, load_student
from pipeline.distill.training import save_model

from helpers import make_records


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibrate") / "ds"
    write_dataset(make_records(n_events=30, stations=2), path, Config().data, "test")
    return path


@pytest.fixture()
def student_folder(tmp_path):
    """An untrained student whose head is scaled so that its curves cross many thresholds (picks to score)."""
    torch.manual_seed(5)
    model = XiaoNet(base_channels=2, in_samples=1001, activation="relu").eval()
    with torch.no_grad():
        model.head.weight.mul_(30.0)
    save_model(model, tmp_path / "student_qat", "student")
    return tmp_path / "student_qat"


def config_for(student, dataset):
    config = Config()
    config.set("calibrate.student", str(student))
    config.set("calibrate.dataset", dataset)
    config.set("calibrate.thresholds", "0.2,0.4,0.6,0.8")
    return config


def test_the_chosen_threshold_is_the_one_of_the_best_mean_f1():
    """Curves with true bumps (P 0.5, S 0.9 high) and false ones (P 0.25, S 0.7): only a threshold between the
    two heights picks every onset and nothing else."""
    rate, n = 100.0, 4000
    t = np.arange(n)
    truth = {"P": [], "S": []}
    data = []
    for k in range(6):
        p, s = 800 + 40 * k, 2000 + 50 * k
        bump = lambda at, height: height * np.exp(-0.5 * ((t - at) / 15.0) ** 2)  # noqa: E731
        data.append(np.stack([bump(p, 0.5) + bump(3200, 0.25), bump(s, 0.9) + bump(400, 0.7)]).astype(np.float32))
        truth["P"].append(np.array([p / rate]))
        truth["S"].append(np.array([s / rate]))
    curves = annotation.Curves(rate, PickRule(), [0] * 6, data)
    table = dev_split.threshold_table(curves, truth, (0.2, 0.4, 0.6, 0.8), (0.1, 0.5))
    assert dev_split.best_threshold(table, "P") == 0.4 and dev_split.best_threshold(table, "S") == 0.8
    row = {r["threshold"]: r for r in table}
    assert row[0.4]["P_f1_0.5"] == 1.0 and row[0.2]["P_precision_0.5"] == 0.5 and row[0.6]["P_recall_0.5"] == 0.0


def test_the_placement_of_the_best_mean_f1_is_the_one_at_the_onset():
    """A causal student's P curve: a sharp rise at the onset, a slow fall after it. The midpoint at half maximum
    lies ~0.2 s late, the top of the peak on the onset: the placement table scores the top (0.1, the first
    maximum) at 0.1 s and every placement alike at 0.5 s."""
    rate, n = 100.0, 3000
    t = np.arange(n, dtype=float)
    truth = {"P": [], "S": []}
    data = []
    for k in range(5):
        onset = 1000 + 37 * k
        rise = np.exp(-0.5 * ((t - onset) / 3.0) ** 2)
        fall = np.exp(-np.clip(t - onset, 0, None) / 60.0)
        p = 0.9 * np.where(t < onset, rise, fall)
        data.append(np.stack([p, np.zeros(n)]).astype(np.float32))
        truth["P"].append(np.array([onset / rate]))
        truth["S"].append(np.array([]))
    curves = annotation.Curves(rate, PickRule(), [0] * 5, data)
    rows = {r["top_tolerance"]: r for r in dev_split.placement_table(curves, truth, PickRule(), (0.5, 0.1, -1.0), (0.1, 0.5))}
    assert rows[0.5]["P_f1_0.1"] == 0.0 and rows[0.1]["P_f1_0.1"] == 1.0 and rows[-1.0]["P_f1_0.1"] == 1.0
    assert all(r["P_f1_0.5"] == 1.0 for r in rows.values())
    assert curves.rule == PickRule()  # the curves' own rule is left as it was
    assert dev_split.best_placement(list(rows.values()), ["P"]) == 0.1  # the first of the equal best


def test_thresholds_are_saved_with_the_student(labelled, student_folder):
    """The real stage on a real (untrained) student: the chosen thresholds are in the saved student's pick rule,
    and calibration.json / .png are written beside it."""
    result = calibrate.run(config_for(student_folder, f"{labelled}:dev"))
    saved = load_student(student_folder)
    assert saved.pick_rule.p_threshold == result["chosen"]["P"] and saved.pick_rule.s_threshold == result["chosen"]["S"]
    assert result["chosen"]["P"] == dev_split.best_threshold(result["table"], "P")
    written = json.loads((student_folder / "calibration.json").read_text())
    assert written["chosen"] == result["chosen"] and written["against"] == "analyst" and written["traces"] > 0
    assert (student_folder / "calibration.png").stat().st_size > 1000


def test_the_chosen_placement_is_saved_with_the_student(labelled, student_folder, capsys):
    config = config_for(student_folder, f"{labelled}:dev")
    config.set("calibrate.top_tolerances", "0.5,0.2,-1")
    result = calibrate.run(config)
    scores = [dev_split.placement_objective(row, ["P", "S"]) for row in result["placements"]]
    assert [row["top_tolerance"] for row in result["placements"]] == [0.5, 0.2, -1.0]
    best = result["placements"][int(np.argmax(scores))]["top_tolerance"]
    saved = load_student(student_folder).pick_rule
    assert result["chosen_top_tolerance"] == best and (saved.first_maximum if best < 0 else saved.top_tolerance == best)
    assert "pick placement" in capsys.readouterr().out
    with pytest.raises(EdgepickError, match="top_tolerances: each value must be < 1"):
        config.set("calibrate.top_tolerances", "1.5")
    config.calibrate.top_tolerances = (0.5, 1.5)  # set in Python, past the declaration: the stage refuses it
    with pytest.raises(EdgepickError, match="top_tolerances must be < 1"):
        calibrate.run(config)


def test_the_test_split_and_a_folder_without_a_student_are_refused(labelled, student_folder, tmp_path):
    with pytest.raises(EdgepickError, match="dev split"):
        calibrate.run(config_for(student_folder, f"{labelled}:test"))
    with pytest.raises(EdgepickError, match="dev split"):
        calibrate.run(config_for(student_folder, str(labelled)))
    with pytest.raises(EdgepickError, match="no student saved"):
        calibrate.run(config_for(tmp_path / "nothing", f"{labelled}:dev"))
    bad = config_for(student_folder, f"{labelled}:dev")
    with pytest.raises(EdgepickError, match="in \\(0, 1\\)"):  # refused where the setting is declared
        bad.set("calibrate.thresholds", "0.3,1.5")
    bad.calibrate.thresholds = (0.3, 1.5)  # ... and by the stage, for a configuration changed in Python
    with pytest.raises(EdgepickError, match="in \\(0, 1\\)"):
        calibrate.run(bad)


def test_a_pooled_set_without_s_picks_is_not_scored_on_s():
    """Two sets pooled, the second without S picks (like deepdenoiser99): the S arrivals the student finds on it
    are no false picks, so pooled S F1 is the first set's; its P picks still count."""
    rate, n = 100.0, 3000
    t = np.arange(n)
    bump = lambda at: 0.9 * np.exp(-0.5 * ((t - at) / 15.0) ** 2)  # noqa: E731
    data = [np.stack([bump(800), bump(2000)]).astype(np.float32) for _ in range(4)]
    curves = annotation.Curves(rate, PickRule(), [0] * 4, data)
    truth = {"P": [np.array([8.0])] * 4, "S": [np.array([20.0])] * 2 + [np.array([])] * 2}
    labelled = {"P": [True] * 4, "S": [True, True, False, False]}
    pooled = dev_split.threshold_table(curves, truth, (0.5,), (0.5,), labelled)[0]
    assert pooled["S_f1_0.5"] == 1.0 and pooled["P_f1_0.5"] == 1.0
    unmasked = dev_split.threshold_table(curves, truth, (0.5,), (0.5,))[0]
    assert unmasked["S_precision_0.5"] == 0.5  # without the mask the P-only set's S arrivals count as false


def test_dev_splits_pool(labelled):
    one = dev_split.load_dev(config_for("unused", ""), f"{labelled}:dev")
    both = dev_split.load_dev(config_for("unused", ""), f"{labelled}:dev, {labelled}:dev")
    assert len(both.waveforms) == 2 * len(one.waveforms) and both.against == "analyst"
    assert both.label == f"{labelled}:dev,{labelled}:dev"
    assert all(len(both.labelled[phase]) == len(both.waveforms) for phase in ("P", "S"))
    with pytest.raises(EdgepickError, match="dev split"):
        dev_split.load_dev(config_for("unused", ""), f"{labelled}:dev,{labelled}:test")


def test_score_study_scores_what_recipe_choices_are_made_with(labelled, student_folder):
    """study score on dev splits (python -m pipeline study score): per model, set and phase, F1 at 0.1 / 0.5 s at
    the model's own threshold, make calibrate's objective (their mean) there and at the best threshold of the grid;
    two analyst-picked sets also pooled, a set and its copy pooled scoring as the set."""
    from pipeline.model import runners
    from pipeline.studies import score

    student = runners.BenchModel("student", "pytorch", "fp32", [load_student(student_folder)], spec="s")
    part = dev_split.load_dev(config_for("unused", ""), f"{labelled}:dev")
    report = score.score_report([student], [part, part], grid=(0.2, 0.4, 0.6, 0.8), progress=False)["own"]
    assert set(report["s"]) == {part.label, score.POOLED}
    own = student.members[0].pick_rule
    for phase in part.phases:
        scores = report["s"][part.label][phase]
        assert scores["threshold"] == own.threshold(phase)
        assert scores["objective"] == pytest.approx((scores["f1_0.1"] + scores["f1_0.5"]) / 2)
        assert scores["best_threshold"] in (0.2, 0.4, 0.6, 0.8, own.threshold(phase))
        assert scores["best_objective"] >= scores["objective"]
        assert report["s"][score.POOLED][phase] == pytest.approx(scores)
    assert any(report["s"][part.label][phase]["best_objective"] > 0 for phase in part.phases)  # picks were scored


def test_score_study_splits_f1_by_s_minus_p():
    """--by-sp: each S-P bin of >= 5 traces scored on its own traces' picks, at the set's thresholds; a smaller bin
    is left out. Picks right on the near traces (S-P < 2 s), 3 s late on the far ones (>= 5 s)."""
    from pipeline.studies import score

    rate, n = 100.0, 3000
    t = np.arange(n)
    bump = lambda at: 0.9 * np.exp(-0.5 * ((t - at) / 15.0) ** 2)  # noqa: E731
    sp = np.array([1.0] * 5 + [6.0] * 6 + [3.0] * 4)
    data, truth = [], {"P": [], "S": []}
    for k, gap in enumerate(sp):
        late = 300 if gap >= 5 else 0
        data.append(np.stack([bump(500 + late), bump(500 + 100 * gap + late)]).astype(np.float32))
        truth["P"].append(np.array([5.0]))
        truth["S"].append(np.array([5.0 + gap]))
    part = dev_split.DevSplit([None] * len(sp), rate, "ZNE", truth, "analyst", "x", sp_s=sp)
    curves = annotation.Curves(rate, PickRule(), [0] * len(sp), data)
    scored = score.score_curves(curves, part, by_sp=True)
    assert set(scored["by_sp"]) == {"S-P < 2 s", "S-P >= 5 s"}  # the 2-5 s bin has 4 traces
    near, far = scored["by_sp"]["S-P < 2 s"], scored["by_sp"]["S-P >= 5 s"]
    assert (near["traces"], far["traces"]) == (5, 6)
    assert near["P"]["f1_0.1"] == near["S"]["f1_0.5"] == 1.0 and far["P"]["f1_0.5"] == far["S"]["f1_0.5"] == 0.0
    assert scored["P"]["f1_0.5"] == pytest.approx(9 / 15)  # the whole set: 9 of 15 picks right (4 + 5 near ones)


def test_score_study_ratios_are_to_the_first_model():
    """Each model's F1 over the teacher's (the first model), per set, phase and tolerance; none over an F1 of 0."""
    from pipeline.studies import score

    per_model = {"t": {"x": {"P": {"f1_0.1": 0.0, "f1_0.5": 0.5}}},
                 "s": {"x": {"P": {"f1_0.1": 0.2, "f1_0.5": 0.4}, "by_sp": {}}}}
    score.add_ratios(per_model)
    assert per_model["s"]["x"]["P"]["ratio_0.5"] == pytest.approx(0.8) and per_model["s"]["x"]["P"]["ratio_0.1"] is None
    assert per_model["t"]["x"]["P"]["ratio_0.5"] == 1.0


def test_score_study_blindings_annotate_once_per_distinct_blinding(labelled, student_folder, monkeypatch):
    """--blinding own,student,none: a student's own blinding is the students' (annotated once for both), none
    annotates again unblinded; each table scores the curves of its blinding."""
    from pipeline.model import runners
    from pipeline.studies import score

    calls = []
    original = annotation.dataset_curves

    def counting(model, *args, **kwargs):
        calls.append(kwargs.get("blinding"))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(annotation, "dataset_curves", counting)
    student = runners.BenchModel("student", "pytorch", "fp32", [load_student(student_folder)], spec="s")
    part = dev_split.load_dev(config_for("unused", ""), f"{labelled}:dev")
    report = score.score_report([student], [part], ("own", "student", "none"), progress=False)
    assert calls == [None, (0, 0)]
    assert report["own"] == report["student"]
    assert student.members[0].pick_rule.blinding not in (None, (0, 0))  # so "none" is another annotation
    with pytest.raises(EdgepickError, match="needs a student"):
        score.score_report([runners.BenchModel("teacher", "pytorch", "fp32", student.members, spec="t")], [part],
                           ("student",), progress=False)


def test_nothing_to_choose_is_refused_and_the_saved_calibration_kept(labelled, tmp_path):
    """Issue 31, item 10: a student that picks nothing scores F1 0 at every threshold; the lowest threshold used to
    win by default and be saved. Now one line, and the student and its calibration stay as they were."""
    torch.manual_seed(5)
    model = XiaoNet(base_channels=2, in_samples=1001, activation="relu").eval()
    with torch.no_grad():  # noise everywhere: no P or S probability reaches any threshold
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([-20.0, -20.0, 20.0]))
    save_model(model, tmp_path / "student_qat", "student")
    folder = tmp_path / "student_qat"
    (folder / "calibration.json").write_text('{"chosen": "the previous calibration"}\n')
    before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(EdgepickError, match="every threshold of calibrate.thresholds scores F1 0 for P and S on .*"
                                           "nothing to choose; .* keeps its thresholds \\(P 0.3, S 0.3\\)"):
        calibrate.run(config_for(folder, f"{labelled}:dev"))
    assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_phase_that_scores_nothing_keeps_its_threshold(labelled, student_folder, capsys):
    """The untrained student of student_folder picks P but no S on these traces: P is chosen, S stays where it was
    (it used to move to the lowest threshold)."""
    result = calibrate.run(config_for(student_folder, f"{labelled}:dev"))
    assert all(row["S_f1_0.5"] == 0 for row in result["table"]) and any(row["P_f1_0.5"] > 0 for row in result["table"])
    assert result["chosen"]["S"] == 0.3 == load_student(student_folder).pick_rule.s_threshold
    assert "every threshold scores F1 0 for S on" in capsys.readouterr().out
