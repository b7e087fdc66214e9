"""Operator wiring: kopf settings, the shared context, and running the operator.

``handlers.py`` holds the kopf decorators; this module holds what they call, so the
handlers stay few-line shims (the crate-operator layout).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import kopf

from controller import api, children, failures, references, retrain_requests
from controller.context import Context
from controller.kube import JOBS, PODS, SELDON_DEPLOYMENTS, Kube
from controller.loop import run_loop, snapshot
from controller.metrics import OperatorMetrics
from controller.settings import Settings

log = logging.getLogger("trellis.operator")


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's client-library login, reading ``KUBECONFIG`` as it is *now*: the kubernetes
    client freezes its default path when first imported, which may predate the env."""
    from kubernetes.config import kube_config

    if os.environ.get("KUBECONFIG"):
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = os.environ["KUBECONFIG"]
    return kopf.login_via_client(**kwargs)


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Our annotations, our finalizer, no kopf-posted Events (we post on transitions)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = f"{api.PREFIX}/finalizer"
    settings.posting.enabled = False
    # Peering objects come from manifests/ (a ClusterKopfPeering "trellis"); kopf's
    # mandatory mode keeps the standby's peering stream from ever being processed here
    # (it waits on a CRD scan that the least-privilege role cannot do), so peering is
    # used when present and the manifests make sure it is.
    settings.peering.mandatory = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # The children's watches ask the API server for ours only (kopf's handler filters
    # are client-side: without this, every Pod of the cluster would stream through here).
    for res in (JOBS, PODS, SELDON_DEPLOYMENTS):
        settings.watching.label_selectors[res.group, res.version, res.plural] = \
            children.OWNED_SELECTOR


async def build_context(settings: Settings | None = None,
                        indices: Mapping[str, Any] | None = None,
                        namespaces: list[str] | None = None) -> Context:
    """The shared context; ``indices`` are kopf's indices of the children we own,
    watched in ``namespaces`` (None: cluster-wide), of the ModelDeployments' retrain
    requests, and of the deployment → Experiment references (``controller.references``)."""
    from controller.reconcilers.deployments import ModelDeploymentReconciler
    from controller.reconcilers.experiments import ExperimentReconciler
    from controller.reconcilers.specrepos import SpecRepositoryReconciler

    settings = settings or Settings.from_env()
    metrics = OperatorMetrics()
    kube = Kube.from_env(on_request=metrics.record_request)
    unserved: frozenset[str] = frozenset()
    if indices is not None:
        await children.require_watch_access(kube, namespaces)
        unserved = await children.unserved_kinds(kube)
        if unserved:
            log.warning("the API server does not serve %s: read by request until the "
                        "operator restarts after they are installed", ", ".join(sorted(unserved)))
    ctx = Context(settings=settings, kube=kube, metrics=metrics,
                  children=children.Children(kube, indices, unserved),
                  retrain_requests=retrain_requests.RetrainRequests(
                      kube, (indices or {}).get(retrain_requests.INDEX)),
                  references=references.References(kube, indices))
    ctx.reconcilers = {
        api.EXPERIMENT.kind: ExperimentReconciler(ctx),
        api.MODEL_DEPLOYMENT.kind: ModelDeploymentReconciler(ctx),
        api.SPEC_REPOSITORY.kind: SpecRepositoryReconciler(ctx),
    }
    for rec in ctx.reconcilers.values():
        starter = getattr(rec, "start", None)
        if starter is not None:
            await starter()
    await _start_http(ctx)
    await asyncio.to_thread(_record_state_dir, ctx)
    log.info("trellis operator context ready (state dir %s)", settings.state_dir)
    return ctx


def _record_state_dir(ctx: Context) -> None:
    """Note which state dir this operator works in against which cluster: local-mode
    processes outlive the operator on purpose, and ``trellis dev-cluster down`` stops
    them by this record. Not fatal when it cannot be written (a read-only home in a pod,
    where local mode is not used)."""
    from controller import localwork

    cfg = ctx.kube.api_client.configuration
    try:
        localwork.record(ctx.settings.registry_dir, ctx.settings.state_dir,
                         localwork.cluster_id(cfg.ssl_ca_cert, cfg.host))
    except OSError as exc:
        log.info("state dir not recorded in %s: %s", ctx.settings.registry_dir, exc)


async def _start_http(ctx: Context) -> None:
    """Serve /metrics and /healthz; the bound port goes to ``ctx.extras["metrics_port"]``.

    A taken port is logged, not fatal (as for the webhook): reconciling matters more.
    """
    from controller.http_server import OperatorHttpServer

    ctx.extras["metrics_port"] = None
    if ctx.settings.metrics_port < 0:
        return
    server = OperatorHttpServer(ctx.metrics, port=ctx.settings.metrics_port)
    try:
        ctx.extras["metrics_port"] = await server.start()
    except OSError as exc:
        log.error("metrics endpoint disabled: cannot listen on port %d (%s)",
                  ctx.settings.metrics_port, exc)
        return
    ctx.extras["http_server"] = server


