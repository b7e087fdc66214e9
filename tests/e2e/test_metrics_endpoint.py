"""The operator's /metrics endpoint: the counters move as the operator works.

The operator runs as a process (``python -m controller``), as in a pod. An Experiment
with ``backend: kubernetes`` gets its Job (no pod ever runs here): the
reconcile and training-run counters move; deleting the Job makes the run lost, which
counts as a failed run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from controller.processes import free_port
from tests.support.clusterwide import scrape
from tests.support.gitrepo import experiment
from tests.support.kube import Cluster, healthy, operator_process, wait_for

pytestmark = pytest.mark.e2e

STARTED = 'trellis_training_runs_total{outcome="started"}'
FAILED = 'trellis_training_runs_total{outcome="failed"}'
RECONCILED = 'trellis_reconciles_total{kind="Experiment",result="success"}'


@pytest.fixture
def metrics_port(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[int]:
    """``python -m controller -n <namespace>`` with its metrics on a free port."""
    port = free_port()
    env = {"KUBECONFIG": cluster.kubeconfig, "TRELLIS_STATE_DIR": str(tmp_path / "state"),
           "TRELLIS_METRICS_PORT": str(port), "TRELLIS_WEBHOOK_PORT": "-1",
           "TRELLIS_RESYNC_SECONDS": "5", "TRELLIS_LOG_FORMAT": "json"}
    with operator_process(env, tmp_path / "operator.log", ["-n", namespace]):
        yield port


def test_counters_move_with_a_kubernetes_training_run(
        cluster: Cluster, namespace: str, metrics_port: int) -> None:
    wait_for(lambda: healthy(metrics_port), timeout=60, what="/healthz answers")
    before = scrape(metrics_port)
    assert before.get(STARTED, 0) == 0 and before.get(RECONCILED, 0) == 0

    exp = yaml.safe_load(experiment("classifier", namespace, gpu=0, backend="kubernetes"))
    exp["spec"]["retry"] = {"limit": 0}
    cluster.apply(exp)
    job = wait_for(lambda: cluster.get("job", "classifier-g1-a1", namespace), timeout=60,
                   what="the training Job")
    seen = wait_for(lambda: (m := scrape(metrics_port)).get(STARTED) == 1 and m,
                    timeout=15, what="runs started = 1")
    assert seen[RECONCILED] >= 1
    assert seen['trellis_reconcile_duration_seconds_count{kind="Experiment"}'] >= 1
    assert job["metadata"]["ownerReferences"][0]["name"] == "classifier"

    cluster.kubectl("delete", "job", "classifier-g1-a1", "-n", namespace)
    after = wait_for(lambda: (m := scrape(metrics_port)).get(FAILED) == 1 and m,
                     timeout=30, what="the lost run counted as failed")
    assert after[STARTED] == 1  # retry.limit 0: no second attempt
    assert after[RECONCILED] > seen[RECONCILED]


def test_a_job_created_before_the_status_write_is_adopted_not_counted_again(
        cluster: Cluster, namespace: str, metrics_port: int) -> None:
    """A replica killed between creating the Job and recording it on status leaves the Job
    behind; whoever reconciles next adopts it, and the run is not counted a second time."""
    wait_for(lambda: healthy(metrics_port), timeout=60, what="/healthz answers")
    cluster.apply({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "classifier-g1-a1", "namespace": namespace},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "flow", "image": "ghcr.io/trellis-mlops/trainer:0.1.0"}]}}},
    })
    cluster.apply(yaml.safe_load(experiment("classifier", namespace, gpu=0,
                                            backend="kubernetes")))

    def recorded():
        run = ((cluster.get("exp", "classifier", namespace) or {}).get("status") or {}).get(
            "currentRun") or {}
        return run.get("launched") and run
    run = wait_for(recorded, timeout=60, what="the run recorded on status")
    assert run["job"] == "classifier-g1-a1"
    events = cluster.kubectl("get", "events", "-n", namespace).stdout
    assert "re-attached to Job classifier-g1-a1" in events
    assert scrape(metrics_port).get(STARTED, 0) == 0
    assert cluster.kubectl("get", "jobs", "-n", namespace, "-o", "name").stdout.split() == [
        "job.batch/classifier-g1-a1"]
