"""``make firmware-sim``: the firmware built for an emulated RV32IMC board (ESP32-C3 class) and run under QEMU.

Reads top to bottom: the generated model (``quantize.firmware_dir``) -> TFLite Micro for rv32imc (cached) -> the
board's images (reference and ESP-NN kernels) -> the first ``firmware_sim.traces`` traces of a dataset streamed
through the serial protocol -> the JSON picks, compared with the Python stream reference on the same samples (the
same flatbuffer in the ``tflite-micro`` interpreter, the pick rule read back from ``model_config.h``) -> a memory
table, the instructions per window and per second of data of each mode, and the energy table
(pipeline/deploy/energy.py), printed and saved as ``<out>/<board>.json`` (the table also as ``<out>/<board>.energy.md``).

A streaming model in the folder (a causal student's, pipeline/deploy/stream_firmware.py) runs the firmware's
streaming mode: one 64-sample block per Invoke; its Python twin is the same flatbuffer block by block and the block
picker (pipeline.model.block_picks); its path is ``streaming`` (measured per block x blocks per second), with the
instructions outside Invoke (normalisation, quantization and state writes, state copies and dequantization) beside
it; ``firmware_sim.baseline_dir``, a whole-window model folder, adds that model's exact replay and live mode, measured
on the first seconds of the same stream, to the same table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.data import waveforms
from pipeline.deploy import boards, emulator, energy, stream_firmware, tflm
from pipeline.artifacts import atomic_write_text, save_config
from pipeline.deploy.convert import c_array, fp16_pack
from pipeline.deploy.convert.c_array import read_model_config
from pipeline.errors import EdgepickError
from pipeline.model.picking import PHASES, LiveRule, PickRule, live_stream_picks, stream_picks
from pipeline.model.streaming import BLOCK
from pipeline.deploy.serial_protocol import parse_pick_lines, sample_lines
from pipeline.data.traces import load_labelled, resolve_dataset


def rule_from_header(values: dict[str, str]) -> PickRule:
    """The pick rule the firmware was built with, read back from its model_config.h."""
    def number(name: str) -> float:
        return float(values[name].rstrip("fu"))

    top = number("EDGEPICK_PICK_TOP_TOLERANCE")
    blinding = (int(number("EDGEPICK_BLIND_PRE")), int(number("EDGEPICK_BLIND_POST")))
    return PickRule(p_threshold=number("EDGEPICK_P_THRESHOLD"), s_threshold=number("EDGEPICK_S_THRESHOLD"),
                    top_tolerance=None if top < 0 else top, top_half_width=int(number("EDGEPICK_PICK_TOP_HALF_WIDTH")),
                    blinding=blinding, match_tolerance_s=number("EDGEPICK_PICK_TOLERANCE_S"))


def live_rule_from_header(values: dict[str, str]) -> LiveRule:
    """The live rule the firmware was built with, read back from its model_config.h."""
    lookaheads = {phase: int(values[f"EDGEPICK_LIVE_{phase}_BLIND_POST"]) for phase in PHASES}
    confirms = {phase: int(values.get(f"EDGEPICK_LIVE_{phase}_CONFIRM_POST", "0")) for phase in PHASES}
    return LiveRule.of(int(values["EDGEPICK_WINDOW_SAMPLES"]), int(values["EDGEPICK_LIVE_HOP_SAMPLES"]), lookaheads,
                       confirms, int(values.get("EDGEPICK_LIVE_CONFIRM_WITHIN", "0")))


def model_flatbuffer(model_dir: Path, values: dict[str, str]) -> bytes:
    """The flatbuffer TFLite Micro runs: model_data.cc's array (FP16-packed models expanded as the firmware does)."""
    payload = c_array.parse_c_array((model_dir / "model_data.cc").read_text())
    return fp16_pack.expand_fp16(payload) if values.get("EDGEPICK_MODEL_PACKED_FP16") == "1" else payload


