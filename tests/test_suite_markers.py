"""make test-fast's subset (pytest -m "not slow", tests/conftest.py): a test marked slow is left out, so is one that
needs ../shared, without a marker (its fixtures say so); any other test lands in the subset, and a run of the whole
suite names the unmarked ones that took longer than they should."""

import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def scratch_suite(path, warn_over_s=None):
    """tests/conftest.py (its warning line moved to ``warn_over_s``) and five tests, one of each kind."""
    conftest = (TESTS / "conftest.py").read_text()
    if warn_over_s is not None:
        assert "WARN_OVER_S = 5.0" in conftest
        conftest = conftest.replace("WARN_OVER_S = 5.0", f"WARN_OVER_S = {warn_over_s}")
    (path / "conftest.py").write_text(conftest)
    (path / "test_new.py").write_text(textwrap.dedent("""
        import pytest

        def test_plain():
            pass

        @pytest.mark.slow
        def test_marked_slow():
            pass

        @pytest.mark.shared
        def test_marked_shared():
            pass

        def test_asks_for_shared(shared):
            pass

        def test_asks_for_the_teachers(teacher_cache):
            pass
    """))


def pytest_in(path, *args) -> str:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=path,
                          capture_output=True, text=True, timeout=120).stdout


def test_fast_subset_leaves_out_slow_tests_and_those_that_need_shared(tmp_path):
    scratch_suite(tmp_path)

    def collected(*marker):
        return sorted(line.split("::")[1] for line in pytest_in(tmp_path, "--co", "-q", *marker).splitlines()
                      if "::" in line)

    assert collected("-m", "not slow") == ["test_plain"]
    assert collected("-m", "shared") == ["test_asks_for_shared", "test_asks_for_the_teachers", "test_marked_shared"]
    assert len(collected()) == 5


def test_a_whole_run_names_the_unmarked_tests_over_the_line(tmp_path):
    scratch_suite(tmp_path, warn_over_s=0.0)
    named = [line.split()[-1] for line in pytest_in(tmp_path, "-q").splitlines() if line.strip().endswith("test_plain")
             or "test_marked_slow" in line]
    assert named == ["test_new.py::test_plain"]  # every test took over 0 s; the slow one is marked
    assert "not marked slow" not in pytest_in(tmp_path, "-q", "-m", "not slow")  # a subset: first imports skew it
