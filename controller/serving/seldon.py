"""Rendering a ModelDeployment's serving state as a Seldon Core v1 ``SeldonDeployment``.

Pure: (ModelDeployment, predictors, settings) → the object to server-side apply. One
predictor while stable; two (``stable`` and ``canary``, traffic summing to 100) during
a rollout. Seldon's executor labels its metrics with ``predictor_version`` from the
predictor's ``version`` *annotation* (a label is not read), which is how canary analysis
tells versions apart; the label is kept for selecting the predictor's pods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller import api
from controller.kube import SELDON_DEPLOYMENTS, owner_reference
from controller.settings import Settings

MODEL_CONTAINER = "classifier"
SECRET_ENV_KEY = "envSecretRefName"


@dataclass(frozen=True)
class Predictor:
    name: str  # "stable" | "canary"
    version: int
    model_uri: str
    weight: int


def render(mdep: dict[str, Any], predictors: list[Predictor], settings: Settings, *,
           drift_logging: bool) -> dict[str, Any]:
    meta = mdep["metadata"]
    spec = mdep.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    labels = {
        api.LABEL_MANAGED_BY: api.MANAGED_BY,
        api.LABEL_DEPLOYMENT: meta["name"],
    }
    annotations: dict[str, str] = {}
    auth = spec.get("auth")
    if auth:
        # Seldon v1 leaves authentication to the ingress; these tell it which Secret holds
        # the expected bearer token (see docs/serving.md for the Istio/Ambassador wiring).
        annotations[f"{api.PREFIX}/auth-secret"] = auth["secretRef"]["name"]
        annotations[f"{api.PREFIX}/auth-secret-key"] = auth["secretRef"].get("key", "token")
    return {
        "apiVersion": SELDON_DEPLOYMENTS.api_version,
        "kind": SELDON_DEPLOYMENTS.kind,
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(mdep)],
        },
        "spec": {
            "name": meta["name"],
            "protocol": "seldon",
            "annotations": {"seldon.io/rest-timeout": "10000"},
            "predictors": [
                _predictor(p, replicas, settings, drift_logging) for p in predictors
            ],
        },
    }


def _predictor(p: Predictor, replicas: int, settings: Settings,
               drift_logging: bool) -> dict[str, Any]:
    graph: dict[str, Any] = {
        "name": MODEL_CONTAINER,
        "type": "MODEL",
        "modelUri": p.model_uri,
        "children": [],
        SECRET_ENV_KEY: settings.s3_secret,
    }
    if drift_logging:
        graph["logger"] = {"mode": "all", "url": settings.request_logger_url}
    return {
        "name": p.name,
        "replicas": replicas,
        "traffic": p.weight,
        "labels": {"version": f"v{p.version}"},
        "annotations": {"version": f"v{p.version}"},  # -> predictor_version on metrics
        "graph": graph,
        "componentSpecs": [{
            "spec": {
                "containers": [{
                    "name": MODEL_CONTAINER,
                    "image": settings.model_server_image,
                    "env": [
                        {"name": "MODEL_URI", "value": "/mnt/models"},
                        {"name": "TRELLIS_MODEL_VERSION", "value": str(p.version)},
                    ],
                    "resources": {
                        "requests": {"cpu": "250m", "memory": "512Mi"},
                        "limits": {"memory": "1Gi"},
                    },
                    "readinessProbe": {
                        "httpGet": {"path": "/health/status", "port": "http"},
                        "periodSeconds": 5,
                    },
                }],
            },
        }],
    }