def python_picks(waveform: np.ndarray, flatbuffer: bytes, values: dict[str, str], rule: PickRule) -> list[tuple]:
    """(phase, sample, fwhm, retracted) of the Python stream reference: the firmware's windows, normalisation,
    picker and retractions in pipeline.model.picking, the model in the tflite-micro interpreter."""
    model = lambda w: tflm.run(flatbuffer, w[None])[0].T  # noqa: E731
    window, eps = int(values["EDGEPICK_WINDOW_SAMPLES"]), float(values["EDGEPICK_NORM_EPS"].rstrip("f"))
    rate = float(values["EDGEPICK_SAMPLING_RATE_HZ"].rstrip("f"))
    gate = values.get("EDGEPICK_S_NEEDS_HORIZONTALS", "0").split()[0] == "1"
    if live_mode(values):  # the firmware built from this header picks live (model_config.h's EDGEPICK_LIVE)
        picks, _ = live_stream_picks(waveform, model, live_rule_from_header(values), rule, eps, rate,
                                     s_needs_horizontals=gate)
    else:
        picks, _ = stream_picks(waveform, model, window, int(values["EDGEPICK_HOP_SAMPLES"]), rule, eps, rate,
                                s_needs_horizontals=gate)
    return sorted((p["phase"], int(p["sample"]), int(p["fwhm"]), p.get("retracted") is not None) for p in picks)


def live_mode(values: dict[str, str]) -> bool:
    """Whether a firmware built from this model_config.h runs the live mode (a header without it replays exactly)."""
    return values.get("EDGEPICK_LIVE", "0").strip() == "1"


def hop_samples(values: dict[str, str]) -> int:
    """The hop the firmware built from this header runs its windows at."""
    return int(values["EDGEPICK_LIVE_HOP_SAMPLES" if live_mode(values) else "EDGEPICK_HOP_SAMPLES"])


def firmware_run(lines: list[str]) -> dict:
    """What one emulator run printed: picks ((phase, sample, fwhm, retracted), as :func:`python_picks`), instructions per
    window, messages, its closing measurement."""
    objects = []
    for line in lines:
        if line.startswith("{"):
            try:
                objects.append(json.loads(line))
            except ValueError:
                pass
    by_type = {}
    for obj in objects:
        by_type.setdefault(obj.get("type"), []).append(obj)
    return {"picks": sorted((p["phase"], int(p["sample"]), p.get("fwhm"), p["retracted"] is not None)
                            for p in parse_pick_lines(lines)),
            "instructions": [t["instructions"] for t in by_type.get("timing", [])],
            "timings": by_type.get("timing", []),
            "errors": [m.get("msg", "") for m in by_type.get("error", [])],
            "warnings": [m.get("msg", "") for m in by_type.get("warn", [])],
            "memory": (by_type.get("memory") or [{}])[0], "info": [m.get("msg", "") for m in by_type.get("info", [])],
            "emulator": (by_type.get("emulator") or [{}])[-1]}


def streamed_traces(config, rate: float) -> list[tuple[str, list, float]]:
    """(name, gap-free segments [(first sample, (3, m) ZNE)], t0) of what is streamed: one station of
    ``firmware_sim.mseed``, else the first ``firmware_sim.traces`` traces of a dataset."""
    s = config.firmware_sim
    if s.mseed:
        segments, t0 = waveforms.station_segments(s.mseed, s.station or None, rate, "firmware_sim.station=NET.STA")
        limit, kept = int(s.max_seconds * rate), []
        for first, data in segments:
            if first < limit:
                kept.append((first, data[:, : limit - first]))
        return [(f"{Path(s.mseed).name}{' ' + s.station if s.station else ''}", kept, t0)]
    folder, split = resolve_dataset(config, s.dataset or None)
    traces, metadata, dataset_rate, order = load_labelled(folder, split)
    if abs(dataset_rate - rate) > 1e-6:
        raise EdgepickError(f"dataset {folder} is sampled at {dataset_rate:g} Hz, the model at {rate:g} Hz")
    if order != "ZNE":
        traces = [w[[order.index(c) for c in "ZNE"]] for w in traces]
    names = metadata["trace_name"] if "trace_name" in metadata else [str(i) for i in range(len(traces))]
    return [(str(names[i]), [(0, traces[i])], 0.0) for i in range(min(s.traces, len(traces)))]


