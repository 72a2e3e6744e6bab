"""The one place where edgepick's settings live.

Every stage reads its section of :class:`Config`. Defaults work out of the box (the embedded synthetic
dataset, the Oklahoma PhaseNet teacher); a YAML file (``--config``) and ``--set section.key=value`` on the
command line override them, in that order.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.config_fields import check_section, convert, field_rules, field_types, flatten, setting
from pipeline.deploy import boards, pick_formats
from pipeline.errors import EdgepickError
from pipeline.model.picking import LiveRule, PickRule

PRECISIONS = boards.PRECISIONS


@dataclass
class SyntheticConfig:
    """Oklahoma-like local earthquakes and noise, generated without any network."""

    n_traces: int = setting(2000, ge=1)
    trace_seconds: float = setting(60.0, gt=0)
    noise_fraction: float = setting(0.15, ge=0, le=1)  # noise-only traces
    double_event_fraction: float = setting(0.05, ge=0, le=1)  # traces holding two events
    snr_db_min: float = -5.0
    snr_db_max: float = 40.0
    distance_km_min: float = setting(5.0, gt=0)
    distance_km_max: float = setting(100.0, gt=0)


@dataclass
class OklaConfig:
    """A local copy of the OKLA_1Mil_120s_Ver_3 dataset (SeisBench format) or the OKLAD merged files."""

    path: str = field(default_factory=lambda: os.environ.get("OKLA_PATH", ""))
    max_traces: int = setting(0, ge=0)  # 0: all


@dataclass
class FdsnConfig:
    """Events with P/S picks from an FDSN event service, waveforms from an FDSN data centre."""

    event_client: str = setting("USGS", nonempty=True)
    waveform_client: str = setting("IRIS", nonempty=True)
    starttime: str = "2016-09-03T00:00:00"
    endtime: str = "2016-09-10T00:00:00"
    # Oklahoma
    minlatitude: float = setting(33.6, ge=-90, le=90)
    maxlatitude: float = setting(37.0, ge=-90, le=90)
    minlongitude: float = setting(-103.0, ge=-180, le=180)
    maxlongitude: float = setting(-94.4, ge=-180, le=180)
    minmagnitude: float = 2.5
    networks: str = "OK,O2,GS,US"
    channels: str = "HH?,BH?,EH?"
    max_events: int = setting(200, ge=1)
    seconds_before_p: float = setting(30.0, ge=0)
    trace_seconds: float = setting(60.0, gt=0)
    requests_per_second: float = setting(2.0, gt=0)
    timeout_s: float = setting(60.0, gt=0)
    max_gap_seconds: float = setting(1.0, ge=0)  # shorter gaps are filled by interpolation, longer ones skip the trace
    cache: str = ""  # default: .fdsn_cache beside the output folder (what makes a re-run resume)


@dataclass
class MiniseedConfig:
    """The user's own continuous miniSEED (no picks), cut into windows for unlabelled distillation."""

    path: str = ""
    window_seconds: float = setting(60.0, gt=0)
    hop_seconds: float = setting(30.0, gt=0)
    pattern: str = setting("**/*", nonempty=True)
    # Split groups: windows never cross a group_seconds block (aligned to UTC midnight), so windows of different
    # groups never share a sample. group_by "station": one group per station and block; "time": one group per block
    # across all stations (also keeps one earthquake seen at two stations in one split; needs many blocks).
    group_seconds: float = setting(3600.0, gt=0)
    group_by: str = setting("station", choices=("station", "time"), kind="grouping")
    inventory: str = ""  # StationXML: rotates Z/1/2 to Z/N/E; without it 1/2 are taken as N/E (recorded per window)


