"""Experiment reconciler (Metaflow runs → model versions). Foundation: Ready bookkeeping."""

from __future__ import annotations

from typing import Any

from controller import api, conditions
from controller.context import Context
from controller.kube import EXPERIMENTS
from controller.loop import Outcome


class ExperimentReconciler:
    resource = EXPERIMENTS

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def reconcile(self, obj: dict[str, Any]) -> Outcome:
        status = dict(obj.get("status") or {})
        gen = obj["metadata"]["generation"]
        status["observedGeneration"] = gen
        status["conditions"] = conditions.set_condition(
            status.get("conditions"), api.Cond.READY, True, api.Reason.RECONCILED,
            "spec accepted", gen)
        return Outcome(status)

    async def cleanup(self, obj: dict[str, Any]) -> None:
        return None
