"""The energy estimate per board (pipeline/deploy/energy.py, the datasheet currents of pipeline/deploy/boards.py) and
the instruction fields `make firmware-sim` builds its report from (pipeline/stages/firmware_sim.py), on parsed timing
lines: no emulator needed."""

from __future__ import annotations

import dataclasses
import json

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


def run_lines(per_window: list[int], total: int) -> list[str]:
    """What an emulated run prints, as far as the report reads it: timing lines and the closing measurement."""
    lines = [json.dumps({"type": "timing", "window": i, "invoke_us": 1, "instructions": n})
             for i, n in enumerate(per_window)]
    return lines + ["not json", json.dumps({"type": "emulator", "ready": True, "instructions": total})]


def test_report_fields_from_parsed_timing_lines():
    """instructions_per_second_of_data per kernel set: the measured median per window x each mode's windows per
    second from the header's hops (exact replay 100 / 1501, live 100 / 100), and the energy table of ESP-NN's."""
    from pipeline.stages.firmware_sim import energy_report, firmware_run, mode_labels, throughput

    values = {"EDGEPICK_HOP_SAMPLES": "1501", "EDGEPICK_LIVE_HOP_SAMPLES": "100", "EDGEPICK_LIVE": "1"}
    results = {"reference": [firmware_run(run_lines([69_000_000, 70_000_000, 69_500_000], 300_000_000))],
               "esp_nn": [firmware_run(run_lines([32_000_000, 32_000_000], 100_000_000)),
                          firmware_run(run_lines([33_000_000], 60_000_000))]}
    counts = throughput(results, values, 100.0, live_hop=100, seconds_streamed=40.0)
    assert counts["instructions_per_window"] == {"reference": 69_500_000, "esp_nn": 32_000_000}
    assert counts["windows_per_second"] == pytest.approx({"exact_replay": 100 / 1501, "live": 1.0})
    per_second = counts["instructions_per_second_of_data"]
    assert per_second["esp_nn"] == pytest.approx({"exact_replay": 32e6 * 100 / 1501, "live": 32e6})
    assert per_second["reference"]["live"] == pytest.approx(69.5e6)
    assert counts["instructions_per_second_of_data_whole_run"] == pytest.approx({"reference": 300e6 / 40,
                                                                                 "esp_nn": 160e6 / 40})
    assert counts["whole_run_mode"] == "live" and "measured" in counts["instructions_per_second_of_data_basis"]

    no_live = {"EDGEPICK_HOP_SAMPLES": "1501"}  # a header written without live settings: live.hop_samples
    assert throughput(results, no_live, 100.0, 50, 40.0)["windows_per_second"]["live"] == pytest.approx(2.0)
    with pytest.raises(EdgepickError, match="hop below 1"):
        throughput(results, {"EDGEPICK_HOP_SAMPLES": "0"}, 100.0, 100, 40.0)

    report = energy_report(per_second, C3, 1.0, mode_labels(values, 100))
    assert report["energy_est"]["esp_nn"]["live"]["cpu_duty_est"] == pytest.approx(0.2)
    assert report["energy_est"]["reference"]["exact_replay"]["instructions_per_second_of_data"] == \
        pytest.approx(69.5e6 * 100 / 1501)
    assert "exact replay (a window every 1501 samples)" in report["energy_table_md"]
    assert "live mode (a window every 100 samples)" in report["energy_table_md"]
    assert "ESP-NN kernels" in report["energy_table_md"]
    assert report["energy_assumptions"]["active_ma"] == 28.0
    json.dumps(report)  # the report is JSON
