"""A small fixed-seed slice of the fault harness (``bench/chaos_bench.py`` runs it all).

Each trial SIGKILLs the operator process at a random moment (seeded) of a local
training launch, a model registration, a SpecRepository apply or a canary rollout
(real model servers under traffic), restarts it, or
restarts the kube-apiserver / stops etcd for 10 s, lets the world settle and checks
the invariants of ``tests/support/chaos.py``. The control plane is this test's own:
restarting the session's API server or stopping its etcd would be felt by every test
after this one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.devcluster.cluster import DevCluster
from tests.support import chaos

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

SEED = 14
PLAN = [("training-launch", 1), ("model-registration", 1), ("specrepo-apply", 2),
        ("apiserver-restart-specrepo", 1), ("etcd-outage-specrepo", 1), ("canary-step", 1)]


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[DevCluster]:
    dev = DevCluster(tmp_path / "cluster")
    dev.up()
    try:
        yield dev
    finally:
        dev.down()


def test_faults_at_random_moments_break_no_invariant(own_cluster: DevCluster,
                                                     tmp_path: Path) -> None:
    harness = chaos.Harness(own_cluster, tmp_path / "trials", settle_timeout=120,
                            log=print)
    trials = harness.run(PLAN, SEED)
    bad = [t for t in trials if not t.ok()]
    assert not bad, "\n".join(f"{t.phase} #{t.index} (seed {t.seed}, {t.delay_s:.2f}s in): "
                              f"{t.error or t.violations}" for t in bad)
    assert len(trials) == sum(n for _, n in PLAN)
    # some faults hit the world while it was in motion, not after it was done (which
    # ones depends on this machine's speed; the bench counts them per phase)
    assert any(t.in_window for t in trials), trials
    # the cluster answers again after each fault: the dev cluster is whole
    assert own_cluster.running()
