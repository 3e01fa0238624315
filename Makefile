# cgsim set-up and the two README commands. Everything lives in .venv inside the repo.
#
#   make demo            run the main job on the shipped example data
#   make test            run the test suite
#   make test-slow       also run the long checks (marker `slow`)
#
# TORCH selects the torch build installed before the project. The default is the CPU
# build of 2.13.0; a GPU user runs e.g. `make test TORCH="torch==2.13.0 --index-url URL"`.
PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/cgsim demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check cgsim tests bench

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
