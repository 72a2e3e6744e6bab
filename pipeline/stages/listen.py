"""``make listen``: read a board's JSON lines live (its serial port, or a file / FIFO / stdin of them), print each
pick as one readable line and keep it in the formats networks ingest (pipeline/deploy/pick_formats.py) through a
:class:`pipeline.deploy.pick_store.PickStore`: every JSON line in the session's journal at once, the Earthworm
TYPE_PICK_SCNL line appended to ``<out>/<station>.pick_scnl`` at once, the QuakeML (SC3ML, NonLinLoc) of the session
rewritten atomically within about a second and once more at the end, so that Ctrl-C loses nothing. A "retract"
line (the live mode's retraction) marks its pick rejected in the catalogs (left out of NonLinLoc); its Earthworm
line has gone out already and TYPE_PICK_SCNL has no withdrawal, so it is printed for the operator. The device's
error and warn lines are printed; lines that are not JSON (boot noise) are counted; a pick line that cannot be
kept (a NaN time, no uncertainty, ...) is skipped, counted and named, and the session goes on. It stops at the
device's end-of-stream line, after ``listen.max_picks`` picks or ``listen.max_seconds`` seconds (also while the
device is silent), or at Ctrl-C / SIGTERM.

    python -m pipeline listen --set listen.port=/dev/ttyUSB0 listen.station=OK.X34..HH
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.deploy import pick_formats
from pipeline.deploy.pick_store import PickStore
from pipeline.deploy.serial_protocol import is_end_of_stream, is_retraction, json_message
from pipeline.errors import EdgepickError

STDIN_NAMES = ("-", "stdin")  # "-" arrives through --set as YAML's [None]: "stdin" says the same
READ_TIMEOUT_S = 0.2  # a read returns at least this often, so that max_seconds and Ctrl-C are kept while it is silent
BEFORE_2000 = 946684800.0  # a pick time before 2000: the device never had a "#t0"
NAMED_PROBLEMS = 3  # bad lines named in the summary (all are printed as they come, up to PRINTED_PROBLEMS)
PRINTED_PROBLEMS = 20


@dataclasses.dataclass
class Session:
    """What one listening session has seen; its files are its store's."""

    waveform_id: pick_formats.WaveformId
    store: PickStore
    lines: int = 0
    noise_lines: int = 0
    device_errors: int = 0
    retracted: int = 0
    repeated: int = 0  # pick lines of a pick kept already (the same publicID): kept once
    problems: list[str] = dataclasses.field(default_factory=list)  # "line N: why", one per bad line
    warned_clock: bool = False

    @property
    def picks(self) -> list[dict]:
        return self.store.picks


# ---------------------------------------------------------------------------------------------------------------
# The line source: a serial port, or lines from a file, a FIFO or stdin
# ---------------------------------------------------------------------------------------------------------------
def is_line_file(port: str) -> bool:
    """Whether ``port`` is read as a file of lines (stdin, a regular file, a FIFO) rather than a serial port."""
    if port in STDIN_NAMES:
        return True
    try:
        mode = os.stat(port).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISFIFO(mode)


def open_line_file(port: str) -> int:
    """A file descriptor of the lines. A FIFO is opened without waiting for its writer (the wait is in
    :func:`file_lines`, where the time limit and Ctrl-C are kept)."""
    if port in STDIN_NAMES:
        return os.dup(sys.stdin.fileno())
    try:
        return os.open(port, os.O_RDONLY | (os.O_NONBLOCK if stat.S_ISFIFO(os.stat(port).st_mode) else 0))
    except OSError as error:
        raise EdgepickError(f"cannot open {port}: {error.strerror or error}") from None


def file_lines(fd: int) -> Iterator[bytes | None]:
    """The lines of a file descriptor as they arrive; None after each READ_TIMEOUT_S without a whole line (a
    silent writer kept listen.max_seconds waiting for ever, issue 31)."""
    buffer = b""
    while True:
        if not select.select([fd], [], [], READ_TIMEOUT_S)[0]:
            yield None
            continue
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            break
        *lines, buffer = (buffer + chunk).split(b"\n")
        yield from lines if lines else [None]
    if buffer:
        yield buffer


def open_serial(port: str, baud: int):
    import serial

    try:
        return serial.Serial(port, baud, timeout=READ_TIMEOUT_S)
    except (serial.SerialException, OSError, ValueError) as error:
        raise EdgepickError(f"cannot open {port}: {' '.join(str(error).split())}") from None


