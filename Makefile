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

.PHONY: help install env serving-env cluster-binaries node-deps lint test test-images \
	test-unit demo demo-cluster bench chaos clean

help:
	@echo "make demo   - the pumpkin farm's whole story (dev cluster, operator, report)"
	@echo "make demo-cluster - its first chapter in cluster mode (node, operator pods, S3)"
	@echo "make test   - install everything, lint, run the whole test suite"
	@echo "make bench  - benchmarks -> bench/results.json"
	@echo "make chaos  - the fault harness alone (operator kills, API server restarts, etcd outages)"
	@echo "make test-images - the real (CUDA-sized) images, built and run as pods"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

# The operator/CLI environment, from uv.lock, with every extra: the operator's (kopf,
# kubernetes<37, metaflow, ...: `operator`), training (torch: `train`) and the demo
# report's plots (`demo`). uv.lock covers Python 3.11–3.13; this environment is 3.11.
env: $(UV)
	$(UV) sync --frozen --all-extras --python $(PYTHON)

# The model-server environment: seldon-core 1.17.1 cannot share an environment with kopf.
serving-env: $(UV)
	@test -x $(SERVING_VENV)/bin/python || $(UV) venv --python $(PYTHON) $(SERVING_VENV)
	VIRTUAL_ENV=$(SERVING_VENV) $(UV) pip sync serving/requirements.lock

install: env serving-env

# etcd, kube-apiserver, kubectl and the node's kubelet, controller-manager, scheduler
# and kube-proxy, and SeaweedFS's weed (the S3 server of `dev-cluster up --s3`), built once
# from Go modules into ~/.cache/trellis; Prometheus (the tests' canary metrics), Debian's
# package unpacked there (apt-get download + dpkg -x: nothing installed, no service).
cluster-binaries: env
	$(VENV)/bin/python -c "from controller.devcluster import binaries; \
	    binaries.ensure_all(); binaries.ensure_node(); binaries.ensure_weed(); \
	    binaries.ensure_prometheus()"

# containerd, runc, CNI plugins, buildah, ... from Debian (as root; once).
node-deps:
	bash scripts/install-node-deps.sh

lint: env
	$(VENV)/bin/ruff check controller tests flows serving bench

# TEST_TMPDIR: the tests' TMPDIR (.ci/run gives them one of their own, to check it after).
test: install cluster-binaries node-deps lint
	bash scripts/install-chromium.sh
	$(if $(TEST_TMPDIR),TMPDIR=$(TEST_TMPDIR)) $(VENV)/bin/pytest -ra --durations=30 tests

# The Dockerfile's trainer and model-server images with their CUDA-sized environments
# baked into the layers (make test mounts them from the host instead: minutes and
# ~13 GB of containerd storage per image), checked as images and as pods on the node,
# the trainer also as the operator runs it in a namespace enforcing the restricted profile.
test-images: install cluster-binaries
	bash scripts/install-node-deps.sh
	TRELLIS_IMAGE_ENVIRONMENTS=baked $(VENV)/bin/pytest -ra tests/images \
	    tests/node/test_images_in_pods.py \
	    tests/node/test_operator_pod.py::test_a_restricted_namespace_trains_with_the_baked_trainer_image

test-unit: env
	$(VENV)/bin/pytest -q tests/unit

demo: install cluster-binaries
	$(VENV)/bin/trellis demo

# Cluster mode: a dev cluster with a real node and S3, the images built here, the
# operator as pods, training in a pod, the model in S3 -> demo-report-cluster/.
demo-cluster: install cluster-binaries node-deps
	$(VENV)/bin/trellis demo --cluster

bench: install cluster-binaries
	$(VENV)/bin/python bench/run.py --out bench/results.json

# The fault harness (also the `chaos` suite of `make bench`; a fixed-seed slice runs in
# `make test`): rows on stdout, every trial's record in bench/chaos-trials.json.
chaos: install cluster-binaries
	$(VENV)/bin/python bench/chaos_bench.py --detail bench/chaos-trials.json

clean:
	-$(VENV)/bin/trellis dev-cluster down
	rm -rf .trellis demo-report demo-report-cluster
