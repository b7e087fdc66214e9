"""Trellis installed into a dev cluster the way ``docs/install.md`` installs it anywhere:
``manifests/`` rendered by kustomize (``kubectl kustomize``), the CRDs first and
Established, the peering object before the replicas, then the namespace, RBAC, settings
and the operator's Deployment (two replicas from the controller image, peering as
``trellis``); a team namespace with ``manifests/team`` and the S3 Secret.

What the dev cluster lacks is left out, not faked: objects whose API it does not serve
(the ServiceMonitor: no Prometheus operator here) are skipped and named.

Pure helpers (``pick``, ``active_peer``) are apart from the ones that call kubectl.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from controller.devcluster.cluster import DevCluster
from controller.devcluster.s3 import NAMESPACE as S3_SECRET_NAMESPACE
from controller.devcluster.s3 import SECRET as S3_SECRET
from controller.paths import ROOT

MANIFESTS = ROOT / "manifests"
TEAM_MANIFESTS = MANIFESTS / "team"
SYSTEM_NAMESPACE = "trellis-system"
OPERATOR = "trellis-operator"
OPERATOR_SELECTOR = "app.kubernetes.io/name=trellis-operator"
CONFIG = "trellis-operator-config"
PEERING = "trellis"
METRICS_PORT = 8000

Doc = dict[str, Any]


# ---------------------------------------------------------------------------- pure
def pick(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def plural_name(doc: Mapping[str, Any]) -> str:
    """``kind`` and ``apiVersion`` as ``kubectl api-resources -o name`` lists them
    (``deployments.apps``, ``namespaces``): enough for the kinds under ``manifests/``."""
    kind = doc["kind"].lower()
    plural = kind + ("es" if kind.endswith("s") else "s")
    group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
    return f"{plural}.{group}" if group else plural


def live_peers(status: Mapping[str, Any], now: float | None = None) -> dict[str, int]:
    """kopf's ClusterKopfPeering status → {peer id: priority} of the peers whose
    keep-alive has not lapsed (``lastseen`` + ``lifetime`` seconds)."""
    now = time.time() if now is None else now
    out = {}
    for peer, info in status.items():
        if not isinstance(info, Mapping):
            continue
        try:
            seen = dt.datetime.fromisoformat(str(info.get("lastseen")).replace("Z", "+00:00"))
        except ValueError:
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=dt.UTC)
        if seen.timestamp() + float(info.get("lifetime") or 60) >= now:
            out[peer] = int(info.get("priority") or 0)
    return out


def active_peer(status: Mapping[str, Any], now: float | None = None) -> str | None:
    """The replica that reconciles: the live peer of the highest priority (the oldest
    replica: ``controller.operator.peering_priority``); the others stand by."""
    peers = live_peers(status, now)
    return max(peers, key=lambda p: peers[p]) if peers else None


# -------------------------------------------------------------------- kubectl calls
def render(dev: DevCluster, path: Path = MANIFESTS) -> list[Doc]:
    """``kubectl kustomize <path>`` as a list of objects."""
    out = dev.kubectl("kustomize", str(path)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def apply(dev: DevCluster, docs: Doc | list[Doc], namespace: str | None = None) -> None:
    body = docs if isinstance(docs, dict) else {"apiVersion": "v1", "kind": "List",
                                                 "items": docs}
    dev.kubectl("apply", "-f", "-", *(["-n", namespace] if namespace else []),
                input=json.dumps(body))


def served(dev: DevCluster, docs: list[Doc]) -> tuple[list[Doc], list[Doc]]:
    """(the objects whose API this cluster serves, the others)."""
    names = set(dev.kubectl("api-resources", "-o", "name").stdout.split())
    keep = [d for d in docs if plural_name(d) in names]
    return keep, [d for d in docs if plural_name(d) not in names]


def deploy_operator(dev: DevCluster, config: Mapping[str, str] | None = None,
                    timeout: float = 240) -> list[Doc]:
    """``manifests/`` applied in docs/install.md's order, ``config`` merged into the
    operator's ConfigMap; returns the objects skipped (their API is not served) once the
    Deployment has rolled out."""
    docs = render(dev)
    if config:
        pick(docs, "ConfigMap", CONFIG)[0]["data"].update(config)
    crds = pick(docs, "CustomResourceDefinition")
    dev.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=trellis",
                "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                             "items": crds}))
    dev.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                *[f"crd/{c['metadata']['name']}" for c in crds])
    rest, skipped = served(dev, [d for d in docs if d["kind"] != "CustomResourceDefinition"])
    # The peering object before the replicas: a replica that finds none runs standalone.
    apply(dev, pick(rest, "ClusterKopfPeering"))
    apply(dev, [d for d in rest if d["kind"] not in ("ClusterKopfPeering", "Deployment")])
    apply(dev, pick(rest, "Deployment"))
    dev.kubectl("rollout", "status", f"deployment/{OPERATOR}", "-n", SYSTEM_NAMESPACE,
                f"--timeout={timeout:.0f}s", timeout=timeout + 30)
    return skipped


def team_namespace(dev: DevCluster, name: str) -> None:
    """A team namespace as docs/install.md sets one up: ``manifests/team`` (the trainer's
    ServiceAccount) and the S3 Secret, here a copy of the dev cluster's."""
    dev.kubectl("create", "namespace", name, check=False)
    team = render(dev, TEAM_MANIFESTS)
    for doc in team:
        doc["metadata"]["namespace"] = name
    apply(dev, team, name)
    secret = json.loads(dev.kubectl("get", "secret", S3_SECRET, "-n", S3_SECRET_NAMESPACE,
                                    "-o", "json").stdout)
    apply(dev, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": S3_SECRET, "namespace": name},
                "data": secret["data"]}, name)


def operator_pods(dev: DevCluster) -> list[Doc]:
    """The operator's pods that run and are not being deleted, oldest first."""
    pods = json.loads(dev.kubectl("get", "pods", "-n", SYSTEM_NAMESPACE, "-l",
                                  OPERATOR_SELECTOR, "-o", "json").stdout)["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"
               and p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")]
    return sorted(running, key=lambda p: p["metadata"]["creationTimestamp"])


def peering_status(dev: DevCluster) -> dict[str, Any]:
    proc = dev.kubectl("get", "clusterkopfpeering", PEERING, "-o", "json", check=False)
    if proc.returncode != 0:
        return {}
    return json.loads(proc.stdout).get("status") or {}


def reconciles(pod: Mapping[str, Any]) -> float | None:
    """The pod's own count of reconcile passes, from its /metrics (pod IPs are reachable
    from the dev node's host); None when it does not answer."""
    url = f"http://{pod['status']['podIP']}:{METRICS_PORT}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("trellis_reconciles_total{"))
