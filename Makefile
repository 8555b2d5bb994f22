# textdiff — every target installs what it needs into $(VENV) first (see `make install`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch 2.13.0 lies on disk on our machines; GPU users install their own torch into
# $(VENV) before `make install` (see README), and it is then left alone.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

# Nothing here may touch the network: fail at once instead of retrying the hub.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help install test test-slow test-all test-presets quickstart bench bench-curves train sweep lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[hydra,dev]'
	touch $@

install: $(VENV)/.installed  ## create $(VENV) and install textdiff with its [hydra,dev] extras

lint: install  ## ruff (pyflakes, pycodestyle errors, 120 columns; settings in pyproject.toml): seconds
	$(BIN)/ruff check textdiff tests benchmarks experiments

test: install  ## fast tests (CPU, no `slow`/`gpu` markers); what CI runs
	$(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: install  ## the slow tests only (minutes each)
	$(BIN)/python -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

test-all: install  ## every CPU test
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

test-presets: install  ## each conf/experiment preset at full size on CPU: 2 steps + sampling (~1.5 h; PRESETS_ARGS=...)
	$(BIN)/python -m benchmarks.presets --readme experiments/README.md $(PRESETS_ARGS)

quickstart: install  ## train a small Diffusion-LM on CPU, sample, print scores (QS_ARGS=... for overrides)
	$(BIN)/python -m textdiff.cli.quickstart $(QS_ARGS)

bench: install  ## speed and memory benchmarks -> benchmarks/results/*.json
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-curves: install  ## quality vs speed of a trained run: CURVES_ARGS="--run-dir DIR --name NAME [--ar-run DIR]"
	$(BIN)/python -m benchmarks.curves $(CURVES_ARGS)

train: install  ## textdiff-train with ARGS="experiment=... key=value ..."
	$(BIN)/textdiff-train $(ARGS)

sweep: install  ## textdiff-train -m with ARGS="..."
	$(BIN)/textdiff-train -m $(ARGS)

clean:  ## remove run outputs and caches (keeps $(VENV))
	rm -rf outputs multirun .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
