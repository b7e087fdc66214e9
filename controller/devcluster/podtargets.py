"""Pod discovery for the dev cluster's Prometheus: which model-server pods it scrapes.

Debian's Prometheus 2.42 is built without Kubernetes service discovery (its ``+ds``
package leaves client-go out: ``kubernetes_sd_configs`` is an unknown field there), so
the dev cluster discovers the pods itself and hands them over through ``file_sd``, which
Prometheus re-reads every scrape interval. The selection and labels are those of the
PodMonitor Seldon documents, as prometheus-operator renders it (``targets``): pods
labelled ``app.kubernetes.io/managed-by: seldon-core`` that have an address and are not
finished, one target per container port named ``metrics`` at ``/prometheus``, labelled
with the namespace, pod, container, port name and the PodMonitor's ``job``.

``run`` is the process ``dev-cluster up --prometheus`` starts: it lists the pods once,
then follows a watch on them, rewriting the file (atomically) whenever the targets change,
and lists again after any error or when the watch ends.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("trellis.podtargets")

MANAGED_BY = ("app.kubernetes.io/managed-by", "seldon-core")  # Seldon's operator labels its pods so
SELECTOR = "=".join(MANAGED_BY)
METRICS_PORT_NAME = "metrics"  # the model container's 6000 and the executor's 8000
METRICS_PATH = "/prometheus"  # Seldon's operator: the executor's --prometheus_path
PODMONITOR = "seldon-monitoring/seldon-podmonitor"  # Seldon's docs' (the `job` it gives)
WATCH_SECONDS = 300  # a watch is renewed (listing again) after this long
RETRY_SECONDS = 1.0


def targets(pods: Iterable[dict[str, Any]], namespace_label: str = "namespace"
            ) -> list[dict[str, Any]]:
    """``file_sd`` groups for ``pods`` (API objects as JSON), one per scraped port.

    prometheus-operator always names the namespace label ``namespace``; here it is
    ``namespace_label`` because clusters differ (Seldon's analytics chart uses
    ``kubernetes_namespace``; empty: none), and the operator's queries are configured
    to match."""
    groups = []
    for pod in sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])):
        meta, status = pod["metadata"], pod.get("status") or {}
        labels = meta.get("labels") or {}
        if labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
            continue
        if status.get("phase") in ("Failed", "Succeeded") or not status.get("podIP"):
            continue
        for container in pod["spec"].get("containers") or []:
            for port in container.get("ports") or []:
                if port.get("name") != METRICS_PORT_NAME:
                    continue
                group_labels = {"__metrics_path__": METRICS_PATH, "job": PODMONITOR,
                                "pod": meta["name"], "container": container["name"],
                                "endpoint": METRICS_PORT_NAME}
                if namespace_label:
                    group_labels[namespace_label] = meta["namespace"]
                groups.append({"targets": [f"{status['podIP']}:{port['containerPort']}"],
                               "labels": group_labels})
    return groups


def write(path: Path, groups: list[dict[str, Any]]) -> None:
    """Replace the file whole: Prometheus must never read half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(groups, indent=2))
    os.replace(tmp, path)


def run(kubeconfig: Path, out: Path, namespace_label: str) -> None:
    """List, then watch, Seldon's pods in every namespace; keep ``out`` current."""
    from kubernetes import client, config, watch

    api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
    serialize = api.api_client.sanitize_for_serialization
    written: list[dict[str, Any]] | None = None

    def publish(pods: dict[str, dict[str, Any]]) -> None:
        nonlocal written
        groups = targets(pods.values(), namespace_label)
        if groups != written:
            write(out, groups)
            written = groups
            log.info("%d targets: %s", len(groups), [g["targets"][0] for g in groups])

    while True:
        try:
            listed = api.list_pod_for_all_namespaces(label_selector=SELECTOR)
            pods = {p.metadata.uid: serialize(p) for p in listed.items}
            publish(pods)
            for event in watch.Watch().stream(
                    api.list_pod_for_all_namespaces, label_selector=SELECTOR,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=WATCH_SECONDS):
                pod = event["object"]
                if event["type"] == "DELETED":
                    pods.pop(pod.metadata.uid, None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    pods[pod.metadata.uid] = serialize(pod)
                publish(pods)
        except Exception as exc:  # the API server restarting, a watch expired (410): list
            log.warning("pod discovery: %s; listing again", exc)
            time.sleep(RETRY_SECONDS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--namespace-label", default="namespace")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run(args.kubeconfig, args.out, args.namespace_label)


if __name__ == "__main__":
    main()
