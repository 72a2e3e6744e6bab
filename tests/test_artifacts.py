"""Atomic artifacts under kills, races and umasks (pipeline/artifacts.py)."""

from __future__ import annotations

import multiprocessing
import os
import stat
import subprocess
import sys

import pytest

from pipeline import artifacts
from pipeline.errors import EdgepickError


def _writer(target, barrier, tag, trials, errors):
    for trial in range(trials):
        barrier.wait()
        try:
            with artifacts.atomic_dir(target) as tmp:
                (tmp / "payload").write_text(f"{tag} {trial}\n" * 1000)
                (tmp / "second").write_text(tag)
        except Exception as error:  # noqa: BLE001 - the test counts every failure
            errors.put(f"{type(error).__name__}: {error}")


def test_two_writers_finishing_together_both_succeed(tmp_path):
    """Forced race (two processes released by a barrier, 30 trials): each write replaces the target whole; no
    OSError, nothing half-done, no temporary left behind (it used to fail 6 times in 30)."""
    context = multiprocessing.get_context("fork")
    barrier, errors = context.Barrier(2), context.Queue()
    target = tmp_path / "model"
    workers = [context.Process(target=_writer, args=(target, barrier, tag, 30, errors)) for tag in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, failures[:3]
    tag = (target / "second").read_text()
    assert tag in ("a", "b") and (target / "payload").read_text().startswith(tag)  # one writer's folder, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_temporaries_of_dead_processes_are_removed(tmp_path, capsys):
    """A kill -9 leaves .<name>.<host>-<pid>.*.tmp behind: the next write into the same place removes it (and says
    so), and leaves a live process's temporary alone."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".data.{artifacts._HOST}-{dead_pid}.abc123.tmp"
    stale.mkdir()
    (stale / "waveforms.hdf5").write_bytes(b"half")
    stale_file = tmp_path / f".data.{artifacts._HOST}-{dead_pid}.xyz789.tmp"
    stale_file.write_bytes(b"half")
    live = tmp_path / f".data.{artifacts._HOST}-{os.getppid()}.def456.tmp"
    live.mkdir()
    with artifacts.atomic_dir(tmp_path / "data") as tmp:
        (tmp / "metadata.csv").write_text("x\n")
    assert not stale.exists() and not stale_file.exists() and live.exists()
    assert "left by process" in capsys.readouterr().err


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_permissions_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        with artifacts.atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "inside").write_text("x")
        artifacts.atomic_write_text(tmp_path / "file.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "file.txt").stat().st_mode) == 0o666 & ~mask


def test_filesystem_errors_are_one_line(tmp_path):
    (tmp_path / "not-a-folder").write_text("x")
    with pytest.raises(EdgepickError, match=r"^cannot create a folder beside .*not-a-folder/out: "):
        with artifacts.atomic_dir(tmp_path / "not-a-folder" / "out"):
            pass
    with pytest.raises(EdgepickError, match="^cannot create a file beside"):
        artifacts.atomic_write_text(tmp_path / "not-a-folder" / "f.txt", "x")


def test_folders_written_together_change_together(tmp_path, monkeypatch):
    """atomic_dirs: a target that cannot be made fails before anything is written; a failed rename at the end puts
    back the folder already replaced, so both keep their old contents."""
    a, b = tmp_path / "a", tmp_path / "b"
    for target in (a, b):
        target.mkdir()
        (target / "file").write_text("old")
    (tmp_path / "blocker").write_text("")
    with pytest.raises(EdgepickError, match="cannot create a folder beside"):
        with artifacts.atomic_dirs(a, tmp_path / "blocker" / "c"):
            raise AssertionError("not reached: the second folder cannot be made")
    real_rename = type(a).rename

    def failing_rename(self, target):  # the new b cannot take b's place (the old b, put back, can)
        if str(target) == str(b) and ".old." not in self.name and ".tmp" in self.name:
            raise OSError(28, "No space left on device", str(target))
        return real_rename(self, target)

    monkeypatch.setattr(type(a), "rename", failing_rename)
    with pytest.raises(EdgepickError, match=f"cannot write {b}"):
        with artifacts.atomic_dirs(a, b) as (tmp_a, tmp_b):
            (tmp_a / "file").write_text("new")
            (tmp_b / "file").write_text("new")
    assert (a / "file").read_text() == "old" and (b / "file").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.lock", ".b.lock", "a", "b", "blocker"]
    monkeypatch.undo()
    with artifacts.atomic_dirs(a, b) as (tmp_a, tmp_b):
        (tmp_a / "file").write_text("new")
        (tmp_b / "file").write_text("new")
    assert (a / "file").read_text() == "new" and (b / "file").read_text() == "new"
