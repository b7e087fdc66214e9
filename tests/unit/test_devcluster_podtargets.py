"""The dev cluster's Prometheus: which pods its discovery hands over and how it labels
them (the PodMonitor Seldon documents, as prometheus-operator renders it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controller.devcluster import podtargets


def _pod(name: str = "classifier-canary-0-classifier-abc12", *, ip: str = "10.244.0.7",
         phase: str = "Running", managed_by: str = "seldon-core") -> dict[str, Any]:
    """A model-server pod as ``tests/support/seldon_pods.py`` (and Seldon's operator)
    makes it: the model's ports, then the executor's (8000 twice: http and metrics)."""
    return {
        "metadata": {"namespace": "team-a", "name": name,
                     "labels": {"app.kubernetes.io/managed-by": managed_by}},
        "spec": {"initContainers": [{"name": "classifier-model-initializer"}],
                 "containers": [
                     {"name": "classifier", "ports": [
                         {"name": "http", "containerPort": 9000},
                         {"name": "grpc", "containerPort": 9500},
                         {"name": "metrics", "containerPort": 6000}]},
                     {"name": "seldon-container-engine", "ports": [
                         {"name": "http", "containerPort": 8000},
                         {"name": "metrics", "containerPort": 8000},
                         {"name": "grpc", "containerPort": 5001}]}]},
        "status": {"phase": phase, "podIP": ip},
    }


def test_each_metrics_port_of_a_running_seldon_pod_is_one_labelled_target() -> None:
    groups = podtargets.targets([_pod()], namespace_label="kubernetes_namespace")
    assert [g["targets"] for g in groups] == [["10.244.0.7:6000"], ["10.244.0.7:8000"]]
    engine = groups[1]["labels"]
    assert engine == {"__metrics_path__": "/prometheus",
                      "job": "seldon-monitoring/seldon-podmonitor",
                      "pod": "classifier-canary-0-classifier-abc12",
                      "container": "seldon-container-engine", "endpoint": "metrics",
                      "kubernetes_namespace": "team-a"}
    assert groups[0]["labels"]["container"] == "classifier"


def test_pods_not_seldons_finished_or_without_an_address_are_not_scraped() -> None:
    assert podtargets.targets([_pod(managed_by="trellis"), _pod(phase="Succeeded"),
                               _pod(phase="Failed"), _pod(ip="")]) == []
    [model, _] = podtargets.targets([_pod(phase="Pending")])  # not Ready yet: scraped, down
    assert model["labels"]["namespace"] == "team-a"


def test_the_namespace_label_can_be_left_out() -> None:
    groups = podtargets.targets([_pod()], namespace_label="")
    assert not any("namespace" in g["labels"] for g in groups)


def test_the_targets_file_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "pods.json"
    podtargets.write(out, podtargets.targets([_pod()]))
    assert len(json.loads(out.read_text())) == 2
    podtargets.write(out, [])
    assert json.loads(out.read_text()) == [] and [p.name for p in tmp_path.iterdir()] == [
        "pods.json"]
