"""The firmware stages (``make firmware`` / ``make flash`` / ``make monitor``) and the Python references of the
firmware's streaming picker.

Stages: ``python -m pipeline.flash build|flash|monitor [--config FILE] [--set section.key=value ...]``.
``build`` checks the memory budget of the generated model first (``firmware/src/model/model_config.h``, written by
the quantize stage), then runs ``pio run -e <env>`` in ``firmware/``; ``flash`` adds ``-t upload``; ``monitor``
runs ``pio device monitor``. A missing PlatformIO, a missing ESP32 platform (PlatformIO cannot download it
offline) or a missing board is reported in one line.

References (used by tests/test_firmware.py and reusable by the benchmark):

* :func:`reference_picks` mirrors ``seisbench.models.WaveformModel.picks_from_annotations`` exactly (it calls the
  same ``obspy.signal.trigger.trigger_onset(curve, threshold, threshold / 2)`` and takes the first maximum inside
  each [on, off]), on probability curves given as arrays instead of obspy annotation streams. The student's
  ``classify_aggregate`` calls that SeisBench function per phase (noise is not picked).
* :func:`window_offsets` and :func:`stack_windows` mirror SeisBench's window cutting (``_cut_fragments_array``:
  offsets every ``in_samples - overlap`` plus one last window ending at the last sample) and its ``avg`` stacking
  (nanmean over the windows covering a sample, blinded samples are NaN).
* :func:`stream_reference` chains them with the student's normalisation: what the firmware computes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pipeline.errors import EdgepickError
from pipeline.student import PICK_TOP_TOLERANCE

FIRMWARE_DIR = Path(__file__).resolve().parents[1] / "firmware"
MODEL_CONFIG = FIRMWARE_DIR / "src" / "model" / "model_config.h"
PHASES = "PS"

# board name (config.board.name / pipeline.boards) -> PlatformIO environment in firmware/platformio.ini
PIO_ENVS = {
    "esp32": "esp32",
    "esp32-nopsram": "esp32",
    "esp32-psram2": "esp32-wrover",
    "esp32-psram4": "esp32-wrover",
    "esp32-wrover": "esp32-wrover",
    "esp32s3-psram8": "esp32s3-n8r8",
    "esp32s3-n8r8": "esp32s3-n8r8",
    "esp32-s3-n8r8": "esp32s3-n8r8",
}


# ---------------------------------------------------------------------------------------------------------------
# References of the firmware's picker
# ---------------------------------------------------------------------------------------------------------------
def reference_picks(
    curves: np.ndarray,
    thresholds: float | Sequence[float] = 0.3,
    phases: str = PHASES,
    sampling_rate: float = 100.0,
    t0: float = 0.0,
    top_tolerance: float | None = None,
) -> list[dict]:
    """Picks of SeisBench's ``picks_from_annotations`` on probability curves (samples, phases) or (phases, samples);
    with ``top_tolerance`` the pick is the centre of the peak's top, as the student picks
    (:func:`pipeline.student.peak_index`).

    ``curves[:, k]`` is the (stacked) probability of ``phases[k]``; extra columns (noise) are ignored. Returns picks
    sorted by (sample, phase) as dicts: phase, sample (of the peak), time (t0 + sample / sampling_rate), prob
    (peak value), on, off (trigger on / off samples). The comparison is done in the curve's dtype, as numpy does
    for SeisBench's float32 annotation traces.
    """
    from obspy.signal.trigger import trigger_onset

    from pipeline.student import peak_index

    curves = np.asarray(curves)
    if curves.ndim != 2:
        raise EdgepickError(f"reference_picks: curves must be 2-D, got shape {curves.shape}")
    if curves.shape[0] < curves.shape[1] and curves.shape[0] <= 4:
        curves = curves.T
    if isinstance(thresholds, (int, float)):
        thresholds = [float(thresholds)] * len(phases)
    picks = []
    for k, phase in enumerate(phases):
        data = curves[:, k]
        threshold = thresholds[k]
        for s0, s1 in trigger_onset(data, threshold, threshold / 2):
            segment = data[s0 : s1 + 1]
            peak = int(s0 + peak_index(segment, top_tolerance))
            picks.append({
                "phase": phase, "sample": peak, "time": t0 + peak / sampling_rate, "prob": float(np.max(segment)),
                "on": int(s0), "off": int(s1),
            })
    return sorted(picks, key=lambda p: (p["sample"], p["phase"]))


def window_offsets(n_samples: int, in_samples: int, hop: int) -> np.ndarray:
    """Window starts as SeisBench cuts a stream of ``n_samples``: every ``hop`` (= in_samples - overlap), plus one
    last window ending at the last sample when the regular ones stop short. Empty when the stream is too short."""
    offsets = np.arange(0, n_samples - in_samples + 1, hop)
    if len(offsets) == 0:
        return offsets
    if offsets[-1] + in_samples < n_samples:
        offsets = np.concatenate([offsets, [n_samples - in_samples]])
    return offsets


def stack_windows(predictions: Sequence[np.ndarray], offsets: Sequence[int], n_samples: int,
                  blinding: tuple[int, int] = (0, 0)) -> np.ndarray:
    """SeisBench's ``avg`` stacking (its own ``seisbench.ext.stack_windows``, NaN-aware): (samples, classes) from
    window predictions (each (in_samples, classes)), blinded samples left out."""
    from seisbench.ext import stack_windows as seisbench_stack

    if len(predictions) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    windows = np.array(predictions, dtype=np.float32)
    pre, post = blinding
    if pre > 0:
        windows[:, :pre] = np.nan
    if post > 0:
        windows[:, windows.shape[1] - post :] = np.nan
    stacked = seisbench_stack(windows=windows, offsets=np.asarray(offsets, dtype=np.intp), method="avg")
    out = np.full((n_samples, windows.shape[2]), np.nan, dtype=np.float32)
    out[: min(n_samples, len(stacked))] = stacked[:n_samples]
    return out


def stream_reference(
    waveform: np.ndarray,
    model: Callable[[np.ndarray], np.ndarray],
    in_samples: int,
    hop: int,
    thresholds: float | Sequence[float] = 0.3,
    eps: float | None = None,
    blinding: tuple[int, int] = (0, 0),
    sampling_rate: float = 100.0,
    t0: float = 0.0,
    top_tolerance: float | None = PICK_TOP_TOLERANCE,
) -> tuple[list[dict], np.ndarray]:
    """What the firmware computes on a whole stream ``waveform`` (3, n): windows, the student's normalisation,
    ``model`` ((3, in_samples) normalised window -> (in_samples, classes) probabilities), stacking, picks.
    Returns (picks, stacked curves)."""
    from pipeline.student import NORM_EPS, normalize_windows

    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 2 or waveform.shape[0] != 3:
        raise EdgepickError(f"stream_reference: waveform must be (3, samples), got {waveform.shape}")
    n = waveform.shape[1]
    offsets = window_offsets(n, in_samples, hop)
    predictions = [
        np.asarray(model(normalize_windows(waveform[:, o : o + in_samples], NORM_EPS if eps is None else eps)),
                   dtype=np.float32)
        for o in offsets
    ]
    if not predictions:
        return [], np.zeros((0, 3), dtype=np.float32)
    stacked = stack_windows(predictions, offsets, int(offsets[-1]) + in_samples, blinding)
    return reference_picks(stacked, thresholds, PHASES, sampling_rate, t0, top_tolerance), stacked


def parse_pick_lines(lines: Sequence[str]) -> list[dict]:
    """The pick objects among the firmware's JSON output lines (other lines are skipped)."""
    import json

    picks = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("type") == "pick":
            picks.append(obj)
    return sorted(picks, key=lambda p: (p["sample"], p["phase"]))


