"""The models of the benchmark stage and what each costs.

Every model the benchmark scores is a :class:`BenchModel`: a name, a runtime (``pytorch`` or ``tflm``), a
precision, and one or more SeisBench ``WaveformModel`` members whose ``annotate`` turns obspy streams into
probability curves. One code path (SeisBench's own windowing, normalisation hooks, stacking and trigger) serves all:

* teachers: SeisBench ``from_pretrained`` models (``teacher.name``); an ensemble ``a*0.7+b*0.3`` is scored on the
  weighted mean of its members' (P, S, noise) distributions (:func:`pipeline.model.teachers.to_distribution`), the target
  the student was distilled on; a single teacher is scored on its own raw P and S curves, as ``classify`` picks;
* the PyTorch student (``quantize.student``);
* the TFLite variants in ``quantize.out`` (``model_fp32.tflite``, ``model_fp16.ef16`` expanded with
  :func:`pipeline.deploy.convert.fp16_pack.expand_fp16`, ``model_int8.tflite``): :class:`TFLMStudent` is the student's
  own ``XiaoNet`` class whose ``forward`` runs each normalised window through the real TFLite Micro interpreter
  (:func:`pipeline.deploy.tflm.run`, int8 input quantised and output dequantised there), so ``annotate`` / ``classify``
  cut, normalise, stack and pick exactly as for the PyTorch student.

Costs (:func:`costs`): parameters and multiply-accumulates per window (:func:`pipeline.model.student.count_macs`:
convolutions and linear layers; EQTransformer's LSTM and attention are not counted), flatbuffer bytes (what goes to
flash: the packed blob for FP16), TFLite Micro arena bytes (:func:`pipeline.deploy.tflm.minimal_arena`, measured on a
real window), host latency per window (median wall time of single-window forwards on this machine, after a warm-up)
and the *estimated* ESP32 / ESP32-C3 / ESP32-S3 latency of the quantize stage (``pipeline.deploy.boards.estimate_latency``:
MACs x cycles per MAC; INT8 on ESP32 and ESP32-C3 from the instruction count measured in the emulator, ESP32-S3
and float from Espressif's published person-detection timings; not a measurement on a board).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.deploy import boards, tflm
from pipeline.model import teachers
from pipeline.deploy.convert.fp16_pack import expand_fp16
from pipeline.errors import EdgepickError
from pipeline.model.picking import PickRule
from pipeline.data.normalization import normalize_windows
from pipeline.model.student import XiaoNet, count_macs, hop_samples, load_student

VARIANT_FILES = {"fp32": "model_fp32.tflite", "fp16": "model_fp16.ef16", "int8": "model_int8.tflite"}
TFLITE_MAGIC = b"TFL3"  # flatbuffer file identifier at bytes 4..8


@dataclass
class BenchModel:
    name: str  # "teacher", "student"
    runtime: str  # pytorch | tflm
    precision: str  # fp32 | fp16 | int8
    members: list  # SeisBench WaveformModels
    weights: list[float] = field(default_factory=lambda: [1.0])
    spec: str = ""  # teacher spec / student path / flatbuffer path
    flatbuffer: bytes | None = None  # TFLite Micro model (FP16: expanded)
    device_bytes: int | None = None  # what is stored on the board
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} {self.runtime}-{self.precision}"

    @property
    def sampling_rate(self) -> float:
        return float(self.members[0].sampling_rate)

    @property
    def ensemble(self) -> bool:
        return len(self.members) > 1


# ------------------------------------------------------------------------------------------------ TFLite Micro
class TFLMStudent(XiaoNet):
    """The student's SeisBench model with ``forward`` run by TFLite Micro on a flatbuffer."""

    def __init__(self, flatbuffer: bytes, in_samples: int, overlap: int, sampling_rate: float = 100.0,
                 component_order: str = "ZNE", norm_eps: float = 1e-6, arena: int | None = None,
                 pick_rule: PickRule | None = None, s_needs_horizontals: bool = False):
        super().__init__(base_channels=1, in_samples=in_samples, channel_multipliers=(1, 1, 1, 1),
                         sampling_rate=sampling_rate, component_order=component_order, norm_eps=norm_eps,
                         pick_rule=pick_rule, s_needs_horizontals=s_needs_horizontals,
                         default_args={"overlap": int(overlap)})
        self.flatbuffer = flatbuffer
        self.arena = arena

    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        if logits:
            raise EdgepickError("TFLMStudent gives probabilities only (the flatbuffer ends in SOFTMAX)")
        return torch.from_numpy(tflm.run(self.flatbuffer, x.detach().cpu().numpy(), self.arena))


