"""``make listen``: read a board's JSON lines live (its serial port, or a file / FIFO / stdin of them), print each
pick as one readable line and keep it in the formats networks ingest (pipeline/deploy/pick_formats.py): the Earthworm
TYPE_PICK_SCNL line is appended to ``<out>/<station>.pick_scnl`` and the QuakeML (SC3ML, NonLinLoc) of the session
rewritten atomically after every pick, so that Ctrl-C loses nothing. A "retract" line (the live mode's retraction)
marks its pick rejected in the catalogs (left out of NonLinLoc); its Earthworm line has gone out already and
TYPE_PICK_SCNL has no withdrawal, so it is printed for the operator. The device's error and warn lines are
printed; lines that are not JSON (boot noise) are counted. It stops at the device's end-of-stream line, after
``listen.max_picks`` picks or ``listen.max_seconds`` seconds, or at Ctrl-C.

    python -m pipeline listen --set listen.port=/dev/ttyUSB0 listen.station=OK.X34..HH
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.deploy import pick_formats
from pipeline.errors import EdgepickError
from pipeline.deploy.serial_protocol import is_end_of_stream, is_retraction, json_message

STDIN_NAMES = ("-", "stdin")  # "-" arrives through --set as YAML's [None]: "stdin" says the same
READ_TIMEOUT_S = 0.2  # a serial read returns at least this often, so that max_seconds is kept
BEFORE_2000 = 946684800.0  # a pick time before 2000: the device never had a "#t0"


@dataclasses.dataclass
class Session:
    """What one listening session has seen and where it writes."""

    waveform_id: pick_formats.WaveformId
    catalog_paths: dict[str, Path]
    earthworm_path: Path | None
    next_sequence: int = 1
    picks: list[dict] = dataclasses.field(default_factory=list)
    noise_lines: int = 0
    device_errors: int = 0
    retracted: int = 0
    warned_clock: bool = False


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


def open_line_file(port: str):
    if port in STDIN_NAMES:
        return sys.stdin.buffer
    try:
        return open(port, "rb")
    except OSError as error:
        raise EdgepickError(f"cannot open {port}: {error.strerror or error}") from None


def file_lines(handle) -> Iterator[bytes]:
    try:
        yield from handle
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


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
    with device:
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


def device_lines(port: str, baud: int) -> Iterator[bytes | None]:
    """The device's lines, its port or file opened now (an unopenable one is refused here)."""
    if is_line_file(port):
        return file_lines(open_line_file(port))
    return serial_lines(open_serial(port, baud))


# ---------------------------------------------------------------------------------------------------------------
# One session
# ---------------------------------------------------------------------------------------------------------------
def open_session(config) -> Session:
    """The station and the output files of a session, from the listen section; bad settings are refused."""
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
    out = Path(s.out)
    name = str(waveform_id)
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    catalog_paths = {f: out / f"{name}_{started}{pick_formats.CATALOG_FORMATS[f][1]}"
                     for f in s.formats if f in pick_formats.CATALOG_FORMATS}
    earthworm = out / f"{name}{pick_formats.EARTHWORM_SUFFIX}" if "earthworm" in s.formats else None
    session = Session(waveform_id, catalog_paths, earthworm)
    if earthworm is not None:
        session.next_sequence = pick_formats.next_earthworm_sequence(earthworm)
    return session


def pick_text(pick: dict, session: Session) -> str:
    """One readable line of a pick."""
    from obspy import UTCDateTime

    unc = pick_formats.pick_uncertainty(pick)
    channel = f"{session.waveform_id.station_id()}.{session.waveform_id.channel_for(str(pick['phase']))}"
    return (f"{pick['phase']}  {channel}  {UTCDateTime(float(pick['time']))}  prob {float(pick['prob']):.2f}  "
            f"unc {unc:.3f} s  (Earthworm weight {pick_formats.earthworm_weight(unc)})")


def append_earthworm(pick: dict, session: Session, config) -> None:
    line = pick_formats.earthworm_line(pick, session.waveform_id, session.next_sequence,
                                       config.listen.earthworm_installation, config.listen.earthworm_module)
    try:
        session.earthworm_path.parent.mkdir(parents=True, exist_ok=True)
        with open(session.earthworm_path, "a") as handle:
            handle.write(line)
    except OSError as error:
        raise EdgepickError(f"cannot write {session.earthworm_path}: {error.strerror or error}") from None
    session.next_sequence = (session.next_sequence + 1) % (pick_formats.EARTHWORM_MAX_SEQUENCE + 1)


