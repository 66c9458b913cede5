# geosync: `make test` and `make demo` set everything up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help test demo lint typecheck clean venv graphql-schema screenshots

define RUN_HINT
run geosync as $(BIN)/geosync (or `source $(BIN)/activate`, then `geosync`), e.g. $(BIN)/geosync --help
endef
export RUN_HINT

help:
	@echo "geosync make targets:"
	@echo "  make venv       create $(VENV) with geosync and its test tools installed"
	@echo "  make test       lint, type-check and run the tests"
	@echo "  make demo       run a primary and a secondary on this machine (DEMO_ARGS=...)"
	@echo "  make lint       ruff check and format check"
	@echo "  make typecheck  mypy (strict)"
	@echo "  make graphql-schema  write docs/graphql/schema.graphql from the demo's replicators"
	@echo "  make screenshots  run the browser tests and save the admin UI's screenshots in docs/images"
	@echo "  make clean      remove $(VENV) and the tool caches"
	@echo
	@echo "$$RUN_HINT"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)
	@echo "$$RUN_HINT"

lint: $(STAMP)
	$(BIN)/ruff check geosync tests bench
	$(BIN)/ruff format --check geosync tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

DEMO_ARGS ?= --blobs 300 --repos 10 --churn --churn-seconds 15 --exit-when-synced --timeout 300

demo: $(STAMP)
	$(BIN)/geosync demo $(DEMO_ARGS)

graphql-schema: $(STAMP)
	$(BIN)/python -m geosync.web.graphql.sdl geosync.demo.replicators > docs/graphql/schema.graphql

screenshots: $(STAMP)
	GEOSYNC_SCREENSHOTS=docs/images $(BIN)/pytest -q tests/browser

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
