"""The operator watches what it owns instead of polling it.

Fifty Experiments with ``backend: kubernetes`` (no node here: their Jobs never start)
each get their Job, and fifty ModelDeployments (``backend: seldon``), one per Experiment,
wait for a model; then the operator is quiet. Over a 20-second window its reconcilers
send the API server nothing — no GET of a Job, an Experiment or a SeldonDeployment, no
LIST of Pods, no write — because they read Jobs and Pods from the watches' cache
(``controller.children``) and a deployment's Experiment from the Experiments' index
(``controller.references``); a SeldonDeployment the watch has not seen does not exist.
A Job's status change, patched the way the Job controller writes it, reaches its
Experiment within a couple of seconds: the Job's watch event woke the loop; the resync
(60 s here, the default) had nothing to do with it. A model registered on one Experiment
wakes the one deployment serving it, which creates its SeldonDeployment; the other 49
sleep on.

The operator runs as a process in the test's namespace, as the manifests' ServiceAccount:
the watches on Jobs and Pods work with exactly the ClusterRole's ``list`` and ``watch``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from controller.processes import free_port
from tests.support.clusterwide import admin_api, scrape
from tests.support.gitrepo import deployment, experiment
from tests.support.kube import Cluster, operator_process, wait_for
from tests.support.seldon import install_crd

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

N = 50
QUIET_S = 20.0
GROUP, VERSION = "mlops.trellis.dev", "v1alpha1"
REQUESTS = "trellis_api_requests_total"
GET_JOBS = f'{REQUESTS}{{resource="jobs",verb="get"}}'
GET_EXPERIMENTS = f'{REQUESTS}{{resource="experiments",verb="get"}}'
LIST_PODS = f'{REQUESTS}{{resource="pods",verb="list"}}'
RECONCILED = 'trellis_reconciles_total{kind="Experiment",result="success"}'
DEPLOYMENTS_RECONCILED = 'trellis_reconciles_total{kind="ModelDeployment",result="success"}'


@pytest.fixture
def metrics_port(operator_env: dict[str, str], namespace: str, tmp_path: Path
                 ) -> Iterator[int]:
    """``python -m controller -n <namespace>`` as the manifests' ServiceAccount."""
    port = free_port()
    env = {**operator_env, "TRELLIS_METRICS_PORT": str(port), "TRELLIS_WEBHOOK_PORT": "-1",
           "TRELLIS_REQUEST_LOGGER_PORT": "-1", "TRELLIS_RESYNC_SECONDS": "60"}
    with operator_process(env, tmp_path / "operator.log", ["-n", namespace]) as op:
        try:
            yield port
        finally:
            print(op.log()[-3000:])


def requests(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(REQUESTS + "{")}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def failed_status(now: str) -> dict:
    """What the Job controller writes when a Job's pod failed past its backoff limit."""
    cond = {"status": "True", "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit",
            "lastTransitionTime": now, "lastProbeTime": now}
    return {"status": {"startTime": now, "failed": 1, "conditions": [
        {"type": "FailureTarget", **cond}, {"type": "Failed", **cond}]}}


@pytest.fixture
def seldon_crd(cluster: Cluster) -> None:
    install_crd(cluster)  # before the operator starts: it watches SeldonDeployments


