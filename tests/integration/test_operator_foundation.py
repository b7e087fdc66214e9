"""The operator against the real API server: observedGeneration, Ready, Events, quiet."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from tests.support.kube import Cluster, condition, wait_for
from tests.support.specs import SPEC_REPO

pytestmark = pytest.mark.cluster


def ready_for_generation(cluster: Cluster, kind: str, name: str, ns: str, gen: int):
    def check():
        obj = cluster.get(kind, name, ns)
        cond = condition(obj, "Ready")
        if obj and obj.get("status", {}).get("observedGeneration") == gen and cond \
                and cond.get("observedGeneration") == gen:
            return obj
        return None
    return wait_for(check, timeout=60, what=f"{kind}/{name} observedGeneration={gen}")


def test_specrepository_gets_observed_generation_and_ready(
        cluster: Cluster, namespace: str, operator: None) -> None:
    cluster.apply(SPEC_REPO, namespace)
    obj = ready_for_generation(cluster, "specrepo", "farm", namespace, 1)
    cond = condition(obj, "Ready")
    assert set(cond) >= {"type", "status", "reason", "message", "lastTransitionTime",
                         "observedGeneration"}
    # kopf's bookkeeping lives under our prefix, not kopf.zalando.org
    annotations = obj["metadata"].get("annotations", {})
    assert not any(k.startswith("kopf.zalando.org") for k in annotations), annotations
    assert obj["metadata"]["finalizers"] == ["mlops.trellis.dev/finalizer"]

    cluster.kubectl("patch", "specrepo", "farm", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"interval": "5m"}}))
    ready_for_generation(cluster, "specrepo", "farm", namespace, 2)


def test_kubectl_wait_for_ready_returns(cluster: Cluster, namespace: str, operator: None) -> None:
    cluster.apply(SPEC_REPO, namespace)
    proc = cluster.kubectl("wait", "--for=condition=Ready", "specrepo/farm", "-n", namespace,
                           "--timeout=60s", check=False)
    assert proc.returncode == 0, proc.stderr
    assert "condition met" in proc.stdout


def test_events_posted_on_transitions_only(cluster: Cluster, namespace: str,
                                          operator: None) -> None:
    cluster.apply(SPEC_REPO, namespace)
    ready_for_generation(cluster, "specrepo", "farm", namespace, 1)
    cluster.kubectl("patch", "specrepo", "farm", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"interval": "7m"}}))
    ready_for_generation(cluster, "specrepo", "farm", namespace, 2)
    time.sleep(6)  # at least one resync pass (TRELLIS_RESYNC_SECONDS=5)
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    mine = [e for e in events["items"] if e["involvedObject"]["name"] == "farm"]
    assert len(mine) >= 1
    assert sum(e.get("count", 1) for e in mine) == len(mine) == 1, mine


def test_quiet_when_nothing_changes(cluster: Cluster, namespace: str, operator: None) -> None:
    """No writes at all over a long window of resyncs once everything is reconciled."""
    cluster.apply(SPEC_REPO, namespace)
    ready_for_generation(cluster, "specrepo", "farm", namespace, 1)
    time.sleep(3)
    watch = subprocess.Popen(
        [cluster.kubectl_path, f"--kubeconfig={cluster.kubeconfig}", "get", "mlops,events",
         "-n", namespace, "--watch-only", "-o", "json", "--output-watch-events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(watch.stdout.readline, "")),
                              daemon=True)
    reader.start()
    before = cluster.get("specrepo", "farm", namespace)["metadata"]["resourceVersion"]
    time.sleep(75)  # 15 resync passes at TRELLIS_RESYNC_SECONDS=5
    after = cluster.get("specrepo", "farm", namespace)["metadata"]["resourceVersion"]
    watch.terminate()
    watch.wait(timeout=10)
    assert before == after
    assert seen == [], seen[:5]
