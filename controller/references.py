"""Reads across the ModelDeployment → Experiment reference, from memory.

A ModelDeployment serves the models its Experiment registers (``status.models``), so
each of its passes needs the Experiment, and each Experiment change matters to the
deployments that serve it — and only to them. Two kopf indices answer both without the
API server: Experiments by (namespace, name), keeping what a deployment reads (spec,
``status.models`` and ``status.retrain``); and deployments by the Experiment they
name. kopf fills both before any loop starts and updates them before an event's
handlers run, so a deployment woken by its Experiment's event reads the Experiment as
that event left it.

Without the indices (a reconciler driven outside kopf, in benchmarks) the Experiment is
read by GET and an Experiment's change wakes its namespace's deployments.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from controller.kube import EXPERIMENTS, Kube

# kopf index names: the handlers in controller.handlers carry these names.
EXPERIMENTS_INDEX = "experiments"
DEPLOYMENTS_INDEX = "deployments_by_experiment"

Key = tuple[str, str]  # (namespace, name of the Experiment)


# What a deployment reads of an Experiment's status: the models it serves, and the
# retrain the Experiment adopted last (the drift monitor's cooldown counts from it).
# The rest — runs, progress — changes often and is none of theirs.
READ_STATUS = ("models", "retrain")


def experiment_entry(body: Mapping[str, Any]) -> dict[Key, dict[str, Any]]:
    """What a deployment reads of an Experiment: its identity, spec and ``READ_STATUS``."""
    meta = body["metadata"]
    status = body.get("status") or {}
    return {(meta["namespace"], meta["name"]): {
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "generation",
                                          "resourceVersion") if k in meta},
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
        "status": {k: copy.deepcopy(status[k]) for k in READ_STATUS if k in status}}}


def deployment_entry(body: Mapping[str, Any]) -> dict[Key, str]:
    """A ModelDeployment's name, keyed by the Experiment it serves."""
    meta = body["metadata"]
    experiment = ((body.get("spec") or {}).get("model") or {}).get("experiment")
    if not experiment:
        return {}
    return {(meta["namespace"], experiment): meta["name"]}


class References:
    """The Experiment a deployment serves, and the deployments an Experiment has."""

    def __init__(self, kube: Kube, indices: Mapping[str, Any] | None = None) -> None:
        self.kube = kube
        indices = indices or {}
        self._experiments: Mapping[Any, Any] | None = indices.get(EXPERIMENTS_INDEX)
        self._deployments: Mapping[Any, Any] | None = indices.get(DEPLOYMENTS_INDEX)

    async def experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Experiment as the watch last delivered it (None: there is none), or as
        the API server says without a watch."""
        if self._experiments is None:
            return await self.kube.get(EXPERIMENTS, namespace, name)
        entries = list(self._experiments.get((namespace, name), ()))
        if len(entries) > 1:
            # kopf keeps an entry per uid: an Experiment deleted and made again (while a
            # watch was down, kopf's relist keeps the deleted one) is two. Ask which.
            return await self.kube.get(EXPERIMENTS, namespace, name)
        return copy.deepcopy(dict(entries[0])) if entries else None

    def deployments_of(self, namespace: str, experiment: str) -> list[str] | None:
        """The names of the deployments serving ``experiment``; None without the index
        (the caller wakes the whole namespace)."""
        if self._deployments is None:
            return None
        return sorted(set(self._deployments.get((namespace, experiment), ())))
