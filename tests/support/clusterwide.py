"""Helpers for tests that run the operator the way the manifests do: cluster-wide, peering.

A cluster-wide operator reconciles every namespace, so these tests get a control plane
of their own (``own_cluster``) instead of the session's, where other tests leave objects
behind (local-mode Experiments among them, which such an operator would start training).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from controller.devcluster import deploy
from controller.devcluster.cluster import DevCluster
from controller.devcluster.deploy import pick
from controller.paths import ROOT
from tests.support.kube import Cluster, OperatorProcess, wait_for

MANIFESTS = deploy.MANIFESTS
SELDON_CRD = ROOT / "tests" / "support" / "crds" / "seldondeployment.yaml"
PEERING = ("kopf.dev", "v1", "clusterkopfpeerings")


@contextmanager
def own_cluster(state_dir: Path) -> Iterator[Cluster]:
    """A fresh etcd + kube-apiserver with Trellis' CRDs, stopped afterwards."""
    dev = DevCluster(state_dir)
    dev.up()
    try:
        yield Cluster(dev)
    finally:
        dev.down()


# What a peering operator logs (kopf's words and ours), and kopf's keep-alive lifetime.
READY_LOG = "trellis operator context ready"
PAUSED_LOG = "Pausing operations in favour of"
RESUMED_LOG = "Resuming operations after the pause"
LIFETIME_S = 60  # kopf's settings.peering.lifetime default
RECONCILES = "trellis_reconciles_total"


@contextmanager
def peering_cluster(state_dir: Path) -> Iterator[Cluster]:
    """A cluster of its own for tests that run several peering operators: the manifests'
    CRDs (and Seldon's) and the ClusterKopfPeering ``trellis``."""
    with own_cluster(state_dir) as cluster:
        docs = render(cluster)
        install_crds(cluster, docs)
        cluster.apply(pick(docs, "ClusterKopfPeering", "trellis"))
        yield cluster


def render(cluster: Cluster, path: Path = MANIFESTS) -> list[dict[str, Any]]:
    """``kubectl kustomize <path>`` as a list of objects."""
    return deploy.render(cluster.dev, path)


def install_crds(cluster: Cluster, docs: list[dict[str, Any]]) -> None:
    """The manifests' CRDs (Trellis' and kopf's peering) plus the test-only Seldon CRD."""
    crds = pick(docs, "CustomResourceDefinition")
    crds.append(yaml.safe_load(SELDON_CRD.read_text()))
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds}))
    names = [f"crd/{c['metadata']['name']}" for c in crds]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


def admin_api(cluster: Cluster) -> k8s.ApiClient:
    """A Python client as the cluster admin (polling with it beats spawning kubectl)."""
    return k8s_config.new_client_from_config(config_file=cluster.kubeconfig)


def get_custom(api: k8s.ApiClient, group: str, version: str, plural: str, name: str,
               namespace: str | None = None) -> dict[str, Any] | None:
    objs = k8s.CustomObjectsApi(api)
    try:
        if namespace is None:
            return objs.get_cluster_custom_object(group, version, plural, name)
        return objs.get_namespaced_custom_object(group, version, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def reset_peering(api: k8s.ApiClient, name: str = "trellis") -> None:
    """Forget every keep-alive (a killed operator's stays until it expires otherwise)."""
    objs = k8s.CustomObjectsApi(api)
    try:
        objs.delete_cluster_custom_object(*PEERING, name)
    except ApiException as exc:
        if exc.status != 404:
            raise
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    wait_for(lambda: get_custom(api, *PEERING, name) is None, timeout=10,
             what=f"ClusterKopfPeering {name} deleted")
    objs.create_cluster_custom_object(*PEERING, body)


def peers(api: k8s.ApiClient, name: str = "trellis") -> dict[str, Any]:
    return (get_custom(api, *PEERING, name) or {}).get("status") or {}


def service_account_kubeconfig(cluster: Cluster, account: str, namespace: str,
                               path: Path) -> Path:
    """A kubeconfig that authenticates as ``namespace/account`` with a TokenRequest token
    (``kubectl create token``), against the same API server and CA as the admin's."""
    token = cluster.kubectl("create", "token", account, "-n", namespace,
                            "--duration=2h").stdout.strip()
    admin = json.loads(Path(cluster.kubeconfig).read_text())
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "dev", "cluster": server}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "dev", "user": account}}],
        "current-context": account,
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def wait_for_log(op: OperatorProcess, text: str, timeout: float = 90) -> None:
    """Until the operator's log says ``text``; fails at once if the process exited."""
    def seen() -> bool:
        if text in op.log():
            return True
        assert op.proc is not None
        if op.proc.poll() is not None:
            raise AssertionError(f"operator exited ({op.proc.returncode}) before logging "
                                 f"{text!r}:\n{op.log()[-3000:]}")
        return False
    wait_for(seen, timeout=timeout, interval=0.2, what=f"operator log: {text!r}")


def scrape(port: int) -> dict[str, float]:
    """``name{label="v",...}`` -> value of every sample on the operator's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def kill_quietly(op: OperatorProcess) -> None:
    if op.proc is not None and op.proc.poll() is None:
        op.kill()
