# colq_sweep — run `make help` for the targets. Every target does its own set-up (a venv in .venv/).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned (constraints.txt): an unpinned torch pulls a multi-GB CUDA build on CPU
# machines. On a GPU machine that already has a CUDA torch, use `make install TORCH_SPEC=`.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
OUT ?= outputs
ARGS ?=
AXES ?= seqlen=32,64,128
# the demo's second model: the larger fixture (conf/model/small.yaml) at the demo's point, original + W4A16, so the
# report's frontier answers "the larger model quantized or the smaller one unquantized?" on real numbers (DEMO2= skips)
DEMO2 ?= model=small
# test processes (pytest-xdist): whole files per worker (--dist loadfile), so module fixtures are built once;
# 2 on the 2-core CI machine: 7 m 21 s instead of 11 m 56 s (README, "Verified here"); TEST_WORKERS=0 runs in-process
TEST_WORKERS ?= 2
NAME ?= demo
PORT ?= 5000
STAMP := $(VENV)/.installed-$(EXTRAS)
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_ENABLE_ASYNC_LOGGING=false
# The tests' one-node Slurm cluster (scripts/slurm-up.sh); an exported SLURM_CONF (a real cluster) wins.
TEST_SLURM_CONF := $(or $(SLURM_CONF),$(CURDIR)/outputs/slurm/slurm.conf)
# CPU-only one-node cluster: no GPUs asked for, one core and a little memory per job
SLURM_CPU := hydra/launcher=slurm hydra.launcher.gpus_per_node=null hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=4 hydra.launcher.timeout_min=30

.DEFAULT_GOAL := help
.PHONY: help install fixtures test test-fast demo demo-slurm sweep prefetch report ui lint clean slurm-up slurm-down

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q -c constraints.txt "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

install: $(STAMP) ## create .venv and install colq_sweep with its pinned stack (EXTRAS=dev,gpu,slurm)

fixtures: $(STAMP) ## build the offline fixtures (tiny checkpoint, ViDoRe-format task, calibration text)
	$(OFFLINE) $(PY) -m colq_sweep.fixtures --out $(OUT)/fixtures

test: $(STAMP) ## run the whole test suite offline on the fixtures (a few minutes on 2 CPU cores; Slurm tests need root)
	$(OFFLINE) SLURM_CONF=$(TEST_SLURM_CONF) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP) ## unit tests only (skips end-to-end quantize/evaluate tests)
	$(OFFLINE) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

demo: fixtures ## offline demo: 3-point seqlen sweep of the tiny model + the larger fixture's W4A16 -> MLflow -> report with the frontier in outputs/reports/demo/ (AXES=..., DEMO2=...)
	$(OFFLINE) $(PY) -m colq_sweep -m experiment=demo outputs_dir=$(OUT) $(AXES) $(ARGS)
	@if [ -n "$(DEMO2)" ]; then $(OFFLINE) $(PY) -m colq_sweep -m experiment=demo outputs_dir=$(OUT) $(DEMO2) $(ARGS); fi
	$(OFFLINE) $(PY) -m colq_sweep.report --name demo --outputs-dir $(OUT) --mteb-export

demo-slurm: fixtures ## the demo sweep through slurm-up's cluster: every point an sbatch job (e.g. OUT=outputs/slurm-demo)
	$(OFFLINE) SLURM_CONF=$(TEST_SLURM_CONF) $(PY) -m colq_sweep -m experiment=demo outputs_dir=$(OUT) $(SLURM_CPU) $(AXES) $(ARGS)

sweep: $(STAMP) ## a real sweep (GPU + Hub), e.g. make sweep ARGS="experiment=seed-report"
	$(PY) -m colq_sweep -m outputs_dir=$(OUT) $(ARGS)

prefetch: $(STAMP) ## fetch (or with ARGS="--check ..." verify) the Hub inputs of a sweep, e.g. make prefetch ARGS="experiment=seed-report"
	$(PY) -m colq_sweep.prefetch $(ARGS)

report: $(STAMP) ## build outputs/reports/$(NAME)/ from the MLflow runs of experiment NAME
	$(PY) -m colq_sweep.report --name $(NAME) --outputs-dir $(OUT)

slurm-up: ## as root: install slurm-wlm + munge if missing, start a one-node Slurm cluster (outputs/slurm/)
	scripts/slurm-up.sh
	@echo 'now: export SLURM_CONF=$(CURDIR)/outputs/slurm/slurm.conf'

slurm-down: ## stop the one-node Slurm cluster of slurm-up
	scripts/slurm-down.sh

ui: $(STAMP) ## serve the MLflow UI for the embedded store on http://127.0.0.1:$(PORT), printing each experiment's runs address
	$(PY) -m colq_sweep.track.ui --outputs-dir $(OUT) --host 127.0.0.1 --port $(PORT)

lint: $(STAMP) ## ruff check
	$(PY) -m ruff check colq_sweep hydra_plugins tests

clean: ## remove outputs/ (models, results, MLflow store, reports; stops slurm-up's cluster first); keeps .venv
	@if [ -s $(OUT)/slurm/slurmctld.pid ]; then scripts/slurm-down.sh; fi
	rm -rf $(OUT)/* .pytest_cache
	@touch $(OUT)/.gitkeep