# ---------------------------------------------------------------------------------------------------------------
# Build / flash / monitor
# ---------------------------------------------------------------------------------------------------------------
def read_model_config(path: Path = MODEL_CONFIG) -> dict[str, str]:
    """The ``#define`` values of the generated model_config.h (strings unquoted)."""
    if not path.is_file():
        raise EdgepickError(f"{path} is missing: run `make quantize` first (it generates the model for the firmware)")
    values = {}
    for name, value in re.findall(r"^#define\s+(EDGEPICK_\w+)\s+(.+?)\s*(?://.*)?$", path.read_text(), re.M):
        values[name] = value.strip().strip('"')
    return values


def check_budget(values: dict[str, str]) -> list[str]:
    """The budget lines of model_config.h; raises when a region is over its capacity."""
    lines = []
    for name in sorted(values):
        match = re.fullmatch(r"EDGEPICK_BUDGET_(\w+)_USED", name)
        if not match:
            continue
        key = match.group(1)
        used = int(values[name].rstrip("uU"))
        capacity = int(values.get(f"EDGEPICK_BUDGET_{key}_CAPACITY", "0").rstrip("uU"))
        lines.append(f"{key.lower()}: {used} of {capacity} bytes ({100.0 * used / max(capacity, 1):.0f} %)")
        if used > capacity:
            raise EdgepickError(f"memory budget exceeded: {key.lower()} needs {used} bytes, the board has {capacity}")
    return lines


