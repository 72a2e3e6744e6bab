#!/usr/bin/env python3
"""Stream a miniSEED file or a dataset trace to an edgepick device over a serial port and collect its picks.

    python -m pipeline replay --port /dev/ttyUSB0 --mseed day.mseed [--station OK.X34] [--speed 1]
    python -m pipeline replay --port /dev/ttyUSB0 --dataset data/synthetic --trace 17 [--out picks.jsonl]
    python -m pipeline replay --port /dev/ttyUSB0 --mseed day.mseed --quakeml picks.xml --earthworm picks.pick_scnl

The device speaks the line protocol of firmware/lib/edgepick_core/src/ep_line_parser.h: this script sends
"#reset", "#t0 <epoch>", one "index z n e" line per 100 Hz sample and "#end", and reads the JSON lines the
device prints (picks, info/warn/error messages, timings) until the end-of-stream summary. Picks are printed as
JSON lines (or written to --out) with their absolute time. To check them against the Python reference of the
firmware, run ``pipeline.model.picking.stream_picks`` with the student's pick rule on the same samples
(tests/test_firmware_stream.py does so against the host build of the firmware's core). --quakeml and --earthworm also
write them as QuakeML and Earthworm TYPE_PICK_SCNL lines (pipeline/deploy/pick_formats.py) for the station of the
miniSEED file (or --waveform-id NET.STA.LOC.CHA, which a dataset trace needs). Every output is checked writable
before the replay and written atomically; a device that stops answering before its summary (reset, unplugged,
--timeout) still has what it sent written, one line saying the summary is missing, exit code 2: an hours-long
replay lost every pick that way (issue 31).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from pipeline.artifacts import atomic_write_text, check_writable
from pipeline.data import waveforms
from pipeline.data.datasets import open_dataset
from pipeline.deploy import pick_formats
from pipeline.deploy.serial_protocol import is_end_of_stream, parse_pick_lines, sample_lines
from pipeline.errors import EdgepickError

SAMPLING_RATE = 100.0


# ---------------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------------
def load_mseed(path: str, station: str | None = None,
               sampling_rate: float = SAMPLING_RATE) -> tuple[list[tuple[int, np.ndarray]], float]:
    """One station of a miniSEED file as gap-free segments (:func:`pipeline.data.waveforms.station_segments`)."""
    return waveforms.station_segments(path, station, sampling_rate)


def mseed_waveform_id(path: str, station: str | None = None) -> pick_formats.WaveformId:
    """The station of a miniSEED file (or pattern) as its picks are named: the network, station, location and
    channel codes of its vertical channel (``station``: NET.STA, as :func:`load_mseed` takes it)."""
    import glob

    unreadable: dict[str, str] = {}
    stream = waveforms.read_files(sorted(glob.glob(str(path))) or [str(path)], unreadable, headonly=True)
    waveforms.refuse_unreadable(unreadable)  # an unreadable file is named as such, not as one without traces
    if station:
        parts = station.split(".")
        stream = stream.select(network=parts[0], station=parts[1]) if len(parts) > 1 else stream.select(station=parts[0])
    traces = sorted(stream, key=lambda t: (not t.stats.channel.endswith("Z"), t.id))
    if not traces:
        raise EdgepickError(f"{path}: no traces to name the picks' station by; give --waveform-id NET.STA.LOC.CHA")
    stats = traces[0].stats
    return pick_formats.parse_waveform_id(f"{stats.network}.{stats.station}.{stats.location}.{stats.channel}")


def picks_waveform_id(args) -> pick_formats.WaveformId:
    """The station the picks are written for: --waveform-id, else the miniSEED file's."""
    if args.waveform_id:
        return pick_formats.parse_waveform_id(args.waveform_id)
    if args.mseed:
        return mseed_waveform_id(args.mseed, args.station)
    raise EdgepickError("--quakeml / --earthworm need the station of a dataset trace: --waveform-id NET.STA.LOC.CHA")


def write_network_formats(picks: list[dict], waveform_id: pick_formats.WaveformId, args) -> list[Path]:
    """The picks as QuakeML (--quakeml) and Earthworm TYPE_PICK_SCNL lines (--earthworm)."""
    paths = {fmt: path for fmt, path in (("quakeml", args.quakeml), ("earthworm", args.earthworm)) if path}
    return pick_formats.write_picks(picks, waveform_id, paths, agency=args.agency)


