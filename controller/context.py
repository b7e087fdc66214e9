"""What every reconciler shares in one operator process (kept in kopf's memo)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.children import Children
from controller.kube import Kube
from controller.loop import Reconciler, Wakeups
from controller.metrics import OperatorMetrics
from controller.references import References
from controller.retrain_requests import RetrainRequests
from controller.settings import Settings


@dataclass
class Context:
    settings: Settings
    kube: Kube
    wakeups: Wakeups = field(default_factory=Wakeups)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    reconcilers: dict[str, Reconciler] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    # The children the operator owns, as its watches see them (no watches: read by GET).
    children: Children = field(default=None)  # type: ignore[assignment]
    # The ModelDeployments' retrain requests, per Experiment (no index: read by LIST).
    retrain_requests: RetrainRequests = field(default=None)  # type: ignore[assignment]
    # Deployment <-> Experiment reads from kopf's indices (without them: GET, and an
    # Experiment's change wakes its namespace's deployments).
    references: References = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.children is None:
            self.children = Children(self.kube)
        if self.retrain_requests is None:
            self.retrain_requests = RetrainRequests(self.kube)
        if self.references is None:
            self.references = References(self.kube)

    async def close(self) -> None:
        for rec in self.reconcilers.values():
            closer = getattr(rec, "close", None)
            if closer is not None:
                await closer()
        await self.kube.close()
