# The README's two commands: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck clean dev dev-postgres validate bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/roadmap-pipeline demo

test: $(STAMP)
	$(BIN)/ruff check roadmap_pipeline roadmap_pipeline_tests benchmarks
	$(BIN)/ruff format --check roadmap_pipeline roadmap_pipeline_tests benchmarks
	$(BIN)/mypy roadmap_pipeline
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check roadmap_pipeline roadmap_pipeline_tests benchmarks
	$(BIN)/ruff format --check roadmap_pipeline roadmap_pipeline_tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy roadmap_pipeline

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

bench: $(STAMP)
	$(BIN)/python -m benchmarks.fleet_verify