# The modes whose cost per second of data the report derives from one measured window (the model's Invoke is the
# same in both; only how often it runs differs): the exact replay's hop is EDGEPICK_HOP_SAMPLES (window - SeisBench's
# overlap, 1501), the live mode's EDGEPICK_LIVE_HOP_SAMPLES (live.hop_samples, 100). A new path (the streaming
# student) adds its own entry to instructions_per_second_of_data and the energy table takes it as one more row.
MODES = {"exact_replay": "EDGEPICK_HOP_SAMPLES", "live": "EDGEPICK_LIVE_HOP_SAMPLES"}
BASIS = ("instructions per window measured in the emulator (the median over the timing lines, counted around "
         "Invoke) x windows per second of each mode (sampling rate / hop, derived from model_config.h)")


def windows_per_second(values: dict[str, str], rate: float, live_hop: int) -> dict[str, float]:
    """Windows per second of data of each mode, derived from the header's hops (``live_hop``, live.hop_samples, for a
    header written without live settings)."""
    hops = {mode: int(values[key]) if key in values else live_hop for mode, key in MODES.items()}
    if any(h < 1 for h in hops.values()):
        raise EdgepickError(f"model_config.h has a hop below 1 sample: {hops}")
    return {mode: rate / hop for mode, hop in hops.items()}


def throughput(results: dict[str, list[dict]], values: dict[str, str], rate: float, live_hop: int,
               seconds_streamed: float) -> dict:
    """The report's instruction fields from the parsed runs (:func:`firmware_run` per kernel set and trace): per window
    (measured), per second of data of each mode (derived), and the whole firmware per second of the data it was fed
    (measured over the run: boot, serial protocol, normalisation, picking and the model, the built mode only)."""
    per_window = {k: int(np.median([n for r in runs for n in r["instructions"]] or [0])) for k, runs in results.items()}
    per_second = windows_per_second(values, rate, live_hop)
    whole = {k: sum(int(r["emulator"].get("instructions", 0)) for r in runs) / seconds_streamed
             for k, runs in results.items()} if seconds_streamed > 0 else None
    return {"instructions_per_window": per_window, "windows_per_second": per_second,
            "instructions_per_second_of_data": {k: {mode: n * w for mode, w in per_second.items()}
                                                for k, n in per_window.items()},
            "instructions_per_second_of_data_basis": BASIS,
            "instructions_per_second_of_data_whole_run": whole,
            "whole_run_mode": "live" if live_mode(values) else "exact_replay"}


def mode_labels(values: dict[str, str], live_hop: int, model: str = "") -> dict[str, str]:
    """The energy table's row label of each whole-window mode (``model``: which model, when it is not the one built)."""
    hops = {mode: values.get(key, str(live_hop)) for mode, key in MODES.items()}
    return {mode: f"{energy.PATH_LABELS[mode]} (a window every {hop} samples{model})" for mode, hop in hops.items()}


def energy_report(per_second: dict[str, dict[str, float]], board: boards.Board, cycles_per_instruction: float,
                  labels: dict[str, str], basis: str = BASIS) -> dict:
    """The energy estimates of each kernel set's paths on ``board`` and the markdown table of ESP-NN's (what the
    boards run)."""
    rows = {k: energy.estimates(paths, board, cycles_per_instruction) for k, paths in per_second.items()}
    kernels = "esp_nn" if "esp_nn" in rows else next(iter(rows))
    return {"energy_est": rows, "energy_assumptions": energy.assumptions(board, cycles_per_instruction),
            "energy_table_md": energy.markdown_table(rows[kernels], board, cycles_per_instruction,
                                                     kernels="ESP-NN" if kernels == "esp_nn" else kernels,
                                                     labels=labels, basis=basis)}


# The streaming mode (firmware/src/stream_model.cc): its timing line per block counts Invoke and, apart, the work
# around it, in the CPU counter's units: the normalisation with the int8 quantization (the core's RunningNorm), the
# state writes, the state copies with the dequantization
STREAM_PARTS = ("normalize", "states_in", "states_out")
STREAM_BASIS = ("instructions per Invoke measured in the emulator (the median over the timing lines) x Invokes per "
                "second of data: a 64-sample block per Invoke for the streaming model, a window every hop for the "
                "whole-window model's modes (its hops from its model_config.h)")


