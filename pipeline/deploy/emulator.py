"""The firmware on an emulated RV32IMC board (the ESP32-C3 / C6 instruction set), built and run on this machine.

Debian's bare-metal RISC-V toolchain (``gcc-riscv64-unknown-elf``, picolibc) cross-compiles ``firmware/sim``: the
firmware's own sources, the generated model and a port layer in place of ESP-IDF, linked against TensorFlow Lite
Micro + ESP-NN from ``../shared/vendor`` (used in place). ``qemu-system-riscv32`` runs the image with semihosting:
the serial input is a host file, the output the firmware's JSON lines, and ``-icount shift=0`` makes the retired
instruction count exact and repeatable.

- :func:`build_tflm`: the two TFLite Micro libraries (reference and ESP-NN kernels), built once per hash of their
  sources, flags and compiler into the cache (``$EDGEPICK_CACHE``, else ``$XDG_CACHE_HOME/edgepick``).
- :func:`build_firmware`: the images of one board (its flash and RAM as linker regions) and model folder.
- :func:`run_firmware`: one image on serial lines; its output lines.
- :func:`image_memory`: what an image takes of the board's flash and RAM.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.artifacts import atomic_write_text, temporary_dir
from pipeline.deploy.boards import Board
from pipeline.errors import EdgepickError

REPO = Path(__file__).resolve().parents[2]
SIM_DIR = REPO / "firmware" / "sim"
KERNELS = ("reference", "esp_nn")
TOOLS = {"riscv64-unknown-elf-gcc": "gcc-riscv64-unknown-elf", "qemu-system-riscv32": "qemu-system-misc",
         "cmake": "cmake", "ninja": "ninja-build"}
LIBSTDCXX_HEADERS = Path("/usr/include/newlib/c++")  # libstdc++-arm-none-eabi-dev
# Where firmware/sim/CMakeLists.txt puts the board's memory in QEMU virt's RAM (it starts at 0x80000000).
FLASH_ORIGIN, RAM_ORIGIN, PSRAM_ORIGIN = 0x80000000, 0x80400000, 0x80800000
SERIAL_FILE = "serial_in.txt"
OUTPUT_FILE = "serial_out.jsonl"  # what the firmware printed (JSON lines among boot noise)


def missing_tools() -> list[str]:
    """What is missing to build and run the emulated firmware, each with the Debian package that brings it."""
    missing = [f"{tool} (apt install {package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]
    gcc = shutil.which("riscv64-unknown-elf-gcc")
    if gcc:
        specs = subprocess.run([gcc, "-print-file-name=picolibc.specs"], capture_output=True, text=True).stdout.strip()
        if not Path(specs).is_absolute():
            missing.append("picolibc for riscv64-unknown-elf (apt install picolibc-riscv64-unknown-elf)")
    if libstdcxx_headers() is None:
        missing.append("C++ headers (apt install libstdc++-arm-none-eabi-dev)")
    return missing


def libstdcxx_headers() -> Path | None:
    """The newest /usr/include/newlib/c++/<version> (numeric order: 12.2.1 after 9.3.0)."""
    def version(path: Path) -> tuple:
        return tuple(int(part) if part.isdigit() else 0 for part in path.parent.name.split("."))

    versions = sorted(LIBSTDCXX_HEADERS.glob("*/arm-none-eabi"), key=version) if LIBSTDCXX_HEADERS.is_dir() else []
    return versions[-1].parent if versions else None


def vendor_roots(vendor: str | Path | None = None) -> tuple[Path, Path]:
    """(esp-tflite-micro, esp-nn) source trees: ``vendor`` or ``$EDGEPICK_VENDOR`` or ``../shared/vendor``."""
    root = Path(vendor or os.environ.get("EDGEPICK_VENDOR") or REPO.parent / "shared" / "vendor")
    found = []
    for name, probe in (("esp-tflite-micro", "tensorflow/lite/micro/micro_interpreter.h"), ("esp-nn", "include/esp_nn.h")):
        trees = sorted(p for p in root.glob(f"{name}-*") if (p / probe).is_file())
        if not trees:
            raise EdgepickError(f"no {name} sources in {root} (expected {name}-<version>/{probe})")
        found.append(trees[-1])
    return found[0], found[1]


def cache_root() -> Path:
    if os.environ.get("EDGEPICK_CACHE"):
        return Path(os.environ["EDGEPICK_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgepick"


def _tool_output(args: list[str]) -> str:
    return subprocess.run(args, capture_output=True, text=True).stdout


def _files_digest(digest, root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())


def tflm_key(tflm_root: Path, esp_nn_root: Path) -> str:
    """Hash of what the libraries are built from: vendor sources, build files, port headers, compiler version."""
    digest = hashlib.sha256()
    for root in (tflm_root, esp_nn_root, SIM_DIR / "tflm"):
        _files_digest(digest, root)
    # the toolchain file, and the one port header TFLite Micro includes (esp/micro_time.cc: esp_timer.h)
    for path in (SIM_DIR / "riscv32-picolibc.cmake", SIM_DIR / "port" / "esp_timer.h"):
        digest.update(path.read_bytes())
    # the compiler, the C library its specs point at, and the C++ headers
    digest.update(_tool_output(["riscv64-unknown-elf-gcc", "--version"]).encode())
    specs = Path(_tool_output(["riscv64-unknown-elf-gcc", "-print-file-name=picolibc.specs"]).strip())
    digest.update(specs.read_bytes() if specs.is_file() else b"no picolibc")
    digest.update(_tool_output(["dpkg-query", "-W", "picolibc-riscv64-unknown-elf"]).encode()
                  if shutil.which("dpkg-query") else b"")
    digest.update(str(libstdcxx_headers()).encode())
    return digest.hexdigest()[:16]


def _run_build(args: list[str], what: str, progress: str | None = None) -> str:
    """Run a cmake step; ninja's "[i/n]" lines drive a progress bar. Returns the output; raises on failure."""
    from tqdm import tqdm

    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, bar = [], None
    for line in process.stdout:
        lines.append(line)
        match = re.match(r"\[(\d+)/(\d+)\]", line)
        if progress and match:
            if bar is None:
                bar = tqdm(total=int(match.group(2)), desc=progress, unit="file")
            bar.n = int(match.group(1))
            bar.refresh()
    process.wait()
    if bar is not None:
        bar.close()
    output = "".join(lines)
    if process.returncode != 0:
        raise EdgepickError(f"{what} failed: {_first_error(output)}")
    return output


