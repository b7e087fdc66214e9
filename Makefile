# Trellis: `make demo` runs the farm's story, `make test` passes the tests — both from nothing.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
SERVING_VENV := .venv-serving
export UV_CACHE_DIR ?= $(HOME)/.cache/uv
export UV_PYTHON_DOWNLOADS := never
export METAFLOW_USER ?= trellis

.PHONY: help install env serving-env cluster-binaries lint test test-unit demo bench clean

help:
	@echo "make demo   - the pumpkin farm's whole story (dev cluster, operator, report)"
	@echo "make test   - install everything, lint, run the whole test suite"
	@echo "make bench  - benchmarks -> bench/results.json"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

# The operator/CLI environment, from uv.lock (kopf, kubernetes<37, metaflow, torch, ...).
env: $(UV)
	$(UV) sync --frozen --python $(PYTHON)

# The model-server environment: seldon-core 1.17.1 cannot share an environment with kopf.
serving-env: $(UV)
	@test -x $(SERVING_VENV)/bin/python || $(UV) venv --python $(PYTHON) $(SERVING_VENV)
	VIRTUAL_ENV=$(SERVING_VENV) $(UV) pip sync serving/requirements.lock

install: env serving-env

# etcd, kube-apiserver and kubectl, built once from Go modules into ~/.cache/trellis.
cluster-binaries: env
	$(VENV)/bin/python -c "from controller.devcluster import binaries; binaries.ensure_all()"

lint: env
	$(VENV)/bin/ruff check controller tests flows serving bench

test: install cluster-binaries lint
	bash scripts/install-chromium.sh
	$(VENV)/bin/pytest -ra tests

test-unit: env
	$(VENV)/bin/pytest -q tests/unit

demo: install cluster-binaries
	$(VENV)/bin/trellis demo

bench: install cluster-binaries
	$(VENV)/bin/python bench/run.py --out bench/results.json

clean:
	-$(VENV)/bin/trellis dev-cluster down
	rm -rf .trellis demo-report
