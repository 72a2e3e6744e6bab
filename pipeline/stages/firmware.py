"""``make firmware`` / ``make flash`` / ``make monitor``: the PlatformIO ESP32 firmware in ``firmware/``.

``build`` checks the memory budget of the generated model first (``firmware/src/model/model_config.h``, or
``stream_model_config.h`` for a causal student's streaming model, written by ``make quantize`` for ``board.name``),
then runs ``pio run -e <board>`` in ``firmware/``; ``flash`` adds
``-t upload``; ``monitor`` runs ``pio device monitor`` (picks as JSON lines, docs/firmware.md). A missing
PlatformIO, a missing ESP32 platform (PlatformIO cannot download it offline) or a board without an environment
is reported in one line.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.deploy import boards
from pipeline.deploy.convert.c_array import read_model_config
from pipeline.errors import EdgepickError

FIRMWARE_DIR = Path(__file__).resolve().parents[2] / "firmware"
MODEL_CONFIG = FIRMWARE_DIR / "src" / "model" / "model_config.h"
STREAM_CONFIG_NAME = "stream_model_config.h"  # a causal student's streaming model (its names prefixed EDGEPICK_STREAM_)


def model_header(config_path: Path | None = None) -> tuple[Path, str]:
    """The model folder's header and its macro prefix: the streaming model's when the folder holds one (the
    firmware builds its streaming mode then, firmware/src/model_picker.h), else model_config.h."""
    config_path = config_path or MODEL_CONFIG
    stream = config_path.with_name(STREAM_CONFIG_NAME)
    return (stream, "EDGEPICK_STREAM_") if stream.is_file() else (config_path, "EDGEPICK_")


def budget_lines(values: dict[str, str]) -> list[str]:
    """The budget lines of model_config.h (or stream_model_config.h); raises when a region is over its capacity."""
    lines = []
    for name in sorted(values):
        match = re.fullmatch(r"(EDGEPICK_(?:STREAM_)?BUDGET_)(\w+)_USED", name)
        if not match:
            continue
        prefix, key = match.groups()
        used = int(values[name].rstrip("uU"))
        capacity = int(values.get(f"{prefix}{key}_CAPACITY", "0").rstrip("uU"))
        lines.append(f"{key.lower()}: {used} of {capacity} bytes ({100.0 * used / max(capacity, 1):.0f} %)")
        if used > capacity:
            raise EdgepickError(f"memory budget exceeded: {key.lower()} needs {used} bytes, the board has {capacity}")
    return lines


def pio_env(board_name: str) -> str:
    """The PlatformIO environment of a board: its name (firmware/platformio.ini has one per board)."""
    return boards.get_board(board_name).name


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


def check_pairing(values: dict[str, str], tflite_dir: Path) -> None:
    """The firmware's model and ``tflite_dir`` (quantize.out) come from one ``make quantize`` run: the quantize id of
    model_config.h is the one of quantize_report.json (both written together by the quantize stage)."""
    ours = values.get("EDGEPICK_QUANTIZE_ID") or values.get("EDGEPICK_STREAM_QUANTIZE_ID")
    if not ours:
        raise EdgepickError(f"{MODEL_CONFIG.parent} predates the quantize id that pairs it with {tflite_dir}/: "
                            "run `make quantize` again")
    report = tflite_dir / "quantize_report.json"
    try:
        theirs = json.loads(report.read_text()).get("quantize_id")
    except (OSError, ValueError, AttributeError):
        theirs = None
    if theirs != ours:
        found = f"quantize id {theirs}" if theirs else f"no readable {report.name}"
        raise EdgepickError(f"{MODEL_CONFIG.parent}/ (quantize id {ours}) and {tflite_dir}/ ({found}) are not from the "
                            "same `make quantize` run: run `make quantize` again (it writes both)")


def build(config, upload: bool = False) -> None:
    header, prefix = model_header()
    values = read_model_config(header)
    ops = "stream_model_ops.h" if prefix == "EDGEPICK_STREAM_" else "model_ops.h"
    if not header.with_name(ops).is_file():
        raise EdgepickError(f"{header.parent} predates {ops} (the model's op list): run `make quantize` again")
    check_pairing(values, Path(config.quantize.out))
    generated_for = model_board(header)
    if generated_for and generated_for != config.board.name:
        raise EdgepickError(f"firmware/src/model/ was generated for board {generated_for}, not {config.board.name}: "
                            f"run `make quantize SET='board.name={config.board.name}'` first")
    for line in budget_lines(values):
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


def flash(config) -> None:
    """``make flash``: budget check, build and upload."""
    build(config, upload=True)