@dataclass
class DataConfig:
    # synthetic | okla | seisbench:<Name> (TXED, STEAD, INSTANCE, ...) | seisbench:<folder> (a SeisBench-format
    # folder, re-split by event) | fdsn | miniseed
    source: str = setting("synthetic", nonempty=True)
    out: str = ""  # default: data/<source name> (data/<folder name> for seisbench:<folder>)
    seed: int = setting(42, ge=0)
    sampling_rate: float = setting(100.0, gt=0)
    component_order: str = setting("ZNE", nonempty=True)
    # train, dev, test, by event
    split_fractions: tuple[float, float, float] = setting((0.7, 0.15, 0.15), ge=0, le=1, total=1)
    # Traces with peak amplitude below this are rescaled by a power of ten (recorded): no fixed epsilon swamps them
    min_peak_amplitude: float = setting(1e-3, gt=0)
    vertical_only: bool = False  # write N and E flat (zero): single-component (vertical) stations, as ncsc100 holds
    max_traces: int = setting(0, ge=0)  # 0: all; a cap for the seisbench:<Name> and okla sources
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    okla: OklaConfig = field(default_factory=OklaConfig)
    fdsn: FdsnConfig = field(default_factory=FdsnConfig)
    miniseed: MiniseedConfig = field(default_factory=MiniseedConfig)

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        folder = self.seisbench_folder()
        if folder is not None:
            return Path("data") / folder.name
        return Path("data") / self.source.replace(":", "_").lower()

    def seisbench_folder(self) -> Path | None:
        """The folder of a ``seisbench:<folder>`` source; None for any other (class names hold no slash)."""
        kind, _, name = self.source.partition(":")
        if kind == "seisbench" and ("/" in name or Path(name).is_dir()):
            return Path(name)
        return None


@dataclass
class TeacherFinetuneConfig:
    """``make teacher``: fine-tune a pretrained teacher on a labelled dataset (pipeline/stages/teacher.py)."""

    base: str = ""  # the pretrained teacher to start from; "" = teacher.name (one PhaseNet)
    dataset: str = setting("data/synthetic", nonempty=True)  # needs analyst picks
    out: str = setting("models/teacher", nonempty=True)  # SeisBench model in <out>/teacher/; use it as teacher.name=phasenet:<out>
    epochs: int = setting(10, ge=1)
    windows_per_epoch: int = setting(0, ge=0)  # 0: one window per training trace
    batch_size: int = setting(32, ge=1)
    learning_rate: float = setting(1e-4, gt=0)
    weight_decay: float = setting(1e-4, ge=0)
    grad_clip: float = setting(1.0, gt=0)
    patience: int = setting(3, ge=1)  # early stop after this many epochs without a better dev loss
    sigma: int = setting(20, ge=1)  # width (samples) of the Gaussian pick labels (SeisBench ProbabilisticLabeller)
    workers: int = setting(-1, ge=-1)  # DataLoader worker processes; -1: automatic (none on <= 2 cores, else half the
    seed: int = setting(0, ge=0)  # cores, <= 8)
    resume: bool = False


@dataclass
class TeacherConfig:
    """The teacher(s): ``phasenet:okla``, ``eqtransformer:elep`` or an ensemble ``phasenet:okla+eqtransformer:elep``."""

    name: str = setting("phasenet:okla", nonempty=True)
    # cache: soft labels computed once per trace into <dataset>/soft_labels (pipeline.model.teachers.SoftLabelCache);
    # on-the-fly: the teacher runs on every training batch (pipeline.model.teachers.OnTheFlyTeacher), on each window's
    # whole-trace context, giving the cache's target, with no cache on disk; ~3x slower per epoch than the cache
    # here and on an H100 alike (scripts/benchmark_distill_modes.py).
    # name may also be a local folder holding a saved model (make teacher), e.g. phasenet:models/teacher
    mode: str = "cache"
    batch_size: int = setting(64, ge=1)  # teacher windows per forward pass
    device: str = ""  # torch device for the teacher; "" = CPU
    cache_dir: str = ""  # "" = <dataset>/soft_labels
    finetune: TeacherFinetuneConfig = field(default_factory=TeacherFinetuneConfig)