def _first_error(output: str) -> str:
    overflow = re.findall(r"region `(\w+)' overflowed by (\d+) bytes", output)
    if overflow:
        return "; ".join(f"region {region} overflowed by {n} bytes" for region, n in overflow)
    for line in output.splitlines():
        if re.search(r"\berror\b|Error|undefined reference", line):
            return line.strip()[:300]
    tail = [line for line in output.splitlines() if line.strip()]
    return tail[-1].strip()[:300] if tail else "no output"


def _cmake_configure(source: Path, build: Path, defines: dict[str, str]) -> list[str]:
    args = ["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja",
            f"-DCMAKE_TOOLCHAIN_FILE={SIM_DIR / 'riscv32-picolibc.cmake'}", "-DCMAKE_BUILD_TYPE=Release",
            f"-DEDGEPICK_LIBSTDCXX_HEADERS={libstdcxx_headers()}"]
    return args + [f"-D{k}={v}" for k, v in defines.items()]


def _require_tools() -> None:
    missing = missing_tools()
    if missing:
        raise EdgepickError(f"cannot build the emulated firmware, missing: {', '.join(missing)}")


def build_tflm(vendor: str | Path | None = None, jobs: int | None = None) -> Path:
    """The folder holding ``libtflm_reference.a`` and ``libtflm_esp_nn.a``, built unless the cache has them."""
    _require_tools()
    tflm_root, esp_nn_root = vendor_roots(vendor)
    target = cache_root() / f"tflm-{tflm_key(tflm_root, esp_nn_root)}"
    libraries = [target / f"libtflm_{k}.a" for k in KERNELS]
    if all(p.is_file() for p in libraries):
        return target
    _remove_unnamed_temporaries(target)
    build = temporary_dir(target)  # named for this process: a killed build's folder is removed by the next one
    staged = None
    try:
        _run_build(_cmake_configure(SIM_DIR / "tflm", build, {"TFLM_ROOT": tflm_root, "ESP_NN_ROOT": esp_nn_root}),
                   "configuring TensorFlow Lite Micro")
        _run_build(["cmake", "--build", str(build), "-j", str(jobs or os.cpu_count() or 2)],
                   "building TensorFlow Lite Micro", progress="TensorFlow Lite Micro (rv32imc, once)")
        staged = temporary_dir(target)
        for library in libraries:
            shutil.copy2(build / library.name, staged / library.name)
        (staged / "SOURCES").write_text(f"{tflm_root}\n{esp_nn_root}\n")
        try:
            staged.rename(target)
        except OSError:
            if all(p.is_file() for p in libraries):  # another run finished the same build first: keep its copy
                shutil.rmtree(staged, ignore_errors=True)
            else:  # an incomplete folder of that name (a library deleted by hand): replace it
                broken = temporary_dir(target)
                target.rename(broken / "old")
                staged.rename(target)
                shutil.rmtree(broken, ignore_errors=True)
    finally:
        for folder in (build, staged):  # staged is gone once renamed into place
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
    return target


