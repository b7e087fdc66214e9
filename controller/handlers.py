"""kopf registrations, and nothing else: each handler is a shim into ``controller.operator``.

Per kind: a daemon runs the level-triggered reconcile loop for each object; an event
handler wakes that loop (and the loops of objects that depend on it); a delete handler
releases what the object owned outside the API server (local processes, caches).
Per kind of child we own (training Jobs, their Pods, SeldonDeployments): an index keeps
it in memory for the reconcilers (``controller.children``) and an event handler wakes
its owner's loop when it changes; kopf fills the indices before any daemon starts.
An index of the ModelDeployments' retrain requests (``controller.retrain_requests``) lets
the Experiment reconciler adopt them from memory; the deployment's event handler wakes
the Experiment it asks. Two more (``controller.references``) keep the Experiments a
deployment reads and, per Experiment, the deployments serving it: an Experiment's event
wakes only those, and their passes read it from memory. Handlers that touch the loops'
asyncio state are ``async``: kopf runs a plain ``def`` in a worker thread, and asyncio
objects may not be used from another thread.
"""

from __future__ import annotations

from typing import Any

import kopf

from controller import api, children, references
from controller import operator as op
from controller import retrain_requests as requests
from controller.kube import JOBS, PODS, SELDON_DEPLOYMENTS

DAEMON_OPTS: dict[str, Any] = {"cancellation_timeout": 10.0, "initial_delay": 0}
OWNED = {api.LABEL_MANAGED_BY: api.MANAGED_BY}
JOB_PODS = {**OWNED, children.LABEL_JOB_NAME: kopf.PRESENT}
SELDON = (SELDON_DEPLOYMENTS.group, SELDON_DEPLOYMENTS.version, SELDON_DEPLOYMENTS.plural)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, owned_jobs: kopf.Index,
                  owned_pods: kopf.Index, owned_seldondeployments: kopf.Index,
                  retrain_requests: kopf.Index, experiments: kopf.Index,
                  deployments_by_experiment: kopf.Index, **_: Any) -> None:
    op.configure_kopf(settings)
    memo.ctx = await op.build_context(indices={
        children.JOBS_INDEX: owned_jobs, children.PODS_INDEX: owned_pods,
        children.SELDON_INDEX: owned_seldondeployments,
        requests.INDEX: retrain_requests,
        references.EXPERIMENTS_INDEX: experiments,
        references.DEPLOYMENTS_INDEX: deployments_by_experiment},
        namespaces=memo.get("namespaces"))


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
async def experiment_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    op.on_event(memo.ctx, api.EXPERIMENT.kind, body)


@kopf.on.delete(api.GROUP, api.VERSION, api.EXPERIMENT.plural)
async def experiment_deleted(body: kopf.Body, memo: kopf.Memo, retry: int,
                             **_: Any) -> None:
    await op.on_delete(memo.ctx, api.EXPERIMENT.kind, body, retry)


@kopf.index(api.GROUP, api.VERSION, api.EXPERIMENT.plural, id=references.EXPERIMENTS_INDEX)
async def experiment_references(body: kopf.Body, **_: Any) -> dict:
    return references.experiment_entry(body)


# ------------------------------------------------------------- ModelDeployment
@kopf.daemon(api.GROUP, api.VERSION, api.MODEL_DEPLOYMENT.plural, **DAEMON_OPTS)
async def deployment_loop(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo,
                          **_: Any) -> None:
    await op.run_daemon(memo.ctx, api.MODEL_DEPLOYMENT.kind, body, stopped)


@kopf.on.event(api.GROUP, api.VERSION, api.MODEL_DEPLOYMENT.plural)
async def deployment_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    op.on_event(memo.ctx, api.MODEL_DEPLOYMENT.kind, body)


@kopf.on.delete(api.GROUP, api.VERSION, api.MODEL_DEPLOYMENT.plural)
async def deployment_deleted(body: kopf.Body, memo: kopf.Memo, retry: int,
                             **_: Any) -> None:
    await op.on_delete(memo.ctx, api.MODEL_DEPLOYMENT.kind, body, retry)


@kopf.index(api.GROUP, api.VERSION, api.MODEL_DEPLOYMENT.plural, id=requests.INDEX)
async def deployment_retrain_requests(body: kopf.Body, **_: Any) -> dict:
    return requests.index_entry(body)


@kopf.index(api.GROUP, api.VERSION, api.MODEL_DEPLOYMENT.plural,
            id=references.DEPLOYMENTS_INDEX)
async def deployment_references(body: kopf.Body, **_: Any) -> dict:
    return references.deployment_entry(body)


# -------------------------------------------------------------- SpecRepository
@kopf.daemon(api.GROUP, api.VERSION, api.SPEC_REPOSITORY.plural, **DAEMON_OPTS)
async def specrepo_loop(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo,
                        **_: Any) -> None:
    await op.run_daemon(memo.ctx, api.SPEC_REPOSITORY.kind, body, stopped)


@kopf.on.event(api.GROUP, api.VERSION, api.SPEC_REPOSITORY.plural)
async def specrepo_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    op.on_event(memo.ctx, api.SPEC_REPOSITORY.kind, body)


@kopf.on.delete(api.GROUP, api.VERSION, api.SPEC_REPOSITORY.plural)
async def specrepo_deleted(body: kopf.Body, memo: kopf.Memo, retry: int,
                             **_: Any) -> None:
    await op.on_delete(memo.ctx, api.SPEC_REPOSITORY.kind, body, retry)


# ------------------------------------------------------- children we own, watched
@kopf.index(JOBS.group, JOBS.version, JOBS.plural, labels=OWNED)
async def owned_jobs(body: kopf.Body, **_: Any) -> dict:
    return children.job_entry(body)


@kopf.on.event(JOBS.group, JOBS.version, JOBS.plural, labels=OWNED)
async def job_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    op.on_child_event(memo.ctx, JOBS.plural, body, type)


@kopf.index(PODS.group, PODS.version, PODS.plural, labels=JOB_PODS)
async def owned_pods(body: kopf.Body, **_: Any) -> dict:
    return children.pod_entry(body)


@kopf.on.event(PODS.group, PODS.version, PODS.plural, labels=JOB_PODS)
async def pod_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    op.on_child_event(memo.ctx, PODS.plural, body, type)


@kopf.index(*SELDON, labels=OWNED)
async def owned_seldondeployments(body: kopf.Body, **_: Any) -> dict:
    return children.seldon_entry(body)


@kopf.on.event(*SELDON, labels=OWNED)
async def seldondeployment_event(body: kopf.Body, type: str | None, memo: kopf.Memo,
                                 **_: Any) -> None:
    op.on_child_event(memo.ctx, SELDON_DEPLOYMENTS.plural, body, type)
