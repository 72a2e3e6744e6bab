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
qat_flags = $(if $(DATASET),--set distill.dataset=$(DATASET)) $(if $(TEACHER),--set teacher.name=$(TEACHER)) \
	$(if $(QAT_FROM),--set qat.init_from=$(QAT_FROM)) $(if $(STUDENT_OUT),--set qat.out=$(STUDENT_OUT)) \
	$(if $(EPOCHS),--set qat.epochs=$(EPOCHS))
teacher_flags = $(if $(DATASET),--set teacher.finetune.dataset=$(DATASET)) $(if $(TEACHER),--set teacher.name=$(TEACHER)) \
	$(if $(TEACHER_OUT),--set teacher.finetune.out=$(TEACHER_OUT)) $(if $(EPOCHS),--set teacher.finetune.epochs=$(EPOCHS)) \
	$(if $(RESUME),--set teacher.finetune.resume=true)
edgepick = $(PY) -m pipeline

.PHONY: help venv data labelled demo recipe test test-fast benchmark-data benchmark clean teacher soft-labels distill qat calibrate sweep quantize

help: ## list targets and variables
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "variables: SOURCE=synthetic|okla|seisbench:<Name>|seisbench:<folder>|fdsn|miniseed OUT=dir N_TRACES=n SEED=n"
	@echo "           DATASET=dir[,dir] TEACHER=phasenet:okla[+eqtransformer:elep] STUDENT_OUT=dir EPOCHS=n RESUME=1 NPROC=n"
	@echo "           teacher: DATASET=dir TEACHER=phasenet:okla TEACHER_OUT=dir EPOCHS=n RESUME=1 (then TEACHER=phasenet:dir)"
	@echo "           qat: QAT_FROM=dir (a distilled student) DATASET=... STUDENT_OUT=dir EPOCHS=n"
	@echo "           presets: CONFIG=configs/demo.yaml | configs/real-data.yaml"
	@echo "           benchmark: DATASET=dir[:split]|miniseed-dir STUDENT=dir TFLITE=dir THRESHOLD=x (default: each model's own) (and TEACHER)"
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

demo: $(STAMP) ## every stage on the embedded synthetic default (configs/demo.yaml): data, distill, qat, quantize, benchmark
	$(MAKE) --no-print-directory data
	$(MAKE) --no-print-directory distill CONFIG=configs/demo.yaml
	$(MAKE) --no-print-directory qat CONFIG=configs/demo.yaml
	$(MAKE) --no-print-directory quantize CONFIG=configs/demo.yaml
	$(MAKE) --no-print-directory benchmark CONFIG=configs/demo.yaml
	@echo "demo made: data/synthetic (dataset), models/student (distilled), models/student_qat (QAT),"
	@echo "  models/tflite (FP32/FP16/INT8), firmware/src/model (the firmware's model), the report printed above"