@dataclass
class StudentConfig:
    """The XiaoNet-style student."""

    base_channels: int = setting(8, ge=1)
    in_samples: int = setting(3001, ge=64)
    # channels of encoder levels 1-3 and the bottleneck = base_channels x these; (1, 2, 4, 4) keeps the default
    # at 1.88 M MACs per 3001-sample window, 9.7 % of PhaseNet's 19.46 M (doubling to 8 would be 13 %)
    channel_multipliers: tuple[int, ...] = setting((1, 2, 4, 4), ge=1, length=4)
    # XiaoNet uses Hardswish; ReLU6 is fused into the convolutions by TFLite and keeps INT8 picks within 1 % of the
    # float model (Hardswish: 91-94 %, below the 97 % bar), so it is the default for a TFLite-Micro-first student
    activation: str = "relu6"
    smooth_output: bool = True  # fixed [1,2,2,2,1]/8 filter on the logits against the stride-4 upsampling ripple
    # DS k5 blocks (base_channels wide) between the decoder and the head, at full resolution, where the pick's time
    # is set (0: XiaoNet's layout); each adds ~0.3 M MACs per 3001-sample window and 2 samples of receptive field
    refine_blocks: int = setting(0, ge=0)
    # the streaming form (pipeline.model.streaming): causal layers, a running normalisation over norm_window
    # samples, scores output_delay samples late (the look-ahead); the live mode then computes each sample once
    causal: bool = False
    output_delay: int = setting(100, ge=1)
    norm_window: int = setting(1024, ge=64)
    # the S score's own look-ahead, longer than P's (0: output_delay): S is told from P by what follows it
    s_output_delay: int = setting(0, ge=0)
    antialias: bool = False  # blurred stride-4 stages and upsampling: scores less tied to the stream's block grid
    sample_norm: bool = False  # the running normalisation's peak up to each sample, not to each block's end
    norm_lag: int = setting(0, ge=0)  # sample_norm's peak of the samples this many before (clipped at NORM_CLIP)
    # The pick rule saved with the student, written into the firmware's model_config.h and scored by the benchmark
    # (their meanings: pipeline.model.picking.PickRule; < 0 for the top tolerance: the first maximum, as SeisBench picks)
    p_threshold: float = setting(PickRule.p_threshold, gt=0, lt=1)
    s_threshold: float = setting(PickRule.s_threshold, gt=0, lt=1)
    pick_top_tolerance: float = setting(PickRule.top_tolerance, lt=1)
    # no S where a window's N and E are flat (a vertical-only station): the teacher's abstention there, as a rule
    # (pipeline.model.components; docs/results.md, "Stop 28")
    s_needs_horizontals: bool = False


@dataclass
class DistillConfig:
    # comma-separated folders mix: each folder's share of the windows is its share of the training traces, or
    dataset: str = setting("data/synthetic", nonempty=True)
    dataset_weights: tuple[float, ...] = setting((), ge=0)  # these relative weights (one per folder)
    out: str = setting("models/student", nonempty=True)
    temperature: float = setting(4.0, gt=0)
    alpha: float = setting(1.0, ge=0, le=1)  # 1: teacher only (unlabelled data); 0: hard labels only
    phase_weight: float = setting(0.0, ge=0)  # KL sample weights 1 + this x the teacher's P + S probability (0: an even mean)
    # whose P + S probability sets them: "teacher", or "both" (the larger of teacher's and student's: false peaks weigh)
    phase_weight_source: str = "teacher"
    # weight of a term on where the teacher's peaks lie and how wide, whatever their height (losses.peak_shape_loss)
    peak_shape: float = setting(0.0, ge=0)
    # that term's target is the teacher's curve raised to this power (>= 1; above 1 narrower around its maximum)
    peak_shape_power: float = setting(1.0, ge=1)
    s_quiet_weight: float = setting(0.0, ge=0)  # weight of -log(1 - student S) where the teacher's S < s_quiet_below
    s_quiet_below: float = setting(0.05, gt=0, lt=1)  # (0: none; false S in noise and codas, pipeline.distill.losses.s_quiet_loss)
    feature_weight: float = setting(0.0, ge=0)  # of matching PhaseNet's last decoder features (FitNets; distill.features)
    # weight of the same P / S scores when a causal student's block grid moves (losses.shift_consistency_loss)
    shift_consistency: float = setting(0.0, ge=0)
    epochs: int = setting(16, ge=1)
    windows_per_epoch: int = setting(0, ge=0)  # 0: one window per training trace
    batch_size: int = setting(64, ge=1)
    learning_rate: float = setting(3e-3, gt=0)
    weight_decay: float = setting(1e-4, ge=0)
    grad_clip: float = setting(1.0, gt=0)
    patience: int = setting(4, ge=1)  # early stop after this many epochs without a better dev loss
    # traces where the teacher sees a phase are drawn this much more often (1: as often as the others)
    oversample_phases: float = setting(3.0, ge=1)
    oversample_near_field: float = setting(1.0, ge=1)  # traces where the teacher picks S <= near_field_s after P: drawn this much more
    near_field_s: float = setting(5.0, gt=0)  # often again (cache mode; 1: no more often): near-field S, as in induced seismicity
    # Share of windows around an analyst pick (a folder without any: the teacher's, cache mode) put where the live
    # firmware keeps its predictions (live.*: smaller look-ahead - 50 to larger look-ahead + hop + 50 samples before
    # the end), so the student learns to pick with the live mode's little future (0: anywhere in the window)
    live_windows: float = setting(0.0, ge=0, le=1)
    gap_resume: float = setting(0.0, ge=0, le=1)  # share of windows silenced then resumed before any phase (GapResume)
    workers: int = setting(-1, ge=-1)  # DataLoader worker processes; -1: automatic (as teacher.finetune.workers)
    seed: int = setting(0, ge=0)
    resume: bool = False
    init_from: str = ""  # start from this saved student (fine-tuning) instead of random weights
    quantization_aware: bool = False  # train through int8 fake quantization of every activation (pipeline/distill/fake_quant.py)