async def close_context(ctx: Context) -> None:
    server = ctx.extras.pop("http_server", None)
    if server is not None:
        await server.stop()
    await ctx.close()


async def run_daemon(ctx: Context, kind: str, body: kopf.Body, stopped: Any) -> None:
    meta = body["metadata"]
    wakeup = ctx.wakeups.get(kind, meta["namespace"], meta["name"])
    rec = ctx.reconcilers[kind]
    try:
        await run_loop(rec, ctx.kube, body, stopped, wakeup,
                       resync=ctx.settings.resync_seconds, metrics=ctx.metrics)
    finally:
        ctx.wakeups.forget(kind, meta["namespace"], meta["name"])
        # Whatever stopped the daemon — kopf pausing this replica for its peer, the
        # operator exiting, the object deleted — what the reconciler holds for the object
        # in memory may be outdated when the daemon next runs here.
        release = getattr(rec, "release", None)
        if release is not None:
            await release(meta["namespace"], meta["name"])


def on_event(ctx: Context, kind: str, body: kopf.Body) -> None:
    """Wake the object's loop and those of objects that depend on it. Called on the event
    loop's thread (the handler is ``async``): ``asyncio.Event.set`` is not thread-safe."""
    meta = body["metadata"]
    ctx.wakeups.wake(kind, meta["namespace"], meta["name"])
    rec = ctx.reconcilers.get(kind)
    related = getattr(rec, "related", None)
    if related is not None:
        for other_kind, ns, name in related(body):  # reads only: kopf's body, not a copy
            if name is None:  # every object of that kind in the namespace
                ctx.wakeups.wake_namespace(other_kind, ns)
            else:
                ctx.wakeups.wake(other_kind, ns, name)


def on_child_event(ctx: Context, plural: str, body: kopf.Body, event_type: str | None) -> None:
    """A child changed (its index entry is updated already): forget our note of it if
    the watch caught up, and wake its owner's loop."""
    ctx.children.delivered(plural, body, deleted=event_type == "DELETED")
    owner = children.owner_of(body)
    if owner is not None:
        ctx.wakeups.wake(*owner)


async def on_delete(ctx: Context, kind: str, body: kopf.Body, retry: int = 0) -> None:
    """Release what the object owned outside the API server, or keep the finalizer.

    A failure is never given up on: what the object owned would be orphaned with nobody
    left to remove it. kopf retries after the failure's own pacing (quickly for an outage,
    about once per resync for a forbidden or rejected call, which waits for a RBAC or
    policy fix) and posts each failure as an Event, so ``kubectl describe`` says why the
    object is still terminating; removing the finalizer by hand is the way out."""
    try:
        await ctx.reconcilers[kind].cleanup(snapshot(body))
    except Exception as exc:
        failure = failures.classify(exc)
        delay = failures.retry_delay(failure, retry + 1, resync=ctx.settings.resync_seconds)
        raise kopf.TemporaryError(f"{failure.reason}: {failure.message}", delay=delay) from exc


def peering_priority() -> int:
    """A kopf peering priority unique to this process: the earlier start wins.

    kopf pauses every operator that sees a live peer of higher *or equal* priority, so
    replicas sharing the default priority would all pause. Minus the start time (in
    microseconds) keeps the oldest replica active and makes a newly started one a standby
    that takes over only when the active one's keep-alive lapses.
    """
    return -(time.time_ns() // 1000)


def run(*, namespaces: list[str] | None = None, peering: str | None = None,
        liveness_port: int | None = None, verbose: bool = False) -> None:
    """Run the operator in this process until interrupted."""
    from controller import handlers  # noqa: F401  (registers the handlers)
    from controller.logs import setup_logging

    setup_logging(verbose=verbose)
    liveness = f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None
    settings = kopf.OperatorSettings()
    # The ClusterRole grants no CRD access (manifests/rbac.yaml): kopf then knows the kinds
    # it found at start-up and does not retry a forbidden CRD watch, logging errors.
    settings.scanning.disabled = True
    kwargs: dict[str, Any] = {
        "settings": settings,
        "standalone": peering is None,
        "liveness_endpoint": liveness,
        "memo": kopf.Memo(namespaces=namespaces or None),
    }
    if peering is not None:
        kwargs["peering_name"] = peering
        kwargs["priority"] = peering_priority()
        if not Settings.from_env().request_log_store:
            log.warning(
                "peering as %r with no TRELLIS_REQUEST_LOG_STORE: each replica keeps the "
                "drift inputs it receives in its own state dir, so with more than one "
                "replica the active one sees only its share; set it to a store every "
                "replica reaches (s3://bucket/requestlog)", peering)
    if namespaces:
        kwargs["namespaces"] = namespaces
    else:
        kwargs["clusterwide"] = True
    asyncio.run(kopf.operator(**kwargs))
