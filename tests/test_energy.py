"""The energy estimate per board (pipeline/deploy/energy.py, the datasheet currents of pipeline/deploy/boards.py) : no
emulator needed."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.deploy import boards, energy
from pipeline.errors import EdgepickError

C3 = boards.get_board("esp32c3")


def test_every_board_has_datasheet_currents_with_a_source():
    for board in boards.BOARDS.values():
        power = board.power
        assert power is not None and 0 < power.light_sleep_ma < power.active_ma and power.supply_v == 3.3, board.name
        assert "Datasheet" in power.source, board.name
    # ESP32-C3 Series Datasheet v2.2, Tables 5-8 (160 MHz, CPU running, peripheral clocks on) and 5-9 (light sleep)
    assert (C3.power.active_ma, C3.power.light_sleep_ma) == (28.0, 0.13)
    assert boards.get_board("esp32").power.light_sleep_ma == 0.8


def test_duty_is_instructions_per_second_over_the_clock():
    assert energy.cpu_duty(32e6, 160) == pytest.approx(0.2)  # today's live mode on the ESP32-C3, 1 cycle each
    assert energy.cpu_duty(32e6, 160, cycles_per_instruction=2.0) == pytest.approx(0.4)
    assert energy.cpu_duty(0, 240) == 0.0


def test_average_current_mixes_active_and_light_sleep_by_the_duty():
    assert energy.average_current_ma(1.0, C3) == pytest.approx(28.0)  # 100 % busy: the active current
    assert energy.average_current_ma(0.0, C3) == pytest.approx(0.13)  # never busy: light sleep
    assert energy.average_current_ma(0.25, C3) == pytest.approx(0.25 * 28.0 + 0.75 * 0.13)
    assert energy.average_current_ma(3.0, C3) == pytest.approx(28.0)  # cannot keep up: never sleeps


def test_estimate_per_day_and_battery_days():
    row = energy.estimate(32e6, C3)
    current = 0.2 * 28.0 + 0.8 * 0.13
    assert row["cpu_duty_est"] == pytest.approx(0.2) and row["keeps_up"]
    assert row["average_current_ma_est"] == pytest.approx(current)
    assert row["mah_per_day_est"] == pytest.approx(current * 24)
    assert row["wh_per_day_est"] == pytest.approx(current * 24 * 3.3 / 1000)
    assert row["battery_days_est"] == pytest.approx(3500 * 0.8 / (current * 24))  # one 18650, 80 % usable
    cell = energy.Cell("test cell", 1000.0, 3.7, 0.5)
    assert energy.estimate(0, C3, cell=cell)["battery_days_est"] == pytest.approx(500 / (0.13 * 24))
    slow = energy.estimate(400e6, C3)
    assert not slow["keeps_up"] and slow["cpu_duty_est"] == pytest.approx(2.5)
    assert slow["average_current_ma_est"] == pytest.approx(28.0)


def test_paths_dict_takes_a_new_path_and_the_table_says_every_estimate_is_one():
    rows = energy.estimates({"exact_replay": 2.13e6, "live": 32e6, "streaming": 1.1e6}, C3)
    assert list(rows) == ["exact_replay", "live", "streaming"]
    assert rows["streaming"]["average_current_ma_est"] < rows["exact_replay"]["average_current_ma_est"] \
        < rows["live"]["average_current_ma_est"]
    table = energy.markdown_table(rows, C3, labels={"live": "live mode (a window every 100 samples)"})
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| path"))
    assert header.count("(est.)") == 5 and "estimate" in lines[0]
    body = [line for line in lines if line.startswith("| ") and not line.startswith(("| path", "| ---"))]
    assert [line.split(" | ")[0] for line in body] == ["| exact replay", "| live mode (a window every 100 samples)",
                                                       "| streaming"]
    assert "| 32.00 M | 20.0% | 5.70 |" in body[1]
    assert "does not keep up" in energy.markdown_table(energy.estimates({"live": 400e6}, C3), C3)


def test_bad_input_is_one_clear_error():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(EdgepickError, match="instructions per second of data must be a finite number"):
            energy.estimate(bad, C3)
    with pytest.raises(EdgepickError, match="cycles per instruction"):
        energy.cpu_duty(1e6, 160, cycles_per_instruction=0)
    with pytest.raises(EdgepickError, match="no path"):
        energy.estimates({}, C3)
    with pytest.raises(EdgepickError, match="has no datasheet currents"):
        energy.estimate(1e6, dataclasses.replace(C3, power=None))
