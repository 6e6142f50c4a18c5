# tagrank: `make help` lists the targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest

.DEFAULT_GOAL := help
.PHONY: help install test test-all train eval clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: ## create .venv and install tagrank with its dev extras (no network needed beyond the package index)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e '.[dev]'

test: ## the fast test suite (< 10 minutes on 2 CPU cores)
	$(PYTEST) -q

test-all: ## every test, the slow end-to-end ones included
	$(PYTEST) -q -m ''

train: ## train the paper's LSTM on the embedded synthetic data, test the best checkpoint, print the table
	$(BIN)/tagrank-train $(ARGS)

eval: ## re-evaluate a checkpoint: make eval CKPT=logs/train/runs/<run>/checkpoints/best.ckpt
	$(BIN)/tagrank-eval ckpt_path=$(CKPT) $(ARGS)

clean: ## remove run outputs (logs/, results/); caches under ~/.cache/tagrank are kept
	rm -rf logs results outputs multirun
