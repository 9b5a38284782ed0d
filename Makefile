# The README's two commands: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Two workers: the daemon and browser tests (one xdist group) wait on Dagster's ticks for most of
# their time, which the in-process tests fill on the other core (roadmap_pipeline_tests/conftest.py).
PYTEST_PARALLEL ?= -n 2 --dist loadgroup

# The tests' scratch files (SQLite databases, Dagster's test instances, checkpoints) go to tmpfs
# when the machine has one: SQLite syncs every commit, and on a slow disk those syncs were half
# the time of the in-process Dagster tests. Postgres and the SQLite semantics are unchanged.
TEST_TMPDIR ?= $(if $(wildcard /dev/shm/.),/dev/shm/roadmap_pipeline_tests,$(or $(TMPDIR),/tmp))

.PHONY: demo test lint typecheck clean dev dev-postgres validate bench browser-deps

# The browser test drives Debian's Chromium through Playwright, which must never download a
# browser of its own (the machines reach package registries only).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/roadmap-pipeline demo

test: $(STAMP) browser-deps
	$(BIN)/ruff check roadmap_pipeline roadmap_pipeline_tests benchmarks
	$(BIN)/ruff format --check roadmap_pipeline roadmap_pipeline_tests benchmarks
	$(BIN)/mypy roadmap_pipeline
	mkdir -p $(TEST_TMPDIR)
	TMPDIR=$(TEST_TMPDIR) $(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not exclusive"
	TMPDIR=$(TEST_TMPDIR) $(BIN)/python -m pytest -m exclusive

# Chromium for the browser test, from Debian's packages when it is missing (CI starts without it).
browser-deps:
	@test -x $(CHROMIUM) || { \
		echo "$(CHROMIUM) is missing: installing Debian's chromium"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	}

# `dagster dev` on 127.0.0.1:3000 over the embedded default (what `make demo` left), or over
# Postgres (ROADMAP_DATABASE_URL, DAGSTER_POSTGRES_URL; see the README).
dev: $(STAMP)
	$(BIN)/roadmap-pipeline dev

dev-postgres: $(STAMP)
	$(BIN)/roadmap-pipeline dev --postgres

# Validation needs an instance but no storage: a throwaway DAGSTER_HOME, so that the production
# dagster.yaml in this directory (which wants DAGSTER_POSTGRES_URL) is not picked up.
validate: $(STAMP)
	@home=$$(mktemp -d); \
	DAGSTER_HOME=$$home $(BIN)/dagster definitions validate -m roadmap_pipeline.definitions; \
	status=$$?; rm -rf $$home; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check roadmap_pipeline roadmap_pipeline_tests benchmarks
	$(BIN)/ruff format --check roadmap_pipeline roadmap_pipeline_tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy roadmap_pipeline

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

bench: $(STAMP)
	$(BIN)/python -m benchmarks.fleet_verify
