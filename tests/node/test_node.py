"""The dev cluster's node runs real pods: a pod, a Job, a Deployment behind a Service
answering through its ClusterIP from the host, pods that reach the API server through
the `kubernetes` Service with their ServiceAccount token — and `down` gives the
machine back exactly as it was.

The teardown test is last in this module: it takes the session's node down, checks the
host, and brings it back up for whatever runs after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from controller.devcluster import hostnet
from controller.devcluster.cluster import DevCluster
from tests.support.hostsnapshot import HostSnapshot, snapshot
from tests.support.kube import Cluster, wait_for
from tests.support.testimages import BUSYBOX_IMAGE, ensure_test_images

pytestmark = pytest.mark.node
TRELLIS = Path(sys.executable).with_name("trellis")


def _pod(name: str, command: str, **spec) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
            "command": ["sh", "-c", command]}], **spec},
    }


def _phase(cluster: Cluster, ns: str, name: str) -> str | None:
    obj = cluster.get("pod", name, ns)
    return (obj or {}).get("status", {}).get("phase")


def _sa_ready(cluster: Cluster, ns: str) -> None:
    # The controller-manager makes each namespace's `default` ServiceAccount.
    wait_for(lambda: cluster.get("serviceaccount", "default", ns), what="default SA")


def test_node_is_ready_and_reports_its_version(node_cluster: Cluster) -> None:
    node = json.loads(node_cluster.kubectl("get", "node", "-o", "json").stdout)["items"]
    assert len(node) == 1
    info = node[0]["status"]["nodeInfo"]
    assert info["kubeletVersion"].startswith("v1.34.")
    assert info["containerRuntimeVersion"].startswith("containerd://")
    addresses = {a["type"]: a["address"] for a in node[0]["status"]["addresses"]}
    assert addresses["InternalIP"] == hostnet.GATEWAY
    # `up` returned only once the CRDs were served: no discovery lag for the user.
    node_cluster.kubectl("get", "mlops", "-A")


def test_kubelet_leaves_the_hosts_panic_settings_alone_once_ready(
        node_dev_cluster: DevCluster, host_before_node: HostSnapshot) -> None:
    # kubelet sets kernel.panic_on_oops=1 at start: an oops would reboot the machine.
    now = hostnet.read_sysctls()
    for name in hostnet.PANIC_SYSCTLS:
        assert now.get(name) == dict(host_before_node.sysctls).get(name), name


def test_pod_runs_and_logs(node_cluster: Cluster) -> None:
    ns = node_cluster.create_namespace("node-pod")
    _sa_ready(node_cluster, ns)
    node_cluster.apply(_pod("hello", "echo hello from $(hostname); ip -4 addr show eth0"), ns)
    wait_for(lambda: _phase(node_cluster, ns, "hello") == "Succeeded", what="pod Succeeded")
    logs = node_cluster.kubectl("logs", "hello", "-n", ns).stdout
    assert "hello from hello" in logs
    assert "inet 10.244.0." in logs


def test_job_runs_to_complete(node_cluster: Cluster) -> None:
    ns = node_cluster.create_namespace("node-job")
    _sa_ready(node_cluster, ns)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "count"},
           "spec": {"backoffLimit": 0, "template": {"spec": _pod("x", "seq 1 3")["spec"]}}}
    node_cluster.apply(job, ns)
    node_cluster.kubectl("wait", "--for=condition=Complete", "job/count", "-n", ns,
                         "--timeout=90s")
    assert node_cluster.kubectl("logs", "job/count", "-n", ns).stdout.split() == ["1", "2", "3"]


def test_deployment_behind_service_answers_on_its_cluster_ip(node_cluster: Cluster) -> None:
    ns = node_cluster.create_namespace("node-web")
    _sa_ready(node_cluster, ns)
    serve = ('mkdir -p /tmp/www && echo "hello from $(hostname)" > /tmp/www/index.html '
             "&& exec httpd -f -p 8080 -h /tmp/www")
    container = _pod("web", serve)["spec"]["containers"][0] | {
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
    }
    node_cluster.apply([
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}},
                               "spec": {"containers": [container]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
    ], ns)
    node_cluster.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=90s")
    ip = node_cluster.get("service", "web", ns)["spec"]["clusterIP"]
    assert ip.startswith("10.0.0.")

    def answers() -> set[str]:
        seen = set()
        for _ in range(40):  # bounded: 40 requests to our own Service
            try:
                with urllib.request.urlopen(f"http://{ip}/", timeout=2) as resp:
                    seen.add(resp.read().decode().strip())
            except OSError:
                continue
        return seen if len(seen) == 2 else set()

    seen = wait_for(answers, timeout=30, what="both replicas answering via the ClusterIP")
    assert all(s.startswith("hello from web-") for s in seen)


def test_pod_reaches_the_api_server_with_its_token(node_cluster: Cluster) -> None:
    ns = node_cluster.create_namespace("node-api")
    _sa_ready(node_cluster, ns)
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    # busybox has no TLS client: check the token and CA are projected and the
    # `kubernetes` Service's ClusterIP accepts a TCP connection to the API server.
    script = (f"test -s {sa}/token && test -s {sa}/ca.crt && cat {sa}/namespace && echo && "
              "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT && "
              "nc -w 3 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT </dev/null "
              "&& echo connected")
    node_cluster.apply(_pod("api", script), ns)
    wait_for(lambda: _phase(node_cluster, ns, "api") in ("Succeeded", "Failed"),
             what="api pod finished")
    logs = node_cluster.kubectl("logs", "api", "-n", ns).stdout.split()
    assert logs == [ns, f"{hostnet.KUBERNETES_SERVICE_IP}:443", "connected"], logs


def test_images_command_finds_the_nodes_images_current(node_dev_cluster: DevCluster) -> None:
    """`trellis dev-cluster images` imports into the running node's containerd only what
    it lacks: the pause image `up` put there is current, so nothing is built or imported."""
    proc = subprocess.run([str(TRELLIS), "dev-cluster", "images", "--image", "pause",
                           "--dir", str(node_dev_cluster.dir)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].split()[0] == "pause", proc.stdout
    assert lines[0].endswith("(cached)"), lines[0]
    assert "no node running" not in proc.stderr, proc.stderr


def test_down_leaves_nothing_and_up_works_again(node_dev_cluster: DevCluster,
                                                 node_cluster: Cluster,
                                                 host_before_node: HostSnapshot) -> None:
    ns = node_cluster.create_namespace("node-down")
    _sa_ready(node_cluster, ns)
    node_cluster.apply(_pod("sleeper", "sleep 3600"), ns)  # a pod still running at `down`
    wait_for(lambda: _phase(node_cluster, ns, "sleeper") == "Running", what="pod Running")
    during = snapshot(node_dev_cluster.dir).leftovers(host_before_node)
    assert during.get("links") and during.get("processes")  # the snapshot sees a node

    try:
        assert node_dev_cluster.down()
        assert snapshot(node_dev_cluster.dir).leftovers(host_before_node) == {}
    finally:  # later node tests get their node back either way
        node_dev_cluster.up(node=True, s3=True, prometheus=True)  # as conftest started it
        ensure_test_images(node_dev_cluster)
    ns = node_cluster.create_namespace("node-again")
    _sa_ready(node_cluster, ns)
    node_cluster.apply(_pod("again", "echo again"), ns)
    wait_for(lambda: _phase(node_cluster, ns, "again") == "Succeeded", what="pod after re-up")
