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
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.kube import Cluster, wait_for
from tests.support.prometheus import Prometheus
from tests.support.seldon_host import SeldonHost, post
from tests.support.seldon_pods import SeldonPods
from tests.support.specs import base

CRD = Path(__file__).resolve().parent / "crds" / "seldondeployment.yaml"
MODELS_URI = "s3://farm-models/classifier"  # + "/<version>": where versions are registered
EXECUTOR_COUNT = "seldon_api_executor_server_requests_seconds_count"


def post_event(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> int:
    """POST a JSON body as Seldon's executor posts a request-logger event (or a client its
    feedback); the HTTP status that was answered. An event gets a ``Ce-Id`` of its own,
    a new UUID per post, as the executor's logger gives it."""
    headers = dict(headers or {})
    if "Ce-Type" in headers:
        headers.setdefault("Ce-Id", str(uuid.uuid4()))
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json", **headers})
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
                  models_uri: str = MODELS_URI, max_latency_ms: int = 500) -> None:
    """An Experiment with v1 registered and a seldon-backend ModelDeployment of it."""
    exp = base("Experiment")
    exp["spec"]["flow"]["file"] = "flows/not-here.py"  # nothing trains in these tests
    cluster.apply(exp, ns)
    register(cluster, ns, 1, reference_uri=reference_uri, models_uri=models_uri)
    mdep = base("ModelDeployment")
    mdep["spec"]["backend"] = "seldon"
    mdep["spec"]["canary"] = {"steps": [10, 50, 100], "interval": interval,
                              "analysis": {"minRequests": 10, "maxErrorRate": 0.05,
                                           "maxLatencyP99Ms": max_latency_ms,
                                           "maxPredictionShift": 0.3}}
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
    try:
        wait_for(lambda: predictors(cluster, ns) == expected, timeout=timeout,
                 what=f"predictors {expected}")
    except AssertionError as exc:  # what the operator decided instead, to read in the log
        st = mdep_status(cluster, ns)
        raise AssertionError(f"{exc}; they are {predictors(cluster, ns)}, the canary "
                             f"{st.get('canary')}, the last rollout "
                             f"{(st.get('rollouts') or [None])[-1]}") from None
    if host is not None:
        host.sync(cluster.get("sdep", "classifier", ns))
    weights = dict((name, weight) for name, _, weight in expected)
    if "canary" in weights:
        mark_available(cluster, ns)
        version = int(next(v for name, v, _ in expected if name == "canary").lstrip("v"))

        def step_recorded() -> bool:
            st = mdep_status(cluster, ns)
            canary = st.get("canary") or {}
            if canary.get("version") != version:
                canary = {}
            if canary.get("weight") == weights["canary"] and canary.get("baseline"):
                return True
            # or already analysed, the rollout maybe over, between two looks (a short
            # step, while the pods were synced)
            analysed = [*(canary.get("analyses") or []),
                        *(a for r in st.get("rollouts") or [] if r.get("version") == version
                          for a in r.get("analyses") or [])]
            return any(a.get("weight") == weights["canary"] for a in analysed)
        try:
            wait_for(step_recorded, timeout=timeout, what=f"canary step at {weights['canary']}%")
        except AssertionError as exc:  # say where the rollout stands instead
            st = mdep_status(cluster, ns)
            where = {k: st.get(k) for k in ("canary", "conditions", "seldonWrite", "phase")}
            raise AssertionError(f"{exc}; status: {json.dumps(where)}") from None


def passes(analyses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A rollout's analyses that passed their step."""
    return [a for a in analyses if a["verdict"] == "pass"]


def failed_share(message: str) -> tuple[int, int]:
    """(errors, requests) out of a rejection's "(E/R requests failed)"."""
    match = re.search(r"\((\d+)/(\d+) requests failed\)", message)
    assert match, message
    return int(match.group(1)), int(match.group(2))


def rejected_at_first_step(cluster: Cluster, ns: str, version: int
                           ) -> tuple[dict[str, Any], int, int]:
    """The ModelDeployment's status once ``version`` was rolled back at its first step,
    and the (errors, requests) its rejection counted."""
    st = mdep_status(cluster, ns)
    rejected = st["rejectedVersions"][-1]
    assert rejected["version"] == version and "step 1/3 at 10%" in rejected["message"], \
        rejected
    errors, requests = failed_share(rejected["message"])
    return st, errors, requests


def errors_across_a_reset(cluster: Cluster, ns: str, prometheus: Prometheus,
                          host: SeldonHost | SeldonPods, *, model_url: str,
                          executor_url: str, bodies: list[bytes],
                          restart: Callable[[], None], step_s: float) -> dict[str, Any]:
    """v3 is the canary at 10% (v1 stable), its step ``step_s`` long. Requests go to the
    canary's executor only; mid-step ``restart`` starts its counters again at zero. Only
    ``increase()`` across the reset sees enough errors to fail the step: the restarted
    executor alone saw too few requests for any verdict (2 of 4 failed), and so did the
    window before it. Returns the ModelDeployment's status after the rollback."""
    # which inputs v3 fails, asked of its model server directly (nothing counts that)
    failing = [b for b in bodies if post(model_url, b) == 500]
    passing = [b for b in bodies if b not in failing]
    assert len(failing) >= 4 and len(passing) >= 4
    series = (f'{EXECUTOR_COUNT}{{{prometheus.namespace_label}="{ns}",predictor_name="canary",'
              'service="predictions",code="500"}')

    def send(n_fail: int, n_pass: int) -> None:
        for body in failing[:n_fail] + passing[:n_pass]:
            post(f"{executor_url}/api/v1.0/predictions", body)

    def scraped(value: float) -> None:
        prometheus.wait_value(series, lambda v: v == value, timeout=60,
                              what=f"the canary's 500s at {value:g}")

    send(1, 1)  # before the step's window: its series exist from here on, as in a cluster
    scraped(1)
    wait_predictors(cluster, ns, [("stable", "v1", 90), ("canary", "v3", 10)], host=host)
    started = time.time()
    # increase() reads the samples inside the window: its first scrape must precede the
    # requests it is to count (with steady traffic that loss is a scrape interval's worth)
    prometheus.wait_value(f"timestamp({series})", lambda t: t is not None and t > started,
                          what="a scrape in the window")
    send(2, 2)
    scraped(3)
    restart()
    send(2, 2)
    scraped(2)
    assert time.time() - started < step_s, "the reset came after the step's analysis"
    wait_for(lambda: predictors(cluster, ns) == [("stable", "v1", 100)], timeout=90,
             what="v3 rolled back")
    st, errors, requests = rejected_at_first_step(cluster, ns, 3)
    assert errors >= 3 and requests >= 6, st["rejectedVersions"][-1]  # both sides counted
    assert all(a["verdict"] == "inconclusive" for a in st["rollouts"][-1]["analyses"][:-1])
    return st
