"""The drift monitors' retrain requests, as the Experiment reconciler reads them.

Each controller writes only the status of what it reconciles: a ModelDeployment's drift
monitor puts its request on the deployment's own status (``status.drift.retrain``), and
the Experiment reconciler adopts it into the Experiment's ``status.retrain``
(``training.decide.adopt_retrain``). A kopf index on ModelDeployments keeps, per
(namespace, Experiment), the requests of the deployments that serve it: kopf fills it
before any loop starts and updates it before the event handler wakes the Experiment
(``ModelDeploymentReconciler.related``), so adoption costs no API request. Without an
index (a reconciler driven outside kopf) the namespace's deployments are listed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.kube import MODEL_DEPLOYMENTS, Kube

# The kopf index name: the handler in controller.handlers carries it.
INDEX = "retrain_requests"

Key = tuple[str, str]  # (namespace, Experiment name)


@dataclass(frozen=True)
class Request:
    """One deployment's last retrain request (its ``status.drift.retrain``)."""

    deployment: str
    status: dict[str, Any]


def index_entry(body: Mapping[str, Any]) -> dict[Key, dict[str, Any]]:
    """A ModelDeployment's last retrain request, keyed by the Experiment it serves; none
    (``{}``: kopf drops what the object had indexed) when it never asked."""
    meta = body["metadata"]
    experiment = ((body.get("spec") or {}).get("model") or {}).get("experiment")
    request = ((body.get("status") or {}).get("drift") or {}).get("retrain")
    if not experiment or not request:
        return {}
    return {(meta["namespace"], experiment): {"deployment": meta["name"],
                                              "request": copy.deepcopy(dict(request))}}


class RetrainRequests:
    """Reads of the requests made to one Experiment: the index, or a list without one."""

    def __init__(self, kube: Kube, index: Mapping[Any, Any] | None = None) -> None:
        self.kube = kube
        self._index = index

    async def for_experiment(self, namespace: str, name: str) -> list[Request]:
        if self._index is not None:
            entries = list(self._index.get((namespace, name), ()))
        else:
            listed = await self.kube.list(MODEL_DEPLOYMENTS, namespace)
            entries = [e for obj in listed
                       if (e := index_entry(obj).get((namespace, name))) is not None]
        return sorted((Request(e["deployment"], copy.deepcopy(dict(e["request"])))
                       for e in entries),
                      key=lambda r: r.deployment)
