"""Atomic writes: an artifact is either complete or absent, never half-written.

A temporary sibling (``.<name>.<host>-<pid>.<random>.tmp``) is filled and renamed onto the target. Its name says
which process made it, so the next write into the same place removes the temporaries of processes that died
(``kill -9``) and leaves running ones alone. Folder swaps take a lock file beside the target, so two writers
finishing together each replace the target whole (the last one wins) instead of failing half-way. Permissions
follow the umask, as files made with ``open`` do (``tempfile`` would make them owner-only).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from pipeline.errors import EdgepickError

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _owner_tag() -> str:
    return f"{_HOST}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(target: str | Path, say=None) -> list[Path]:
    """Remove the temporaries of ``target`` left by dead processes of this host; returns what was removed."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.{re.escape(_HOST)}-(\d+)\.[^.]+\.tmp$")
    removed = []
    for path in target.parent.iterdir():
        match = pattern.match(path.name)
        if not match or _alive(int(match.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
        (say or (lambda line: print(line, file=sys.stderr)))(
            f"removed {path}, left by process {match.group(1)} that ended before finishing it")
    return removed


@contextlib.contextmanager
def _lock(target: Path):
    with open(target.with_name(f".{target.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fs_error(action: str, path: Path, error: OSError) -> EdgepickError:
    return EdgepickError(f"cannot {action} {path}: {error.strerror or error}")


def temporary_dir(target: str | Path) -> Path:
    """A new temporary folder beside ``target``, named for this process (the next write, or
    :func:`remove_stale_temporaries`, removes it if the process dies) and with the umask's permissions."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_owner_tag()}.", suffix=".tmp", dir=target.parent))
        tmp.chmod(0o777 & ~_umask())
    except OSError as error:
        raise _fs_error("create a folder beside", target, error) from None
    return tmp


@contextlib.contextmanager
def atomic_dir(target: str | Path):
    """Yield a temporary sibling folder; on success it replaces ``target`` in one rename, on error it is removed."""
    with atomic_dirs(target) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_dirs(*targets: str | Path):
    """Yield a temporary sibling folder per target (all created first: a target that cannot be written fails before
    anything is made); on success they replace their targets together, each in one rename, a failed rename undoing
    the others; on error all are removed and every target is as it was."""
    targets = [Path(t) for t in targets]
    temporaries: list[Path] = []
    try:
        for target in targets:
            temporaries.append(temporary_dir(target))
        yield tuple(temporaries)
        with contextlib.ExitStack() as locks:
            for target in sorted(targets, key=str):  # one order: two writers of the same targets never deadlock
                locks.enter_context(_lock(target))
            _swap_all(targets, temporaries)
    except OSError as error:
        raise _fs_error("write", _target_of(error, targets, temporaries), error) from None
    finally:
        for tmp in temporaries:
            shutil.rmtree(tmp, ignore_errors=True)


def _target_of(error: OSError, targets: list[Path], temporaries: list[Path]) -> Path:
    """The target an error was about (a file in its temporary counts as it)."""
    where = str(error.filename or "")
    for target, tmp in zip(targets, temporaries):
        if where in (str(target), str(tmp)) or where.startswith(f"{tmp}/"):
            return target
    return targets[0]


def _swap_all(targets: list[Path], temporaries: list[Path]) -> None:
    """Rename each temporary onto its target (the old one aside first); if one rename fails, put every target back."""
    done: list[tuple[Path, Path, Path | None]] = []  # (target, its temporary, the old target set aside)
    try:
        for target, tmp in zip(targets, temporaries):
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.{_owner_tag()}.old.tmp")
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
            done.append((target, tmp, old))
            tmp.rename(target)
    except OSError:
        for target, tmp, old in reversed(done):
            if not tmp.exists() and target.exists():
                target.rename(tmp)  # the new folder back to its temporary (removed by the caller)
            if old is not None:
                old.rename(target)
        raise
    for _, _, old in done:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: str = "wb"):
    """Yield an open temporary file beside ``target``; it is renamed onto ``target`` only if the block succeeds."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_owner_tag()}.", suffix=".tmp", dir=target.parent)
        os.fchmod(fd, 0o666 & ~_umask())
    except OSError as error:
        raise _fs_error("create a file beside", target, error) from None
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, target)
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise _fs_error("write", target, error) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(target: str | Path) -> Path:
    """Refuse now, in one line, a file :func:`atomic_file` could not write later: its folder is made and a temporary
    file created and removed in it, so that a long run (a replay of hours) is not lost to a read-only folder at its
    end."""
    target = Path(target)
    if target.is_dir():
        raise EdgepickError(f"cannot write {target}: it is a folder")
    ancestor = next((p for p in target.parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise EdgepickError(f"cannot write {target}: {ancestor} is a file, not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_owner_tag()}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as error:
        raise _fs_error("write", target, error) from None
    return target


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
