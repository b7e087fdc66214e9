"""A dev cluster with a real node, one per test session, started only when a node test
runs: the control plane of ``tests/conftest.py`` stays node-less and fast.

``host_snapshot`` is what the machine looked like before the node started, so the
teardown test can check that ``down`` gave everything back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.devcluster.cluster import DevCluster
from tests.support.hostsnapshot import HostSnapshot, snapshot
from tests.support.kube import Cluster
from tests.support.testimages import ensure_test_images


@pytest.fixture(scope="session")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("node-cluster")


@pytest.fixture(scope="session")
def host_before_node(node_dir: Path) -> HostSnapshot:
    return snapshot(node_dir)


@pytest.fixture(scope="session")
def node_dev_cluster(node_dir: Path, host_before_node: HostSnapshot) -> Iterator[DevCluster]:
    dev = DevCluster(node_dir)
    dev.up(node=True, s3=True, prometheus=True)
    try:
        yield dev
    finally:
        dev.down()


@pytest.fixture(scope="session")
def node_cluster(node_dev_cluster: DevCluster) -> Cluster:
    ensure_test_images(node_dev_cluster)
    return Cluster(node_dev_cluster)


@pytest.fixture(scope="module")
def node_operator_kubeconfig(node_cluster: Cluster,
                             tmp_path_factory: pytest.TempPathFactory) -> str:
    """The manifests' ServiceAccount and RBAC on the node cluster (never admin). Per
    module: ``test_node.py`` takes the cluster down and up again, on a new port."""
    from tests.support.clusterwide import pick, render, service_account_kubeconfig

    docs = render(node_cluster)
    rbac = [d for kind in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding")
            for d in pick(docs, kind)]
    node_cluster.apply(rbac)
    sa = pick(docs, "ServiceAccount", "trellis-operator")[0]["metadata"]
    path = tmp_path_factory.mktemp("node-operator-identity") / "kubeconfig"
    return str(service_account_kubeconfig(node_cluster, sa["name"], sa["namespace"], path))