@dataclass
class QatConfig:
    """``make qat``: quantization-aware fine-tuning of a distilled student, so its INT8 build picks like it: distill's
    loop, data and teacher (the distill section), from ``init_from``, through int8 fake quantization
    (pipeline/distill/fake_quant.py). The saved student stays a plain float model for ``make quantize``."""

    init_from: str = setting("models/student", nonempty=True)
    out: str = setting("models/student_qat", nonempty=True)
    epochs: int = setting(4, ge=1)
    learning_rate: float = setting(5e-4, gt=0)
    patience: int = setting(10, ge=1)


@dataclass
class SweepConfig:
    """``make sweep``: one distillation per grid point (on distill.dataset, with distill's other settings)."""

    temperatures: tuple[float, ...] = setting((1.0, 2.0, 4.0, 6.0, 10.0), gt=0, nonempty=True)
    alphas: tuple[float, ...] = setting((0.3, 0.5, 0.7, 1.0), ge=0, le=1, nonempty=True)
    base_channels: tuple[int, ...] = setting((4, 8), ge=1, nonempty=True)
    # The dev split every student is ranked on ("path:split"; several, comma-separated, pool): a labelled one against
    # its analyst picks, unlabelled continuous windows (the recipe's data/transfer:dev) against the teacher's;
    # "" = calibrate.dataset, else the dev split of distill.dataset's first folder. A test split is refused: it is
    # what the benchmark reports.
    dataset: str = ""
    # ranked on the mean F1 over P, S and these tolerances, each phase at its best threshold of calibrate.thresholds
    tolerances_s: tuple[float, ...] = setting((0.1, 0.5), gt=0, nonempty=True)
    out: str = setting("models/sweep", nonempty=True)


@dataclass
class CalibrateConfig:
    """``make calibrate``: the student's P and S thresholds chosen on a dev split and saved with it (its pick rule,
    which make quantize writes into model_config.h and the benchmark scores with; pipeline/stages/calibrate.py)."""

    student: str = ""  # "" = quantize.student (the student make quantize converts); replaced in place
    # "path:split" of dev data (several, comma-separated, pool): a labelled split scored against its analyst picks,
    # continuous windows against the teacher's (teacher.name); "" = the dev split of distill.dataset's first folder
    dataset: str = ""
    # pick placements (student.pick_top_tolerance, < 0: the first maximum) scored at the chosen thresholds; the best mean
    # F1 over the phases and tolerances_s is saved too (none: the student's kept)
    top_tolerances: tuple[float, ...] = setting((), lt=1)
    thresholds: tuple[float, ...] = setting((0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7),
                                            gt=0, lt=1, nonempty=True)
    # the objective per phase: the mean F1 over these
    tolerances_s: tuple[float, ...] = setting((0.1, 0.5), gt=0, nonempty=True)
    max_traces: int = setting(600, ge=0)  # a seeded subset of the split (0: all)
    seed: int = setting(0, ge=0)


