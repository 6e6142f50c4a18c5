# tagrank: `make help` lists the targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest

.DEFAULT_GOAL := help
.PHONY: help install test test-all train eval clean table1 table1-quick

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

.PHONY: bench
bench: ## speed/memory benchmarks
	$(BIN)/python benchmarks/bench_coco.py

DATA ?= synthetic
table1: ## the paper's Table 1 + Figs 3-4: every method x 3 seeds on DATA (default synthetic) -> results/$(DATA)/
	$(BIN)/python experiments/table1.py data=$(DATA) seeds=3 $(ARGS)

table1-quick: ## Table 1 in a few minutes on 2 CPU cores: small synthetic set, short schedules, 2 seeds
	$(BIN)/python experiments/table1.py quick=true seeds=2 $(ARGS)