def serial_lines(device) -> Iterator[bytes | None]:
    """The port's lines as they arrive; None after each read that completed none (for the time limit)."""
    import serial

    buffer = b""
    while True:
        try:
            chunk = device.read(max(1, device.in_waiting))
        except (serial.SerialException, OSError) as error:
            raise EdgepickError(f"reading {device.port} failed: {' '.join(str(error).split())}") from None
        buffer += chunk
        if b"\n" not in buffer:
            yield None
            continue
        *lines, buffer = buffer.split(b"\n")
        yield from lines


class DeviceLines:
    """The device's lines (bytes; None while it is silent) and its port or file, let go of by :meth:`close` also
    when never read."""

    def __init__(self, port: str, baud: int):
        if is_line_file(port):
            fd = open_line_file(port)
            self._lines, self._release = file_lines(fd), lambda: os.close(fd)
        else:
            device = open_serial(port, baud)
            self._lines, self._release = serial_lines(device), device.close

    def __iter__(self) -> Iterator[bytes | None]:
        return self._lines

    def close(self) -> None:
        self._lines.close()
        release, self._release = self._release, lambda: None
        release()


# ---------------------------------------------------------------------------------------------------------------
# One session
# ---------------------------------------------------------------------------------------------------------------
def check_settings(config) -> pick_formats.WaveformId:
    """The station of the session; bad settings are refused before anything is opened."""
    s = config.listen
    if not s.port:
        raise EdgepickError("listen.port is required: the board's serial port (e.g. /dev/ttyUSB0), a file of its "
                            "lines, or stdin")
    if not s.station:
        raise EdgepickError("listen.station is required: NET.STA.LOC.CC, e.g. OK.X34..HH")
    waveform_id = pick_formats.parse_waveform_id(s.station)
    unknown = [f for f in s.formats if f not in pick_formats.FORMATS]
    if unknown or not s.formats:
        problem = f"unknown format {unknown[0]!r}" if unknown else "no format"
        raise EdgepickError(f"listen.formats: {problem}; known: {', '.join(pick_formats.FORMATS)}")
    for name in ("earthworm_installation", "earthworm_module"):
        if not 0 <= getattr(s, name) <= 255:
            raise EdgepickError(f"listen.{name} must lie in 0 ... 255, got {getattr(s, name)}")
    return waveform_id


def open_store(config, waveform_id: pick_formats.WaveformId) -> PickStore:
    """The session's files, claimed now: an output folder that cannot be written is refused before the first line
    is read (it was refused at the first pick, which was lost)."""
    s = config.listen
    return PickStore(s.out, waveform_id, s.formats, s.model, s.agency, s.author, s.earthworm_installation,
                     s.earthworm_module)


def pick_text(pick: dict, session: Session) -> str:
    """One readable line of a pick."""
    from obspy import UTCDateTime

    unc = pick_formats.pick_uncertainty(pick)
    channel = f"{session.waveform_id.station_id()}.{session.waveform_id.channel_for(str(pick['phase']))}"
    return (f"{pick['phase']}  {channel}  {UTCDateTime(float(pick['time']))}  prob {float(pick['prob']):.2f}  "
            f"unc {unc:.3f} s  (Earthworm weight {pick_formats.earthworm_weight(unc)})")


def skip_line(session: Session, problem: str) -> None:
    """Count and name a line that cannot be kept; the session goes on."""
    session.problems.append(f"line {session.lines}: {problem}")
    if len(session.problems) <= PRINTED_PROBLEMS:
        more = "" if len(session.problems) < PRINTED_PROBLEMS else " (further bad lines are only counted)"
        print(f"listen: skipped line {session.lines}: {problem}{more}", file=sys.stderr, flush=True)


def record_pick(pick: dict, session: Session) -> None:
    """Print the pick and keep it in every output format; a bad or repeated pick line is skipped and counted."""
    problem = pick_formats.pick_problem(pick)
    if problem is not None:
        skip_line(session, f"pick {problem}")
        return
    if not session.store.add(pick):
        session.repeated += 1
        print(f"listen: line {session.lines} repeats a pick kept already ({pick['phase']} at {pick['time']}): "
              f"kept once", file=sys.stderr, flush=True)
        return
    if float(pick["time"]) < BEFORE_2000 and not session.warned_clock:
        session.warned_clock = True
        print("listen: warning: the pick times are before 2000: the device was never sent a '#t0 <epoch s>' line",
              file=sys.stderr)
    print(pick_text(pick, session), flush=True)


