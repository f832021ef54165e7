# Two commands: `make run` (set-up plus the embedded default with the demo feed) and
# `make test` (set-up plus the whole suite). Everything else is a helper for them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test lint typecheck unit setup system-deps clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

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

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