def stream_throughput(results: dict[str, list[dict]], rate: float, seconds_streamed: float) -> dict:
    """The report's instruction fields of the streaming mode from the parsed runs: per block (Invoke, measured), per
    second of data (x rate / 64 blocks per second), the work outside Invoke per block and per second of data
    (:data:`STREAM_PARTS`), the whole firmware per second of the data it was fed."""
    blocks_per_second = rate / BLOCK
    per_block = {k: int(np.median([n for r in runs for n in r["instructions"]] or [0])) for k, runs in results.items()}
    outside = {k: {part: int(np.median([t.get(part, 0) for r in runs for t in r["timings"]] or [0]))
                   for part in STREAM_PARTS} for k, runs in results.items()}
    whole = {k: sum(int(r["emulator"].get("instructions", 0)) for r in runs) / seconds_streamed
             for k, runs in results.items()} if seconds_streamed > 0 else None
    return {"instructions_per_block": per_block, "blocks_per_second": blocks_per_second,
            "instructions_per_second_of_data": {k: {"streaming": n * blocks_per_second} for k, n in per_block.items()},
            "instructions_outside_invoke_per_block": outside,
            "instructions_outside_invoke_per_second_of_data": {
                k: {**{part: n * blocks_per_second for part, n in parts.items()},
                    "total": sum(parts.values()) * blocks_per_second} for k, parts in outside.items()},
            "instructions_per_second_of_data_basis": STREAM_BASIS,
            "instructions_per_second_of_data_whole_run": whole, "whole_run_mode": "streaming"}


def baseline_run(config, board: boards.Board, lib: Path, segments: list, t0: float, rate: float) -> dict | None:
    """The whole-window model of ``firmware_sim.baseline_dir`` on the same board, its images run on the first
    window + 4 hops (of the mode it was built for) of ``segments`` (a stream's first gap-free stretch): its instructions per window and per
    second of data in each mode (its Invoke is the same in both), to sit beside the streaming path; None without
    one."""
    s = config.firmware_sim
    if not s.baseline_dir:
        return None
    folder = Path(s.baseline_dir)
    if stream_firmware.is_stream_model(folder) or not (folder / "model_config.h").is_file():
        raise EdgepickError(f"firmware_sim.baseline_dir {folder} holds no whole-window model (model_config.h): "
                            "a make quantize of a plain student's firmware_dir")
    values = read_model_config(folder / "model_config.h")
    if abs(float(values["EDGEPICK_SAMPLING_RATE_HZ"].rstrip("f")) - rate) > 1e-6:
        raise EdgepickError(f"firmware_sim.baseline_dir {folder}: its model runs at {values['EDGEPICK_SAMPLING_RATE_HZ']} "
                            f"Hz, the streaming model at {rate:g} Hz")
    hops = windows_per_second(values, rate, config.live.hop_samples)
    need = int(values["EDGEPICK_WINDOW_SAMPLES"]) + 4 * hop_samples(values)  # five windows in the mode it was built for
    first, data = segments[0]
    if data.shape[1] < need:
        raise EdgepickError(f"firmware_sim.baseline_dir: the stream's first gap-free stretch has {data.shape[1]} "
                            f"samples, the whole-window model needs {need} for its windows")
    images = emulator.build_firmware(board, folder, Path(s.build_dir) / board.name / "baseline", lib, s.vendor or None)
    lines = list(sample_lines([(first, data[:, :need])], t0))
    per_window = {}
    for kernels, elf in images.elf.items():
        status, output = emulator.run_firmware(elf, lines, Path(s.build_dir) / board.name / f"baseline-run-{kernels}")
        outcome = firmware_run(output)
        if status != 0 or not outcome["instructions"]:
            raise EdgepickError(f"the emulated whole-window firmware of {folder} ({kernels} kernels) ran no window: "
                                f"{(outcome['errors'] or ['no error line'])[0]}")
        per_window[kernels] = int(np.median(outcome["instructions"]))
    return {"model_dir": str(folder), "model_sha256": values["EDGEPICK_MODEL_SHA256"],
            "samples_streamed": need, "instructions_per_window": per_window, "windows_per_second": hops,
            "instructions_per_second_of_data": {k: {mode: n * w for mode, w in hops.items()}
                                                for k, n in per_window.items()},
            "labels": mode_labels(values, config.live.hop_samples, f", whole-window model {folder}")}


