# megatron_polar developer interface. `make help` lists the targets.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-gpu lint format demo bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

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

test-gpu: $(STAMP) ## Run only the GPU-marked tests (on a machine with a GPU and Transformer Engine)
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

demo: $(STAMP) ## End-to-end POLAR demo on the CPU, offline (report: demo_out/report/REPORT.md; REBUILD=1 redoes all)
	$(PY) -m megatron_polar.demo --check $(if $(REBUILD),--rebuild) $(DEMO_ARGS)

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) ## Run the benchmarks (build, train packed/padded, serve, start-up at scale); prints same-run ratios
	$(PY) benchmarks/run_all.py

clean: ## Remove the virtualenv, caches and run outputs
	rm -rf $(VENV) .pytest_cache .ruff_cache runs demo_out *.egg-info
