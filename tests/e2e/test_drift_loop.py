"""Level 2 on the real API server, no human step: white pumpkins arrive, drift is
detected within a window, exactly one retrain runs (even across a SIGKILL of the
operator), the new version is canaried and promoted, and drift clears."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.demo.traffic import Townsfolk
from tests.support.kube import Cluster, OperatorProcess, condition, wait_for
from tests.support.specs import base

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]
WINDOW = 150


def objects(cluster: Cluster, ns: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return (cluster.get("exp", "classifier", ns) or {}), (cluster.get("mdep", "classifier", ns)
                                                           or {})


def test_drift_retrains_once_and_clears(cluster: Cluster, namespace: str,
                                        operator_env: dict[str, str], tmp_path: Path) -> None:
    env = {**operator_env, "TRELLIS_DRIFT_INTERVAL_SECONDS": "1",
           "TRELLIS_RETRAIN_MIN_LABELS": "200"}
    exp = base("Experiment")
    exp["spec"]["retrain"] = {"cooldownSeconds": 0, "includeFeedback": True}
    mdep = base("ModelDeployment")
    mdep["spec"]["canary"] = {"steps": [50, 100], "interval": "5s",
                              "analysis": {"minRequests": 5, "maxErrorRate": 0.05,
                                           "maxLatencyP99Ms": 5000, "maxPredictionShift": 0.6}}
    mdep["spec"]["drift"] = {"enabled": True, "test": "ks", "window": WINDOW, "minSamples": 100,
                             "pValue": 0.0001, "action": "retrain", "cooldown": "0s"}
    args = ["-n", namespace]
    op = OperatorProcess(env, tmp_path / "op1.log", args).start()
    folk = None
    try:
        cluster.apply(exp, namespace)
        cluster.apply(mdep, namespace)
        st = wait_for(lambda: objects(cluster, namespace)[1].get("status", {}).get("phase")
                      == "Serving" and objects(cluster, namespace)[1]["status"], timeout=300,
                      interval=1, what="v1 serving")
        folk = Townsfolk(st["endpoint"], batch=4, rate=4, seed=21)
        folk.start()
        # orange pumpkins: a full window is checked and no drift is reported
        drift = wait_for(lambda: (d := objects(cluster, namespace)[1]["status"].get("drift", {}))
                         .get("samples", 0) >= WINDOW and d, timeout=120, what="a full window")
        assert drift["detected"] is False and drift["summary"] == "none", drift

        sent_before = sum(folk.tally.requests.values())
        folk.set_mix("white")
        mdep_obj = wait_for(lambda: condition(m := objects(cluster, namespace)[1],
                                              "DriftDetected") and m,
                            timeout=120, interval=0.5, what="DriftDetected")
        white_inputs = (sum(folk.tally.requests.values()) - sent_before) * folk.batch
        assert white_inputs <= WINDOW + 3 * 4 * 4, white_inputs  # one window (+ 1 s of checks)
        episode = mdep_obj["status"]["drift"]["episode"]
        op.kill()  # in the middle of the episode
        op = OperatorProcess(env, tmp_path / "op2.log", args).start()

        def promoted():
            e, m = objects(cluster, namespace)
            return m.get("status", {}).get("stableVersion") == "v2" and (e, m)
        exp_obj, mdep_obj = wait_for(promoted, timeout=420, interval=1, what="v2 promoted")

        last: list[dict[str, Any]] = []

        def cleared():
            m = objects(cluster, namespace)[1]
            d = m["status"].get("drift") or {}
            last[:] = [d]
            return (d.get("referenceVersion") == 2 and d.get("samples", 0) >= 100
                    and not condition(m, "DriftDetected") and m)
        try:
            mdep_obj = wait_for(cleared, timeout=120, interval=1, what="drift cleared")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; drift status: {last}") from None
    finally:
        if folk is not None:
            folk.stop()
        op.stop()
    exp_status = exp_obj["status"]
    retrains = [r for r in exp_status["runs"] if r.get("trigger")]
    assert [r["trigger"] for r in retrains] == [episode], exp_status["runs"]
    assert exp_status["retrain"]["episode"] == episode
    assert exp_status["retrain"]["feedbackUri"]
    # Ownership: the drift monitor wrote its request on the ModelDeployment's own status;
    # the Experiment's status.retrain is its adoption of that request, and the Experiment
    # side said so on the Experiment.
    request = mdep_obj["status"]["drift"]["retrain"]
    assert request["episode"] == episode and request["experiment"] == "classifier", request
    assert exp_status["retrain"] == {**{k: v for k, v in request.items() if k != "experiment"},
                                     "deployment": "classifier"}, (exp_status["retrain"], request)
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o",
                                        "json").stdout)["items"]
    adopted = [e["message"] for e in events if e["reason"] == "RetrainRequested"
               and e["involvedObject"]["kind"] == "Experiment"]
    assert adopted and all("ModelDeployment classifier" in m for m in adopted), adopted
    v2 = exp_status["models"][1]
    assert v2["trigger"] == episode and v2["version"] == 2
    assert mdep_obj["status"]["drift"]["detected"] is False
    assert mdep_obj["status"]["rollouts"][-1]["outcome"] == "promoted"
    assert folk.tally.feedback[200] > 0 and not folk.tally.requests.get(("stable", 500))