def memory_table(board: boards.Board, image: dict, first: dict, arena: int) -> list[tuple[str, int, int]]:
    """(item, bytes, board capacity) rows of the memory table."""
    stack_used = int(first["emulator"].get("stack_used", 0))
    libc_heap = int(first["emulator"].get("libc_heap", 0))
    ram = image["static_ram_bytes"] + int(first["emulator"].get("internal_allocated", 0)) + libc_heap + stack_used
    return [("flash: code + rodata (firmware, TFLM, libc; no ESP-IDF)", image["code_bytes"],
             board.app_partition_bytes),
            ("flash: model", image["model_bytes"], board.app_partition_bytes),
            ("flash: total", image["flash_bytes"], board.app_partition_bytes),
            ("RAM: static (.data + .bss)", image["static_ram_bytes"], board.sram_bytes),
            ("RAM: tensor arena (allocated)", arena, board.sram_bytes),
            ("RAM: heap allocated (arena + buffers)", int(first["emulator"].get("internal_allocated", 0)), board.sram_bytes),
            ("RAM: libc heap (stdio buffers)", libc_heap, board.sram_bytes),
            ("RAM: stack high-water", stack_used, board.main_stack_bytes),
            ("RAM: total", ram, board.sram_bytes)] + (
        [("PSRAM: allocated (buffers, arena when it does not fit RAM)", int(first["emulator"].get("psram_allocated", 0)),
          board.psram_bytes)] if board.psram_bytes else [])


def run(config) -> dict:
    s = config.firmware_sim
    board = boards.get_board(config.board.name)
    if board.isa != "riscv32":
        print(f"note: {board.name} is an {board.isa} board: the emulator runs its memory budget and clock on RV32IMC "
              "(the ESP32-C3's instruction set; SET='board.name=esp32c3'), so its instruction counts are RV32IMC's")
    model_dir = Path(config.quantize.firmware_dir)
    if stream_firmware.is_stream_model(model_dir):  # a causal student's: the firmware's streaming mode
        model = stream_firmware.read(model_dir)
        values, rate, model_window = model.values, model.rate, model.values["EDGEPICK_STREAM_WINDOW_SAMPLES"]

        def reference_picks(waveform: np.ndarray, t0: float) -> list[tuple]:
            return sorted((p["phase"], int(p["sample"]), int(p["fwhm"]), False)
                          for p in stream_firmware.twin_picks(model, waveform, t0))
    else:
        values = read_model_config(model_dir / "model_config.h")
        rule, flatbuffer = rule_from_header(values), model_flatbuffer(model_dir, values)
        rate, model_window = float(values["EDGEPICK_SAMPLING_RATE_HZ"].rstrip("f")), values["EDGEPICK_WINDOW_SAMPLES"]

        def reference_picks(waveform: np.ndarray, t0: float) -> list[tuple]:
            return python_picks(waveform, flatbuffer, values, rule)
    traces = streamed_traces(config, rate)
    if not traces or not any(d.shape[1] for _, segments, _ in traces for _, d in segments):
        raise EdgepickError("nothing to stream: firmware_sim.traces is 0 or the dataset / miniSEED span is empty")

    lib = emulator.build_tflm(s.vendor or None)
    images = emulator.build_firmware(board, model_dir, Path(s.build_dir) / board.name, lib, s.vendor or None)
    image = emulator.image_memory(images.elf["esp_nn"], board)

    results = {k: [] for k in images.elf}
    comparisons = []
    for name, segments, t0 in tqdm(traces, desc=f"emulated {board.name}", unit="trace"):
        lines = list(sample_lines(segments, t0))
        for kernels, elf in images.elf.items():
            status, output = emulator.run_firmware(elf, lines, Path(s.build_dir) / board.name / f"run-{kernels}")
            outcome = firmware_run(output)
            if status != 0:
                raise EdgepickError(f"the emulated firmware ({kernels} kernels) stopped with status {status}: "
                                    f"{(outcome['errors'] or ['no error line'])[0]}")
            results[kernels].append(outcome)
        # gaps are the firmware's to fill or to end a segment at: the Python reference covers gap-free streams
        reference = reference_picks(segments[0][1], t0) if len(segments) == 1 else None
        comparisons.append({"trace": name, "samples": int(sum(d.shape[1] for _, d in segments)),
                            "segments": len(segments), "python": reference,
                            "reference_kernels": results["reference"][-1]["picks"],
                            "esp_nn_kernels": results["esp_nn"][-1]["picks"]})
    if not any(r["instructions"] for runs in results.values() for r in runs):
        raise EdgepickError(f"no window ran: every stream is shorter than the model's window of {model_window} samples")
    overflowed = [k for k, runs in results.items() if any(r["emulator"].get("stack_overflow") for r in runs)]
    if overflowed:
        raise EdgepickError(f"the stack of the emulated firmware ({', '.join(overflowed)} kernels) overflowed its "
                            f"{board.main_stack_bytes} bytes (CONFIG_ESP_MAIN_TASK_STACK_SIZE): raise it")
    seconds_streamed = sum(c["samples"] for c in comparisons) / rate
    if stream_firmware.is_stream_model(model_dir):
        measured = stream_report(config, board, model, results, seconds_streamed,
                                 baseline_run(config, board, lib, traces[0][1], traces[0][2], rate))
    else:
        measured = window_report(config, board, values, results, seconds_streamed)
    arena = int(values["EDGEPICK_STREAM_ARENA_ALLOC_BYTES" if "EDGEPICK_STREAM_ARENA_ALLOC_BYTES" in values
                       else "EDGEPICK_ARENA_ALLOC_BYTES"].rstrip("u"))
    report = {
        "board": board.name, "isa": "rv32imc", "board_isa": board.isa,
        "memory": [{"item": i, "bytes": b, "capacity": c} for i, b, c in memory_table(board, image, results["esp_nn"][0],
                                                                                       arena)],
        **measured, "traces": comparisons,
        "picks_equal": all(c["esp_nn_kernels"] == c["reference_kernels"] and c["python"] in (None, c["esp_nn_kernels"])
                           for c in comparisons),
    }
    out = Path(s.out) / f"{board.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=1))
    atomic_write_text(out.with_suffix(".energy.md"), report["energy_table_md"] + "\n")
    save_config(out.parent, config)
    for warning in dict.fromkeys(w for runs in results.values() for r in runs for w in r["warnings"]):
        print(f"firmware warning: {warning}")
    print(format_report(report))
    print(f"report: {out}")
    if not report["picks_equal"]:
        raise EdgepickError(f"the emulated firmware's picks differ from the Python reference (see {out})")
    return report


