"""The operator against the real API server: observedGeneration, Ready, Events, quiet."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.gitrepo import GitRepo
from tests.support.kube import Cluster, condition, wait_for
from tests.support.specs import base

pytestmark = pytest.mark.cluster


@pytest.fixture
def spec_repo(tmp_path: Path) -> dict:
    """A SpecRepository for a real (local, bare) git repository with one README."""
    repo = GitRepo(tmp_path / "git")
    repo.write("specs/README.md", "no specs yet\n")
    repo.commit_and_push("empty farm")
    return {"apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "SpecRepository",
            "metadata": {"name": "farm"},
            "spec": {"url": str(repo.remote), "ref": {"branch": "main"}, "path": "specs",
                     "interval": "1m"}}


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
        cluster: Cluster, namespace: str, operator: None, spec_repo: dict) -> None:
    cluster.apply(spec_repo, namespace)
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


def test_kubectl_wait_for_ready_returns(cluster: Cluster, namespace: str, operator: None,
                                        spec_repo: dict) -> None:
    cluster.apply(spec_repo, namespace)
    proc = cluster.kubectl("wait", "--for=condition=Ready", "specrepo/farm", "-n", namespace,
                           "--timeout=60s", check=False)
    assert proc.returncode == 0, proc.stderr
    assert "condition met" in proc.stdout


def test_events_posted_on_transitions_only(cluster: Cluster, namespace: str,
                                          operator: None, spec_repo: dict) -> None:
    cluster.apply(spec_repo, namespace)
    ready_for_generation(cluster, "specrepo", "farm", namespace, 1)
    cluster.kubectl("patch", "specrepo", "farm", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"interval": "7m"}}))
    ready_for_generation(cluster, "specrepo", "farm", namespace, 2)
    time.sleep(6)  # at least one resync pass (TRELLIS_RESYNC_SECONDS=5)
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    mine = [e for e in events["items"] if e["involvedObject"]["name"] == "farm"]
    # one Event for the transition to Ready; the spec change and the resyncs add none
    assert [e["reason"] for e in mine] == ["Synced"], mine
    assert all(e.get("count", 1) == 1 for e in mine)


def test_quiet_when_nothing_changes(cluster: Cluster, namespace: str, operator: None,
                                    spec_repo: dict) -> None:
    """No writes at all over a long window of resyncs once every kind is settled."""
    cluster.apply(spec_repo, namespace)
    exp = base("Experiment")
    exp["spec"]["flow"]["file"] = "flows/absent.py"  # settles as Stalled: nothing to run
    cluster.apply(exp, namespace)
    cluster.apply(base("ModelDeployment"), namespace)  # settles waiting for a model
    ready_for_generation(cluster, "specrepo", "farm", namespace, 1)
    wait_for(lambda: condition(cluster.get("exp", "classifier", namespace), "Stalled"),
             timeout=60, what="Experiment settled")
    wait_for(lambda: condition(cluster.get("mdep", "classifier", namespace), "Ready"),
             timeout=60, what="ModelDeployment settled")
    time.sleep(3)
    watch = subprocess.Popen(
        [cluster.kubectl_path, f"--kubeconfig={cluster.kubeconfig}", "get", "mlops,events",
         "-n", namespace, "--watch-only", "-o", "json", "--output-watch-events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(watch.stdout.readline, "")),
                              daemon=True)
    reader.start()
    kinds = ("specrepo/farm", "exp/classifier", "mdep/classifier")
    before = {k: cluster.get(*k.split("/"), namespace)["metadata"]["resourceVersion"]
              for k in kinds}
    time.sleep(75)  # 15 resync passes of each object at TRELLIS_RESYNC_SECONDS=5
    after = {k: cluster.get(*k.split("/"), namespace)["metadata"]["resourceVersion"]
             for k in kinds}
    watch.terminate()
    watch.wait(timeout=10)
    assert before == after
    assert seen == [], seen[:5]
