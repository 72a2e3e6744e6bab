"""make test-fast's subset (pytest -m "not slow", tests/conftest.py): a test marked slow is left out, so is one that
needs ../shared, without a marker (its fixtures say so); any other test lands in the subset."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_fast_subset_leaves_out_slow_tests_and_those_that_need_shared(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_new.py").write_text(textwrap.dedent("""
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

    def collected(*marker):
        run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co", "-q", *marker],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        return sorted(line.split("::")[1] for line in run.stdout.splitlines() if "::" in line)

    assert collected("-m", "not slow") == ["test_plain"]
    assert collected("-m", "shared") == ["test_asks_for_shared", "test_asks_for_the_teachers", "test_marked_shared"]
    assert len(collected()) == 5
