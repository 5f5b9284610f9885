# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint check bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/perfkit run -m resnet50 --concurrency-range 1:4

lint: $(STAMP)
	$(BIN)/ruff check perfkit server tests benchmarks
	$(BIN)/ruff format --check perfkit server tests benchmarks
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -m "not gpu and not docker" -q

bench: $(STAMP)
	$(BIN)/python benchmarks/server_efficiency.py
	$(BIN)/python benchmarks/loadgen_overhead.py
	$(BIN)/python benchmarks/tuner_efficiency.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
