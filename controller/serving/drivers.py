"""Serving backends behind one small interface: make serving look like the plan.

``local``: seldon-core-microservice processes per predictor plus the weighted router
(``controller.serving.local``). ``seldon``: a ``SeldonDeployment`` applied to the API
server for Seldon Core's operator to run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

from controller.api import MODEL_DEPLOYMENT
from controller.context import Context
from controller.kube import SELDON_DEPLOYMENTS
from controller.paths import SERVING_DIR
from controller.schema import spec_section
from controller.serving import seldon
from controller.serving.requestlog_read import deployment_log_dir
from controller.serving.seldon import Predictor
from controller.serving.seldon_status import (
    PREDICTIONS_PATH,
    Assessment,
    assess,
    caught_up,
    endpoint,
    pending_write,
    pods_change,
)

PENDING_WRITE = "seldonWrite"  # status key: the SeldonDeployment write still awaited


@dataclass(frozen=True)
class ServingState:
    endpoint: str | None  # the Seldon REST predictions URL users call
    ready: bool  # every predictor with traffic answers health checks
    message: str
    # Whether a change in serving wakes the loop (a watched SeldonDeployment); if not,
    # the loop looks again while serving is not ready.
    watched: bool = False
    failed: bool = False  # the serving system gave up (Seldon state Failed)
    # Status entries the backend keeps across passes (key -> value, None removes).
    status: dict[str, Any] | None = None


class ServingDriver(Protocol):
    async def apply(self, mdep: dict[str, Any], predictors: list[Predictor], *,
                    drift_logging: bool, auth_token: str | None) -> ServingState: ...

    async def observe(self, mdep: dict[str, Any]) -> Assessment | None:
        """What serving reports now, before anything is written (None: nothing to say)."""
        ...

    async def teardown(self, mdep: dict[str, Any]) -> None: ...


def base_url(endpoint: str) -> str:
    """The server root of a predictions URL (where /metrics and /health live)."""
    return endpoint.split("/api/", 1)[0]


class LocalDriver:
    def __init__(self, ctx: Context) -> None:
        from controller.serving.local import LocalServingBackend

        self.ctx = ctx
        self.backend = LocalServingBackend(ctx.settings.serving_state_dir,
                                           ctx.settings.serving_python, SERVING_DIR)

    async def apply(self, mdep: dict[str, Any], predictors: list[Predictor], *,
                    drift_logging: bool, auth_token: str | None) -> ServingState:
        from controller.serving.local import DesiredServing, PredictorSpec

        meta = mdep["metadata"]
        drift = spec_section(MODEL_DEPLOYMENT.kind, "drift", (mdep.get("spec") or {}).get("drift"))
        desired = DesiredServing(
            namespace=meta["namespace"], name=meta["name"],
            predictors=[PredictorSpec(p.name, p.version, p.model_uri, p.weight)
                        for p in predictors],
            log_dir=(deployment_log_dir(self.ctx.settings.request_log_dir, meta["namespace"],
                                        meta["name"]) if drift_logging else None),
            max_log_bytes=int(drift["storage"]["maxBytes"]),
            auth_token=auth_token,
        )
        observed = await self.backend.ensure(desired)
        unhealthy = [f"{name} (v{p.version}): {p.message}" for name, p in
                     observed.predictors.items() if not p.healthy]
        message = "; ".join(unhealthy) if unhealthy else "all predictors healthy"
        return ServingState(observed.endpoint + PREDICTIONS_PATH, observed.ready, message)

    async def observe(self, mdep: dict[str, Any]) -> Assessment | None:
        return None  # local processes are restarted, never left failed

    async def teardown(self, mdep: dict[str, Any]) -> None:
        meta = mdep["metadata"]
        await self.backend.teardown(meta["namespace"], meta["name"])

    async def close(self) -> None:
        return None


class SeldonDriver:
    """Applies the rendered SeldonDeployment; readiness is what Seldon Core reports.

    The SeldonDeployment is read from the operator's watch (``controller.children``):
    Seldon Core's status updates wake the loop, nothing polls it."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def apply(self, mdep: dict[str, Any], predictors: list[Predictor], *,
                    drift_logging: bool, auth_token: str | None) -> ServingState:
        desired = seldon.render(mdep, predictors, self.ctx.settings, drift_logging=drift_logging)
        meta = mdep["metadata"]
        pending = (mdep.get("status") or {}).get(PENDING_WRITE)
        seen = await self.ctx.children.get(SELDON_DEPLOYMENTS, meta["namespace"], meta["name"],
                                           unseen_is_absent=True)
        current, watched = seen.obj, seen.watched
        now = dt.datetime.now(dt.UTC)
        if current is not None and caught_up(current, pending, now):
            pending = None  # answered already: a write now must not inherit the wait
        if current is None or _differs(current, desired):
            # A write to a failed SeldonDeployment (the canary rolled back) waits for
            # Seldon's verdict on it too: its Failed state predates the write.
            changed = pods_change(current, desired) or (
                current is not None and assess(current, pending, now).health == "failed")
            current = await self.ctx.kube.apply(desired)
            self.ctx.children.note(SELDON_DEPLOYMENTS, current)
            watched = False  # until a watch delivers what we wrote
            pending = pending_write(pending, changed, current, now)
        seen_now = assess(current, pending, now)
        if caught_up(current, pending, now):
            pending = None  # Seldon's status describes our spec from now on
        url = endpoint(current, self.ctx.settings.seldon_gateway_url)
        # A wait ends by a watch event or by running out: look again meanwhile.
        watched = watched and pending is None
        return ServingState(url, seen_now.health == "available", seen_now.message, watched,
                            failed=seen_now.health == "failed",
                            status={PENDING_WRITE: pending})

    async def observe(self, mdep: dict[str, Any]) -> Assessment | None:
        meta = mdep["metadata"]
        seen = await self.ctx.children.get(SELDON_DEPLOYMENTS, meta["namespace"], meta["name"],
                                           unseen_is_absent=True)
        if seen.obj is None:
            return None
        return assess(seen.obj, (mdep.get("status") or {}).get(PENDING_WRITE),
                      dt.datetime.now(dt.UTC))

    async def teardown(self, mdep: dict[str, Any]) -> None:
        meta = mdep["metadata"]
        await self.ctx.kube.delete(SELDON_DEPLOYMENTS, meta["namespace"], meta["name"])

    async def close(self) -> None:
        return None


def _differs(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether applying ``desired`` would change anything we own (skip no-op writes)."""
    if current.get("spec") != desired["spec"]:
        return True
    have = current.get("metadata") or {}
    want = desired["metadata"]
    for key in ("labels", "annotations"):
        mine = have.get(key) or {}
        if any(mine.get(k) != v for k, v in want[key].items()):
            return True
    owners = [o.get("uid") for o in have.get("ownerReferences") or []]
    return owners != [o["uid"] for o in want["ownerReferences"]]
