"""One live session's picks, kept so that nothing a board sent is lost and a day of picks stays linear in time
(``make listen``, pipeline/stages/listen.py):

- the journal, ``<stem>.jsonl``: every JSON line of the device as it came, appended and flushed at once. It is the
  session's record: ``listen.port=<journal>`` reads it again, so the catalogs of a session killed with ``kill -9``
  are rebuilt from it;
- the catalogs (QuakeML, SC3ML, NonLinLoc), written whole by obspy's writers and atomically: at most every
  :data:`REWRITE_INTERVAL_S`, never more than :data:`REWRITE_SHARE` of the session's time, and once more at the
  end (end of stream, a limit, Ctrl-C). Rewritten after every pick, a session was quadratic: 455 picks 35 s, 909
  picks 137 s (issue 31);
- the Earthworm TYPE_PICK_SCNL lines, appended to ``<station>.pick_scnl`` at once and numbered as pick_ew numbers
  its picks (:class:`EarthwormLog`).

A session is named ``<station>_<UTC start second>``, with ``-2``, ``-3`` ... after it when another session of the
station started in the same second: the journal is created exclusively, so two sessions never share a name (they
overwrote each other's catalog, issue 31).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import time
from pathlib import Path

from pipeline.artifacts import check_writable
from pipeline.deploy import pick_formats
from pipeline.errors import EdgepickError

JOURNAL_SUFFIX = ".jsonl"
REWRITE_INTERVAL_S = 1.0  # a pick reaches the catalogs within about this (the journal and Earthworm at once) ...
REWRITE_SHARE = 0.1  # ... or later, when rewriting them would take more than this share of the session's time


def _cannot_write(path: Path, error: OSError) -> EdgepickError:
    return EdgepickError(f"cannot write {path}: {error.strerror or error}")


def claim_stem(out: Path, name: str, suffixes: list[str]):
    """(stem, journal opened for appending): the first ``<name>_<start>[-k]`` whose journal this process created
    (O_EXCL: of two sessions started together each gets its own) and whose other files are not there yet. An
    output folder that cannot be written is refused here, before the first line is read."""
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    check_writable(out / f"{name}_{started}{JOURNAL_SUFFIX}")
    for k in itertools.count(1):
        stem = f"{name}_{started}" + (f"-{k}" if k > 1 else "")
        if any((out / (stem + suffix)).exists() for suffix in suffixes):
            continue
        try:
            fd = os.open(out / (stem + JOURNAL_SUFFIX), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
        except FileExistsError:
            continue
        except OSError as error:
            raise _cannot_write(out / (stem + JOURNAL_SUFFIX), error) from None
        return stem, os.fdopen(fd, "ab")
    raise AssertionError("unreachable")


class EarthwormLog:
    """TYPE_PICK_SCNL lines appended to one station's file, numbered by pick_ew's pick index. pick_ew keeps one
    counter per module id in ``pick_ew_<module>.ndx`` (index.c), read at start, written after each pick: Earthworm
    tells picks apart by (installation, module, index). Here the counter is ``edgepick_<inst>_<module>.ndx`` in the
    output folder, read, incremented and written under an exclusive lock for every pick, so sessions with the same
    ids (two of one station started together, or two stations) never give two picks one index; with no counter
    yet it goes on from the station file's last line. The index is written before its line: a kill in between
    skips an index, never repeats one."""

    def __init__(self, path: Path, folder: Path, installation: int, module: int):
        self.path, self.installation, self.module = path, installation, module
        self.index_path = folder / f"edgepick_{installation:03d}_{module:03d}.ndx"
        for file in (self.index_path, path):  # refused now; opened at the first pick (no empty files without one)
            if file.exists() and not (file.is_file() and os.access(file, os.W_OK)):
                raise EdgepickError(f"cannot write {file}: {'not a file' if not file.is_file() else 'read-only'}")
        self._index = self._lines = None

    def _open(self) -> None:
        try:
            self._index = open(self.index_path, "a+b")
            self._lines = open(self.path, "ab")
        except OSError as error:
            raise _cannot_write(self.path if self._index else self.index_path, error) from None

    def _next_index(self) -> int:
        self._index.seek(0)
        text = self._index.read().strip()
        last = int(text) if text.isdigit() else pick_formats.last_earthworm_sequence(self.path)
        return ((last or 0) + 1) % (pick_formats.EARTHWORM_MAX_SEQUENCE + 1)

    def append(self, pick: dict, waveform_id: pick_formats.WaveformId) -> int:
        """Write the pick's line under the next index; returns the index."""
        if self._lines is None:
            self._open()
        try:
            fcntl.flock(self._index, fcntl.LOCK_EX)
            try:
                index = self._next_index()
                line = pick_formats.earthworm_line(pick, waveform_id, index, self.installation, self.module)
                self._index.truncate(0)
                self._index.write(f"{index:4d}\n".encode())
                self._index.flush()
                self._lines.write(line.encode())
                self._lines.flush()
            finally:
                fcntl.flock(self._index, fcntl.LOCK_UN)
        except OSError as error:
            raise _cannot_write(self.path, error) from None
        return index

    def close(self) -> None:
        for handle in (self._lines, self._index):
            if handle is not None:
                handle.close()


