"""``python -m pipeline <stage> [--config FILE] [--set section.key=value ...]``: the command the Makefile calls;
``python -m pipeline replay ...`` streams a recording to a device (:mod:`pipeline.deploy.replay`), ``python -m
pipeline study NAME ...`` prints one study's figures (:mod:`pipeline.studies`)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from pipeline.config import Config
from pipeline.errors import EdgepickError

# stage name -> (module, its function of the config, one-line help)
STAGES = {
    "data": ("data", "run", "build a SeisBench-format dataset (synthetic default, okla, seisbench:<Name>, fdsn, miniseed)"),
    "teacher": ("teacher", "run", "fine-tune a pretrained teacher (teacher.name) on a labelled dataset, saved as a SeisBench model"),
    "soft-labels": ("soft_labels", "run", "run the teacher(s) once over distill.dataset and cache the (P, S, noise) soft labels"),
    "distill": ("distill", "run", "distil the teacher(s) into the XiaoNet-style student (torchrun for several processes)"),
    "qat": ("qat", "run", "quantization-aware fine-tuning of a distilled student (qat.init_from) for its INT8 build"),
    "calibrate": ("calibrate", "run", "choose the student's P and S thresholds on a dev split and save them with it"),
    "sweep": ("sweep", "run", "distil one student per (temperature, alpha, width) and rank them on the dev split"),
    "quantize": ("quantize", "run", "student -> ONNX -> TFLite FP32/FP16/INT8, checked in TFLite Micro, C array for the firmware"),
    "firmware": ("firmware", "run", "check the model's memory budget for board.name, then build the ESP32 firmware (PlatformIO)"),
    "flash": ("firmware", "flash", "budget check, build and upload the firmware to the board"),
    "firmware-sim": ("firmware_sim", "run", "build the firmware for an emulated RV32IMC board (board.name) and "
                     "run it under QEMU: picks against Python, memory, instructions per window"),
    "monitor": ("firmware", "monitor", "the board's serial console (picks as JSON lines)"),
    "listen": ("listen", "run", "read a board's picks live (listen.port, listen.station) and write them as QuakeML / "
               "SC3ML / NonLinLoc / Earthworm TYPE_PICK_SCNL (listen.formats) under listen.out"),
    "benchmark": ("benchmark", "run", "score teacher(s), PyTorch student and TFLite Micro variants on the same traces; reports/"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgepick", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (_, _, help_text) in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        stage.add_argument("--config", help="YAML file with config sections (see pipeline/config.py)")
        stage.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override one setting, e.g. --set data.synthetic.n_traces=500 (repeatable)",
        )
        stage.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    sub.add_parser("study", add_help=False, help="print the figures of one study (python -m pipeline study NAME "
                   "--help; pipeline/studies/)")
    sub.add_parser("replay", add_help=False, help="stream a miniSEED file or a dataset trace to a device over its serial "
                   "port and collect its picks (python -m pipeline replay --help)")
    return parser


def _not_about_our_temporaries(record: logging.LogRecord) -> bool:
    # SeisBench's writer, interrupted, says it "saved current progress" to files in edgepick's temporary folder,
    # which atomic_dir deletes right after: edgepick's own line says what is kept.
    return "Saved current progress to" not in record.getMessage()


def quiet_libraries(verbose: bool) -> None:
    """A user sees edgepick's own lines; ``-v`` shows the libraries' too. SeisBench logs through its own handler
    (its warnings came twice, once more through the root logger) and warns of what edgepick already reports
    (output component order, the download precheck before a missing-weights error); TensorFlow's C++ logging is
    set before it is imported."""
    seisbench_logger = logging.getLogger("seisbench")
    seisbench_logger.propagate = False
    if not verbose:
        seisbench_logger.setLevel(logging.ERROR)
        seisbench_logger.addFilter(_not_about_our_temporaries)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        logging.getLogger("absl").setLevel(logging.ERROR)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match the expected structure")
        from obspy.io.mseed import InternalMSEEDWarning  # libmseed on each damaged record it skips

        warnings.filterwarnings("ignore", category=InternalMSEEDWarning)


def run_study(argv: list[str]) -> int:
    """``python -m pipeline study NAME ...``: the study ``pipeline.studies.NAME`` with the rest of the arguments."""
    from pipeline.errors import run_script
    from pipeline.studies import MERGED, NAMES

    if argv and argv[0] in MERGED:
        print(f"edgepick study: error: study {argv[0]} is merged into study score: python -m pipeline study "
              f"{MERGED[argv[0]]} ...", file=sys.stderr)
        return 2
    if not argv or argv[0] not in NAMES:
        print(f"edgepick study: error: name one of {', '.join(NAMES)} (got {' '.join(argv[:1]) or 'none'}); "
              f"python -m pipeline study NAME --help", file=sys.stderr)
        return 2
    module = importlib.import_module(f"pipeline.studies.{argv[0]}")
    run_script(lambda: module.main(argv[1:]), name=f"study {argv[0]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["study"]:
        return run_study(argv[1:])
    if argv[:1] == ["replay"]:  # a device on a serial port, not a stage: its own arguments, no configuration
        from pipeline.deploy import replay

        quiet_libraries(verbose=False)
        return replay.main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries(args.verbose)
    try:
        config = Config.load(args.config, args.overrides)
        if args.print_config:
            print(config.to_yaml())
            return 0
        module, function, _ = STAGES[args.stage]
        getattr(importlib.import_module(f"pipeline.stages.{module}"), function)(config)
    except EdgepickError as error:
        print(f"edgepick {args.stage}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgepick {args.stage}: interrupted; finished artifacts are kept, unfinished ones were discarded", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
