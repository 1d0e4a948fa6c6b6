# Two commands: `make test` and `make demo`. Each sets everything up first (a project virtual
# environment in .venv, torch first so that its CPU build is used where one is at hand, system
# packages such as flite when missing).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0
DEMO_MINUTES ?= 12
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup test lint demo bench quality clean system-deps

setup: $(STAMP)

system-deps:
	@command -v flite >/dev/null 2>&1 || { \
	  echo "installing flite (the demo corpus's synthesiser)"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q flite; }
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  echo "installing chromium (the browser of the serve page's test)"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver; }

$(STAMP): pyproject.toml | system-deps
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77,<81" wheel
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/cyclegan-vc demo --out demo-output --minutes $(DEMO_MINUTES)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

# The speed benchmarks (each prints its table; see docs/performance.md). The GPU one runs where CUDA is.
bench: $(STAMP)
	$(PY) benchmarks/prepare.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/convert.py
	@if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
	  $(PY) benchmarks/train_gpu.py --preset paper --batch 1 8 --variants eager graphs bf16 graphs-bf16 compile; \
	else echo "no CUDA device: benchmarks/train_gpu.py skipped"; fi

# The quality table of docs/results.md: the paper's four VCC 2016 pairs, 20 minutes of training each
# and the recommended conversion (hours on a CPU).
VCC ?= ../shared/data/vcc2016
quality: $(STAMP)
	$(PY) benchmarks/quality.py --root $(VCC) --out runs/quality --smooth 6

clean:
	rm -rf $(VENV) demo-output .pytest_cache
