# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch for the pytorch backend and its tests, installed before '.[dev]' (whose torch extra it
# then satisfies): the CPU wheel by default. For the CUDA build: make TORCH_SPEC=torch
# TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cu124'. Where pip does not find the
# CPU wheel: TORCH_PIP_ARGS='--extra-index-url https://download.pytorch.org/whl/cpu'.
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_PIP_ARGS ?=

.PHONY: demo demo-tune test lint bench soak fuzz gpu-check clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'
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
	$(BIN)/python -m pytest -m "not gpu and not docker" -q -n auto --dist loadfile

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

# The device check (issue 11), on a host with an NVIDIA GPU, its driver, torch built with CUDA and
# nvidia-ml-py: GPU facts first (exit 2 when no GPU is visible), then every `gpu`-marked test and
# benchmarks/gpu_efficiency.py (served/raw >= 0.90); sized for 5 minutes on one H100/H200, 8 at
# most. Its own venv sees PYTHON's packages (--system-site-packages, plus a .pth for a PYTHON that
# is itself a venv), so the CUDA torch already there is used: a pip constraint pins torch and
# numpy to PYTHON's, so nothing here replaces them (the CPU torch `make test` installs never comes
# in). It installs perfkit[server-gpu] (onnxruntime-gpu, never the CPU onnxruntime) and the test
# extra less nvidia-pytriton (only the `triton` tests use it; its numpy<2 pin would shadow the
# host's numpy). Without a package index, give wheels
# (setuptools and wheel among them): GPU_PIP_ARGS='--no-index --find-links DIR'.
GPU_VENV ?= .venv-gpu
GPU_PIP_ARGS ?=
GPU_INSTALL ?= -e '.[server-gpu]' -r $(GPU_VENV)/test-requirements.txt
gpu-check:
	@$(PYTHON) -c 'import ctypes; ctypes.CDLL("libnvidia-ml.so.1")' 2>/dev/null || { echo \
	  "gpu-check: FAILED: no NVIDIA driver here (libnvidia-ml.so.1 does not load): no GPU to check" >&2; exit 2; }
	@$(PYTHON) -c 'import torch' 2>/dev/null || { echo "gpu-check: FAILED: $(PYTHON) has no torch;" \
	  "install torch built with CUDA first (README, GPUs), or name its python: make gpu-check PYTHON=..." >&2; exit 2; }
	test -d $(GPU_VENV) || $(PYTHON) -m venv --system-site-packages $(GPU_VENV)
	$(PYTHON) -c 'import site; print("\n".join(site.getsitepackages()))' \
	  > "$$($(GPU_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_perfkit_base_site.pth"
	$(GPU_VENV)/bin/python -c 'import importlib.metadata as m; \
	  print("\n".join(f"{d}=={m.version(d)}" for d in ("torch", "numpy")))' > $(GPU_VENV)/constraints.txt
	$(GPU_VENV)/bin/python benchmarks/gpu_efficiency.py --print-requirements > $(GPU_VENV)/test-requirements.txt
	$(GPU_VENV)/bin/python -m pip install --quiet -c $(GPU_VENV)/constraints.txt $(GPU_PIP_ARGS) $(GPU_INSTALL)
	PYTHONUNBUFFERED=1 $(GPU_VENV)/bin/python benchmarks/gpu_efficiency.py --facts-only
	PERFKIT_GPU_CHECK=1 $(GPU_VENV)/bin/python -m pytest -m gpu -q -rs tests
	PYTHONUNBUFFERED=1 $(GPU_VENV)/bin/python benchmarks/gpu_efficiency.py

clean:
	rm -rf $(VENV) $(GPU_VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
