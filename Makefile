# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-tune test lint bench soak fuzz clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/perfkit run -m resnet50 --concurrency-range 1:4

# The resnet50 sweep on the embedded server (10 trials, up to 20 minutes on 2 cores): writes the
# best config.pbtxt back into model_repository/resnet50/ and everything else into tune-results/.
demo-tune: $(STAMP)
	$(BIN)/perfkit tune sweeps/resnet50-cpu.toml --output tune-results/resnet50

lint: $(STAMP)
	$(BIN)/ruff check perfkit server tests benchmarks
	$(BIN)/ruff format --check perfkit server tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/vulture

test: $(STAMP) lint
	$(BIN)/python -m pytest -m "not gpu and not docker" -q

# The HTTP/2 fuzz tests with a larger budget (2,000 hypothesis examples instead of 50).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q tests/server/test_h2_fuzz.py

# Every benchmark runs; the exit status is 1 when any of them missed a target.
bench: $(STAMP)
	rc=0; for b in server_efficiency loadgen_overhead tuner_efficiency overload; do \
	  $(BIN)/python benchmarks/$$b.py || rc=1; done; exit $$rc

# The server soak, on its own (5 minutes; MINUTES=30 make soak for longer): RSS slope < 1 MB/min.
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py --minutes $(or $(MINUTES),5)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
