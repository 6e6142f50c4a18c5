# tagrank: `make help` lists the targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest

.DEFAULT_GOAL := help
.PHONY: help install browser test test-all train eval clean table1 table1-quick

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: ## create .venv and install tagrank with its dev extras (no network needed beyond the package index)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e '.[dev]'

# tests/test_report.py opens report.html in Debian's chromium and skips, saying why, where it is absent.
# Installing it needs root, apt-get and the network: `make test` tries it first where all three are there
# (the test setup; at most 4 minutes), and it never fails the build: offline, the browser test skips.
CHROMIUM := /usr/bin/chromium
browser: ## install Debian's chromium for the report.html test where root, apt-get and the network allow
	@if [ -x $(CHROMIUM) ]; then echo "browser: $(CHROMIUM) is installed"; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "browser: no apt-get here; the report.html browser test will skip"; \
	elif [ "$$(id -u)" != 0 ]; then echo "browser: not root; 'sudo apt-get install chromium' or the browser test will skip"; \
	elif timeout 240 sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium' >/dev/null; \
	then echo "browser: installed $$($(CHROMIUM) --version 2>/dev/null)"; \
	else echo "browser: apt-get could not install chromium (offline?); the browser test will skip"; fi

# tests/test_slurm.py submits real jobs to a one-node SLURM cluster on this machine and skips, saying why,
# where none answers. `make slurm` brings one up (root + apt-get install slurm and munge; state in .slurm/).
.PHONY: slurm slurm-down
slurm: ## a one-node SLURM cluster on this machine for launcher=slurm (root + apt-get; never fails: tests skip)
	@scripts/slurm.sh up

slurm-down: ## stop the daemons make slurm started (by their pid files in .slurm/run/)
	@scripts/slurm.sh down

test: browser ## the fast test suite (< 10 minutes on 2 CPU cores)
	$(PYTEST) -q

test-all: ## every test, the slow end-to-end ones included
	$(PYTEST) -q -m ''

train: ## train the paper's LSTM on the embedded synthetic data, test the best checkpoint, print the table
	$(BIN)/tagrank-train $(ARGS)

eval: ## re-evaluate a checkpoint: make eval CKPT=logs/train/runs/<run>/checkpoints/best.ckpt
	$(BIN)/tagrank-eval ckpt_path=$(CKPT) $(ARGS)

# The reference results (results/<data>/: tables, figures, their README) are the project's record, made
# by make table1 and committed: clean never deletes them, only what runs and benchmarks leave.
clean: ## remove run outputs (logs/, outputs/, multirun/, results/bench*.json); reference results and caches are kept
	rm -rf logs outputs multirun results/bench.json results/bench_gpu.json

.PHONY: bench bench-gpu
bench: ## speed and memory figures as ratios measured in one run (~10 min on 2 cores) -> results/bench.json
	$(BIN)/python benchmarks/bench.py $(ARGS)

bench-gpu: ## fine-tuning throughput and loader on one CUDA GPU (< 5 min; skipped without one) -> results/bench_gpu.json
	$(BIN)/python benchmarks/bench_gpu.py $(ARGS)

DATA ?= synthetic
table1: ## the paper's Table 1 + Figs 3-4: every method x 3 seeds on DATA (default synthetic) -> results/$(DATA)/
	$(BIN)/python experiments/table1.py data=$(DATA) seeds=3 $(ARGS)

table1-quick: ## Table 1 in a few minutes on 2 CPU cores: small synthetic set, short schedules, 2 seeds
	$(BIN)/python experiments/table1.py quick=true seeds=2 $(ARGS)
