# edgepick: one target per pipeline stage. `make help` lists them with their variables.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)

# The real pretrained teachers: ../shared/seisbench when present (offline), else SeisBench's own cache / download.
ifneq ($(wildcard ../shared/seisbench),)
SEISBENCH_CACHE_ROOT ?= $(abspath ../shared/seisbench)
export SEISBENCH_CACHE_ROOT
endif

CONFIG ?=
SET ?=
SOURCE ?= synthetic
OUT ?=
N_TRACES ?=
SEED ?=
PYTEST_ARGS ?=
DATASET ?=
TEACHER ?=
STUDENT_OUT ?=
EPOCHS ?=
RESUME ?=
NPROC ?=
TEACHER_OUT ?=
STUDENT ?=
TFLITE ?=
THRESHOLD ?=

comma := ,
config_flag = $(if $(CONFIG),--config $(CONFIG))
set_flags = $(foreach s,$(SET),--set $(s))
data_flags = --set data.source=$(SOURCE) $(if $(OUT),--set data.out=$(OUT)) \
	$(if $(N_TRACES),--set data.synthetic.n_traces=$(N_TRACES)) $(if $(SEED),--set data.seed=$(SEED))
distill_flags = $(if $(DATASET),--set distill.dataset=$(DATASET)) $(if $(TEACHER),--set teacher.name=$(TEACHER)) \
	$(if $(STUDENT_OUT),--set distill.out=$(STUDENT_OUT)) $(if $(EPOCHS),--set distill.epochs=$(EPOCHS)) \
	$(if $(RESUME),--set distill.resume=true)
benchmark_flags = $(if $(DATASET),--set benchmark.dataset=$(DATASET)) $(if $(TEACHER),--set teacher.name=$(TEACHER)) \
	$(if $(STUDENT),--set quantize.student=$(STUDENT)) $(if $(TFLITE),--set quantize.out=$(TFLITE)) \
	$(if $(THRESHOLD),--set benchmark.threshold=$(THRESHOLD))
teacher_flags = $(if $(DATASET),--set teacher.finetune.dataset=$(DATASET)) $(if $(TEACHER),--set teacher.name=$(TEACHER)) \
	$(if $(TEACHER_OUT),--set teacher.finetune.out=$(TEACHER_OUT)) $(if $(EPOCHS),--set teacher.finetune.epochs=$(EPOCHS)) \
	$(if $(RESUME),--set teacher.finetune.resume=true)
edgepick = $(PY) -m pipeline

.PHONY: help venv data demo test benchmark-data benchmark clean teacher soft-labels distill qat sweep quantize

help: ## list targets and variables
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "variables: SOURCE=synthetic|okla|seisbench:<Name>|fdsn|miniseed OUT=dir N_TRACES=n SEED=n"
	@echo "           DATASET=dir[,dir] TEACHER=phasenet:okla[+eqtransformer:elep] STUDENT_OUT=dir EPOCHS=n RESUME=1 NPROC=n"
	@echo "           teacher: DATASET=dir TEACHER=phasenet:okla TEACHER_OUT=dir EPOCHS=n RESUME=1 (then TEACHER=phasenet:dir)"
	@echo "           qat: QAT_FROM=dir (a distilled student) DATASET=... STUDENT_OUT=dir EPOCHS=n"
	@echo "           benchmark: DATASET=dir[:split]|miniseed-dir STUDENT=dir TFLITE=dir THRESHOLD=0.3 (and TEACHER)"
	@echo "           CONFIG=file.yaml SET='section.key=value ...' PYTEST_ARGS=..."

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP) ## create .venv with the pinned dependencies

data: $(STAMP) ## build a dataset (default: the embedded synthetic one, data/synthetic)
	$(edgepick) data $(config_flag) $(data_flags) $(set_flags)

# A short run learns fastest at T = 1 with some hard-label weight (the sweep in README.md); the real-data recipe
# there uses the defaults (T = 4, alpha = 1) for 20 epochs.
DEMO_EPOCHS ?= 10
DEMO_SET ?= distill.windows_per_epoch=4000 distill.temperature=1 distill.alpha=0.3
demo: $(STAMP) ## every stage on the embedded synthetic default: data, soft labels, distill, qat, quantize, benchmark
	$(MAKE) --no-print-directory data
	$(MAKE) --no-print-directory distill EPOCHS=$(DEMO_EPOCHS) SET='$(DEMO_SET)'
	$(MAKE) --no-print-directory qat EPOCHS=2 SET='$(DEMO_SET)'
	$(MAKE) --no-print-directory quantize SET='quantize.student=models/student_qat'
	$(MAKE) --no-print-directory benchmark STUDENT=models/student_qat

teacher: $(STAMP) ## optional: fine-tune the pretrained TEACHER on a labelled DATASET (models/teacher; then TEACHER=phasenet:models/teacher)
	$(edgepick) teacher $(config_flag) $(teacher_flags) $(set_flags)

soft-labels: $(STAMP) ## run the teacher once over DATASET and cache its (P,S,noise) output beside it (TEACHER=...)
	$(edgepick) soft-labels $(config_flag) $(distill_flags) $(set_flags)

distill: $(STAMP) ## distil TEACHER into the student on DATASET (comma-separated folders mix); RESUME=1 continues
	$(if $(NPROC),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC),$(PY)) -m pipeline distill \
		$(config_flag) $(distill_flags) $(set_flags)

QAT_FROM ?= models/student
qat: $(STAMP) ## quantization-aware fine-tuning of QAT_FROM (a distilled student) into STUDENT_OUT (models/student_qat)
	$(edgepick) distill $(config_flag) --set distill.out=models/student_qat --set distill.epochs=4 \
		--set distill.learning_rate=5e-4 --set distill.patience=10 \
		--set distill.init_from=$(QAT_FROM) --set distill.quantization_aware=true $(distill_flags) $(set_flags)

sweep: $(STAMP) ## grid over sweep.temperatures x sweep.alphas x sweep.base_channels, ranked on dev F1, Pareto plot
	$(edgepick) sweep $(config_flag) $(distill_flags) $(set_flags)

test: $(STAMP) ## run the test suite (tests needing ../shared skip without it)
	$(PY) -m pytest $(PYTEST_ARGS)

quantize: $(STAMP) ## student -> ONNX -> TFLite FP32/FP16/INT8 (models/tflite), TFLite Micro checks, firmware/src/model/
	$(edgepick) quantize $(config_flag) $(set_flags)

# `firmware` is also a folder: these targets must be phony
.PHONY: firmware flash monitor
firmware: $(STAMP) ## check the model's memory budget, then build the ESP32 firmware (pio run; BOARD via SET='board.name=...')
	$(PY) -m pipeline.flash build $(config_flag) $(set_flags)

flash: $(STAMP) ## budget check, build and upload the firmware to the board on the serial port
	$(PY) -m pipeline.flash flash $(config_flag) $(set_flags)

monitor: $(STAMP) ## open the board's serial console (pio device monitor; picks as JSON lines)
	$(PY) -m pipeline.flash monitor $(config_flag) $(set_flags)

benchmark-data: $(STAMP) ## data-stage figures: synthetic generation time, generator throughput, teacher F1
	$(PY) scripts/benchmark_data.py $(config_flag) $(set_flags)

benchmark: $(STAMP) ## teacher vs student (PyTorch, TFLite Micro FP32/FP16/INT8) on DATASET: reports/benchmark.{md,json,png}
	$(edgepick) benchmark $(config_flag) $(benchmark_flags) $(set_flags)

clean: ## remove produced artifacts (data/, models/, reports/), keeping .venv
	rm -rf data models reports build
