"""Board profiles and the memory budget check run before anything is flashed.

Regions: internal SRAM (data RAM the application can use), PSRAM (external, mapped into data space) and flash (the
app partition that holds the firmware and the model as a const array). Figures and their sources:

- ESP32: 520 KB on-chip SRAM, of which at most 328 KB is data RAM (DRAM); statically allocated DRAM is limited to
  160 KB ("Due to a technical limitation, the maximum statically allocated DRAM usage is 160 KB", ESP-IDF
  Programming Guide, Memory Types). We count 320 KB of DRAM minus an estimated 64 KB for ESP-IDF, FreeRTOS and
  drivers (Wi-Fi off) = 256 KB, and require the tensor arena, one contiguous block, to be <= 160 KB when it lives in
  internal SRAM.
- PSRAM on the classic ESP32 maps at most 4 MB into data space (an 8 MB chip gives 4 MB; ESP-IDF, External RAM);
  ESP32-S3 N8R8 has 8 MB octal PSRAM, all usable.
- ESP32-S3: 512 KB SRAM; we count 416 KB of data RAM minus the same 64 KB overhead = 352 KB.
- ESP32-C3 (RV32IMC, 160 MHz): 400 KB SRAM of which 16 KB serve as flash cache (ESP32-C3 datasheet); 384 KB minus
  the same 64 KB overhead = 320 KB. It has no PSRAM. It is the chip whose build is emulated here
  (`make firmware-sim`, pipeline/deploy/emulator.py).
- Flash: firmware/sdkconfig.defaults selects the "single factory app (large)" partition table, a 1500 KB app
  partition (``app_partition_bytes``); the model's budget is 640 KB of it, leaving 860 KB for ESP-IDF + TFLite Micro
  + ESP-NN code (the emulated RV32 build measures the firmware's own code and model, `make firmware-sim`).
- Power (``Board.power``, for pipeline/deploy/energy.py): each chip's datasheet current with the CPU running at the
  board's clock and in light sleep, radio off, cited where they are declared below.

Placement (what the firmware does): the model stays in flash (memory-mapped const array); the FP16 expansion
buffer (the FP32 flatbuffer) and the sample ring buffer go to PSRAM when there is PSRAM, else SRAM; the tensor arena
goes to SRAM when it fits (<= 160 KB and the region total), else PSRAM; the window buffer (float32 normalised
window) and the stitch buffer (P and S sums and counts over one window) stay in SRAM. Every region must hold
``used x (1 + margin)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import EdgepickError

KB = 1024
MB = 1024 * KB
MAX_STATIC_DRAM = 160 * KB


@dataclass(frozen=True)
class Power:
    """A chip's supply current in the two states the energy estimate (pipeline/deploy/energy.py) mixes, from its
    Espressif datasheet, radio off throughout: "active" is Espressif's Modem-sleep (the CPU running at the board's
    clock, Wi-Fi / Bluetooth baseband and radio off), "light sleep" the CPU paused with RAM kept, woken by a timer,
    GPIO or UART. Datasheet typicals at 3.3 V and 25 degC, the chip alone (no module LEDs, USB bridge or regulator)."""

    active_ma: float  # CPU running at Board.cpu_mhz, radio off
    light_sleep_ma: float  # CPU paused, RAM retained
    supply_v: float  # the chip's supply (VDD3P3, typical)
    source: str  # the datasheet and table both figures come from, short


# Where each figure comes from (the rule for every chip: the CPU running at the board's clock with all peripheral
# clocks enabled, the higher of the datasheet's typical figures, since the firmware keeps UART, SPI and timers on;
# a range is taken at its top). Approximate where marked.
#
# ESP32 (240 MHz, dual core): ESP32 Series Datasheet v5.2 (the same in v4.9), Section 4.3 "RTC and Low-Power
# Management", Table 4-2 "Power Consumption by Power Modes": Modem-sleep, "The CPU is powered up", 240 MHz, dual-core
# chips: 30 mA ~ 68 mA; Light-sleep: 0.8 mA. The table gives a range and no workload: we take 68 mA (APPROXIMATE: one
# core busy with convolutions and one idle lies somewhere inside the range). Supply: Section 5 "Recommended Operating
# Conditions", VDD3P3 typical 3.3 V. The PSRAM boards' PSRAM standby current is in no ESP32 table and is not counted
# (APPROXIMATE, low by the PSRAM chip's standby current).
ESP32_POWER = Power(active_ma=68.0, light_sleep_ma=0.8, supply_v=3.3,
                    source="ESP32 Series Datasheet v5.2, Table 4-2 (Modem-sleep 240 MHz dual-core 30-68 mA, top taken)")
# ESP32-S3 (240 MHz): ESP32-S3 Series Datasheet v2.2, Section 5.6.2 "Current Consumption in Other Modes", Table 5-9
# "Current Consumption in Modem-sleep Mode", 240 MHz, "Single core running 128-bit data access instructions, the other
# core in idle state" (ESP-NN's ESP32-S3 kernels are 128-bit SIMD), all peripheral clocks enabled: 87.9 mA (72.4 with
# them disabled; 32-bit instructions 65.9 / 51.2). Its note: chips with in-package PSRAM (the N8R8 module's
# ESP32-S3R8) may draw more (APPROXIMATE). Table 5-10 "Current Consumption in Low-Power Modes": Light-sleep 240 uA,
# plus, by its note 1, 140 uA for 8 MB octal PSRAM at 3.3 V: 380 uA. Supply: Table 5-2, VDD3P3 typical 3.3 V.
ESP32S3_PSRAM8_POWER = Power(active_ma=87.9, light_sleep_ma=0.38,  # 240 + 140 uA
                             supply_v=3.3,
                             source="ESP32-S3 Series Datasheet v2.2, Tables 5-9 and 5-10 (+ 8 MB octal PSRAM)")
# ESP32-C3 (160 MHz, one RV32IMC core): ESP32-C3 Series Datasheet v2.2, Section 5.6.2 "Current Consumption in Other
# Modes", Table 5-8 "Current Consumption in Modem-sleep Mode": 160 MHz, "CPU is running", all peripheral clocks
# enabled: 28 mA (23 mA disabled; "CPU is idle" 21 / 16 mA); Table 5-9 "Current Consumption in Low-Power Modes":
# Light-sleep 130 uA. Supply: "Recommended Power Supply Characteristics", VDD3P3 typical 3.3 V.
ESP32C3_POWER = Power(active_ma=28.0, light_sleep_ma=0.13, supply_v=3.3,
                      source="ESP32-C3 Series Datasheet v2.2, Tables 5-8 and 5-9")


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    sram_bytes: int  # internal data RAM usable by the application
    psram_bytes: int  # 0: none
    flash_bytes: int  # app partition bytes usable by the model
    max_arena_in_sram: int = MAX_STATIC_DRAM
    cpu_mhz: int = 240
    app_partition_bytes: int = 1500 * KB  # the whole firmware image (code + model)
    main_stack_bytes: int = 16 * KB  # CONFIG_ESP_MAIN_TASK_STACK_SIZE (firmware/sdkconfig.defaults)
    isa: str = "xtensa"  # "riscv32": its firmware can be built and run in the emulator here
    power: Power | None = None  # datasheet currents for the energy estimate (pipeline/deploy/energy.py)


# The only board table. A board's name is also its PlatformIO environment in firmware/platformio.ini.
BOARDS = {board.name: board for board in (
    Board("esp32", "ESP32, no PSRAM, 520 KB SRAM", 256 * KB, 0, 640 * KB, power=ESP32_POWER),
    Board("esp32-psram2", "ESP32 + 2 MB PSRAM", 256 * KB, 2 * MB, 640 * KB, power=ESP32_POWER),
    Board("esp32-psram4", "ESP32 + 4 MB PSRAM (8 MB chips map 4 MB)", 256 * KB, 4 * MB, 640 * KB, power=ESP32_POWER),
    Board("esp32s3-psram8", "ESP32-S3 N8R8, 8 MB octal PSRAM", 352 * KB, 8 * MB, 640 * KB, power=ESP32S3_PSRAM8_POWER),
    Board("esp32c3", "ESP32-C3 (RISC-V, 160 MHz), no PSRAM, 400 KB SRAM", 320 * KB, 0, 640 * KB, cpu_mhz=160,
          isa="riscv32", power=ESP32C3_POWER),
)}


# The model variants make quantize builds and a board runs: FP32, packed FP16 (expanded at boot), full-integer INT8
PRECISIONS = ("fp32", "fp16", "int8")


def get_board(name: str) -> Board:
    if name not in BOARDS:
        raise EdgepickError(f"unknown board {name!r}; known: {', '.join(BOARDS)}")
    return BOARDS[name]


# What one window costs on a board, as multiply-accumulates (MACs) x cycles per MAC, at the board's clock.
#
# INT8 with ESP-NN on ESP32 and ESP32-C3 (both run ESP-NN's generic optimised C kernels): the instruction count
# measured in the emulator (pipeline/deploy/emulator.py: `make demo`, then `make firmware-sim SET='board.name=esp32c3'`:
# 32,029,208 instructions per window for the demo student's 1,883,008 MACs, exact under `qemu -icount`), taken at
# one cycle per instruction: an estimate. On the ESP32-C3 (RV32IMC, in-order) that is close to a lower bound (flash
# cache misses only add); for the classic ESP32 it is another instruction set's count (Xtensa LX6 code differs), not a
# bound. TFLite Micro's reference kernels: 69,234,445 (36.8 per MAC).
EMULATED_INSTRUCTIONS_PER_MAC = {"esp_nn": 32_029_208 / 1_883_008, "reference": 69_234_445 / 1_883_008}
#
# ESP32-S3 (ESP-NN's Xtensa assembly, not emulated here) and float (TFLite Micro's reference float kernels, which
# ESP-NN does not optimise; the ESP32-C3 has no FPU and gets no float figure): derived from Espressif's published
# person-detection timings (github.com/espressif/esp-tflite-micro README, "ESP-NN integration", 240 MHz: ESP32 380 ms
# with ESP-NN, 4084 ms without; ESP32-S3 54 / 2300 ms). That model is MobileNetV1-0.25 on 96x96 inputs: 41 M MACs at
# 224x224 (Howard et al. 2017, Table 7) x (96/224)^2 = 7.5 M MACs, so ESP32-S3 int8 1.7 cycles/MAC, ESP32 / ESP32-S3
# reference kernels 131 / 74 (we take them for float, an estimate: both chips have a single-precision FPU). The same
# timings give the ESP32 12.1 cycles/MAC with ESP-NN, 1.4x under the instruction count above.
PERSON_DETECTION_MACS = 41e6 * (96 / 224) ** 2
PERSON_DETECTION_CYCLES_PER_MAC = {
    "esp32": {"int8": 0.380 * 240e6 / PERSON_DETECTION_MACS, "float": 4.084 * 240e6 / PERSON_DETECTION_MACS},
    "esp32s3": {"int8": 0.054 * 240e6 / PERSON_DETECTION_MACS, "float": 2.300 * 240e6 / PERSON_DETECTION_MACS},
}
# chip -> precision kind -> (cycles per MAC, clock MHz, where the figure comes from)
CYCLES_PER_MAC = {
    "esp32": {"int8": (EMULATED_INSTRUCTIONS_PER_MAC["esp_nn"], 240, "emulated RV32IMC instructions, 1 cycle each"),
              "float": (PERSON_DETECTION_CYCLES_PER_MAC["esp32"]["float"], 240, "person-detection timings")},
    "esp32c3": {"int8": (EMULATED_INSTRUCTIONS_PER_MAC["esp_nn"], 160, "emulated RV32IMC instructions, 1 cycle each")},
    "esp32s3": {"int8": (PERSON_DETECTION_CYCLES_PER_MAC["esp32s3"]["int8"], 240, "person-detection timings"),
                "float": (PERSON_DETECTION_CYCLES_PER_MAC["esp32s3"]["float"], 240, "person-detection timings")},
}


def estimate_latency(macs: int, precision: str, hop_seconds: float) -> dict:
    """Estimated milliseconds per window on ESP32, ESP32-C3 and ESP32-S3 from :data:`CYCLES_PER_MAC`, and the
    real-time factor (latency / window hop: below 1 keeps up with the stream). A chip without a figure for the
    precision (float on the FPU-less ESP32-C3) is left out."""
    kind = "int8" if precision == "int8" else "float"
    out = {}
    for chip, figures in CYCLES_PER_MAC.items():
        if kind not in figures:
            continue
        cycles_per_mac, mhz, source = figures[kind]
        ms = macs * cycles_per_mac / (mhz * 1e6) * 1e3
        out[chip] = {"ms": round(ms, 2), "cycles_per_mac": round(cycles_per_mac, 2), "mhz": mhz, "source": source,
                     "real_time_factor": round(ms / 1e3 / hop_seconds, 5) if hop_seconds > 0 else None}
    return out


def _round16(n: int) -> int:
    return (int(n) + 15) // 16 * 16


def check_budget(board: Board, info: dict, board_config=None, raise_error: bool = True) -> dict:
    """Place every buffer of one model variant on ``board`` and check each region.

    ``info``: ``bytes`` (what is flashed), ``arena_bytes``, ``in_samples``, ``sampling_rate``, optional
    ``expanded_bytes`` (FP16) and ``confirm_stitch_samples`` (the live mode's retraction: hop x confirming phases).
    ``board_config``: :class:`pipeline.config.BoardConfig` (margin, ring buffer seconds).
    Returns a dict with the regions, their items and ``overflow`` (a message, or ``""``)."""
    margin = float(getattr(board_config, "margin", 0.10))
    ring_seconds = float(getattr(board_config, "ring_seconds", 45.0))
    samples = int(info["in_samples"])
    rate = float(info.get("sampling_rate", 100.0))
    arena = _round16(info["arena_bytes"] * (1 + margin))
    ring = _round16(int(ring_seconds * rate) * 3 * 4)  # int32 counts, three components
    window = _round16(samples * 3 * 4)  # float32 normalised window
    # per phase (P, S) and sample: a float32 sum and a uint16 count; plus the retraction's confirming curves
    stitch = _round16((samples * 2 + int(info.get("confirm_stitch_samples", 0))) * (4 + 2))
    expansion = _round16(info.get("expanded_bytes", 0))

    items = {"sram": [], "psram": [], "flash": [("model", int(info["bytes"]))]}
    items["sram"] += [("window buffer", window), ("stitch buffer", stitch)]
    big = "psram" if board.psram_bytes else "sram"
    items[big].append(("ring buffer", ring))
    if expansion:
        items[big].append(("fp16 expansion", expansion))
    return _placed(board, items, arena, margin, info.get("precision", ""), raise_error)


# What the firmware's streaming mode keeps besides the arena (ep_block_picker.h, firmware/src/stream_model.cc): the
# block being filled and its probabilities (64 x 3 floats each; the block is normalised into the model's input
# tensor) and, per block of the normalisation window and component, a double sum and a float maximum and minimum.
STREAM_BLOCK_BUFFER_FLOATS = 2 * 64 * 3
NORM_STATS_BYTES_PER_BLOCK = 3 * (8 + 4 + 4)


def check_stream_budget(board: Board, info: dict, board_config=None, raise_error: bool = True) -> dict:
    """:func:`check_budget` for a causal student's streaming model: ``info`` with ``bytes``, ``arena_bytes``,
    ``state_bytes`` (the firmware's copy of the carried states) and ``norm_window_blocks``; no ring, window or stitch
    buffer (a block at a time, each sample final once its block ran). Placed as the whole-window model's."""
    margin = float(getattr(board_config, "margin", 0.10))
    arena = _round16(info["arena_bytes"] * (1 + margin))
    lag_blocks = -(-int(info.get("norm_lag_samples", 0)) // 64)  # a lagged normalisation keeps these raw blocks
    items = {"sram": [("block buffers", _round16((STREAM_BLOCK_BUFFER_FLOATS + lag_blocks * 64 * 3) * 4)),
                      ("normaliser statistics", _round16(int(info["norm_window_blocks"]) * NORM_STATS_BYTES_PER_BLOCK)),
                      ("state copy", _round16(int(info["state_bytes"])))],
             "psram": [], "flash": [("model", int(info["bytes"]))]}
    return _placed(board, items, arena, margin, info.get("precision", ""), raise_error)


def _placed(board: Board, items: dict, arena: int, margin: float, precision: str, raise_error: bool) -> dict:
    """The arena placed (internal RAM when it fits, else PSRAM) beside ``items`` and every region checked."""
    sram_if_arena = sum(n for _, n in items["sram"]) + arena
    if arena <= board.max_arena_in_sram and sram_if_arena * (1 + margin) <= board.sram_bytes or not board.psram_bytes:
        items["sram"].append(("arena", arena))
    else:
        items["psram"].append(("arena", arena))

    capacities = {"sram": board.sram_bytes, "psram": board.psram_bytes, "flash": board.flash_bytes}
    regions, problems = [], []
    for name in ("sram", "psram", "flash"):
        used = sum(n for _, n in items[name])
        needed = int(used * (1 + margin))
        regions.append({"name": name, "capacity": capacities[name], "used": needed, "raw": used, "items": items[name]})
        if needed > capacities[name]:
            what = ", ".join(f"{label} {n}" for label, n in items[name])
            problems.append(
                f"{name} overflows by {needed - capacities[name]} bytes on {board.name} "
                f"({what}; {needed} with {margin:.0%} margin > {capacities[name]})"
            )
    if ("arena", arena) in items["sram"] and arena > board.max_arena_in_sram:
        problems.append(
            f"arena of {arena} bytes overflows the largest static internal block ({board.max_arena_in_sram}) by "
            f"{arena - board.max_arena_in_sram} bytes on {board.name}"
        )
    result = {
        "board": board.name, "description": board.description, "margin": margin, "regions": regions,
        "arena_alloc_bytes": arena, "precision": precision,
        "overflow": ("; ".join(problems) if problems else ""),
    }
    if problems and raise_error:
        raise EdgepickError(result["overflow"])
    return result


def format_budget(budget: dict) -> str:
    lines = [f"memory budget: {budget['board']} ({budget['description']}), {budget['precision']}, margin {budget['margin']:.0%}",
             f"  {'region':6} {'used+margin':>12} {'capacity':>10}  items"]
    for region in budget["regions"]:
        items = ", ".join(f"{label} {n}" for label, n in region["items"]) or "-"
        flag = "  OVER" if region["used"] > region["capacity"] else ""
        lines.append(f"  {region['name']:6} {region['used']:12d} {region['capacity']:10d}  {items}{flag}")
    if budget["overflow"]:
        lines.append(f"  overflow: {budget['overflow']}")
    return "\n".join(lines)
