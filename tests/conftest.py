"""Shared fixtures: one real control plane per test session, an operator per test.

The dev cluster is the same code as ``trellis dev-cluster up`` (envtest-style
etcd + kube-apiserver); ``KUBEBUILDER_ASSETS`` is honoured. Each test works in its own
namespace and runs the operator for that namespace only, so tests never see each
other's objects.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.devcluster.cluster import DevCluster
from tests.support.kube import Cluster

os.environ.setdefault("METAFLOW_USER", "trellis-tests")


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    dev = DevCluster(tmp_path_factory.mktemp("dev-cluster"))
    dev.up()
    try:
        yield dev
    finally:
        dev.down()


@pytest.fixture(scope="session")
def cluster(dev_cluster: DevCluster) -> Cluster:
    return Cluster(dev_cluster)


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Operators under test authenticate as the manifests' ServiceAccount, bound only to
    the manifests' RBAC — never as admin — so every end-to-end test also checks RBAC."""
    from tests.support.clusterwide import pick, render, service_account_kubeconfig

    docs = render(cluster)
    rbac = [d for kind in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding")
            for d in pick(docs, kind)]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": rbac}))
    sa = pick(docs, "ServiceAccount", "trellis-operator")[0]["metadata"]
    path = tmp_path_factory.mktemp("operator-identity") / "kubeconfig"
    return str(service_account_kubeconfig(cluster, sa["name"], sa["namespace"], path))


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> str:
    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    return cluster.create_namespace("".join(c for c in name if c.isalnum() or c == "-"))


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def operator_env(operator_kubeconfig: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> dict[str, str]:
    """Environment of an operator under test (also applied to this process)."""
    env = {
        "KUBECONFIG": operator_kubeconfig,
        "TRELLIS_STATE_DIR": str(state_dir),
        "TRELLIS_RESYNC_SECONDS": "5",
        "TRELLIS_METRICS_PORT": "0",  # a free port each: parallel sessions never collide
        "TRELLIS_REQUEST_LOGGER_PORT": "0",
        "TRELLIS_WEBHOOK_PORT": os.environ.get("TRELLIS_WEBHOOK_PORT", "0"),
        "TRELLIS_LOG_FORMAT": "text",
        "METAFLOW_USER": "trellis-tests",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def operator(operator_env: dict[str, str], namespace: str) -> Iterator[None]:
    """The operator in-process (kopf's KopfRunner), watching this test's namespace."""
    import kopf
    from kopf.testing import KopfRunner

    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True  # as `trellis operator` does: the role reads no CRDs
    args = ["run", "--standalone", "-n", namespace, "-m", "controller.handlers"]
    with KopfRunner(args, timeout=60, settings=settings) as runner:
        yield
    assert runner.exception is None, runner.exception