def window_report(config, board: boards.Board, values: dict[str, str], results: dict, seconds_streamed: float) -> dict:
    """The report's figures of a whole-window model: per window, per second of data of each mode, energy."""
    s = config.firmware_sim
    rate = float(values["EDGEPICK_SAMPLING_RATE_HZ"].rstrip("f"))
    counts = throughput(results, values, rate, config.live.hop_samples, seconds_streamed)
    per_window = counts["instructions_per_window"]
    hop_s = hop_samples(values) / rate
    macs = int(values.get("EDGEPICK_MODEL_MACS", "0").rstrip("u"))
    seconds = {k: n * s.cycles_per_instruction / (board.cpu_mhz * 1e6) for k, n in per_window.items()}
    return {
        "model_sha256": values["EDGEPICK_MODEL_SHA256"], "precision": values["EDGEPICK_PRECISION"],
        **counts, "macs_per_window": macs,
        "instructions_per_mac": {k: round(n / macs, 2) for k, n in per_window.items()} if macs else None,
        "cycles_per_instruction_assumed": s.cycles_per_instruction,
        "cpu_mhz": board.cpu_mhz, "seconds_per_window_est": seconds,
        "real_time_factor_est": {k: v / hop_s for k, v in seconds.items()}, "hop_s": hop_s, "live": live_mode(values),
        **energy_report(counts["instructions_per_second_of_data"], board, s.cycles_per_instruction,
                        mode_labels(values, config.live.hop_samples)),
    }


