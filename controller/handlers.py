"""kopf registrations, and nothing else: each handler is a shim into ``controller.operator``.

Per kind: a daemon runs the level-triggered reconcile loop for each object; an event
handler wakes that loop (and the loops of objects that depend on it); a delete handler
releases what the object owned outside the API server (local processes, caches).
"""

from __future__ import annotations

from typing import Any

import kopf

from controller import api
from controller import operator as op

DAEMON_OPTS: dict[str, Any] = {"cancellation_timeout": 10.0, "initial_delay": 0}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    op.configure_kopf(settings)
    memo.ctx = await op.build_context()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return op.login(**kwargs)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    await op.close_context(memo.ctx)


@kopf.on.probe(id="reconcilers")
def probe(memo: kopf.Memo, **_: Any) -> int:
    return len(memo.ctx.reconcilers)


# ------------------------------------------------------------------ Experiment
@kopf.daemon(api.GROUP, api.VERSION, api.EXPERIMENT.plural, **DAEMON_OPTS)
async def experiment_loop(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo,
                          **_: Any) -> None:
    await op.run_daemon(memo.ctx, api.EXPERIMENT.kind, body, stopped)


@kopf.on.event(api.GROUP, api.VERSION, api.EXPERIMENT.plural)
def experiment_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    op.on_event(memo.ctx, api.EXPERIMENT.kind, body)


@kopf.on.delete(api.GROUP, api.VERSION, api.EXPERIMENT.plural)
async def experiment_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await op.on_delete(memo.ctx, api.EXPERIMENT.kind, body)


# ------------------------------------------------------------- ModelDeployment
@kopf.daemon(api.GROUP, api.VERSION, api.MODEL_DEPLOYMENT.plural, **DAEMON_OPTS)
async def deployment_loop(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo,
                          **_: Any) -> None:
    await op.run_daemon(memo.ctx, api.MODEL_DEPLOYMENT.kind, body, stopped)


@kopf.on.event(api.GROUP, api.VERSION, api.MODEL_DEPLOYMENT.plural)
def deployment_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    op.on_event(memo.ctx, api.MODEL_DEPLOYMENT.kind, body)


@kopf.on.delete(api.GROUP, api.VERSION, api.MODEL_DEPLOYMENT.plural)
async def deployment_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await op.on_delete(memo.ctx, api.MODEL_DEPLOYMENT.kind, body)


# -------------------------------------------------------------- SpecRepository
@kopf.daemon(api.GROUP, api.VERSION, api.SPEC_REPOSITORY.plural, **DAEMON_OPTS)
async def specrepo_loop(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo,
                        **_: Any) -> None:
    await op.run_daemon(memo.ctx, api.SPEC_REPOSITORY.kind, body, stopped)


@kopf.on.event(api.GROUP, api.VERSION, api.SPEC_REPOSITORY.plural)
def specrepo_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    op.on_event(memo.ctx, api.SPEC_REPOSITORY.kind, body)


@kopf.on.delete(api.GROUP, api.VERSION, api.SPEC_REPOSITORY.plural)
async def specrepo_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await op.on_delete(memo.ctx, api.SPEC_REPOSITORY.kind, body)
