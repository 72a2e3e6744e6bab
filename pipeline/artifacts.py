"""Atomic writes: an artifact is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(target: str | Path):
    """Yield a temporary sibling folder; on success it replaces ``target`` in one rename, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: str = "wb"):
    """Yield an open temporary file beside ``target``; it is renamed onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_file(target, "wb") as handle:
        handle.write(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_file(target, "w") as handle:
        handle.write(text)


CONFIG_NAME = "edgepick_config.yaml"


def save_config(folder: str | Path, config) -> Path:
    """The resolved configuration (``pipeline.config.Config``) that made what is in ``folder``, written beside it."""
    path = Path(folder) / CONFIG_NAME
    atomic_write_text(path, config.to_yaml())
    return path