@dataclass
class QuantizeConfig:
    student: str = setting("models/student", nonempty=True)
    out: str = setting("models/tflite", nonempty=True)
    precisions: tuple[str, ...] = setting(PRECISIONS, choices=PRECISIONS, kind="precision", nonempty=True)
    calibration_windows: int = setting(256, ge=1)  # representative windows from the train split (>= 200)
    # INT8 ranges from fewer real windows do not hold up: refused
    min_calibration_windows: int = setting(200, ge=1)
    # test-split windows for TFLite Micro vs PyTorch outputs and pick agreement
    heldout_windows: int = setting(200, ge=1)
    dataset: str = ""  # default: distill.dataset
    seed: int = setting(0, ge=0)
    # the variant written to firmware_dir
    firmware_precision: str = setting("int8", choices=PRECISIONS, kind="precision")
    firmware_dir: str = setting("firmware/src/model", nonempty=True)
    check_agreement: bool = False  # refuse a variant under the pick-agreement bar (meaningful on a trained student)
    # INT8 only: depthwise->pointwise activation equalisation (exact in float), 0 = off, 1 = full; see pipeline/deploy/convert/int8.py
    equalize_alpha: float = setting(1.0, ge=0, le=1)
    # INT8 activation ranges: >= 100 converter min/max, (50, 100) that percentile, < 0 chosen on train windows
    range_percentile: float = -1.0


@dataclass
class BoardConfig:
    """The target board; its memory budget is checked before anything is flashed."""

    # esp32 | esp32-psram2 | esp32-psram4 | esp32s3-psram8 | esp32c3 (pipeline/deploy/boards.py)
    name: str = setting("esp32-psram4", choices=boards.BOARDS, kind="board")
    margin: float = setting(0.10, ge=0)  # every memory region must hold used x (1 + margin)
    ring_seconds: float = setting(45.0, gt=0)  # sample ring buffer (int32, three components)


@dataclass
class FirmwareSimConfig:
    """``make firmware-sim``: the firmware cross-built for an emulated RV32IMC board (board.name; the ESP32-C3 is
    the chip of that instruction set) and run under qemu-system-riscv32 (pipeline/deploy/emulator.py)."""

    dataset: str = ""  # traces streamed through the serial protocol: "" = benchmark.dataset's default; "path[:split]"
    traces: int = setting(5, ge=0)  # the first n traces of it
    mseed: str = ""  # or: one station of a miniSEED file (gaps stay gaps; compared with Python when gap-free)
    station: str = ""  # NET.STA of the miniSEED file (needed when it holds several)
    max_seconds: float = setting(600.0, gt=0)  # the miniSEED stream is cut to its first max_seconds
    # one folder per board; TFLite Micro itself is cached in ~/.cache/edgepick
    build_dir: str = setting("build/firmware-sim", nonempty=True)
    out: str = setting("reports/firmware-sim", nonempty=True)  # <out>/<board>.json
    # the real-time factor at the board's clock assumes this many cycles per emulated instruction (an in-order
    # single-issue core at best; flash cache misses only add to it)
    cycles_per_instruction: float = setting(1.0, gt=0)
    vendor: str = ""  # esp-tflite-micro / esp-nn sources: "" = $EDGEPICK_VENDOR, else ../shared/vendor
    # with a streaming model in quantize.firmware_dir: a whole-window model folder (a plain student's make quantize
    # firmware_dir) whose exact replay and live mode are measured on the same board and stream and reported beside the
    # streaming path; "" = the streaming path alone
    baseline_dir: str = ""


@dataclass
class ListenConfig:
    """``make listen``: a board's JSON pick lines, read live and written in the formats networks ingest
    (pipeline/stages/listen.py, pipeline/deploy/pick_formats.py, docs/firmware.md "Picks for a network")."""

    port: str = ""  # the board's serial port (/dev/ttyUSB0); a regular file or FIFO of its lines, or "-" (stdin)
    baud: int = setting(115200, ge=1)
    # NET.STA.LOC.CC: the station's SEED codes and its channels' band + instrument codes, e.g. OK.X34..HH
    # (P picks on HHZ, S picks on HHN)
    station: str = ""
    # <out>/<station>_<start>.<format> per session; Earthworm lines appended per station
    out: str = setting("reports/listen", nonempty=True)
    formats: tuple[str, ...] = setting(("quakeml", "earthworm"), choices=pick_formats.FORMATS, kind="format",
                                       nonempty=True)  # of quakeml, sc3ml, nlloc, earthworm
    max_picks: int = setting(0, ge=0)  # stop after this many picks; 0: no limit
    # stop after this many seconds; 0: until Ctrl-C or the device's end-of-stream line
    max_seconds: float = setting(0.0, ge=0)
    model: str = "student"  # the model the board runs, named in each pick's method id
    agency: str = ""  # the picks' creation info: agency id and author
    author: str = "edgepick"
    # installation id (earthworm_global.d) and module id (earthworm.d)
    earthworm_installation: int = setting(pick_formats.EARTHWORM_INSTALLATION, ge=0, le=255)
    earthworm_module: int = setting(pick_formats.EARTHWORM_MODULE, ge=0, le=255)


