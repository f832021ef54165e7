# Two commands: `make run` (set-up plus the embedded default with the demo feed) and
# `make test` (set-up plus the whole suite). Everything else is a helper for them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# The domain core compiled with mypyc (asvat/native.py): rebuilt when a domain module
# changes. Without a C compiler the build says so, and the sources run (slower).
NATIVE_SOURCES := $(wildcard asvat/domain/*.py)
NATIVE := asvat/domain/_native.json

.PHONY: run test lint typecheck unit setup system-deps clean bench bench-pipeline

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

$(NATIVE): $(STAMP) $(NATIVE_SOURCES) asvat/native.py
	$(BIN)/asvat native build

setup: $(STAMP) $(NATIVE)

# Prometheus' server and promtool (Debian package prometheus) for the observability tests.
# Returns at once when they are installed; otherwise installs them with apt-get.
system-deps:
	@bash deploy/install-system-deps.sh

run: setup
	$(BIN)/asvat up --demo

test: setup system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest tests

unit: setup
	$(BIN)/python -m pytest tests/unit

bench: setup
	$(BIN)/python bench/engine.py

# The live pipeline on the embedded broker (bench/pipeline.py; ARGS=--quick for a smoke
# run). py-spy, to profile the worker, is a bench-only tool: installed here, not by setup.
bench-pipeline: setup
	test -x $(BIN)/py-spy || $(BIN)/pip install --quiet 'py-spy>=0.4'
	$(BIN)/python bench/pipeline.py $(ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache asvat/domain/*.so $(NATIVE)
