"""The operator runs as the manifests deploy it: the controller image built here from the
Dockerfile, two replicas peering as ``trellis``, the manifests' ServiceAccount and RBAC
only, the in-cluster API address from the `kubernetes` Service. One replica acts, the
other stands by; the active one serves metrics and reconciles.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from controller import api
from controller.devcluster import images
from tests.support.clusterwide import pick, render
from tests.support.kube import Cluster, condition, wait_for
from tests.support.specs import example

pytestmark = pytest.mark.node

SYSTEM_NS = "trellis-system"


def _served(cluster: Cluster, docs: list[dict]) -> list[dict]:
    """The objects whose API this cluster serves (no Prometheus operator here)."""
    served = set(cluster.kubectl("api-resources", "-o", "name").stdout.split())
    out = []
    for doc in docs:
        group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
        plural = doc["kind"].lower() + ("es" if doc["kind"].endswith("s") else "s")
        if (f"{plural}.{group}" if group else plural) in served:
            out.append(doc)
    return out


@pytest.fixture(scope="module")
def operator_pods(node_cluster: Cluster) -> list[dict]:
    node = node_cluster.dev.node.state()
    assert node is not None
    images.ensure_images(Path(node.containerd_socket), names=("controller",))
    docs = render(node_cluster)
    crds = pick(docs, "CustomResourceDefinition")
    node_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                         input=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds}))
    node_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         *[f"crd/{c['metadata']['name']}" for c in crds])
    # The peering object before the replicas: kopf's non-mandatory peering runs a replica
    # standalone (active) when it starts and finds no ClusterKopfPeering.
    rest = _served(node_cluster, [d for d in docs if d["kind"] != "CustomResourceDefinition"])
    assert pick(rest, "ClusterKopfPeering", "trellis")
    node_cluster.apply([d for d in rest if d["kind"] != "Deployment"])
    node_cluster.apply(pick(rest, "Deployment"))
    node_cluster.kubectl("rollout", "status", "deployment/trellis-operator", "-n", SYSTEM_NS,
                         "--timeout=180s", timeout=200)
    pods = json.loads(node_cluster.kubectl(
        "get", "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/name=trellis-operator",
        "-o", "json").stdout)["items"]
    yield pods
    node_cluster.kubectl("delete", "deployment", "trellis-operator", "-n", SYSTEM_NS,
                         "--wait=true", "--timeout=60s", check=False)


def _reconciles(pod: dict) -> float:
    """The pod's own count of reconcile passes, from its /metrics."""
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8000/metrics",
                                timeout=5) as resp:
        body = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("trellis_reconciles_total{"))


def test_two_replicas_run_from_the_controller_image_and_peer(
        node_cluster: Cluster, operator_pods: list[dict]) -> None:
    assert len(operator_pods) == 2
    for pod in operator_pods:
        spec = pod["spec"]
        assert spec["containers"][0]["image"] == images.REFS["controller"]
        assert spec["serviceAccountName"] == "trellis-operator"
        assert all(c["ready"] for c in pod["status"]["containerStatuses"])
    names = {p["metadata"]["name"] for p in operator_pods}

    def both_peering() -> bool:
        peering = json.loads(node_cluster.kubectl(
            "get", "clusterkopfpeering", "trellis", "-o", "json").stdout)
        return names <= set(peering.get("status") or {})

    wait_for(both_peering, timeout=120, interval=1, what="both replicas in the peering")
    for pod in operator_pods:  # each serves metrics, the standby too
        _reconciles(pod)


def test_the_operator_pod_reconciles_and_refuses_to_train_in_itself(
        node_cluster: Cluster, operator_pods: list[dict]) -> None:
    ns = node_cluster.create_namespace("operator-pod")
    node_cluster.apply(example("Experiment"), ns)  # backend: local

    def stalled():
        obj = node_cluster.get("experiment", "classifier", ns)
        cond = condition(obj, api.Cond.STALLED)
        return cond if cond and cond["status"] == "True" else None

    cond = wait_for(stalled, timeout=90, interval=1, what="Stalled LocalTrainingDisabled")
    assert cond["reason"] == api.Reason.LOCAL_TRAINING_DISABLED
    assert "backend: kubernetes" in cond["message"]
    # One leader: only one replica reconciled it; the other stood by.
    counts = sorted(_reconciles(pod) for pod in operator_pods)
    assert counts[0] == 0 < counts[1], counts
    node_cluster.kubectl("delete", "namespace", ns, "--wait=false")