def test_owned_children_and_experiments_are_watched_not_polled(
        cluster: Cluster, namespace: str, seldon_crd: None, metrics_port: int) -> None:
    api = admin_api(cluster)
    objs = k8s.CustomObjectsApi(api)
    batch = k8s.BatchV1Api(api)
    items = []
    for i in range(N):
        exp = yaml.safe_load(experiment(f"exp-{i:02d}", namespace, gpu=0,
                                        backend="kubernetes"))
        exp["spec"]["retry"] = {"limit": 0}  # a failed run stays failed: no new Job
        mdep = yaml.safe_load(deployment(f"web-{i:02d}", namespace,
                                         experiment=f"exp-{i:02d}", steps="[100]"))
        mdep["spec"]["backend"] = "seldon"
        items += [exp, mdep]
    started = time.monotonic()
    cluster.apply(items)

    def converged() -> bool:
        exps = objs.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                  "experiments")["items"]
        steps = [((e.get("status") or {}).get("progress") or {}).get("step") for e in exps]
        mdeps = objs.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                   "modeldeployments")["items"]
        waiting = [m for m in mdeps if _ready_reason(m) == "ModelNotReady"]
        return steps.count("job") == N and len(waiting) == N \
            and len(batch.list_namespaced_job(namespace).items) == N
    wait_for(converged, timeout=180, interval=1,
             what=f"{N} Jobs created and recorded, {N} deployments waiting for a model")
    converge_s = time.monotonic() - started
    time.sleep(2)  # the last status writes' own watch events come back

    before = scrape(metrics_port)
    time.sleep(QUIET_S)
    after = scrape(metrics_port)
    sent = delta(requests(after), requests(before))
    print(f"\n{N} Experiments converged in {converge_s:.1f}s; "
          f"requests in {QUIET_S:.0f}s idle: {sent or 'none'}")
    assert after[GET_JOBS] <= N, "one look per Job at most, when it was launched"
    assert after.get(GET_EXPERIMENTS, 0) == 0, "deployments read Experiments from memory"
    assert sent == {}, f"an idle operator asked the API server: {sent}"

    # A model on one Experiment wakes the one deployment serving it.
    woken = after[DEPLOYMENTS_RECONCILED]
    model = {"version": 1, "artifactUri": "s3://farm-models/exp-03/1", "run": "PumpkinFlow/1",
             "createdAt": "2026-12-03T00:00:00Z"}
    objs.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "experiments",
                                               "exp-03", {"status": {"models": [model]}})
    sdep = wait_for(lambda: cluster.get("sdep", "web-03", namespace), timeout=30,
                    interval=0.2, what="web-03's SeldonDeployment")
    assert sdep["spec"]["predictors"][0]["annotations"]["version"] == "v1"
    time.sleep(2)  # the wake-ups this caused, and the ones they caused, are done
    passes = scrape(metrics_port)[DEPLOYMENTS_RECONCILED] - woken
    print(f"deployment passes after one Experiment's model: {passes:.0f}")
    assert passes <= 5, f"{passes:.0f} deployment passes: more than web-03's were woken"
    assert _sdeps(objs, namespace) == ["web-03"]

    # The Job controller's verdict reaches the Experiment through the watch.
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patched = time.monotonic()
    batch.patch_namespaced_job_status("exp-07-g1-a1", namespace, failed_status(now))

    def failed() -> dict | None:
        exp = objs.get_namespaced_custom_object(GROUP, VERSION, namespace, "experiments",
                                                "exp-07")
        runs = (exp.get("status") or {}).get("runs") or []
        return runs[-1] if runs and runs[-1].get("phase") == "Failed" else None
    run = wait_for(failed, timeout=30, interval=0.1, what="the failed run on status")
    took = time.monotonic() - patched
    print(f"Job Failed -> Experiment status: {took:.2f}s")
    assert "backoff limit" in run["message"]
    assert took < 3.0, f"{took:.1f}s: the watch did not wake the Experiment's loop"
    final = wait_for(lambda: (m := scrape(metrics_port))[RECONCILED] > after[RECONCILED] and m,
                     timeout=10, what="the pass counted")
    assert final[GET_JOBS] == after[GET_JOBS], "the change was read from the cache"
    assert final.get(GET_EXPERIMENTS, 0) == 0
    # ...but its Pods are listed once: their last words, which the Pods' own watch may
    # not have delivered yet, go into the message written once.
    assert final.get(LIST_PODS, 0) == 1
    api.close()


def _ready_reason(obj: dict) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("reason")
    return None


def _sdeps(objs: k8s.CustomObjectsApi, namespace: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objs.list_namespaced_custom_object(
        "machinelearning.seldon.io", "v1", namespace, "seldondeployments")["items"])
