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

comma := ,
config_flag = $(if $(CONFIG),--config $(CONFIG))
set_flags = $(foreach s,$(SET),--set $(s))
data_flags = --set data.source=$(SOURCE) $(if $(OUT),--set data.out=$(OUT)) \
	$(if $(N_TRACES),--set data.synthetic.n_traces=$(N_TRACES)) $(if $(SEED),--set data.seed=$(SEED))
edgepick = $(PY) -m pipeline

.PHONY: help venv data demo test benchmark-data clean

help: ## list targets and variables
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "variables: SOURCE=synthetic|okla|seisbench:<Name>|fdsn|miniseed OUT=dir N_TRACES=n SEED=n"
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

demo: data ## every stage that exists, on the embedded synthetic default

test: $(STAMP) ## run the test suite (tests needing ../shared skip without it)
	$(PY) -m pytest $(PYTEST_ARGS)

benchmark-data: $(STAMP) ## data-stage figures: synthetic generation time, generator throughput, teacher F1
	$(PY) scripts/benchmark_data.py $(config_flag) $(set_flags)

clean: ## remove produced artifacts (data/, models/, reports/), keeping .venv
	rm -rf data models reports build
