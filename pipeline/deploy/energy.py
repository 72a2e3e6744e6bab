"""Energy per day of monitoring on a board, from the instructions its firmware runs per second of data: estimates.

Reads top to bottom: CPU duty = instructions per second of data x cycles per instruction / clock -> average current
= duty x active + (1 - duty) x light sleep (the board's datasheet currents, ``Board.power`` in
pipeline/deploy/boards.py) -> charge and energy per day -> days on a named cell -> the markdown table
``make firmware-sim`` prints and saves. Every figure it returns is an estimate and is labelled so.

A path is any way of running the picker, given by its instructions per second of data: ``{"exact_replay": ...,
"live": ...}`` today (pipeline/stages/firmware_sim.py measures the instructions per window in the emulator and
multiplies by each mode's windows per second); a new path (``"streaming"``) is one more entry of the dict.

What the estimate assumes, so each figure is a floor for the chip and not a station's budget:
- the CPU sleeps (ESP-IDF automatic light sleep) whenever it is not computing; today's firmware does not enable it
  (no ``CONFIG_PM_ENABLE`` in firmware/sdkconfig.defaults): as built, the chip idles awake between windows (the
  ESP32-C3's "CPU is idle" is 21 mA, Table 5-8 of its datasheet, against 0.13 mA in light sleep);
- the instructions are those counted around the model's ``Invoke`` (the timing lines): window normalisation, picking,
  the serial protocol and sleep transitions are left out;
- out of scope: the sensor and its ADC (e.g. an ADXL355), the sample input (UART / SPI), the radio (picks sent over
  Wi-Fi or BLE), the voltage regulator's quiescent current and the board's LEDs / USB bridge;
- the cell feeds the chip through a linear regulator (an LDO: the chip's current is the cell's current), so days on
  the cell = its usable charge / the charge per day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.deploy.boards import Board
from pipeline.errors import EdgepickError

HOURS_PER_DAY = 24.0


@dataclass(frozen=True)
class Cell:
    """A battery the estimate counts days on."""

    name: str
    capacity_mah: float  # rated capacity
    nominal_v: float
    usable_fraction: float  # of the rated capacity the board gets (an assumption, see below)


# One 18650 Li-ion cell of 3.5 Ah at 3.6 V nominal, the top of today's 18650 ratings (3.35-3.5 Ah, e.g. LG INR18650
# MJ1 3.5 Ah, Panasonic NCR18650GA 3.45 Ah min / 3.5 Ah typ, their datasheets). Usable fraction 0.8, an ASSUMPTION:
# a 3.3 V LDO with ~0.2 V dropout stops regulating below ~3.5 V, leaving the last part of the discharge curve unused,
# and capacity falls with age and cold.
CELL_18650 = Cell("one 18650 Li-ion cell, 3.5 Ah / 3.6 V nominal, 80 % usable", 3500.0, 3.6, 0.8)

# Row labels of the known paths; any other key of a paths dict is its own label.
PATH_LABELS = {"exact_replay": "exact replay", "live": "live mode", "streaming": "streaming"}


def _finite_non_negative(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise EdgepickError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def cpu_duty(instructions_per_second: float, cpu_mhz: float, cycles_per_instruction: float = 1.0) -> float:
    """The share of each second the CPU computes: instructions per second of data x cycles per instruction / clock.
    Above 1 the board cannot keep up with the stream. ``cycles_per_instruction`` 1 for the emulator's RV32IMC count
    (firmware_sim.cycles_per_instruction): the ESP32-C3's in-order core retires at most one instruction a cycle, and
    flash-cache misses, taken branches and multi-cycle loads / divides only add, so the duty is a floor."""
    instructions_per_second = _finite_non_negative("instructions per second of data", instructions_per_second)
    if not cpu_mhz > 0 or not cycles_per_instruction > 0:
        raise EdgepickError(f"the clock ({cpu_mhz!r} MHz) and cycles per instruction ({cycles_per_instruction!r}) "
                            "must be > 0")
    return instructions_per_second * cycles_per_instruction / (cpu_mhz * 1e6)


def average_current_ma(duty: float, board: Board) -> float:
    """duty x active + (1 - duty) x light sleep, in mA, from the board's datasheet currents; a duty of 1 or more (the
    board does not keep up) is the active current, never sleeping."""
    power = board_power(board)
    duty = min(_finite_non_negative("CPU duty", duty), 1.0)
    return duty * power.active_ma + (1.0 - duty) * power.light_sleep_ma


def board_power(board: Board):
    if board.power is None:
        raise EdgepickError(f"board {board.name} has no datasheet currents (Board.power in pipeline/deploy/boards.py)")
    return board.power


def estimate(instructions_per_second: float, board: Board, cycles_per_instruction: float = 1.0,
             cell: Cell = CELL_18650) -> dict:
    """One path's estimate on ``board``: CPU duty, average current, mAh and Wh per day (Wh at the chip's supply
    voltage), days on ``cell``; ``keeps_up`` False when the duty is over 1."""
    duty = cpu_duty(instructions_per_second, board.cpu_mhz, cycles_per_instruction)
    current = average_current_ma(duty, board)
    mah_per_day = current * HOURS_PER_DAY
    return {"instructions_per_second_of_data": float(instructions_per_second), "cpu_duty_est": duty,
            "keeps_up": duty <= 1.0, "average_current_ma_est": current, "mah_per_day_est": mah_per_day,
            "wh_per_day_est": mah_per_day * board_power(board).supply_v / 1e3,
            "battery_days_est": cell.capacity_mah * cell.usable_fraction / mah_per_day}


def estimates(paths: dict[str, float], board: Board, cycles_per_instruction: float = 1.0,
              cell: Cell = CELL_18650) -> dict[str, dict]:
    """:func:`estimate` for each path of ``{path: instructions per second of data}``, in the dict's order."""
    if not paths:
        raise EdgepickError("no path to estimate the energy of (an empty {path: instructions per second} dict)")
    return {path: estimate(n, board, cycles_per_instruction, cell) for path, n in paths.items()}