@dataclass
class LiveConfig:
    """The live pick mode (docs/firmware.md, "Live mode"): a window every ``hop_samples``, each keeping, per phase,
    only its ``hop_samples`` predictions that end that phase's look-ahead before its end (SeisBench blinding (window -
    hop - look-ahead, look-ahead), pipeline.model.picking.live_blinding), so every sample comes from exactly one window
    and is final at most look-ahead + hop samples after it arrived, instead of up to a window and a hop later."""

    # The firmware picks live (``make quantize`` writes EDGEPICK_LIVE 1 into model_config.h for ``make firmware`` /
    # ``flash``); false: the exact replay, SeisBench classify's picks on a replayed file, a window late.
    enabled: bool = True
    # The live rule's settings (pipeline.model.picking.LiveRule, which declares their defaults and validates them)
    hop_samples: int = LiveRule.hop  # windows per second = sampling rate / this (the exact replay's hop is 1501)
    # Samples of future each kept prediction sees (its window's blinded end), per phase: the same windows serve
    # both, so a longer S look-ahead costs no compute, only S latency (docs/firmware.md, "Live mode")
    p_lookahead_samples: int = LiveRule.p_lookahead
    s_lookahead_samples: int = LiveRule.s_lookahead
    # Retraction: the same windows are stacked once more at this longer look-ahead per phase (0: never retracted),
    # and a live pick with no pick of its phase within ``confirm_within_samples`` on that curve is withdrawn by a
    # "retract" line about this + hop samples after it (no extra inference; docs/firmware.md, "Retraction")
    p_confirm_samples: int = LiveRule.p_confirm
    s_confirm_samples: int = LiveRule.s_confirm
    confirm_within_samples: int = LiveRule.confirm_within
    # ``make benchmark`` also annotates every labelled trace live with the PyTorch student (exact hop / live hop,
    # ~15x, the windows of the exact pass) and reports live and exact F1 and the latency of live picks
    benchmark: bool = True
    benchmark_tflite: bool = False  # ... and with the TFLite variants too (the TFLite Micro interpreter: slow)
    # The first window - hop - look-ahead samples of a stream come from no window (28 s at the defaults), so the
    # benchmark's live pass starts each labelled trace after that many samples of its own first second, mirrored
    # (a station that has been streaming; picks on them dropped); false: the traces as they are. Live picks in a
    # trace's first 302 samples (what a whole-window student's exact replay blinds) are dropped too, a causal
    # student's as well: that join is no station's stream (tapered starts, stead50, made false picks there).
    benchmark_warmup: bool = True

    def lookaheads(self) -> dict[str, int]:
        """The look-ahead of each phase, as pipeline.model.picking's live functions take it."""
        return {"P": self.p_lookahead_samples, "S": self.s_lookahead_samples}

    def confirms(self) -> dict[str, int]:
        """The confirming look-ahead of each phase (0: none), as pipeline.model.picking.mark_retractions takes it."""
        return {"P": self.p_confirm_samples, "S": self.s_confirm_samples}

    def rule(self, in_samples: int) -> LiveRule:
        """The live rule of these settings for a student of ``in_samples``; one line refuses a hop, look-ahead or
        confirmation that does not fit it."""
        return LiveRule(in_samples, self.hop_samples, self.p_lookahead_samples, self.s_lookahead_samples,
                        self.p_confirm_samples, self.s_confirm_samples, self.confirm_within_samples)