def load_dataset_trace(path: str, index: int) -> tuple[np.ndarray, float]:
    """Trace ``index`` of a SeisBench-format dataset folder (metadata.csv + waveforms.hdf5) as (3, n) ZNE."""
    dataset = open_dataset(path, SAMPLING_RATE, component_order="ZNE")
    if not 0 <= index < len(dataset):
        raise EdgepickError(f"trace {index} is outside the dataset ({len(dataset)} traces)")
    waveform = np.asarray(dataset.get_waveforms(index), dtype=np.float32)
    return waveform, 0.0


# ---------------------------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------------------------
# What a read of a port that fails or was closed under it raises: pyserial's SerialException is an OSError; a port
# closed during a read gave "'NoneType' object cannot be interpreted as an integer" (a TypeError) in the thread.
PORT_ERRORS = (OSError, TypeError, ValueError, AttributeError)


class _Reader(threading.Thread):
    """Collects the device's JSON lines (non-JSON boot noise is kept aside) until told to stop; ``finished`` is set
    at the device's end-of-stream summary or when reading the port failed (``failure`` says how)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.messages: list[dict] = []
        self.noise: list[str] = []
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.stop = threading.Event()
        self.failure: str | None = None
        self._buffer = b""

    def _read(self) -> bytes:
        if hasattr(self.port, "in_waiting"):  # pyserial: b"" after its read timeout
            return self.port.read(max(1, self.port.in_waiting))
        chunk = self.port.read(4096)  # a file object (a pseudo-terminal in the tests): b"" at its end
        if not chunk:
            raise EOFError("the port was closed")
        return chunk

    def run(self):
        try:
            while not self.stop.is_set():
                try:
                    chunk = self._read()
                except (*PORT_ERRORS, EOFError) as error:
                    if not self.stop.is_set():
                        self.failure = f"reading the port failed: {' '.join(str(error).split())}; reset or unplugged?"
                    return
                if chunk:
                    self._take(chunk)
        finally:
            self.finished.set()

    def _take(self, chunk: bytes) -> None:
        self._buffer += chunk
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                self.noise.append(line)
                continue
            if not isinstance(obj, dict):
                continue
            self.messages.append(obj)
            msg = str(obj.get("msg", ""))
            if obj.get("type") == "info" and msg.startswith("ready"):
                self.ready.set()
            if is_end_of_stream(obj):
                self.finished.set()


@dataclasses.dataclass
class Received:
    """What the device sent; ``problem`` says why the stream ended without its summary (None: it had one)."""

    messages: list[dict]
    problem: str | None = None
    interrupted: bool = False

    def picks(self) -> list[dict]:
        """The pick lines, sorted by sample, each with "retracted" (serial_protocol.parse_pick_lines)."""
        return parse_pick_lines([json.dumps(m) for m in self.messages])


def send_samples(port, x, t0: float, speed: float | None, reader: _Reader) -> str | None:
    """Write the stream's lines to the port; why it stopped early (None: every line went out)."""
    started = time.monotonic()
    k = 0
    try:
        for k, line in enumerate(sample_lines(x, t0)):
            if reader.failure:
                return reader.failure
            port.write(line.encode())
            if speed and k % 10 == 0:
                ahead = (k / SAMPLING_RATE) / speed - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if hasattr(port, "flush"):
            port.flush()
    except PORT_ERRORS as error:
        return f"writing to the port failed after {k} lines: {' '.join(str(error).split())}; reset or unplugged?"
    return None


def stream(port, x, t0: float = 0.0, speed: float | None = None, timeout: float = 120.0,
           wait_ready: float = 10.0) -> Received:
    """Send ``x`` (a (3, n) array, or gap-free segments as :func:`pipeline.deploy.serial_protocol.sample_lines` takes
    them) to ``port`` (pyserial Serial or a binary file object) and keep every JSON line the device sends, whatever
    ends it: its summary, ``timeout`` seconds after the last sample without one, a port that fails, Ctrl-C. The
    reader stops before this returns, so the caller may close the port (closed under a read, it raised in the
    thread)."""
    reader = _Reader(port)
    reader.start()
    received = Received(reader.messages)
    try:
        deadline = time.monotonic() + wait_ready  # a device already running prints nothing: go on after the wait
        while not reader.ready.is_set() and not reader.finished.is_set() and time.monotonic() < deadline:
            reader.ready.wait(0.1)
        received.problem = send_samples(port, x, t0, speed, reader)
        if received.problem is None and not reader.finished.wait(timeout):
            received.problem = f"none within {timeout:g} s of the last sample"
        received.problem = received.problem or reader.failure
    except KeyboardInterrupt:
        received.problem, received.interrupted = "interrupted", True
    finally:
        reader.stop.set()
        reader.join(2.0)
    return received


