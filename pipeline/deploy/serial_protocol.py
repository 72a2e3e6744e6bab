"""The firmware's serial line protocol, host side (the firmware's own side: lib/edgepick_core/src/ep_line_parser.h
and ep_json.h; documented in docs/firmware.md).

In, one line a sample at the model's rate: ``index z n e``; control lines ``#reset``, ``#t0 <epoch s>``,
``#gap <n>``, ``#end``. Out: JSON lines, ``{"type": "pick", ...}`` (phase, sample, time, prob, fwhm, unc, on,
off, reported) among info / warn / error / timing messages; ``{"type": "retract", "phase", "sample", "time",
"reported"}`` withdraws the live pick of that phase and sample; ``{"type": "info", "msg": "end: ..."}`` closes a
stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import numpy as np


def sample_lines(x, t0: float = 0.0) -> Iterator[str]:
    """The lines that stream samples from time ``t0`` and end the stream: ``x`` is a (3, n) array (Z, N, E) from
    sample 0, or gap-free segments [(first sample index, (3, m) array)] in order; a gap between segments is a jump
    of the sample index, which the firmware takes as that many missing samples."""
    segments = [(0, x)] if isinstance(x, np.ndarray) else x
    yield "#reset\n"
    yield f"#t0 {t0:.6f}\n"
    for first, data in segments:
        for i, (z, n, e) in enumerate(np.asarray(data, dtype=np.float32).T, start=int(first)):
            yield f"{i} {z:.9g} {n:.9g} {e:.9g}\n"
    yield "#end\n"


def json_message(line: str | bytes) -> dict | None:
    """One output line of the firmware as its JSON object; None for anything else (boot noise, a line cut short)."""
    if isinstance(line, bytes):
        line = line.decode(errors="replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def is_end_of_stream(message: dict) -> bool:
    """The summary the firmware prints at ``#end``."""
    return message.get("type") == "info" and str(message.get("msg", "")).startswith("end:")


def parse_pick_lines(lines: Sequence[str]) -> list[dict]:
    """The pick objects among the firmware's JSON output lines (other lines are skipped), sorted by sample, each
    with "retracted": the "reported" sample of the retract line that withdrew it, or None (as
    pipeline.model.picking.live_stream_picks marks them)."""
    messages = [m for m in map(json_message, lines) if m is not None]
    retracted = {(m.get("phase"), m.get("sample")): m.get("reported") for m in messages if is_retraction(m)}
    picks = [dict(m, retracted=retracted.get((m.get("phase"), m.get("sample")))) for m in messages
             if m.get("type") == "pick"]
    return sorted(picks, key=_pick_order)


def _pick_order(pick: dict) -> tuple[int, str]:
    """By sample, then phase; a line without a sample index first (a bad line must not end the sorting)."""
    sample = pick.get("sample")
    return (sample if isinstance(sample, int) and not isinstance(sample, bool) else -1, str(pick.get("phase")))


def is_retraction(message: dict) -> bool:
    """A line withdrawing an earlier live pick (the same phase and sample)."""
    return message.get("type") == "retract"
