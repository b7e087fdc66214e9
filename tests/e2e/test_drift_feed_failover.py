"""Drift inputs with two operator replicas: every acknowledged event reaches the one drift
log, and the leader's SIGKILL loses none of them.

As the Deployment runs them: two ``python -m controller --peering trellis`` processes
against a control plane of their own, both receiving Seldon's request-logger CloudEvents
(the Service selects both), the request log's store in a real S3 server (SeaweedFS, as
the dev cluster runs it). The test posts as Seldon's executor does — request and
response of one prediction as separate posts, here deliberately to different replicas —
and reads the drift log where the drift monitor does: the active replica's disk. Then
it SIGKILLs the active replica, keeps posting to the survivor while it still stands by,
and checks that once it takes over its log has every prediction and label that was
acknowledged to either replica, before the kill and after.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.devcluster.s3 import S3Server
from controller.processes import free_port
from controller.serving.requestlog_read import RequestLogReader, chunk_paths, read_chunk
from tests.support import s3server
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
from tests.support.kube import Cluster, OperatorProcess, condition, wait_for
from tests.support.seldon import mark_available, post_event, predictors, setup_objects

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

STORE = "s3://trellis/requestlog"


@pytest.fixture(scope="module")
def cluster2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with peering_cluster(tmp_path_factory.mktemp("drift-feed-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3server.running(tmp_path_factory.mktemp("s3")) as server:
        yield server


class Replica:
    def __init__(self, cluster: Cluster, s3: S3Server, work: Path, name: str) -> None:
        self.name, self.state = name, work / f"state-{name}"
        self.metrics, self.logger = free_port(), free_port()
        self.op = OperatorProcess({
            "KUBECONFIG": cluster.kubeconfig, "POD_ID": name,
            "TRELLIS_STATE_DIR": str(self.state), "TRELLIS_METRICS_PORT": str(self.metrics),
            "TRELLIS_REQUEST_LOGGER_PORT": str(self.logger), "TRELLIS_WEBHOOK_PORT": "-1",
            "TRELLIS_RESYNC_SECONDS": "5", "TRELLIS_DRIFT_INTERVAL_SECONDS": "1",
            "TRELLIS_LOG_FORMAT": "json", "TRELLIS_REQUEST_LOG_STORE": STORE,
            **s3server.environment(s3),
        }, work / f"{name}.log", ["--peering", "trellis"]).start()

    def post(self, path: str, body: dict, headers: dict[str, str] | None = None) -> int:
        return post_event(f"http://127.0.0.1:{self.logger}{path}", body, headers)

    def logged(self, ns: str) -> tuple[set[str], int]:
        """The predictions in this replica's drift log (what its drift monitor reads) and
        how many of their input rows are labelled."""
        root = self.state / "requestlog" / ns / "classifier"
        puids: set[str] = set()
        for _, path in chunk_paths(root):
            arrays = read_chunk(path, ("puid",))
            if arrays is not None:
                puids.update(str(p) for p in arrays[0])
        return puids, RequestLogReader(root).labelled_count() if puids else 0

    def reconciles(self) -> float:
        return sum(v for k, v in scrape(self.metrics).items() if k.startswith(RECONCILES + "{"))


IMAGE = [[[0.5] * 3] * 64] * 64


def send(replicas: list[Replica], ns: str, puid: str, i: int, label: bool) -> list[int]:
    """One prediction as Seldon's request logger reports it — request and response as
    separate posts, here to different replicas — and its ground truth to one of them."""
    hdrs = {"Ce-Requestid": puid, "Ce-Id": f"{puid}-{i}", "Ce-Namespace": ns,
            "Ce-Inferenceservicename": "classifier", "Ce-Endpoint": "stable",
            "Ce-Specversion": "1.0", "Ce-Modelid": "classifier"}
    answer = {"data": {"names": ["bad", "good"], "ndarray": [[0.2, 0.8]]},
              "meta": {"tags": {"trellis.features": [[float(i), 2.0]], "trellis.version": 1}}}
    first, second = replicas[i % len(replicas)], replicas[(i + 1) % len(replicas)]
    codes = [first.post("/", {"data": {"ndarray": [IMAGE]}},
                        {**hdrs, "Ce-Type": "io.seldon.serving.inference.request"}),
             second.post("/", answer, {**hdrs, "Ce-Type": "io.seldon.serving.inference.response"})]
    if label:
        codes.append(second.post(f"/feedback/{ns}/classifier", {"puid": puid, "label": 1}))
    return codes


def test_every_acknowledged_event_reaches_the_one_log_and_survives_the_leaders_sigkill(
        cluster2: Cluster, s3: S3Server, tmp_path: Path) -> None:
    api = admin_api(cluster2)
    a = Replica(cluster2, s3, tmp_path, "replica-a")
    b: Replica | None = None
    try:
        wait_for_log(a.op, READY_LOG)
        wait_for(lambda: "replica-a" in peers(api), timeout=30, what="replica-a's keep-alive")
        b = Replica(cluster2, s3, tmp_path, "replica-b")
        wait_for_log(b.op, READY_LOG)
        wait_for_log(b.op, PAUSED_LOG, timeout=30)

        ns = cluster2.create_namespace("farm")
        setup_objects(cluster2, ns, drift={"enabled": True, "action": "alert"})
        wait_for(lambda: predictors(cluster2, ns) == [("stable", "v1", 100)], timeout=60,
                 what="the SeldonDeployment")
        mark_available(cluster2, ns)
        logging = wait_for(lambda: condition(cluster2.get("mdep", "classifier", ns),
                                             "RequestLogging"), timeout=30, what="RequestLogging")
        assert logging["status"] == "True"

        # Round-robin over both replicas, every prediction split across them.
        acked: set[str] = set()
        labelled = 0
        def batch(prefix: str, count: int, to: list[Replica]) -> None:
            nonlocal labelled
            for i in range(count):
                puid = f"{prefix}{i}"
                codes = send(to, ns, puid, i, label=i % 3 == 0)
                assert codes == [202] * len(codes), (puid, codes)
                acked.add(puid)
                labelled += i % 3 == 0
        batch("before", 24, [a, b])
        wait_for(lambda: a.logged(ns) == (acked, labelled), timeout=30,
                 what="every acknowledged prediction in the active replica's log")
        assert b.logged(ns) == (set(), 0) and b.reconciles() == 0  # one consumer

        # More, then the SIGKILL at once: some of these are still in the inbox.
        batch("last", 12, [a, b])
        killed = time.monotonic()
        a.op.kill()
        # The survivor still stands by (the dead leader's keep-alive has not lapsed) and
        # keeps receiving: what it acknowledges now is as safe as the rest.
        batch("standby", 6, [b])
        wait_for_log(b.op, RESUMED_LOG, timeout=LIFETIME_S + 30)
        print(f"\nstandby resumed {time.monotonic() - killed:.1f}s after the SIGKILL")

        wait_for(lambda: b.logged(ns) == (acked, labelled), timeout=30,
                 what="every acknowledged prediction in the new active replica's log")
        assert len(acked) == 42
        adopted = [json.loads(line)["msg"] for line in b.op.log().splitlines()
                   if "adopted:" in line]
        print(f"replica-b: {adopted[-1]}")  # the rest came from the inbox
        # Nothing is left over: the inbox was drained, the old leader's copy replaced. A
        # pass deletes its inbox objects only after its log's copy is in the store, so the
        # local log can be complete a moment before the inbox is empty.
        def keys() -> list[str]:
            return [o["Key"] for o in s3.client().list_objects_v2(
                Bucket="trellis", Prefix="requestlog/").get("Contents", [])]
        wait_for(lambda: not [k for k in keys() if k.startswith(f"requestlog/inbox/{ns}/")],
                 timeout=30, what="the drained inbox objects deleted")
        assert b.logged(ns) == (acked, labelled)
        copies = [k for k in keys() if k.startswith(f"requestlog/log/{ns}/classifier/")]
        assert copies and all("-replica-b/" in k for k in copies), copies
    finally:
        kill_quietly(a.op)
        if b is not None:
            b.op.stop()
        api.close()
