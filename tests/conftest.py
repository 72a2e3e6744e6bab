"""Shared fixtures and the `slow` marker's rules. Tests that need ../shared (real teachers and data) are marked
`shared` and `slow` and skip without it."""

import os
import shutil
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# SeisBench reads its cache root at import time: point it at the real teachers before anything imports it.
if (SHARED / "seisbench").is_dir():
    os.environ.setdefault("SEISBENCH_CACHE_ROOT", str(SHARED / "seisbench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# make test-fast (the inner loop, under a minute) is `pytest -m "not slow"`: every test but those marked slow. A test
# is slow when it takes more than FAST_LIMIT_S (pytest --durations=0 on the whole suite), builds a heavy fixture
# (a trained or quantized student), runs the emulator, or needs ../shared: the last is marked here, from the
# fixtures it asks for or its `shared` marker, so a new test that reads ../shared is slow without saying so.
# Anything else lands in the fast subset by default; a run of the whole suite names the unmarked tests that took
# much longer (WARN_OVER_S).
NEEDS_SHARED = {"shared", "teacher_cache"}
FAST_LIMIT_S = 2.0  # a test's own run (its call) on the loaded 2-core VM, beyond which it is marked slow
# ... and beyond which the whole suite's run names an unmarked test: a loaded machine stretches a 1 s test to 4 s
WARN_OVER_S = 5.0
_unmarked_durations: dict[str, float] = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("shared") or NEEDS_SHARED & set(item.fixturenames):
            item.add_marker(pytest.mark.shared)
            item.add_marker(pytest.mark.slow)


def pytest_runtest_logreport(report):
    if report.when == "call" and "slow" not in report.keywords:
        _unmarked_durations[report.nodeid] = report.duration


def pytest_terminal_summary(terminalreporter, config):
    # On a run of the whole suite only: in a subset the first test to import a heavy library (TensorFlow: ~6 s on a
    # loaded 2-core machine) pays for it, which the whole suite's order gives to a test already marked slow.
    if config.option.markexpr:
        return
    over = sorted(((s, n) for n, s in _unmarked_durations.items() if s > WARN_OVER_S), reverse=True)
    if over:
        terminalreporter.write_sep("-", f"not marked slow, but over {WARN_OVER_S:g} s (mark them "
                                        "@pytest.mark.slow, or make them faster)")
        for seconds, nodeid in over:
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}")


@pytest.fixture
def shared() -> Path:
    """../shared, or skip."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (real teachers and data)")
    return SHARED


@pytest.fixture
def teacher_cache(shared) -> Path:
    path = shared / "seisbench"
    if not (path / "models").is_dir():
        pytest.skip("../shared/seisbench has no models")
    return path


@pytest.fixture(scope="session")
def driver(tmp_path_factory) -> Path:
    """The firmware's portable core + host driver built with the host g++ (tests/host_core.py), once a session."""
    from host_core import build_driver

    if shutil.which("g++") is None:
        pytest.skip("no host g++")
    return build_driver(tmp_path_factory.mktemp("core") / "host_driver")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A small labelled dataset (60 traces of 30 events, train / dev / test) that students are distilled on
    (test_distill.py, test_qat.py; test_calibrate.py has its own of the same name)."""
    from helpers import make_records
    from pipeline.config import Config
    from pipeline.data.datasets import write_dataset

    path = tmp_path_factory.mktemp("distill") / "ds"
    write_dataset(make_records(n_events=30, stations=2), path, Config().data, "test")
    return path


def _fake_model(seed: int):
    import seisbench.models as sbm
    import torch

    torch.manual_seed(seed)
    model = sbm.PhaseNet(phases="PSN", norm="peak", component_order="ENZ", sampling_rate=100)
    model._weights_version = "1"
    return model.eval()


@pytest.fixture
def fake_teachers(monkeypatch):
    """Replace weight loading by seeded random PhaseNets; count how often a teacher is loaded and run (the
    stand-in teacher of test_teachers.py and test_soft_label_cache.py)."""
    from pipeline.model import teachers
    from pipeline.model.teachers import Teacher

    calls = {"load": 0, "traces": 0}

    def load(member):
        calls["load"] += 1
        return _fake_model(zlib.crc32(member.weights.encode()) % 1000)

    original = Teacher.predict_raw

    def counting(self, traces, component_order="ZNE"):
        calls["traces"] += len(traces)
        return original(self, traces, component_order)

    monkeypatch.setattr(teachers, "load_model", load)
    monkeypatch.setattr(teachers, "local_weights_version", lambda member: "1")
    monkeypatch.setattr(Teacher, "predict_raw", counting)
    return calls
