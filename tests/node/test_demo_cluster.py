"""``trellis demo --cluster`` end to end, as ``make demo-cluster`` runs it: a dev cluster
with its own node and S3 server, the operator as pods (a failover mid-run), training in
a pod, the model in S3; the report says which mode ran and what did not; nothing is left
running afterwards.

The demo brings up a node of its own and a machine runs one node at a time, so this
module runs before the others of ``tests/node`` (file order: keep the others' names
sorting after it), whose session node starts with the first test that asks for it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from controller.devcluster import images
from controller.localwork import find
from controller.paths import ROOT
from tests.support.hostsnapshot import snapshot

pytestmark = pytest.mark.node

PHASES = ["Dev cluster: control plane, node, S3", "The operator as pods",
          "GitOps: the farm's spec repository",
          "Level 0 — train in a pod, model to S3, a failover"]
MODEL_FILES = {"model.pt", "reference.json", "metrics.json", "meta.json"}


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env.pop("KUBECONFIG", None)  # the demo's own dev cluster, not a test's
    return env


def test_the_cluster_demo_trains_in_a_pod_to_a_model_in_s3_and_says_so(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # Short: containerd's sockets live in the node's state dir, and a unix socket path
    # may not exceed 104 bytes (a test-named tmp_path under CI's TMPDIR does).
    base = tmp_path_factory.mktemp("d")
    work, report = base / "w", base / "report"
    before = snapshot(work / "cluster")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "demo", "--cluster",
                           "--workdir", str(work), "--report", str(report)],
                          capture_output=True, text=True, timeout=840, env=demo_env(),
                          cwd=ROOT)
    print(f"trellis demo --cluster: {time.monotonic() - started:.0f} s")
    out = proc.stdout
    logs = "".join((work / n).read_text()[-3000:] for n in ("operator.log", "trainer.log")
                   if (work / n).exists())
    assert proc.returncode == 0, out[-5000:] + proc.stderr[-3000:] + logs
    for phase in PHASES:
        assert re.search(rf"{re.escape(phase)}\s+\d+s ok", out), phase
    assert "$ kubectl get pods -A" in out and "$ kubectl get experiment classifier" in out
    assert "Serving: not run in cluster mode" in out

    data = json.loads((report / "data.json").read_text())
    assert data["mode"] == "cluster"
    parts = {p["part"]: p for p in data["parts"]}
    assert parts["operator"]["ran"] and parts["training"]["ran"]
    assert parts["model store"]["ran"]
    assert not parts["serving"]["ran"] and "Seldon Core's operator" in parts["serving"]["how"]
    facts = data["cluster"]
    model = facts["model"]
    assert model["version"] == 1 and model["accuracy"] >= 0.9, model
    assert model["commit"] == facts["source_commit"]  # trained from the synced commit
    assert model["artifactUri"] == f"s3://{facts['s3']['bucket']}/{facts['s3']['prefix']}"
    assert {o["key"].rsplit("/", 1)[1] for o in facts["s3"]["objects"]} == MODEL_FILES
    assert facts["s3"]["datastore_objects"] > 0, "Metaflow's datastore is in S3"
    # The failover: the standby took over and re-attached; one run, one Job, one pod.
    failover = facts["failover"]
    assert failover["deleted"] in facts["operator_pods"]
    assert failover["new_active"] in facts["operator_pods"]
    assert failover["new_active"] != failover["deleted"]
    assert facts["runs"] == 1 and len(facts["jobs"]) == 1, facts["jobs"]
    [pod] = facts["pods"]
    assert pod["phase"] == "Succeeded" and pod["image"] == images.REFS["trainer"], pod

    md = (report / "report.md").read_text()
    assert "Mode: **cluster**" in md and "| serving | no |" in md, md
    assert f"v1 | {model['accuracy']:.3f}" in md
    page = (report / "index.html").read_text()
    assert "cluster mode" in page and 'id="where"' in page

    # Nothing left running: no process of the run, no node leftovers, no cluster state.
    assert find([work], environ=True) == []
    assert not any(snapshot(work / "cluster").leftovers(before).values())
    assert not (work / "cluster" / "state.json").exists()
