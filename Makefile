# One venv, created and filled from pyproject.toml (all versions pinned there).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup serve test lint bench-setup
$(BIN)/.kiln-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.kiln-installed

serve: setup
	$(BIN)/kiln serve

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench-setup: setup
	bash bench/setup.sh
