"""How ``make listen``'s time grows with a session's picks: the command itself (``python -m pipeline listen``) on a
file of N and of 2N pick lines (P and S in turn, every 7th retracted, every output format), timed net of a session
without picks (the start of Python, obspy and the stage), as picks per second, and the ratio of the time per pick at
2N to that at N: about 1 is linear, about 2 quadratic. Rewriting every catalog after every pick, 455 picks took 35 s
and 909 picks 137 s (issue 31).

    python -m pipeline study listen [--picks 2000] [--repeat 1] [--formats quakeml,sc3ml,nlloc,earthworm]

Wall seconds and the command's CPU seconds are both printed: on a shared machine the CPU seconds are steadier.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.errors import EdgepickError, run_script

REPO = Path(__file__).resolve().parents[2]
STATION = "OK.X34..HH"
T0 = 1620284889.0


def board_lines(n: int) -> str:
    """``n`` firmware pick lines, every 7th withdrawn by a retract line, and the end-of-stream summary."""
    lines = ['{"type":"info","msg":"ready"}']
    for k in range(n):
        sample = 1000 + 250 * k
        pick = {"type": "pick", "phase": "PS"[k % 2], "sample": sample, "time": round(T0 + sample / 100.0, 6),
                "prob": 0.8, "fwhm": 24, "unc": 0.1, "on": sample - 5, "off": sample + 5}
        lines.append(json.dumps(pick))
        if k % 7 == 6:
            lines.append(json.dumps({"type": "retract", "phase": pick["phase"], "sample": sample,
                                     "time": pick["time"], "reported": sample + 600}))
    lines.append('{"type":"info","msg":"end: study"}')
    return "\n".join(lines) + "\n"


def timed_session(n: int, folder: Path, formats: str) -> tuple[float, float]:
    """(wall s, CPU s) of one listen session on ``n`` pick lines."""
    source = folder / f"board_{n}.jsonl"
    source.write_text(board_lines(n))
    out = folder / f"out_{n}_{time.monotonic_ns()}"
    command = [sys.executable, "-m", "pipeline", "listen", "--set", f"listen.port={source}", "--set",
               f"listen.station={STATION}", "--set", f"listen.out={out}", "--set", f"listen.formats={formats}"]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0 or f"end of stream: {n} picks" not in result.stderr:
        raise EdgepickError(f"listen on {n} picks failed: {result.stderr.strip().splitlines()[-1:]}")
    return wall, (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)


def best(n: int, folder: Path, formats: str, repeat: int) -> tuple[float, float]:
    """The fastest of ``repeat`` sessions (wall, CPU)."""
    runs = [timed_session(n, folder, formats) for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study listen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--picks", type=int, default=2000, help="N: sessions of 0, N and 2N picks are timed")
    parser.add_argument("--repeat", type=int, default=1, help="the fastest of this many sessions of each size")
    parser.add_argument("--formats", default="quakeml,sc3ml,nlloc,earthworm")
    args = parser.parse_args(argv)
    if args.picks < 1 or args.repeat < 1:
        raise EdgepickError("--picks and --repeat must be at least 1")
    with tempfile.TemporaryDirectory(prefix="edgepick-listen-study-") as tmp:
        folder = Path(tmp)
        base = best(0, folder, args.formats, args.repeat)
        times = {n: best(n, folder, args.formats, args.repeat) for n in (args.picks, 2 * args.picks)}
    print(f"make listen, formats {args.formats}; a session without picks: {base[0]:.2f} s wall, {base[1]:.2f} s CPU")
    per_pick = {}
    for n, (wall, cpu) in times.items():
        net = (wall - base[0], cpu - base[1])
        per_pick[n] = tuple(t / n for t in net)
        rates = [f"{t:6.2f} s net: {n / t:5.0f} picks/s" if t > 0 else f"{t:6.2f} s net" for t in net]
        print(f"{n:6d} picks: {wall:7.2f} s wall ({rates[0]}), {cpu:7.2f} s CPU ({rates[1]})")
    small, large = per_pick[args.picks], per_pick[2 * args.picks]
    ratios = [f"{b / a:.2f}" if a > 0 and b > 0 else "n/a (too few picks to time)" for a, b in zip(small, large)]
    print(f"time per pick at {2 * args.picks} / at {args.picks} picks: {ratios[0]} wall, {ratios[1]} CPU "
          f"(1: linear, 2: quadratic)")


if __name__ == "__main__":
    run_script(main, name="study listen")