# The real-data student (configs/real-data.yaml): the three training datasets and the labelled sets' dev / test
# halves, then distill, qat, calibrate, quantize and the benchmark on the test half of every real labelled set in
# ../shared/datasets (their dev halves are what recipe choices are made on). TRANSFER: the continuous miniSEED the
# teacher labels.
TRANSFER ?= ../shared/waveforms/transfer
REAL_DATASETS ?= ../shared/datasets
REAL_SETS ?= $(wildcard $(REAL_DATASETS)/*/metadata.csv)
set_name = $(notdir $(patsubst %/,%,$(dir $(1))))
# The streaming student: RECIPE=configs/real-data.yaml,configs/streaming.yaml (later files override earlier ones)
RECIPE ?= configs/real-data.yaml
recipe: labelled-sets $(STAMP) ## the real-data student (RECIPE) and its benchmark on the test half of every labelled set in ../shared/datasets
	$(MAKE) --no-print-directory data SOURCE=miniseed OUT=data/transfer SET='data.miniseed.path=$(TRANSFER)'
	$(MAKE) --no-print-directory data OUT=data/synthetic_near N_TRACES=3000 SEED=7 SET='data.synthetic.distance_km_max=30'
	$(MAKE) --no-print-directory data
	$(MAKE) --no-print-directory labelled
	$(MAKE) --no-print-directory distill CONFIG=$(RECIPE)
	$(MAKE) --no-print-directory qat CONFIG=$(RECIPE)
	$(MAKE) --no-print-directory calibrate CONFIG=$(RECIPE)
	$(MAKE) --no-print-directory quantize CONFIG=$(RECIPE)
	$(foreach set,$(REAL_SETS),$(MAKE) --no-print-directory benchmark CONFIG=$(RECIPE) \
		DATASET=$(LABELLED)/$(call set_name,$(set)):test SET='benchmark.name=$(call set_name,$(set))_test' &&) true

# Each real labelled set cut by event into a dev half (to choose settings on) and a test half (to report):
# data/labelled/<set>:dev and :test. The halves are seeded (data.seed), so every run cuts the same ones.
LABELLED ?= data/labelled
labelled: labelled-sets $(STAMP) ## each real labelled set in ../shared/datasets cut by event into dev / test halves (data/labelled/<set>)
	$(foreach set,$(REAL_SETS),$(MAKE) --no-print-directory data SOURCE=seisbench:$(patsubst %/,%,$(dir $(set))) \
		OUT=$(LABELLED)/$(call set_name,$(set)) SET='data.split_fractions=0,0.5,0.5' &&) true

# No labelled set is an error, not a quiet `true`: make recipe would go on to benchmark nothing.
.PHONY: labelled-sets
labelled-sets:
	@$(if $(REAL_SETS),true,echo "make labelled: error: no labelled sets in $(REAL_DATASETS) (SeisBench-format \
	folders, <set>/metadata.csv); copy them there or give REAL_DATASETS=<folder>" >&2; exit 2)

teacher: $(STAMP) ## optional: fine-tune the pretrained TEACHER on a labelled DATASET (models/teacher; then TEACHER=phasenet:models/teacher)
	$(edgepick) teacher $(config_flag) $(teacher_flags) $(set_flags)

soft-labels: $(STAMP) ## run the teacher once over DATASET and cache its (P,S,noise) output beside it (TEACHER=...)
	$(edgepick) soft-labels $(config_flag) $(distill_flags) $(set_flags)

distill: $(STAMP) ## distil TEACHER into the student on DATASET (comma-separated folders mix); RESUME=1 continues
	$(if $(NPROC),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC),$(PY)) -m pipeline distill \
		$(config_flag) $(distill_flags) $(set_flags)

QAT_FROM ?=
qat: $(STAMP) ## quantization-aware fine-tuning of QAT_FROM (qat.init_from, a distilled student) into STUDENT_OUT (qat.out)
	$(edgepick) qat $(config_flag) $(qat_flags) $(set_flags)

calibrate: $(STAMP) ## choose the student's (quantize.student) P and S thresholds on a dev split (calibrate.dataset) and save them with it
	$(edgepick) calibrate $(config_flag) $(set_flags)

sweep: $(STAMP) ## grid over sweep.temperatures x sweep.alphas x sweep.base_channels, ranked on a dev split's F1 at 0.1 and 0.5 s, Pareto plot
	$(edgepick) sweep $(config_flag) $(distill_flags) $(set_flags)

test: $(STAMP) ## run the test suite (tests needing ../shared skip without it)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## the inner loop: every test not marked slow (pyproject.toml's markers, tests/conftest.py), under a minute
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

quantize: $(STAMP) ## student -> ONNX -> TFLite FP32/FP16/INT8 (models/tflite), TFLite Micro checks, firmware/src/model/
	$(edgepick) quantize $(config_flag) $(set_flags)

# `firmware` is also a folder: these targets must be phony
.PHONY: firmware flash monitor firmware-sim
firmware: $(STAMP) ## check the model's memory budget, then build the ESP32 firmware (pio run; BOARD via SET='board.name=...')
	$(edgepick) firmware $(config_flag) $(set_flags)

flash: $(STAMP) ## budget check, build and upload the firmware to the board on the serial port
	$(edgepick) flash $(config_flag) $(set_flags)

firmware-sim: $(STAMP) ## the firmware for an emulated RV32IMC board under QEMU: picks vs Python, memory, instructions (SET='board.name=esp32c3')
	$(edgepick) firmware-sim $(config_flag) $(set_flags)

monitor: $(STAMP) ## open the board's serial console (pio device monitor; picks as JSON lines)
	$(edgepick) monitor $(config_flag) $(set_flags)

.PHONY: listen
listen: $(STAMP) ## a board's picks live as QuakeML + Earthworm lines (SET='listen.port=/dev/ttyUSB0 listen.station=OK.X34..HH')
	$(edgepick) listen $(config_flag) $(set_flags)

benchmark-data: $(STAMP) ## data-stage figures: synthetic generation time, generator throughput, teacher F1
	$(edgepick) study data $(config_flag) $(set_flags)

benchmark: $(STAMP) ## teacher vs student (PyTorch, TFLite Micro FP32/FP16/INT8) on DATASET: reports/<dataset>__<student>/benchmark.{md,json,png}
	$(edgepick) benchmark $(config_flag) $(benchmark_flags) $(set_flags)

clean: ## remove produced artifacts (data/, models/, reports/), keeping .venv
	rm -rf data models reports build