def read_variant(path: str | Path, precision: str) -> bytes:
    """The runnable flatbuffer of one variant file; a file of the wrong kind is one EdgepickError line."""
    path = Path(path)
    data = path.read_bytes()
    if precision == "fp16":
        try:
            data = expand_fp16(data)
        except EdgepickError as error:
            raise EdgepickError(f"{path} is not a packed FP16 model written by `make quantize` ({error})") from None
    if len(data) < 8 or data[4:8] != TFLITE_MAGIC:
        raise EdgepickError(f"{path} is not a TFLite flatbuffer (no {TFLITE_MAGIC.decode()} identifier)")
    details = tflm.io_details(data)
    shape, out_shape = details["input"]["shape"], details["output"]["shape"]
    if len(shape) != 4 or shape[0] != 1 or shape[2] != 1 or shape[3] != 3 or out_shape != shape:
        raise EdgepickError(f"{path}: input {shape} / output {out_shape} is not a (1, samples, 1, 3) student")
    want = {"fp32": "float32", "fp16": "float32", "int8": "int8"}[precision]
    if details["input"]["dtype"] != want:
        raise EdgepickError(f"{path}: input dtype {details['input']['dtype']}, a {precision} variant has {want}")
    return data


def tflite_variants(folder: str | Path, student, precisions=("fp32", "fp16", "int8"), say=print) -> list[BenchModel]:
    """The TFLite Micro variants in ``folder`` as BenchModels; missing ones are skipped with a printed line."""
    folder = Path(folder)
    report = {}
    if (folder / "quantize_report.json").is_file():
        try:
            report = json.loads((folder / "quantize_report.json").read_text())
        except json.JSONDecodeError:
            say(f"benchmark: {folder}/quantize_report.json is unreadable; variant provenance unknown")
    models = []
    for precision in precisions:
        path = folder / VARIANT_FILES[precision]
        if not path.is_file():
            say(f"benchmark: skipping TFLite {precision}: {path} does not exist (run `make quantize`)")
            continue
        flatbuffer = read_variant(path, precision)
        in_samples = int(tflm.io_details(flatbuffer)["input"]["shape"][1])
        info = report.get("variants", {}).get(precision, {})
        rate = float(info.get("sampling_rate", student.sampling_rate if student is not None else 100.0))
        if student is not None:
            if in_samples != student.in_samples:
                raise EdgepickError(f"{path} takes {in_samples}-sample windows but the student takes {student.in_samples}")
            overlap = student.in_samples - hop_samples(student)
            order, eps = student.component_order, student.norm_eps
            rule = student.pick_rule  # the variant picks (and blinds) as the student it came from
            gate = bool(student.default_args.get("s_needs_horizontals", False))
        else:
            overlap = in_samples - int(info.get("hop_samples", in_samples // 2 + 1))
            order, eps = "ZNE", 1e-6
            rule = PickRule(**info["pick_rule"]) if "pick_rule" in info else None  # else the student's defaults
            gate = bool(info.get("s_needs_horizontals", False))
        sample = _sample_input(flatbuffer)
        arena = tflm.minimal_arena(flatbuffer, sample)
        model = TFLMStudent(flatbuffer, in_samples, overlap, rate, order, eps, arena=arena, pick_rule=rule,
                            s_needs_horizontals=gate).eval()
        bench = BenchModel("student", "tflm", precision, [model], spec=str(path), flatbuffer=flatbuffer,
                           device_bytes=path.stat().st_size)
        bench.arena_bytes = arena
        source = report.get("student")
        if source:
            bench.notes.append(f"quantized from {source}")
        models.append(bench)
    return models


def _sample_input(flatbuffer: bytes) -> np.ndarray:
    """A realistic device input (a normalised noisy window with an onset) for the arena search."""
    details = tflm.io_details(flatbuffer)["input"]
    n = details["shape"][1]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, n))
    x[:, n // 2 :] *= 8
    return tflm.quantize_input(normalize_windows(x), details)


def matches_student(variant: BenchModel, student, tolerance: float = 0.05) -> float:
    """Max |TFLite - PyTorch| probability on one realistic window: large when the variant came from another student."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 3, student.in_samples))
    x[:, :, student.in_samples // 2 :] *= 8
    x = normalize_windows(x)
    with torch.no_grad():
        reference = student(torch.from_numpy(x)).numpy()
    return float(np.abs(tflm.run(variant.flatbuffer, x, getattr(variant, "arena_bytes", None)) - reference).max())


# ----------------------------------------------------------------------------------------------------- loaders
def load_teacher(spec: str) -> BenchModel:
    members = teachers.parse_teacher_spec(spec)
    models = [teachers.load_model(m) for m in members]
    rates = {float(m.sampling_rate) for m in models}
    if len(rates) != 1:
        raise EdgepickError(f"ensemble {spec!r} mixes sampling rates {sorted(rates)}")
    return BenchModel("teacher", "pytorch", "fp32", models, [m.weight for m in members], spec=spec)


def load_student_model(path: str | Path, say=print) -> BenchModel | None:
    path = Path(path)
    if not path.exists():
        say(f"benchmark: skipping the PyTorch student: {path} does not exist (run `make distill`)")
        return None
    return BenchModel("student", "pytorch", "fp32", [load_student(path)], spec=str(path))


def check_rates(models: list[BenchModel], rates) -> None:
    """EdgepickError when the data's sampling rate is not every model's: nothing is resampled silently."""
    rates = sorted({float(r) for r in rates})
    for model in models:
        for member in model.members:
            want = float(member.sampling_rate)
            bad = [r for r in rates if abs(r - want) > 1e-6]
            if bad:
                raise EdgepickError(
                    f"{model.label} works at {want:g} Hz but the data has {', '.join(f'{r:g}' for r in bad)} Hz "
                    "(re-run the data stage, which resamples with an anti-alias filter)"
                )


# ------------------------------------------------------------------------------------------------------- costs
def host_latency_ms(model: BenchModel, repeats: int = 20) -> float:
    """Median wall time (ms) of one window through the model's forward (PyTorch; normalisation excluded) or through
    TFLite Micro's ``invoke`` on a persistent interpreter (input already quantised)."""
    timings = []
    rng = np.random.default_rng(0)
    if model.runtime == "tflm":  # one persistent interpreter, as on the board: set_input + invoke
        interpreter, exc, err = tflm.load(model.flatbuffer, getattr(model, "arena_bytes", None) or tflm.MAX_ARENA)
        if interpreter is None:
            raise EdgepickError(f"{model.label}: TFLite Micro cannot load the model: {err.strip() or exc}")
        x = _sample_input(model.flatbuffer)
        interpreter.set_input(x, 0)
        interpreter.invoke()  # warm-up
        samples = []
        for _ in range(max(1, repeats)):
            started = time.perf_counter()
            interpreter.set_input(x, 0)
            interpreter.invoke()
            samples.append(time.perf_counter() - started)
        return 1000 * float(np.median(samples))
    for member in model.members:
        x = torch.as_tensor(rng.normal(size=(1, len(member.component_order), member.in_samples)), dtype=torch.float32)
        with torch.no_grad():
            pre = member.annotate_batch_pre(x, argdict=dict(member.default_args))
            pre = pre[0] if isinstance(pre, tuple) else pre
            member(pre)  # warm-up
            samples = []
            for _ in range(max(1, repeats)):
                started = time.perf_counter()
                member(pre)
                samples.append(time.perf_counter() - started)
        timings.append(float(np.median(samples)))
    return 1000 * sum(timings)


def costs(model: BenchModel, student=None, repeats: int = 20) -> dict:
    """Parameters, MACs / window, flatbuffer bytes, arena bytes, host and estimated ESP32 latency of one model."""
    counted = [student] if model.runtime == "tflm" and student is not None else model.members
    if model.runtime == "tflm" and student is None:
        params = macs = None
    else:
        params = int(sum(sum(p.numel() for p in m.parameters()) for m in counted))
        macs = int(sum(m.count_macs() if hasattr(m, "count_macs") else count_macs(m, (1, len(m.component_order), m.in_samples))
                       for m in counted))  # the student's own count includes its functional output filter
    window = [int(m.in_samples) for m in model.members]
    out = {
        "parameters": params,
        "macs_per_window": macs,
        "window_samples": window[0] if len(set(window)) == 1 else window,
        "flatbuffer_bytes": model.device_bytes,
        "flatbuffer_expanded_bytes": len(model.flatbuffer) if model.flatbuffer is not None else None,
        "arena_bytes": getattr(model, "arena_bytes", None),
        "host_latency_ms": round(host_latency_ms(model, repeats), 3),
        "esp32_latency_ms_est": None,
        "esp32s3_latency_ms_est": None,
        "esp32c3_latency_ms_est": None,
    }
    if model.runtime == "tflm" and macs:
        out.update(esp32_estimates(macs, model.precision))
    return out


def esp32_estimates(macs: int, precision: str) -> dict:
    """The quantize stage's latency model (:func:`pipeline.deploy.boards.estimate_latency`): estimated ms per window on
    ESP32 / ESP32-C3 / ESP32-S3 (INT8 with ESP-NN kernels; None where the model has no figure)."""
    est = boards.estimate_latency(macs, precision, hop_seconds=0)
    return {f"{chip}_latency_ms_est": round(est[chip]["ms"], 1) if chip in est else None
            for chip in ("esp32", "esp32c3", "esp32s3")}
