# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo)

.PHONY: demo test install system-deps lint bench clean

demo: install
	$(VENV)/bin/thawline compare

test: install lint
	$(PY) -m pytest -q -ra

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

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	$(PY) benchmarks/seed_vs_thawline.py

clean:
	rm -rf $(VENV) runs data .pytest_cache .ruff_cache