@dataclass
class BenchmarkConfig:
    """``make benchmark``: teacher(s) (teacher.name), PyTorch student (quantize.student) and the TFLite Micro
    variants in quantize.out on the same traces (pipeline/stages/benchmark.py)."""

    # "" = the data stage's test split (data.out, split test); "path" = every trace of a SeisBench-format folder;
    # "path:split" = one split; a folder without metadata.csv = continuous miniSEED (agreement with the teacher only)
    dataset: str = ""
    out: str = setting("reports", nonempty=True)
    # the report's folder under out: "" = one per dataset and student, "<dataset>[_<split>]__<student>", so that a
    # benchmark of other data or another student never replaces this one
    name: str = ""
    # P and S trigger threshold of every model; None: each model's own (the student's saved pick rule; the teachers
    # at pipeline.model.picking.PickRule's default, SeisBench classify's 0.3 of the reference table)
    threshold: float | None = setting(None, gt=0, lt=1)
    tolerances_s: tuple[float, ...] = setting((0.1, 0.5), gt=0, nonempty=True)
    # TFLite variants to run (missing files are skipped)
    precisions: tuple[str, ...] = setting(PRECISIONS, choices=PRECISIONS, kind="precision")
    window_s: float = setting(10.0, gt=0)  # protocol 2 (SeisBench pick benchmark) window length
    sp_bins_s: tuple[float, ...] = setting((2.0, 5.0), ge=0)  # S-P bin edges
    snr_bins_db: tuple[float, ...] = (10.0, 20.0)  # SNR bin edges
    late_coda_s: float = setting(5.0, gt=0)  # pick classes: an unmatched pick more than this after the analyst S is "late coda"
    pr_thresholds: int = setting(19, ge=2)  # precision-recall curve: thresholds 0.05 ... 0.95
    example_traces: int = setting(3, ge=0)
    max_traces: int = setting(0, ge=0)  # 0: all; else a seeded subset
    seed: int = setting(0, ge=0)
    traces_per_call: int = setting(64, ge=1)
    batch_size: int = setting(64, ge=1)
    threads: int = setting(2, ge=1)  # torch threads
    latency_repeats: int = setting(20, ge=1)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    board: BoardConfig = field(default_factory=BoardConfig)
    firmware_sim: FirmwareSimConfig = field(default_factory=FirmwareSimConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> "Config":
        """The defaults, then each YAML file's sections ("a.yaml,b.yaml": b's over a's), then ``section.key=value``
        overrides (read as each setting's type, not as YAML: pipeline/config_fields.py), each checked as it is set."""
        config = cls()
        for path in [p.strip() for p in str(path or "").split(",") if p.strip()]:
            try:
                loaded = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as error:
                raise EdgepickError(f"cannot read config {path}: {' '.join(str(error).split())}") from error
            if not isinstance(loaded, dict):
                raise EdgepickError(f"config {path} must be a mapping of sections, got {type(loaded).__name__}")
            for dotted, value in flatten(loaded):
                config.set(dotted, value)
        for item in overrides:
            if "=" not in item:
                raise EdgepickError(f"override {item!r} must look like section.key=value")
            dotted, value = item.split("=", 1)
            config.set(dotted.strip(), value)
        return config

    def set(self, dotted: str, value: object) -> None:
        """Set ``section.key`` (or ``section.sub.key``) to ``value``, converted to the setting's type and checked
        against its declaration; one line if it cannot be."""
        *parents, leaf = dotted.split(".")
        target: object = self
        for name in parents:
            if not dataclasses.is_dataclass(target) or name not in field_types(target):
                raise EdgepickError(f"unknown config section {dotted!r}")
            target = getattr(target, name)
        types_ = field_types(target) if dataclasses.is_dataclass(target) else {}
        if leaf not in types_:
            raise EdgepickError(f"unknown config key {dotted!r}; known: {', '.join(sorted(types_))}")
        setattr(target, leaf, convert(value, types_[leaf], field_rules(target, leaf), dotted))

    def check(self) -> None:
        """Every setting against its declaration (one line for the first bad one): for a configuration changed in
        Python, whose values :meth:`set` has not seen."""
        check_section(self, "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved settings as YAML: what ``--print-config`` prints, ``--config`` reads back, and every stage
        saves beside its artifacts (``edgepick_config.yaml``)."""

        def plain(value):
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return yaml.safe_dump(plain(self.to_dict()), sort_keys=False)