def rewrite_catalogs(session: Session, config) -> None:
    if not session.catalog_paths:
        return
    s = config.listen
    catalog = pick_formats.picks_catalog(session.picks, session.waveform_id, s.model, s.agency, s.author)
    for fmt, path in session.catalog_paths.items():
        pick_formats.write_catalog(catalog, path, fmt)


def record_pick(pick: dict, session: Session, config) -> None:
    """Print the pick and keep it in every output format."""
    try:
        float(pick["time"]), float(pick["prob"]), str(pick["phase"])
    except (KeyError, TypeError, ValueError):
        session.noise_lines += 1  # a pick line without its fields is as good as noise
        return
    if float(pick["time"]) < BEFORE_2000 and not session.warned_clock:
        session.warned_clock = True
        print("listen: warning: the pick times are before 2000: the device was never sent a '#t0 <epoch s>' line",
              file=sys.stderr)
    session.picks.append(pick)
    print(pick_text(pick, session), flush=True)
    if session.earthworm_path is not None:
        append_earthworm(pick, session, config)
    rewrite_catalogs(session, config)


def record_retraction(message: dict, session: Session, config) -> None:
    """Mark the pick a "retract" line withdraws (the same phase and sample) rejected and rewrite the catalogs."""
    key = (message.get("phase"), message.get("sample"))
    pick = next((p for p in reversed(session.picks) if (p.get("phase"), p.get("sample")) == key), None)
    if pick is None:  # its pick line was lost (or came before this session)
        print(f"listen: warning: a retraction of {key[0]} at sample {key[1]} matches no pick of this session",
              file=sys.stderr)
        return
    if pick_formats.is_retracted(pick):
        return  # the same line again (a replayed log): nothing changes
    pick["retracted"] = message.get("reported", -1)
    session.retracted += 1
    note = " (its Earthworm line went out already)" if session.earthworm_path is not None else ""
    print(f"retracted: {pick_text(pick, session)}{note}", flush=True)
    rewrite_catalogs(session, config)


def handle_message(message: dict, session: Session, config) -> bool:
    """Act on one JSON line; True when the stream ended."""
    kind = message.get("type")
    if kind == "pick":
        record_pick(message, session, config)
    elif is_retraction(message):
        record_retraction(message, session, config)
    elif kind in ("error", "warn"):
        session.device_errors += kind == "error"
        print(f"device {kind}: {message.get('msg')}", file=sys.stderr, flush=True)
    return is_end_of_stream(message)


def summary(session: Session, reason: str) -> str:
    files = [*session.catalog_paths.values(), *([session.earthworm_path] if session.earthworm_path else [])]
    written = ", ".join(str(p) for p in files) if session.picks else "nothing (no picks)"
    return (f"listen: {reason}: {len(session.picks)} picks ({session.retracted} retracted), "
            f"{session.device_errors} device errors, {session.noise_lines} non-JSON lines; written: {written}")


def listen(config) -> Session:
    """Read the device until it ends the stream, a limit is reached or Ctrl-C; returns the session."""
    s = config.listen
    session = open_session(config)
    lines = device_lines(s.port, s.baud)
    started = time.monotonic()
    reason = "the device's input ended"
    print(f"listening on {s.port} for {session.waveform_id} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        for line in lines:
            if line is not None and line.strip():
                message = json_message(line)
                if message is None:
                    session.noise_lines += 1
                elif handle_message(message, session, config):
                    reason = "end of stream"
                    break
            if s.max_picks and len(session.picks) >= s.max_picks:
                reason = f"{s.max_picks} picks"
                break
            if s.max_seconds and time.monotonic() - started >= s.max_seconds:
                reason = f"{s.max_seconds:g} s"
                break
    except KeyboardInterrupt:
        print(summary(session, "interrupted"), file=sys.stderr)
        raise
    finally:
        lines.close()
    print(summary(session, reason), file=sys.stderr)
    return session


def run(config) -> Session:
    return listen(config)
