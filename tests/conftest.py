"""Shared fixtures. Tests that need ../shared (real teachers and data) are marked and skip without it."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# SeisBench reads its cache root at import time: point it at the real teachers before anything imports it.
if (SHARED / "seisbench").is_dir():
    os.environ.setdefault("SEISBENCH_CACHE_ROOT", str(SHARED / "seisbench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