def _remove_unnamed_temporaries(target: Path, older_than_s: float = 3600.0) -> None:
    """The build folders of an earlier edgepick, named without their process (``.<target>.[lib.|broken.]<random>``):
    removed once they are an hour old, far longer than a build takes."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.((lib|broken)\.)?[a-z0-9_]{{8}}$")
    if not target.parent.is_dir():
        return
    for path in target.parent.iterdir():
        if pattern.match(path.name) and path.is_dir() and time.time() - path.stat().st_mtime > older_than_s:
            shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Images:
    """The emulated firmware of one board: an image per kernel set."""

    board: Board
    elf: dict[str, Path]


def build_firmware(board: Board, model_dir: str | Path, build_dir: str | Path, tflm_lib: Path,
                   vendor: str | Path | None = None, trace_tensors: bool = False) -> Images:
    """Cross-compile firmware/sim for ``board`` with the model in ``model_dir``. A build that does not fit the
    board's flash or RAM fails at link time; the error names the region."""
    _require_tools()
    tflm_root, _ = vendor_roots(vendor)
    model_dir, build_dir = Path(model_dir).resolve(), Path(build_dir).resolve()
    if not (model_dir / "model_ops.h").is_file() and not (model_dir / "stream_model_ops.h").is_file():
        raise EdgepickError(f"{model_dir} holds no generated model (model_ops.h or stream_model_ops.h missing): run "
                            "`make quantize` first")
    extra = ["-DBOARD_HAS_PSRAM"] if board.psram_bytes else []
    if trace_tensors:
        extra.append("-DEDGEPICK_TRACE_TENSORS=1")
    defines = {"TFLM_ROOT": tflm_root, "TFLM_LIB_DIR": tflm_lib, "MODEL_DIR": model_dir, "BOARD_NAME": board.name,
               "FLASH_BYTES": board.app_partition_bytes, "RAM_BYTES": board.sram_bytes,
               "PSRAM_BYTES": board.psram_bytes, "STACK_BYTES": board.main_stack_bytes, "CPU_MHZ": board.cpu_mhz,
               "EXTRA_DEFINES": " ".join(extra)}
    build_dir.mkdir(parents=True, exist_ok=True)
    _run_build(_cmake_configure(SIM_DIR, build_dir, defines), f"configuring the emulated firmware for {board.name}")
    try:
        _run_build(["cmake", "--build", str(build_dir)], f"building the emulated firmware for {board.name}")
    except EdgepickError as error:
        if "overflowed" in str(error):
            raise EdgepickError(f"the firmware does not fit board {board.name} "
                                f"(flash {board.app_partition_bytes} B, RAM {board.sram_bytes} B): "
                                f"{str(error).split(': ', 1)[1]}") from None
        raise
    return Images(board, {k: build_dir / f"firmware_{k}.elf" for k in KERNELS})


def image_memory(elf: Path, board: Board) -> dict:
    """Bytes of the board's flash (code, model, the rest) and static RAM an image takes, from its sections."""
    sections = {}
    for line in _tool_output(["riscv64-unknown-elf-size", "-A", "-d", str(elf)]).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = (int(parts[1]), int(parts[2]))
    symbols = _tool_output(["riscv64-unknown-elf-nm", "-S", str(elf)])
    match = re.search(r"^[0-9a-f]+ ([0-9a-f]+) \w g_edgepick(_stream)?_model$", symbols, re.M)
    model = int(match.group(1), 16) if match else 0

    def in_region(address: int, origin: int, size: int) -> bool:
        return origin <= address < origin + size

    flash = sum(size for size, address in sections.values() if in_region(address, FLASH_ORIGIN, board.app_partition_bytes))
    # .tbss_space reserves the same bytes as .tbss (picolibc.ld): counted once
    ram_sections = {name: size for name, (size, address) in sections.items()
                    if in_region(address, RAM_ORIGIN, board.sram_bytes) and name not in (".stack", ".tbss_space")}
    loaded_copies = sum(size for name, size in ram_sections.items() if name in (".data", ".tdata"))
    # picolibc.ld puts read-only data (the model among it) in .text
    code = sum(sections.get(name, (0, 0))[0] for name in (".init", ".text")) - model
    return {"flash_bytes": flash + loaded_copies, "code_bytes": code, "model_bytes": model,
            "static_ram_bytes": sum(ram_sections.values()), "stack_bytes": sections.get(".stack", (0, 0))[0]}


def run_firmware(elf: Path, lines: list[str], run_dir: str | Path, timeout_s: float = 900.0) -> tuple[int, list[str]]:
    """Boot ``elf`` under QEMU with ``lines`` as its serial input; (exit status, output lines)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SERIAL_FILE).write_text("".join(lines))
    args = ["qemu-system-riscv32", "-M", "virt", "-m", "32M", "-bios", "none", "-display", "none", "-serial", "none",
            "-monitor", "none", "-semihosting-config", "enable=on,target=native", "-icount", "shift=0",
            "-kernel", str(Path(elf).resolve())]
    try:
        result = subprocess.run(args, cwd=run_dir, capture_output=True, text=True, timeout=timeout_s,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise EdgepickError(f"the emulated firmware {Path(elf).name} ran past {timeout_s:.0f} s") from None
    output = (result.stdout + result.stderr).splitlines()
    # what the board printed, as a board's serial log: `make listen SET='listen.port=<this file>'` reads it back
    atomic_write_text(run_dir / OUTPUT_FILE, "".join(line + "\n" for line in output))
    return result.returncode, output