def pio_env(board_name: str) -> str:
    try:
        from pipeline import boards  # written by the quantize helper; may name the PlatformIO environment

        board = boards.get_board(board_name)
        env = getattr(board, "pio_env", None) or getattr(board, "platformio_env", None)
        if env:
            return str(env)
    except (ImportError, AttributeError, EdgepickError):
        pass
    if board_name in PIO_ENVS:
        return PIO_ENVS[board_name]
    raise EdgepickError(f"no PlatformIO environment for board {board_name!r}; known: {', '.join(sorted(PIO_ENVS))}")


def pio_executable() -> str:
    candidates = [Path(sys.executable).with_name("pio"), Path(sys.executable).with_name("platformio")]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("pio") or shutil.which("platformio")
    if not found:
        raise EdgepickError("PlatformIO is not installed: `pip install platformio` (the venv has it after `make venv`)")
    return found


def _pio(args: list[str], capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([pio_executable(), *args], cwd=FIRMWARE_DIR, text=True,
                          capture_output=capture, check=False)


def _explain_pio_failure(output: str, env: str) -> str:
    text = output.lower()
    if "unknown board id" in text or "unknown board" in text:
        return f"PlatformIO does not know the board of environment {env}: install the espressif32 platform (`pio pkg install -g -p espressif32`) with network access"
    if ("platform" in text and ("not installed" in text or "could not find" in text or "unknown platform" in text)) or \
       "httpclienterror" in text or "could not resolve" in text or "connection" in text or "registry" in text:
        return (f"the ESP32 platform/toolchain for environment {env} is not installed and cannot be downloaded here; "
                "on a machine with network: `pio pkg install -g -p espressif32`, then `make firmware`")
    if "unknown environment" in text or "unknownenvname" in text:
        return f"firmware/platformio.ini has no environment {env}"
    last = [line for line in output.strip().splitlines() if line.strip()]
    return f"pio failed for {env}: {last[-1] if last else 'no output'}"


def model_board(path: Path | None = None) -> str | None:
    """The board model_config.h was generated for (its "memory budget for board X" comment), if stated."""
    path = path or MODEL_CONFIG
    match = re.search(r"memory budget for board (\S+)", path.read_text()) if path.is_file() else None
    return match.group(1) if match else None


def build(config, upload: bool = False) -> None:
    values = read_model_config()
    generated_for = model_board()
    if generated_for and generated_for != config.board.name:
        raise EdgepickError(f"firmware/src/model/ was generated for board {generated_for}, not {config.board.name}: "
                            f"run `make quantize SET='board.name={config.board.name}'` first")
    for line in check_budget(values):
        print(f"budget {line}")
    env = pio_env(config.board.name)
    args = ["run", "-e", env] + (["-t", "upload"] if upload else [])
    print(f"pio {' '.join(args)} (in {FIRMWARE_DIR})")
    result = _pio(args)
    if result.returncode != 0:
        raise EdgepickError(_explain_pio_failure(result.stdout + result.stderr, env))
    print(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "built")


def monitor(config) -> None:
    env = pio_env(config.board.name)
    result = _pio(["device", "monitor", "-e", env, "-b", "115200"], capture=False)
    if result.returncode != 0:
        raise EdgepickError(f"pio device monitor failed for {env} (is the board plugged in?)")


def run(config) -> None:
    """``make firmware``: budget check, then build."""
    build(config)


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import Config

    parser = argparse.ArgumentParser(prog="python -m pipeline.flash", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("build", "flash", "monitor", "budget"))
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = Config.load(args.config, args.overrides)
        if args.action == "build":
            build(config)
        elif args.action == "flash":
            build(config, upload=True)
        elif args.action == "monitor":
            monitor(config)
        else:
            for line in check_budget(read_model_config()):
                print(f"budget {line}")
    except EdgepickError as error:
        print(f"edgepick {args.action}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