def record_retraction(message: dict, session: Session) -> None:
    """Mark the pick a "retract" line withdraws (the same phase and sample) rejected."""
    pick = session.store.find(message)
    if pick is None:  # its pick line was lost (or came before this session)
        print(f"listen: warning: a retraction of {message.get('phase')} at sample {message.get('sample')} matches "
              f"no pick of this session", file=sys.stderr)
        return
    if pick_formats.is_retracted(pick):
        return  # the same line again (a replayed log): nothing changes
    session.store.retract(pick, message.get("reported"))
    session.retracted += 1
    note = " (its Earthworm line went out already)" if session.store.earthworm is not None else ""
    print(f"retracted: {pick_text(pick, session)}{note}", flush=True)


def handle_line(line: bytes, session: Session) -> bool:
    """Act on one line of the device; True when the stream ended."""
    message = json_message(line)
    if message is None:
        session.noise_lines += 1
        return False
    session.store.journal(line)
    kind = message.get("type")
    if kind == "pick":
        record_pick(message, session)
    elif is_retraction(message):
        record_retraction(message, session)
    elif kind in ("error", "warn"):
        session.device_errors += kind == "error"
        print(f"device {kind}: {message.get('msg')}", file=sys.stderr, flush=True)
    return is_end_of_stream(message)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def summary(session: Session, reason: str, failure: str | None = None) -> str:
    bad = ""
    if session.problems:
        named = "; ".join(session.problems[:NAMED_PROBLEMS])
        more = f"; {len(session.problems) - NAMED_PROBLEMS} more" if len(session.problems) > NAMED_PROBLEMS else ""
        bad = f", {_count(len(session.problems), 'bad line')} skipped ({named}{more})"
    repeated = f", {_count(session.repeated, 'repeated pick line')} kept once" if session.repeated else ""
    files = session.store.files()
    written = ", ".join(map(str, files)) if session.picks else "nothing (no picks)"
    if failure:
        written = f"not all: {failure}; every line the device sent is in {session.store.journal_path}"
    return (f"listen: {reason}: {len(session.picks)} picks ({session.retracted} retracted), "
            f"{session.device_errors} device errors, {session.noise_lines} non-JSON lines{bad}{repeated}; "
            f"written: {written}")


@contextlib.contextmanager
def deferred_signals():
    """Ctrl-C (SIGINT) and SIGTERM only note themselves (the list yielded), read by the loop between lines: no
    write is cut half-way and the last rewrite holds every pick. Raised in the middle of a rewrite, Ctrl-C left the
    last pick out of SC3ML and a retracted pick in NonLinLoc (issue 31). A signal ignored at start (a background
    job) stays ignored; outside the main thread nothing changes."""
    caught: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, lambda number, _frame: caught.append(signal.Signals(number).name))
    try:
        yield caught
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def read_device(lines: DeviceLines, session: Session, config, caught: list[str]) -> str:
    """Read until the stream ends, a limit or a signal; returns why it stopped."""
    s = config.listen
    started = time.monotonic()
    for line in lines:
        if line is not None:
            session.lines += 1
            if line.strip() and handle_line(line, session):
                return "end of stream"
        if caught:
            return "interrupted" if caught[0] == "SIGINT" else f"interrupted ({caught[0]})"
        if s.max_picks and len(session.picks) >= s.max_picks:
            return f"{s.max_picks} picks"
        if s.max_seconds and time.monotonic() - started >= s.max_seconds:
            return f"{s.max_seconds:g} s"
        session.store.write_when_due()
    return "the device's input ended"


def listen(config) -> Session:
    """Read the device until it ends the stream, a limit is reached or Ctrl-C; returns the session. Whatever ends
    it, the catalogs are rewritten with every pick before it returns (or raises KeyboardInterrupt after Ctrl-C)."""
    s = config.listen
    waveform_id = check_settings(config)
    with deferred_signals() as caught:
        lines = DeviceLines(s.port, s.baud)  # opened now: an unopenable port is refused here
        try:
            session = Session(waveform_id, open_store(config, waveform_id))
        except BaseException:
            lines.close()
            raise
        print(f"listening on {s.port} for {waveform_id} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        reason = "stopped by an error"
        try:
            reason = read_device(lines, session, config, caught)
        finally:
            lines.close()
            finish(session, reason)
    if reason.startswith("interrupted"):
        raise KeyboardInterrupt
    return session


def finish(session: Session, reason: str) -> None:
    """The last rewrite of the catalogs, then the summary, true to what is on disk."""
    try:
        session.store.close()
    except EdgepickError as error:
        print(summary(session, reason, str(error)), file=sys.stderr)
        raise
    print(summary(session, reason), file=sys.stderr)


def run(config) -> Session:
    return listen(config)
