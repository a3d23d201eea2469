# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo)

.PHONY: demo test check install system-deps lint docs bench gpu-check clean

demo: install
	$(VENV)/bin/thawline compare

# The whole suite across every core (pytest-xdist; worksteal balances the few long tests), the 20 slowest printed.
test: install lint
	$(PY) -m pytest -q -ra -n auto --dist worksteal --durations=20

# The edit loop: lint and every test but the slow and heavy ones (fresh processes, DDP, servers), in minutes.
check: install lint
	$(PY) -m pytest -q -ra -n auto --dist worksteal -m "not slow and not heavy" --durations=10

install: $(STAMP) system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The embedded data set, the browser for the report tests and the PostgreSQL server for the shared-sweep
# test come from Debian packages.
system-deps:
	@missing=""; \
	[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing="$$missing dataset-fashion-mnist"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  { $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; } || \
	  echo "warning: could not install$$missing; tests that need them are skipped (install them by hand)"; \
	fi

# ruff, and the layers of .importlinter (which subpackage may import which; the report and the leaves no torch).
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks docs
	$(VENV)/bin/lint-imports

# The docs site (MkDocs + Material, mkdocs.yml), offline, into site/: open site/index.html. docs/hooks.py first
# generates the measurement tables from benchmarks/records/*.json (docs/gen_tables.py) into docs/generated/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: install
	$(PY) benchmarks/seed_vs_thawline.py

# On a CUDA machine: the tests that need a GPU, then thawline vs timm's train.py (ResNet-50, bf16 autocast,
# channels_last, batch 256) back to back, printing the ratio (~5 minutes on one H100/H200). GPU_PYTHON=python3 uses
# an interpreter that already has CUDA PyTorch and timm instead of installing the venv (machines without internet).
gpu-check:
	@if [ -n "$(GPU_PYTHON)" ]; then py="$(GPU_PYTHON)"; export PYTHONPATH="$$PWD/src:$$PYTHONPATH"; \
	else $(MAKE) install >/dev/null && py=$(PY); fi; \
	$$py -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu-check: no CUDA GPU is visible')" && \
	$$py -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())" && \
	$$py -m pytest -q -ra -p no:cacheprovider tests/test_gpu.py; tests=$$?; \
	$$py benchmarks/gpu_check.py $(GPU_CHECK_ARGS) && exit $$tests

clean:
	rm -rf $(VENV) runs data site docs/generated .pytest_cache .ruff_cache
