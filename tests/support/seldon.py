"""Seldon mode without Seldon Core: the test plays its part on the API server.

No Seldon Core operator runs here, so tests install a minimal SeldonDeployment CRD,
register model versions on the Experiment's status by hand (nothing trains) and mark the
SeldonDeployment Available (or Failed) with the status Seldon 1.17.1 writes. What its pods
would run (model servers behind the executor's metrics, scraped by a real Prometheus) is
``tests.support.seldon_host`` (processes on this host) or ``tests.support.seldon_pods``
(pods on the dev cluster's node).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.kube import Cluster, wait_for
from tests.support.seldon_host import SeldonHost
from tests.support.seldon_pods import SeldonPods
from tests.support.specs import base

CRD = Path(__file__).resolve().parent / "crds" / "seldondeployment.yaml"
MODELS_URI = "s3://farm-models/classifier"  # + "/<version>": where versions are registered


def post_event(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> int:
    """POST a JSON body as Seldon's executor posts a request-logger event (or a client its
    feedback); the HTTP status that was answered."""
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def install_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "-f", str(CRD))


def register(cluster: Cluster, ns: str, *versions: int,
             reference_uri: str | None = None, models_uri: str = MODELS_URI) -> None:
    """Model versions on the Experiment's status, as a finished training run leaves them."""
    models = [{"version": v, "artifactUri": f"{models_uri}/{v}",
               "run": f"PumpkinFlow/{v}", "createdAt": "2026-11-27T00:00:00Z",
               **({"referenceUri": reference_uri} if reference_uri else {})}
              for v in versions]
    cluster.kubectl("patch", "exp", "classifier", "-n", ns, "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": {"models": models}}))


def setup_objects(cluster: Cluster, ns: str, *, drift: dict[str, Any] | None = None,
                  reference_uri: str | None = None, interval: str = "2s",
                  models_uri: str = MODELS_URI) -> None:
    """An Experiment with v1 registered and a seldon-backend ModelDeployment of it."""
    exp = base("Experiment")
    exp["spec"]["flow"]["file"] = "flows/not-here.py"  # nothing trains in these tests
    cluster.apply(exp, ns)
    register(cluster, ns, 1, reference_uri=reference_uri, models_uri=models_uri)
    mdep = base("ModelDeployment")
    mdep["spec"]["backend"] = "seldon"
    mdep["spec"]["canary"] = {"steps": [10, 50, 100], "interval": interval,
                              "analysis": {"minRequests": 10, "maxErrorRate": 0.05,
                                           "maxLatencyP99Ms": 500, "maxPredictionShift": 0.3}}
    mdep["spec"]["drift"] = drift or {"enabled": False}
    cluster.apply(mdep, ns)


def predictors(cluster: Cluster, ns: str) -> list[tuple[str, str, int]]:
    sdep = cluster.get("sdep", "classifier", ns)
    if not sdep:
        return []
    return [(p["name"], p["labels"]["version"], p["traffic"]) for p in sdep["spec"]["predictors"]]


def address(ns: str, name: str = "classifier", predictor: str = "stable") -> str:
    """Seldon 1.17.1's ``status.address.url``: the first predictor's own Service, path
    included (``createAddressableResource``)."""
    return (f"http://{name}-{predictor}.{ns}.svc.cluster.local:8000"
            "/api/v1.0/predictions")


def _seldon_status(cluster: Cluster, ns: str, state: str, description: str = "") -> None:
    """Write status as Seldon Core's operator does after reconciling the current spec:
    state, description, the address of the first predictor, one Deployment per predictor."""
    sdep = cluster.get("sdep", "classifier", ns)
    preds = sdep["spec"]["predictors"]
    ready = state == "Available"
    deployments = {f"classifier-{p['name']}-0-classifier": {
        "replicas": p.get("replicas", 1),
        "availableReplicas": p.get("replicas", 1) if ready else 0} for p in preds}
    status = {"state": state, "description": description,
              "address": {"url": address(ns, predictor=preds[0]["name"])},
              "deploymentStatus": deployments, "replicas": preds[0].get("replicas", 1)}
    cluster.kubectl("patch", "sdep", "classifier", "-n", ns, "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": status}))


def mark_available(cluster: Cluster, ns: str) -> None:
    """Seldon Core has rolled out the current spec."""
    _seldon_status(cluster, ns, "Available")


def mark_failed(cluster: Cluster, ns: str,
                description: str = "Deployment is no longer progressing and not available."
                ) -> None:
    """Seldon Core gave up on the current spec (its words for a stuck Deployment)."""
    _seldon_status(cluster, ns, "Failed", description)


def mdep_status(cluster: Cluster, ns: str) -> dict[str, Any]:
    return (cluster.get("mdep", "classifier", ns) or {}).get("status") or {}


def wait_predictors(cluster: Cluster, ns: str, expected: list[tuple[str, str, int]],
                    timeout: float = 30, host: SeldonHost | SeldonPods | None = None
                    ) -> None:
    """Wait for the SeldonDeployment's traffic split; have ``host`` run its predictors (as
    Seldon's operator would roll out their pods) and, mid-rollout, have Seldon report it
    Available, then wait for the step to be on status with its window's start: requests
    served before that fall outside the step's window, as they do in a real cluster in
    the moment between a weight change and the step's start.
    """
    wait_for(lambda: predictors(cluster, ns) == expected, timeout=timeout,
             what=f"predictors {expected}")
    if host is not None:
        host.sync(cluster.get("sdep", "classifier", ns))
    weights = dict((name, weight) for name, _, weight in expected)
    if "canary" in weights:
        mark_available(cluster, ns)
        def step_recorded() -> bool:
            canary = mdep_status(cluster, ns).get("canary") or {}
            return canary.get("weight") == weights["canary"] and bool(canary.get("baseline"))
        wait_for(step_recorded, timeout=timeout, what=f"canary step at {weights['canary']}%")


def passes(analyses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A rollout's analyses that passed their step."""
    return [a for a in analyses if a["verdict"] == "pass"]


def failed_share(message: str) -> tuple[int, int]:
    """(errors, requests) out of a rejection's "(E/R requests failed)"."""
    match = re.search(r"\((\d+)/(\d+) requests failed\)", message)
    assert match, message
    return int(match.group(1)), int(match.group(2))
