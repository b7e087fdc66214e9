"""Experiments through the operator on the real API server, with real Metaflow runs."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.kube import Cluster, OperatorProcess, condition, wait_for
from tests.support.specs import base

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

FAST = {"seed": 7, "epochs": 4, "lr": 0.003, "variety": "orange"}  # the example's


def experiment(name: str = "classifier", **params: Any) -> dict[str, Any]:
    doc = base("Experiment")
    doc["metadata"]["name"] = name
    doc["spec"]["parameters"] = {**FAST, **params}
    doc["spec"]["retry"] = {"limit": 0}
    return doc


def status(cluster: Cluster, ns: str, name: str = "classifier") -> dict[str, Any]:
    return (cluster.get("exp", name, ns) or {}).get("status") or {}


def wait_phase(cluster: Cluster, ns: str, phase: str, *, timeout: float = 240,
               name: str = "classifier", generation: int | None = None) -> dict[str, Any]:
    def check():
        st = status(cluster, ns, name)
        ok = st.get("phase") == phase and not st.get("currentRun")
        if generation is not None:
            ok = ok and st.get("observedGeneration") == generation
        return st if ok else None
    return wait_for(check, timeout=timeout, interval=1, what=f"Experiment phase {phase}")


def event_reasons(cluster: Cluster, ns: str) -> list[str]:
    items = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    items.sort(key=lambda e: (e.get("firstTimestamp") or "", e["metadata"]["name"]))
    return [e["reason"] for e in items if e["involvedObject"]["kind"] == "Experiment"]


def test_trains_registers_and_retrains_only_on_change(cluster: Cluster, namespace: str,
                                                     operator: None) -> None:
    cluster.apply(experiment(), namespace)
    seen = set()

    def running():
        st = status(cluster, namespace)
        seen.add(st.get("phase"))
        return st if st.get("phase") == "Succeeded" else None
    st = wait_for(running, timeout=300, interval=0.5, what="first run")
    assert {"Running", "Succeeded"} <= seen
    assert st.get("models"), st["runs"]
    assert st["models"][0]["version"] == 1 and st["latestModel"] == "v1"
    assert st["runs"][0]["metrics"]["accuracy"] >= 0.9
    assert st["models"][0]["artifactUri"].startswith("file://")
    assert condition({"status": st}, "Ready")["reason"] == "ModelRegistered"
    reasons = event_reasons(cluster, namespace)
    assert reasons.index("RunStarted") < reasons.index("ModelRegistered")
    table = cluster.kubectl("get", "experiments", "-n", namespace).stdout
    assert "Succeeded" in table and "accuracy=" in table and "v1" in table

    cluster.kubectl("patch", "exp", "classifier", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"parameters": {"lr": 0.004}}}))
    st = wait_phase(cluster, namespace, "Succeeded", generation=2)
    assert [m["version"] for m in st["models"]] == [1, 2]
    assert [r["generation"] for r in st["runs"]] == [1, 2]

    cluster.apply(experiment(lr=0.004), namespace)  # unchanged: no new generation, no run
    time.sleep(8)
    st = status(cluster, namespace)
    assert len(st["runs"]) == 2 and not st.get("currentRun")


def test_operator_killed_mid_run_reattaches(cluster: Cluster, namespace: str,
                                            operator_env: dict[str, str], tmp_path: Path,
                                            state_dir: Path) -> None:
    args = ["-n", namespace]
    first = OperatorProcess(operator_env, tmp_path / "op1.log", args).start()
    try:
        cluster.apply(experiment(), namespace)
        wait_for(lambda: (status(cluster, namespace).get("currentRun") or {}).get("pathspec"),
                 timeout=120, what="a running run")
        first.kill()
        pathspec = status(cluster, namespace)["currentRun"]["pathspec"]
        second = OperatorProcess(operator_env, tmp_path / "op2.log", args).start()
        try:
            st = wait_phase(cluster, namespace, "Succeeded")
        finally:
            second.stop()
    finally:
        first.stop()
    assert [r["pathspec"] for r in st["runs"]] == [pathspec]
    assert len(st["models"]) == 1
    from controller.training.local import LocalTrainingBackend

    exp = cluster.get("exp", "classifier", namespace)
    backend = LocalTrainingBackend(state_dir / "metaflow")
    runs = asyncio.run(backend.find({"trellis.uid": exp["metadata"]["uid"],
                                     "trellis.generation": "1"}))
    assert [r.pathspec for r in runs] == [pathspec]


def test_failing_step_reports_the_error(cluster: Cluster, namespace: str,
                                        operator: None) -> None:
    cluster.apply(experiment(fail_at_step="train", n_samples=300, epochs=1), namespace)
    st = wait_phase(cluster, namespace, "Failed")
    ready = condition({"status": st}, "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] == "RetriesExhausted"
    assert "train" in ready["message"] and "fail_at_step" in ready["message"], ready["message"]
    assert st["runs"][0]["reason"] == "RunFailed"
    assert condition({"status": st}, "Stalled")["status"] == "True"
    assert "Warning" in cluster.kubectl("get", "events", "-n", namespace).stdout


@pytest.mark.parametrize(("params", "words"), [
    ({"learning_rate": 0.1}, "learning_rate"),
    ({"epochs": "three"}, "epochs"),
])
def test_bad_parameters_rejected_before_launch(cluster: Cluster, namespace: str, operator: None,
                                               params: dict[str, Any], words: str) -> None:
    doc = experiment()
    doc["spec"]["parameters"] = params
    cluster.apply(doc, namespace)
    obj = wait_for(lambda: (o := cluster.get("exp", "classifier", namespace))
                   and condition(o, "Stalled") and o, timeout=60, what="Stalled")
    stalled = condition(obj, "Stalled")
    assert stalled["reason"] == "InvalidParameters" and words in stalled["message"]
    assert not obj["status"].get("runs") and not obj["status"].get("currentRun")
    assert obj["status"]["phase"] == "Failed"


def test_missing_flow_file_is_a_quiet_condition(cluster: Cluster, namespace: str,
                                                operator: None) -> None:
    doc = experiment()
    doc["spec"]["flow"]["file"] = "flows/nope.py"
    cluster.apply(doc, namespace)
    obj = wait_for(lambda: (o := cluster.get("exp", "classifier", namespace))
                   and condition(o, "Stalled") and o, timeout=60, what="Stalled")
    assert condition(obj, "Stalled")["reason"] == "FlowNotFound"
    assert "flows/nope.py" in condition(obj, "Ready")["message"]
    rv = obj["metadata"]["resourceVersion"]
    time.sleep(12)  # two resyncs: no retry storm, no writes
    again = cluster.get("exp", "classifier", namespace)
    assert again["metadata"]["resourceVersion"] == rv
    assert not again["status"].get("runs")