def assumptions(board: Board, cycles_per_instruction: float, cell: Cell = CELL_18650) -> dict:
    """What every estimate of a table rests on, for the report."""
    power = board_power(board)
    return {"board": board.name, "cpu_mhz": board.cpu_mhz, "cycles_per_instruction": cycles_per_instruction,
            "active_ma": power.active_ma, "light_sleep_ma": power.light_sleep_ma, "supply_v": power.supply_v,
            "currents_source": power.source, "cell": cell.name, "cell_capacity_mah": cell.capacity_mah,
            "cell_usable_fraction": cell.usable_fraction,
            "left_out": "sensor and ADC, sample input, radio, regulator, non-model firmware work, sleep transitions; "
                        "the firmware does not enable light sleep today"}


def _duty_text(row: dict) -> str:
    return f"{row['cpu_duty_est']:.1%}" if row["keeps_up"] else f"{row['cpu_duty_est']:.0%} (does not keep up)"


def markdown_table(rows: dict[str, dict], board: Board, cycles_per_instruction: float = 1.0,
                   cell: Cell = CELL_18650, kernels: str = "ESP-NN", labels: dict[str, str] | None = None,
                   basis: str = "measured in the emulator") -> str:
    """The energy table of :func:`estimates`' rows: one row per path, its caption saying what each column rests on
    (``basis``: where the instructions per second of data come from)."""
    power = board_power(board)
    labels = {**PATH_LABELS, **(labels or {})}
    header = ["path", "instructions per second of data", f"CPU duty at {board.cpu_mhz} MHz (est.)",
              "average current, mA (est.)", "mAh per day (est.)", "Wh per day (est.)", "battery days (est.)"]
    lines = [f"Energy per day of monitoring on {board.name}, {kernels} kernels. Every figure but the instructions "
             f"is an estimate (the instructions: {basis}). {cycles_per_instruction:g} cycle per instruction "
             f"assumed; average current = duty x {power.active_ma:g} mA (CPU running) + (1 - duty) x "
             f"{power.light_sleep_ma:g} mA (light sleep), {power.source}; Wh at {power.supply_v:g} V; days on "
             f"{cell.name}. Left out: the sensor and its ADC, the radio, the regulator, the firmware's work outside "
             "the model; the firmware does not enable light sleep yet (pipeline/deploy/energy.py).", "",
             "| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for path, row in rows.items():
        cells = [labels.get(path, path), f"{row['instructions_per_second_of_data'] / 1e6:.2f} M", _duty_text(row),
                 f"{row['average_current_ma_est']:.2f}", f"{row['mah_per_day_est']:.1f}",
                 f"{row['wh_per_day_est']:.3f}", f"{row['battery_days_est']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
