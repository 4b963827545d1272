# ULMFiT from scratch: `make help` lists the targets.
PYTHON ?= python
TORCH_VERSION ?= 2.13.0
# Training targets honour PRESET (tiny | cpu | paper; empty = paper on a GPU, cpu otherwise) and MIRROR
# (a folder holding the dataset archives; defaults to ../shared/data when that folder exists).
PRESET ?=
MIRROR ?= $(if $(wildcard ../shared/data/MANIFEST.md),../shared/data,)
ULMFIT_DATA ?= data
# Without CORPUS, lm-pretrain uses WikiText-103; the mirror's stand-in corpus (it has no WikiText-103 train) is
# taken when present.
CORPUS ?= $(if $(wildcard $(MIRROR)/wiki-corpus/train.txt.gz),$(MIRROR)/wiki-corpus/train.txt.gz,)
BIDIR ?=
# A pretrained LM for imdb-classify: a model folder or a name from `python -m ulmfit models` (fastai-wt103). Empty:
# the newest runs/lm-*/model, else fastai's published weights with PRESET=paper, else random weights (loudly).
PRETRAINED ?=
# BUDGET: minutes for each of lm-pretrain and imdb-classify (--budget-minutes): the step time measured over the first
# steps fixes how many fit, and the schedules run complete over them. Empty: the preset's (cpu: 30 + 120, paper: none).
BUDGET ?=
ARGS ?=
export ULMFIT_DATA
ifneq ($(strip $(MIRROR)),)
export ULMFIT_MIRROR := $(abspath $(MIRROR))
endif
PRESET_ARG = $(if $(PRESET),--preset $(PRESET),)
BUDGET_ARG = $(if $(BUDGET),--budget-minutes $(BUDGET),)
# Keep big freed buffers in the process (see common/perf.py): 1.3-1.5x faster CPU training on small VMs.
export MALLOC_MMAP_MAX_ ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 68719476736

.PHONY: help install test test-all lint smoke bench gpu-check lm-pretrain imdb-classify imagewoof pets-transfer

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

install: ## install the project (editable) with dev tools; installs torch only if none is present (CPU build pinned)
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==$(TORCH_VERSION)
	$(PYTHON) -m pip install -e ".[dev]"

test: ## run the fast test suite (CPU, no data downloads)
	$(PYTHON) -m pytest -q

test-all: ## run every test, the slow ones too
	$(PYTHON) -m pytest -q -m ""

lint: ## ruff: the lint rules in pyproject.toml, and the code formatted as ruff format writes it
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

smoke: ## real-data end-to-end runs with PRESET=tiny on the mirror
	$(PYTHON) -m ulmfit prepare --dataset imdb_sample
	$(MAKE) lm-pretrain PRESET=tiny
	$(PYTHON) tests/run_readme_example.py
	$(MAKE) imdb-classify PRESET=tiny
	$(MAKE) imagewoof PRESET=tiny
	$(MAKE) pets-transfer PRESET=tiny

bench: ## run the benchmarks (each prints one JSON line)
	$(PYTHON) -m bench.learner_overhead
	$(PYTHON) -m bench.lm_speed --small
	$(PYTHON) -m bench.clas_speed --small
	$(PYTHON) -m bench.xresnet_speed --size 64
	$(if $(wildcard $(ULMFIT_MIRROR)/imdb.tgz),$(PYTHON) -m bench.tokenize_speed --corpus $(ULMFIT_MIRROR)/imdb.tgz --workers 2,@echo "tokenize_speed skipped: no imdb.tgz in MIRROR")

gpu-check: ## GPU checks as a pass/fail table (ARGS='--device cpu' runs them on the CPU)
	$(PYTHON) -m bench.gpu_check $(ARGS)

lm-pretrain: ## pretrain the AWD-LSTM LM (CORPUS=path to use your own corpus; BUDGET=minutes)
	$(PYTHON) -m ulmfit pretrain $(PRESET_ARG) $(BUDGET_ARG) $(if $(CORPUS),--corpus $(CORPUS),) $(ARGS)

imdb-classify: ## ULMFiT on IMDB: fine-tune the LM, train the classifier, report test accuracy (BIDIR=1 both directions; PRETRAINED=fastai-wt103; BUDGET=minutes)
	$(PYTHON) -m ulmfit imdb $(PRESET_ARG) $(BUDGET_ARG) $(if $(BIDIR),--bidirectional true,) $(if $(PRETRAINED),--pretrained $(PRETRAINED),) $(ARGS)

imagewoof: ## train an xresnet on Imagewoof-160
	$(PYTHON) -m vision train $(PRESET_ARG) $(ARGS)

pets-transfer: ## transfer the Imagewoof model to Oxford-IIIT Pets, four ways compared
	$(PYTHON) -m vision transfer $(PRESET_ARG) $(ARGS)
