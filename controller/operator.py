"""Operator wiring: kopf settings, the shared context, and running the operator.

``handlers.py`` holds the kopf decorators; this module holds what they call, so the
handlers stay few-line shims (the crate-operator layout).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from controller import api
from controller.context import Context
from controller.kube import Kube
from controller.loop import run_loop, snapshot
from controller.settings import Settings

log = logging.getLogger("trellis.operator")


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Our annotations, our finalizer, no kopf-posted Events (we post on transitions)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = f"{api.PREFIX}/finalizer"
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.peering.name = "trellis"
    settings.peering.mandatory = False


async def build_context(settings: Settings | None = None) -> Context:
    from controller.reconcilers.deployments import ModelDeploymentReconciler
    from controller.reconcilers.experiments import ExperimentReconciler
    from controller.reconcilers.specrepos import SpecRepositoryReconciler

    settings = settings or Settings.from_env()
    ctx = Context(settings=settings, kube=Kube.from_env())
    ctx.reconcilers = {
        api.EXPERIMENT.kind: ExperimentReconciler(ctx),
        api.MODEL_DEPLOYMENT.kind: ModelDeploymentReconciler(ctx),
        api.SPEC_REPOSITORY.kind: SpecRepositoryReconciler(ctx),
    }
    for rec in ctx.reconcilers.values():
        starter = getattr(rec, "start", None)
        if starter is not None:
            await starter()
    log.info("trellis operator context ready (state dir %s)", settings.state_dir)
    return ctx


async def close_context(ctx: Context) -> None:
    await ctx.close()


async def run_daemon(ctx: Context, kind: str, body: kopf.Body, stopped: Any) -> None:
    meta = body["metadata"]
    wakeup = ctx.wakeups.get(kind, meta["namespace"], meta["name"])
    try:
        await run_loop(ctx.reconcilers[kind], ctx.kube, body, stopped, wakeup,
                       resync=ctx.settings.resync_seconds, record=ctx.metrics.record_reconcile)
    finally:
        ctx.wakeups.forget(kind, meta["namespace"], meta["name"])


def on_event(ctx: Context, kind: str, body: kopf.Body) -> None:
    meta = body["metadata"]
    ctx.wakeups.wake(kind, meta["namespace"], meta["name"])
    rec = ctx.reconcilers.get(kind)
    related = getattr(rec, "related", None)
    if related is not None:
        for other_kind, ns, name in related(snapshot(body)):
            ctx.wakeups.wake(other_kind, ns, name)


async def on_delete(ctx: Context, kind: str, body: kopf.Body) -> None:
    await ctx.reconcilers[kind].cleanup(snapshot(body))


def run(*, namespaces: list[str] | None = None, peering: str | None = None,
        liveness_port: int | None = None, verbose: bool = False) -> None:
    """Run the operator in this process until interrupted."""
    from controller import handlers  # noqa: F401  (registers the handlers)
    from controller.logs import setup_logging

    setup_logging(verbose=verbose)
    liveness = f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None
    kwargs: dict[str, Any] = {
        "standalone": peering is None,
        "liveness_endpoint": liveness,
    }
    if peering is not None:
        kwargs["peering_name"] = peering
    if namespaces:
        kwargs["namespaces"] = namespaces
    else:
        kwargs["clusterwide"] = True
    asyncio.run(kopf.operator(**kwargs))