def replay_array(port, x, t0: float = 0.0, speed: float | None = None, timeout: float = 120.0,
                 wait_ready: float = 10.0) -> tuple[list[dict], list[dict]]:
    """:func:`stream`, then (picks sorted by sample, every JSON message); a stream without the device's summary is
    refused (``python -m pipeline replay`` keeps what came instead)."""
    received = stream(port, x, t0, speed, timeout, wait_ready)
    if received.interrupted:
        raise KeyboardInterrupt
    if received.problem:
        raise EdgepickError(f"no end-of-stream summary from the device ({received.problem}; "
                            f"{len(received.messages)} JSON lines received)")
    return received.picks(), received.messages


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="python -m pipeline replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", required=True, help="serial port of the device, e.g. /dev/ttyUSB0")
    parser.add_argument("--baud", type=int, default=115200)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mseed", help="miniSEED file (three components of one station)")
    source.add_argument("--dataset", help="SeisBench-format dataset folder")
    parser.add_argument("--trace", type=int, default=0, help="trace index in --dataset")
    parser.add_argument("--station", help="NET.STA to take from a multi-station miniSEED file")
    parser.add_argument("--speed", type=float, default=1.0, help="times real time (0: as fast as the port goes)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the device after the last sample")
    parser.add_argument("--out", help="write the picks here as JSON lines (default: stdout)")
    parser.add_argument("--log", help="write every JSON line of the device here")
    parser.add_argument("--quakeml", help="also write the picks here as QuakeML")
    parser.add_argument("--earthworm", help="also write the picks here as Earthworm TYPE_PICK_SCNL lines")
    parser.add_argument("--waveform-id", help="NET.STA.LOC.CHA the picks are named by (default: the miniSEED "
                                              "file's vertical channel), e.g. OK.X34..HHZ")
    parser.add_argument("--agency", default="", help="agency id of the picks' creation info")
    return parser.parse_args(argv)


def write_received(received: Received, waveform_id, args) -> list[str]:
    """Every output of what the device sent, written atomically (complete or absent); returns what was written.
    Pick lines that cannot be written (pick_formats.pick_problem) or repeat a pick are left out, each named."""
    for m in received.messages:
        if m.get("type") in ("error", "warn"):
            print(f"device {m['type']}: {m.get('msg')}", file=sys.stderr)
    picks, problems = pick_formats.kept_picks(received.picks())
    for problem in problems:
        print(f"replay: skipped the {problem}", file=sys.stderr)
    written = []
    if args.log:
        atomic_write_text(args.log, "".join(json.dumps(m) + "\n" for m in received.messages))
        written.append(args.log)
    text = "".join(json.dumps(p) + "\n" for p in picks)
    if args.out:
        atomic_write_text(args.out, text)
        written.append(args.out)
    else:
        sys.stdout.write(text)
    network = [str(p) for p in write_network_formats(picks, waveform_id, args)] if waveform_id is not None else []
    retracted = sum(p["retracted"] is not None for p in picks)
    what = f"{len(picks)} picks ({retracted} retracted by the device: rejected in QuakeML, left out of Earthworm)"
    if received.problem is None:
        for path in network:
            print(f"wrote {path}", file=sys.stderr)
        print(what, file=sys.stderr)
        return written + network
    written += network
    where = ", ".join([*written, *([] if args.out else ["stdout"])])
    why = "interrupted" if received.interrupted else \
        f"error: no end-of-stream summary from the device ({received.problem})"
    print(f"replay: {why}; kept what it sent: {what} and {len(received.messages)} JSON lines, written to {where}",
          file=sys.stderr)
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import serial

        for path in (args.out, args.log, args.quakeml, args.earthworm):
            if path:  # refused now, not after the replay
                check_writable(path)
        waveform_id = picks_waveform_id(args) if args.quakeml or args.earthworm else None
        x, t0 = load_mseed(args.mseed, args.station) if args.mseed else load_dataset_trace(args.dataset, args.trace)
        try:
            port = serial.Serial(args.port, args.baud, timeout=0.2)
        except (serial.SerialException, OSError) as error:
            raise EdgepickError(f"cannot open {args.port}: {error}") from error
        with port:
            n = sum(data.shape[1] for _, data in x) if isinstance(x, list) else x.shape[1]
            print(f"replaying {n} samples ({n / SAMPLING_RATE:.1f} s) to {args.port}", file=sys.stderr)
            received = stream(port, x, t0, speed=args.speed or None, timeout=args.timeout)
        write_received(received, waveform_id, args)
    except EdgepickError as error:
        print(f"replay: error: {error}", file=sys.stderr)
        return 2
    if received.problem is not None:
        return 130 if received.interrupted else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
