"""A training Job's pod meets the ``restricted`` Pod Security Standard, as the real API
server's PodSecurity admission judges it: a team namespace may enforce it.

Pods created with ``--dry-run=server`` run every admission check and persist nothing (no
node needed); a pod the profile forbids (hostPath, as the dev node's mounted
environments use) is the control that the namespace really enforces.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from controller.settings import Settings
from controller.training.decide import RunKey
from controller.training.kubernetes import render_job
from tests.support.kube import Cluster

pytestmark = pytest.mark.cluster

EXP = {"apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "Experiment",
       "metadata": {"name": "classifier", "namespace": "x", "uid": "u-1"},
       "spec": {"flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"},
                "resources": {"cpu": "500m", "memory": "2Gi", "gpu": 1}}}


def _restricted(cluster: Cluster, namespace: str) -> str:
    cluster.kubectl("label", "namespace", namespace,
                    "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest", "--overwrite")
    return namespace


def _pod(settings: Settings, namespace: str) -> dict:
    job = render_job({**EXP, "metadata": {**EXP["metadata"], "namespace": namespace}},
                     RunKey(1), 1, settings, parameters={"epochs": 1}, tags={"k": "v"},
                     commit="abc", source_url="https://git.example/farm.git",
                     source_secret="farm-git")  # its clone's credentials: a secret volume
    template = job["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "trainer", "namespace": namespace,
                         "labels": template["metadata"]["labels"]},
            "spec": template["spec"]}


def _dry_run(cluster: Cluster, pod: dict) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                           input=json.dumps(pod), check=False)


def test_the_trainer_pod_is_admitted_under_restricted(cluster: Cluster,
                                                      namespace: str) -> None:
    ns = _restricted(cluster, namespace)
    proc = _dry_run(cluster, _pod(Settings(), ns))
    assert proc.returncode == 0, proc.stderr
    assert "would violate" not in proc.stderr  # no warning either


def test_restricted_is_enforced_there(cluster: Cluster, namespace: str) -> None:
    ns = _restricted(cluster, namespace)
    mounted = Settings(trainer_host_mounts={"/app/.venv": "/var/cache/trellis/envs"})
    proc = _dry_run(cluster, _pod(mounted, ns))
    assert proc.returncode != 0
    assert "violates PodSecurity" in proc.stderr and "hostPath" in proc.stderr, proc.stderr