def stream_report(config, board: boards.Board, model, results: dict, seconds_streamed: float,
                  baseline: dict | None) -> dict:
    """The report's figures of a streaming model: per block (Invoke and the work around it), per second of data
    beside the whole-window model's modes (``baseline``), energy."""
    s = config.firmware_sim
    counts = stream_throughput(results, model.rate, seconds_streamed)
    per_block = counts["instructions_per_block"]
    per_second = {k: {**(baseline["instructions_per_second_of_data"].get(k, {}) if baseline else {}), **paths}
                  for k, paths in counts["instructions_per_second_of_data"].items()}
    labels = {**(baseline.pop("labels") if baseline else {}),
              "streaming": f"streaming ({BLOCK}-sample block per Invoke, {model.values['EDGEPICK_STREAM_PRECISION']})"}
    macs = int(model.number("MACS_PER_BLOCK"))
    hop_s = BLOCK / model.rate
    seconds = {k: n * s.cycles_per_instruction / (board.cpu_mhz * 1e6) for k, n in per_block.items()}
    return {
        "model_sha256": model.values["EDGEPICK_STREAM_MODEL_SHA256"], "precision": model.values["EDGEPICK_STREAM_PRECISION"],
        "streaming": True, **counts, "instructions_per_second_of_data": per_second, "baseline": baseline,
        "macs_per_block": macs, "instructions_per_mac": {k: round(n / macs, 2) for k, n in per_block.items()} if macs else None,
        "state_bytes": int(model.number("STATE_BYTES")), "cycles_per_instruction_assumed": s.cycles_per_instruction,
        "cpu_mhz": board.cpu_mhz, "seconds_per_block_est": seconds,
        "real_time_factor_est": {k: v / hop_s for k, v in seconds.items()}, "hop_s": hop_s, "live": True,
        **energy_report(per_second, board, s.cycles_per_instruction, labels, STREAM_BASIS),
    }


def format_report(report: dict) -> str:
    lines = [f"emulated firmware: {report['board']} ({report['isa']}), {report['precision']} model "
             f"{report['model_sha256'][:12]}", f"  {'memory':56} {'bytes':>9} {'of':>9}"]
    lines += [f"  {m['item']:56} {m['bytes']:9d} {m['capacity']:9d}" for m in report["memory"]]
    cpi, mhz = report["cycles_per_instruction_assumed"], report["cpu_mhz"]
    unit = "block" if report.get("streaming") else "window"
    for kernels, n in report[f"instructions_per_{unit}"].items():
        per_mac = f" ({report['instructions_per_mac'][kernels]:.1f} per MAC)" if report["instructions_per_mac"] else ""
        lines.append(f"  {kernels + ' kernels':18} {n / 1e6:6.3f} M instructions per {unit} (Invoke){per_mac} -> "
                     f"{report[f'seconds_per_{unit}_est'][kernels] * 1e3:7.1f} ms at {mhz} MHz, real-time factor "
                     f"{report['real_time_factor_est'][kernels]:.3f} (estimate: {cpi:g} cycle per instruction)")
    for kernels, parts in (report.get("instructions_outside_invoke_per_block") or {}).items():
        lines.append(f"  {kernels + ' kernels':18} outside Invoke, per block: " + ", ".join(
            f"{part} {n:,}" for part, n in parts.items()) + " instructions = "
            f"{report['instructions_outside_invoke_per_second_of_data'][kernels]['total'] / 1e6:.3f} M per second of data")
    for kernels, modes in report["instructions_per_second_of_data"].items():
        lines.append(f"  {kernels + ' kernels':18} instructions per second of data (measured per Invoke x Invokes per "
                     "second): " + ", ".join(f"{mode} {n / 1e6:.2f} M" for mode, n in modes.items()))
    for kernels, n in (report.get("instructions_per_second_of_data_whole_run") or {}).items():
        lines.append(f"  {kernels + ' kernels':18} whole firmware, {report['whole_run_mode']} as built: {n / 1e6:.2f} M "
                     "instructions per second of data streamed (measured: boot, protocol, picking and the model)")
    lines += ["", report["energy_table_md"], ""]
    for c in report["traces"]:
        kernels_agree = c["esp_nn_kernels"] == c["reference_kernels"]
        if c["python"] is None:
            verdict = f"not compared with Python ({c['segments']} segments)"
        else:
            verdict = f"{'equal to' if c['python'] == c['esp_nn_kernels'] else 'DIFFERENT from'} the Python reference's {len(c['python'])}"
        retracted = sum(p[3] for p in c["esp_nn_kernels"])
        lines.append(f"  {c['trace']} ({c['samples']} samples): {len(c['esp_nn_kernels'])} picks ({retracted} retracted), {verdict}; "
                     f"the two kernel sets {'agree' if kernels_agree else 'DISAGREE'}")
    return "\n".join(lines)
