# Quick start: `make run` (default experiment) and `make test` (whole suite).
# Both create .venv when missing and install the project with the pins in constraints.txt.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Offline-safe defaults: no telemetry, no update checks, no hub downloads, wandb offline.
export FLWR_TELEMETRY_ENABLED ?= 0
export FLWR_DISABLE_UPDATE_CHECK ?= 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION ?= 1
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export RAY_USAGE_STATS_ENABLED ?= 0
# Python caches compiled modules (and pytest its rewritten test modules) even where the shell
# says not to: every process the suite and a run start (CLI runs, Ray workers, Flower's ClientApp
# per message) then imports fedmtl without compiling it again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test test-fast lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,datasets,privacy]'
	@# an activated shell gets the defaults below too (for `flwr run .`)
	$(BIN)/python -c 'from pathlib import Path; from fedmtl.app.runtimes import add_to_activate; add_to_activate(Path("$(BIN)/activate"))'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/fedmtl run $(ARGS)

# The tests that start Ray run one at a time, and so do those that start Flower's processes
# (tests/conftest.py's groups). Both groups mostly wait (Ray's start, Flower's polls), so a third
# worker keeps the two cores busy meanwhile.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 3 --dist loadgroup --durations=15 $(PYTEST_ARGS)

# The inner loop: everything but the tests marked slow (subprocesses, Ray, long end-to-end runs),
# on two workers with one torch thread each.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) outputs multirun wandb .pytest_cache .ruff_cache
