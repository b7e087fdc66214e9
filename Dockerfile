# syntax=docker/dockerfile:1
# Trellis images, one file, three targets:
#
#   docker build --target controller    -t ghcr.io/trellis-mlops/controller:0.1.0 .
#   docker build --target trainer       -t ghcr.io/trellis-mlops/trainer:0.1.0 .
#   docker build --target model-server  -t ghcr.io/trellis-mlops/model-server:0.1.0 .
#
# The environments come from the same lock files `make test` installs: uv.lock for the
# operator/CLI (the `operator` extra: kopf, kubernetes, metaflow; no torch, matplotlib or
# CUDA) and the trainer (the same plus the `train` extra: torch), serving/requirements.lock
# for the model server (seldon-core 1.17.1, which cannot share an environment with kopf).
# Build stages hold uv and the caches; final stages hold a venv, the code they run, a
# non-root user, and no build tools. tests/unit/test_dockerfile.py checks all of this.

# Exact tags (add @sha256:<digest> when mirroring into a private registry).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
# The uv release the Makefile uses (UV_VERSION there), so both resolve the lock alike.
ARG UV_VERSION=0.13.8

# ---------------------------------------------------------------------------- base
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# One unprivileged user for every image; uid 10001 is what the training Job's
# securityContext asks for (controller/training/kubernetes.py).
RUN groupadd --gid 10001 trellis \
 && useradd --uid 10001 --gid 10001 --home-dir /home/trellis --create-home \
      --shell /usr/sbin/nologin trellis

# --------------------------------------------------------------------------- build
# Resolves nothing: installs exactly what the lock files say (--frozen / pip sync).
FROM base AS uv
ARG UV_VERSION
# uv's download cache: the cache mount below, unless the builder bind-mounts a cache of
# its own elsewhere and says so here (controller/devcluster/images.py shares the host's,
# so a local build downloads nothing `make env` already fetched).
ARG UV_CACHE_DIR=/root/.cache/uv
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_CACHE_DIR=${UV_CACHE_DIR}
WORKDIR /app

# The operator's environment (the controller image's): the base and the `operator` extra.
FROM uv AS build
# Dependencies first (the slow, rarely changing layer), then the project itself (its
# wheel carries the CRDs, so they come along).
# --inexact changes nothing in a fresh build; when a local build syncs a kept
# environment again (images.py), it keeps what build-train added instead of removing it.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --inexact --no-install-project --extra operator
COPY controller ./controller
COPY crds ./crds
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --inexact --no-editable --extra operator

# The trainer's environment: the operator's plus the `train` extra (torch, CUDA wheels).
FROM build AS build-train
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --extra operator --extra train

# The model server's environment, as `make serving-env` builds it. UV_PYTHON names the
# target of `uv pip` (the build's own UV_PYTHON would sync into /usr/local instead);
# --allow-existing: a local build may keep this directory outside the image and sync it
# again (controller/devcluster/images.py).
FROM uv AS build-serving
COPY serving/requirements.lock ./serving/requirements.lock
RUN --mount=type=cache,target=/root/.cache/uv \
    uv venv --allow-existing /app/.venv-serving \
 && UV_PYTHON=/app/.venv-serving/bin/python uv pip sync serving/requirements.lock

# ---------------------------------------------------------------------- controller
# The operator and the CLI: `trellis operator --peering trellis --liveness-port 8080`.
# git (and ssh for git@/ssh:// URLs) is what SpecRepository fetches run.
FROM base AS controller
RUN apt-get update \
 && apt-get install --yes --no-install-recommends git openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
# TRELLIS_HOME holds the CRDs (the one source of truth `trellis validate` reads) and the
# flows that local-mode Experiments without a SpecRepository train from.
COPY crds ./crds
COPY flows ./flows
ENV PATH=/app/.venv/bin:$PATH \
    TRELLIS_HOME=/app \
    TRELLIS_STATE_DIR=/var/lib/trellis \
    HOME=/tmp
USER 10001:10001
EXPOSE 8000 8001 8080
ENTRYPOINT ["/app/.venv/bin/trellis"]
CMD ["operator", "--peering", "trellis", "--liveness-port", "8080"]

# ------------------------------------------------------------------------- trainer
# What a `backend: kubernetes` Experiment's Job runs: `python -m controller.training.podrun`
# (installed with the environment), which runs every step of the flow in that one pod
# with the S3 datastore and leaves the outcome as its termination message; the flow comes
# from /app/flows or from /workspace/src, cloned by the Job's initContainer with this
# image's git (ssh for git@/ssh:// remotes). Metaflow, torch and boto3 come with the
# operator's lock (with its `train` extra), so a flow trains with exactly the packages
# `make test` tests. The Job mounts an emptyDir at /work for HOME, TMPDIR and Metaflow's
# staging: the root filesystem stays read-only.
FROM base AS trainer
RUN apt-get update \
 && apt-get install --yes --no-install-recommends git openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build-train /app/.venv /app/.venv
COPY flows ./flows
# Metaflow's local metadata (.metaflow) goes to the user's home, never into the code.
ENV PATH=/app/.venv/bin:$PATH \
    TRELLIS_HOME=/app \
    HOME=/home/trellis \
    METAFLOW_DATASTORE_SYSROOT_LOCAL=/home/trellis \
    METAFLOW_USER=trellis
USER 10001:10001
CMD ["python", "/app/flows/pumpkin_flow.py", "--help"]

# -------------------------------------------------------------------- model-server
# Seldon Core v1 runs this as the predictor's container; its storage initializer puts
# the model version (spec.predictors[].graph.modelUri) at /mnt/models.
FROM base AS model-server
WORKDIR /app/serving
COPY --from=build-serving /app/.venv-serving /app/.venv-serving
COPY serving/PumpkinModel.py ./PumpkinModel.py
COPY serving/pumpkin_inputs.py ./pumpkin_inputs.py
ENV PATH=/app/.venv-serving/bin:$PATH \
    PYTHONPATH=/app/serving \
    MODEL_URI=/mnt/models \
    HOME=/tmp
USER 10001:10001
EXPOSE 9000 6000
ENTRYPOINT ["/app/.venv-serving/bin/seldon-core-microservice", "PumpkinModel", \
            "--service-type", "MODEL"]
