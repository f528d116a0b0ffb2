# megatron_polar developer interface. `make help` lists the targets.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# The compatibility environment: Python 3.12 (the pyenv one if present), requirements-compat.txt.
COMPAT_PYTHON ?= $(or $(lastword $(sort $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12))),python3.12)
COMPAT_VENV   := .venv-compat
COMPAT_STAMP  := $(COMPAT_VENV)/.installed
# GPU targets run in the interpreter that is already there (NVIDIA's PyTorch container: torch, TE, apex),
# never in a fresh venv, which would hold neither TE nor apex.
GPU_PYTHON ?= python

.DEFAULT_GOAL := help
.PHONY: help install test test-fast test-compat test-gpu gpu-smoke lint format demo bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt setup.py
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP) ## Create .venv in the repo and install everything (pinned dev requirements)

test: $(STAMP) ## Run the test suite (CPU, gloo; GPU-marked tests skip without a GPU)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## Unit tier only: no process spawning, CLI runs or demo (markers slow/distributed/gpu left out; < 2 min)
	$(PY) -m pytest -m "not slow and not distributed and not gpu" $(PYTEST_ARGS)

$(COMPAT_STAMP): requirements-compat.txt
	@command -v $(COMPAT_PYTHON) >/dev/null || { echo "need Python 3.12 (set COMPAT_PYTHON=...)"; exit 1; }
	test -x $(COMPAT_VENV)/bin/python || $(COMPAT_PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q --upgrade pip
	$(COMPAT_VENV)/bin/python -m pip install -q -r requirements-compat.txt
	touch $(COMPAT_STAMP)

test-compat: $(COMPAT_STAMP) ## CPU suite on Python 3.12 + newest megatron-core/torch/transformers (.venv-compat; first run downloads ~4 GB)
	PYTHONPATH=$(CURDIR) $(COMPAT_VENV)/bin/python -m pytest -m "not gpu" $(PYTEST_ARGS)

test-gpu: ## GPU-marked tests in the current Python (the container's; GPU_PYTHON=...); no venv
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m pytest -m gpu tests/gpu $(PYTEST_ARGS)

gpu-smoke: ## One-GPU smoke run (<10 min in NVIDIA's container): prints a table, writes gpu_smoke.json
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) benchmarks/gpu_smoke.py --out gpu_smoke.json $(SMOKE_ARGS)

demo: $(STAMP) ## End-to-end POLAR demo on the CPU, offline (report: demo_out/report/REPORT.md; REBUILD=1 redoes all)
	$(PY) -m megatron_polar.demo --check $(if $(REBUILD),--rebuild) $(DEMO_ARGS)

lint: $(STAMP) ## ruff lint and format check, and the import contract (layers, tests/test_import_contract.py)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q tests/test_import_contract.py

format: $(STAMP) ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) ## Run the benchmarks (build incl. 2 shards vs 1, train packed/padded, shared-prefix/packed, serve, start-up at scale, save-memory projection); prints same-run ratios
	$(PY) benchmarks/run_all.py

clean: ## Remove the virtualenv, caches and run outputs
	rm -rf $(VENV) $(COMPAT_VENV) .pytest_cache .ruff_cache runs demo_out *.egg-info