class PickStore:
    """The files of one session of one station (see the module's docstring) and the picks kept in them."""

    def __init__(self, out: str | Path, waveform_id: pick_formats.WaveformId, formats, model: str = "student",
                 agency: str = "", author: str = "edgepick",
                 installation: int = pick_formats.EARTHWORM_INSTALLATION, module: int = pick_formats.EARTHWORM_MODULE):
        out = Path(out)
        self.waveform_id, self.model, self.agency, self.author = waveform_id, model, agency, author
        catalog_formats = [f for f in formats if f in pick_formats.CATALOG_FORMATS]
        suffixes = [pick_formats.CATALOG_FORMATS[f][1] for f in catalog_formats]
        self.stem, self._journal = claim_stem(out, str(waveform_id), suffixes)
        self.journal_path = out / (self.stem + JOURNAL_SUFFIX)
        self.catalog_paths = {f: out / (self.stem + pick_formats.CATALOG_FORMATS[f][1]) for f in catalog_formats}
        self.earthworm = None
        if "earthworm" in formats:
            try:
                self.earthworm = EarthwormLog(out / f"{waveform_id}{pick_formats.EARTHWORM_SUFFIX}", out,
                                              installation, module)
            except EdgepickError:
                self._journal.close()
                self.journal_path.unlink()
                raise
        self.picks: list[dict] = []
        self._ids: set[tuple[str, str]] = set()
        self._by_sample: dict[tuple, dict] = {}
        self._unwritten = False  # picks or retractions the catalogs do not hold yet
        self._due = 0.0  # time.monotonic() from which the catalogs may be rewritten
        self.journaled = 0

    # ------------------------------------------------------------------------------------------ what comes in
    def journal(self, line: bytes) -> None:
        """Keep one line of the device as it came."""
        try:
            self._journal.write(line.rstrip(b"\r\n") + b"\n")
            self._journal.flush()
        except OSError as error:
            raise _cannot_write(self.journal_path, error) from None
        self.journaled += 1

    def add(self, pick: dict) -> bool:
        """Keep a pick (checked by :func:`pipeline.deploy.pick_formats.pick_problem`) in every format; False when
        it is one already kept (the same publicID: the same line sent again), which is then left alone."""
        key = pick_formats.pick_key(pick)
        if key in self._ids:
            return False
        self._ids.add(key)
        self.picks.append(pick)
        self._by_sample[(pick["phase"], pick.get("sample"))] = pick
        if self.earthworm is not None:
            self.earthworm.append(pick, self.waveform_id)
        self._unwritten = True
        return True

    def find(self, message: dict) -> dict | None:
        """The pick a "retract" line withdraws: the last kept of its phase and sample (None: none)."""
        try:
            return self._by_sample.get((message.get("phase"), message.get("sample")))
        except TypeError:  # a list or an object as phase or sample: no pick's
            return None

    def retract(self, pick: dict, reported) -> None:
        """Mark a kept pick rejected (its Earthworm line has gone out already: TYPE_PICK_SCNL has no withdrawal)."""
        pick["retracted"] = -1 if reported is None else reported
        self._unwritten = True

    # ---------------------------------------------------------------------------------------- the catalogs
    def write_catalogs(self) -> None:
        """Every catalog rewritten from every pick, atomically; the next rewrite waits until the time spent on this
        one is at most :data:`REWRITE_SHARE` of the time since, so a long session stays linear."""
        started = time.monotonic()
        if self.catalog_paths and self.picks:
            catalog = pick_formats.picks_catalog(self.picks, self.waveform_id, self.model, self.agency, self.author)
            for fmt, path in self.catalog_paths.items():
                pick_formats.write_catalog(catalog, path, fmt)
        self._unwritten = False
        took = time.monotonic() - started
        self._due = time.monotonic() + max(REWRITE_INTERVAL_S, took * (1.0 - REWRITE_SHARE) / REWRITE_SHARE)

    def write_when_due(self) -> None:
        if self._unwritten and time.monotonic() >= self._due:
            self.write_catalogs()

    def files(self) -> list[Path]:
        """What the session has written: the catalogs (once it kept a pick), the Earthworm file, the journal."""
        catalogs = list(self.catalog_paths.values()) if self.picks else []
        earthworm = [self.earthworm.path] if self.earthworm is not None and self.picks else []
        return [*catalogs, *earthworm, *([self.journal_path] if self.journaled else [])]

    def close(self) -> None:
        """The last rewrite (every pick and retraction), then the files closed; an empty journal is removed."""
        try:
            if self._unwritten:
                self.write_catalogs()
        finally:
            self._journal.close()
            if self.earthworm is not None:
                self.earthworm.close()
            if not self.journaled:
                self.journal_path.unlink(missing_ok=True)
