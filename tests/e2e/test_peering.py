"""Two operator replicas peering as ``trellis``: one acts, the other stands by and takes over.

As the Deployment runs them: ``python -m controller --peering trellis``, cluster-wide, on a
control plane of their own, with kopf's peering CRDs and the ClusterKopfPeering from
``manifests/``. Each replica's /metrics says what it did: the standby's reconcile counter
stays at zero until the active replica is SIGKILLed and its keep-alive lapses (kopf's
peering lifetime, 60 s by default); then the standby re-attaches to the running
training Job instead of launching another, and handles what comes next.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from controller.processes import free_port
from tests.support.clusterwide import (
    LIFETIME_S,
    PAUSED_LOG,
    READY_LOG,
    RECONCILES,
    RESUMED_LOG,
    admin_api,
    kill_quietly,
    peering_cluster,
    peers,
    scrape,
    wait_for_log,
)
from tests.support.gitrepo import experiment
from tests.support.kube import Cluster, OperatorProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

STARTED = 'trellis_training_runs_total{outcome="started"}'


@pytest.fixture(scope="module")
def cluster2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with peering_cluster(tmp_path_factory.mktemp("peering-cluster")) as cluster:
        yield cluster


def replica(cluster: Cluster, work: Path, name: str) -> tuple[OperatorProcess, int]:
    port = free_port()
    op = OperatorProcess({
        "KUBECONFIG": cluster.kubeconfig, "POD_ID": name,
        "TRELLIS_STATE_DIR": str(work / f"state-{name}"), "TRELLIS_METRICS_PORT": str(port),
        "TRELLIS_WEBHOOK_PORT": "-1", "TRELLIS_RESYNC_SECONDS": "5",
        "TRELLIS_LOG_FORMAT": "json",
    }, work / f"{name}.log", ["--peering", "trellis"])
    return op.start(), port


def reconciles(port: int) -> float:
    return sum(v for k, v in scrape(port).items() if k.startswith(RECONCILES + "{"))


def jobs(cluster: Cluster, ns: str) -> list[str]:
    out = cluster.kubectl("get", "jobs", "-n", ns, "-o", "json").stdout
    return sorted(j["metadata"]["name"] for j in json.loads(out)["items"])


def test_one_replica_acts_and_the_standby_takes_over_after_sigkill(
        cluster2: Cluster, tmp_path: Path) -> None:
    api = admin_api(cluster2)
    ns = cluster2.create_namespace("farm")
    active, active_port = replica(cluster2, tmp_path, "replica-a")
    standby: OperatorProcess | None = None
    try:
        wait_for_log(active, READY_LOG)
        wait_for(lambda: "replica-a" in peers(api), timeout=30, what="replica-a's keep-alive")
        standby, standby_port = replica(cluster2, tmp_path, "replica-b")
        wait_for_log(standby, READY_LOG)
        wait_for_log(standby, PAUSED_LOG, timeout=30)
        status = peers(api)
        assert status["replica-a"]["priority"] > status["replica-b"]["priority"], status

        # A change while both run: the active replica alone handles it.
        cluster2.apply(yaml.safe_load(experiment("classifier", ns, gpu=0, backend="kubernetes")))
        wait_for(lambda: jobs(cluster2, ns) == ["classifier-g1-a1"], timeout=60,
                 what="the training Job")
        wait_for(lambda: scrape(active_port).get(STARTED) == 1, timeout=15,
                 what="replica-a counted the run")
        assert reconciles(standby_port) == 0 < reconciles(active_port)
        assert '"name": "classifier"' not in standby.log()
        assert PAUSED_LOG not in active.log()

        killed = time.monotonic()
        active.kill()
        wait_for_log(standby, RESUMED_LOG, timeout=LIFETIME_S + 30)
        takeover = time.monotonic() - killed
        print(f"\nstandby resumed {takeover:.1f}s after the active replica's SIGKILL")
        assert takeover <= LIFETIME_S + 15

        # The standby re-attaches to the run that is under way: no second Job, no retry.
        wait_for(lambda: reconciles(standby_port) > 0, timeout=30,
                 what="replica-b reconciling")
        exp = json.loads(cluster2.kubectl("get", "experiment", "classifier", "-n", ns,
                                          "-o", "json").stdout)
        assert exp["status"]["currentRun"]["job"] == "classifier-g1-a1"
        assert exp["status"]["currentRun"]["attempt"] == 1

        # And the next change is its to handle, once.
        cluster2.apply(yaml.safe_load(experiment("second", ns, gpu=0, backend="kubernetes")))
        wait_for(lambda: jobs(cluster2, ns) == ["classifier-g1-a1", "second-g1-a1"],
                 timeout=60, what="the second Job")
        wait_for(lambda: scrape(standby_port).get(STARTED) == 1, timeout=15,
                 what="replica-b counted the run")
        time.sleep(3)  # a few more reconcile passes must not add anything
        assert jobs(cluster2, ns) == ["classifier-g1-a1", "second-g1-a1"]
        assert scrape(standby_port).get(STARTED) == 1
    finally:
        kill_quietly(active)
        if standby is not None:
            standby.stop()
        api.close()
