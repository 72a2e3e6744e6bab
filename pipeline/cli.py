"""``python -m pipeline <stage> [--config FILE] [--set section.key=value ...]``: the command the Makefile calls."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline.config import Config
from pipeline.errors import EdgepickError

# stage name -> (module with run(config), one-line help)
STAGES = {
    "data": ("pipeline.data", "build a SeisBench-format dataset (synthetic default, okla, seisbench:<Name>, fdsn, miniseed)"),
    "sweep": ("pipeline.sweep", "distil one student per (temperature, alpha, width) and rank them on the dev split"),
    "quantize": ("pipeline.quantize", "student -> ONNX -> TFLite FP32/FP16/INT8, checked in TFLite Micro, C array for the firmware"),
    "teacher": ("pipeline.teacher_finetune", "fine-tune a pretrained teacher (teacher.name) on a labelled dataset, saved as a SeisBench model"),
    "soft-labels": ("pipeline.teachers", "run the teacher(s) once over distill.dataset and cache the (P, S, noise) soft labels"),
    "distill": ("pipeline.distill", "distil the teacher(s) into the XiaoNet-style student (torchrun for several processes)"),
    "benchmark": ("pipeline.benchmark", "score teacher(s), PyTorch student and TFLite Micro variants on the same traces; reports/"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgepick", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (_, help_text) in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        stage.add_argument("--config", help="YAML file with config sections (see pipeline/config.py)")
        stage.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override one setting, e.g. --set data.synthetic.n_traces=500 (repeatable)",
        )
        stage.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = Config.load(args.config, args.overrides)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(config.to_dict(), sort_keys=False))
            return 0
        module = importlib.import_module(STAGES[args.stage][0])
        module.run(config)
    except EdgepickError as error:
        print(f"edgepick {args.stage}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgepick {args.stage}: interrupted; finished artifacts are kept, unfinished ones were discarded", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
