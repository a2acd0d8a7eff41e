# Two entry points matter: `make run` (the demo) and `make test` (everything CI checks).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit tools bench dashboards clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --editable '.[dev]'
	touch $(STAMP)

## Run the exporter on its embedded demo workspace (http://localhost:10366/).
run: $(STAMP)
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

## Benchmarks print tables; they are never part of `make test`.
bench: $(STAMP)
	bash .ci/install-tools bench
	$(BIN)/python -m bench

## Regenerate the Grafana dashboards from dashboards/generate_dashboards.py.
dashboards: $(STAMP)
	$(BIN)/python dashboards/generate_dashboards.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
