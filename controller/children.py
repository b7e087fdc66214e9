"""What the operator owns, as its watches see it: an informer-style cache of children.

controller-runtime's ``Owns(&batchv1.Job{})`` in kopf's terms. One watch per child kind —
training Jobs, their Pods, SeldonDeployments — filtered on the API server by our
``app.kubernetes.io/managed-by`` label, feeds a kopf index (``@kopf.index``: memory,
filled before any reconcile loop starts), and a change to a child wakes its owner's
loop (``owner_of``). Reconcilers read children here instead of asking the API server
on every pass: an idle operator costs it nothing but the watch streams, and the
periodic resync stays as the level-triggered safety net.

Reads see our own writes at once: what a reconciler created or applied is noted until
the watch delivers it or something newer (client-go's mutation cache), for at most
``NOTE_TTL`` seconds. A miss goes to the API server: a child the watch cannot see
(a Job someone else created without our label, a kind whose CRD was installed after the
operator started) or no index at all (a reconciler driven outside kopf, in benchmarks).
``Seen.watched`` tells the caller whether a change will wake it or it must look again.

The index entries keep only what the reconcilers read (state, not specs, for Jobs and
Pods), so a thousand children stay small in memory.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from controller import api
from controller.kube import JOBS, PODS, SELDON_DEPLOYMENTS, ApiException, Kube, Resource
from controller.loop import older

# Kubernetes labels a Job's pods with its name (1.27+; ``job-name`` before).
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"
# The label selector every child watch sends to the API server.
OWNED_SELECTOR = f"{api.LABEL_MANAGED_BY}={api.MANAGED_BY}"
# kopf index names: the handlers in controller.handlers carry these names.
JOBS_INDEX = "owned_jobs"
PODS_INDEX = "owned_pods"
SELDON_INDEX = "owned_seldondeployments"
NOTE_TTL = 10.0  # seconds a write of ours is trusted over a cache that has not seen it
# kopf relists after an expired watch (410) without dropping what the new list lacks: a
# child deleted in that gap would stay in its index. An entry unchanged this long is
# confirmed by one GET: 2,000 idle children cost about half a request a second, and a
# missed deletion is found within the hour (controller-runtime's resync: 10 hours).
VERIFY_S = 3600.0
WATCHED = (JOBS, PODS, SELDON_DEPLOYMENTS)

Key = tuple[str, str]  # (namespace, name)
OWNER_KINDS = {api.EXPERIMENT.kind, api.MODEL_DEPLOYMENT.kind}


# ------------------------------------------------------------ index entries (pure)
def _meta(body: Mapping[str, Any], *extra: str) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    keys = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp", *extra)
    return {k: meta[k] for k in keys if meta.get(k) is not None}


def job_entry(body: Mapping[str, Any]) -> dict[Key, dict[str, Any]]:
    """A Job as the Experiment reconciler reads it: who it is, and its status."""
    meta = body["metadata"]
    return {(meta["namespace"], meta["name"]): {
        "metadata": _meta(body, "labels"), "status": dict(body.get("status") or {})}}


def pod_entry(body: Mapping[str, Any]) -> dict[Key, dict[str, Any]]:
    """A Job's Pod, keyed by its Job: enough for ``podstate`` to say why it is stuck."""
    meta = body["metadata"]
    status = body.get("status") or {}
    kept = {k: status[k] for k in ("phase", "conditions", "initContainerStatuses",
                                   "containerStatuses") if k in status}
    return {(meta["namespace"], meta["labels"][LABEL_JOB_NAME]): {
        "metadata": _meta(body), "status": kept}}


def seldon_entry(body: Mapping[str, Any]) -> dict[Key, dict[str, Any]]:
    """A SeldonDeployment whole but for server-managed metadata: the driver compares
    its spec, labels, annotations and owners with the rendered one."""
    meta = body["metadata"]
    return {(meta["namespace"], meta["name"]): {
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": _meta(body, "labels", "annotations", "ownerReferences"),
        "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}}


def owner_of(body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(kind, namespace, name) of the Trellis object a child belongs to: its controller
    owner reference, or — for a Job's Pod, owned by the Job — the Experiment label the
    Job's pod template carries."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") in OWNER_KINDS \
                and ref.get("apiVersion") == api.API_VERSION:
            return ref["kind"], meta.get("namespace", ""), ref["name"]
    experiment = (meta.get("labels") or {}).get(api.LABEL_EXPERIMENT)
    if experiment:
        return api.EXPERIMENT.kind, meta.get("namespace", ""), experiment
    return None


# -------------------------------------------------------------------- the cache
@dataclass(frozen=True)
class Seen:
    """A child as last seen (None: it does not exist), and whether its changes wake
    the owner (it came from a watch) or the owner has to look again by itself."""

    obj: dict[str, Any] | None
    watched: bool


class Children:
    """Reads of owned objects: the watches' indices first, the API server on a miss."""

    def __init__(self, kube: Kube, indices: Mapping[str, Any] | None = None,
                 unserved: frozenset[str] = frozenset()) -> None:
        """``unserved``: plurals the API server did not serve when the operator started
        (``unserved_kinds``). kopf may never watch them, so their empty indices say
        nothing and they are read by GET."""
        self.kube = kube
        indices = indices or {}
        self._index: dict[str, Mapping[Any, Any] | None] = {
            res.plural: None if res.plural in unserved else indices.get(name)
            for res, name in (
                (JOBS, JOBS_INDEX), (PODS, PODS_INDEX), (SELDON_DEPLOYMENTS, SELDON_INDEX))}
        self._notes: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}
        # (plural, ns, name) -> (resourceVersion, when the watch or a GET last showed it)
        self._confirmed: dict[tuple[str, str, str], tuple[str, float]] = {}

    def watching(self, res: Resource) -> bool:
        """Whether a watch feeds this kind (its changes wake their owners)."""
        return self._index.get(res.plural) is not None

    async def get(self, res: Resource, namespace: str, name: str, *,
                  unseen_is_absent: bool = False) -> Seen:
        """The child from the watch's index, our own write the watch has not delivered
        yet, or the API server. A child the watch has not seen is asked of the API server
        unless ``unseen_is_absent``: for a caller whose answer to "absent" is an
        idempotent apply (a wrong absence costs one no-op write) that read would be a GET
        per pass for every owner still waiting for its first child."""
        cached = self._cached(res, namespace, name)
        note = self._note(res, namespace, name)
        if note is not None and (cached is None or older(cached, note)):
            return Seen(note, False)  # ours, not delivered yet: the delivery wakes us
        if cached is not None:
            return await self._verified(res, namespace, name, cached)
        if unseen_is_absent and self.watching(res):
            return Seen(None, True)  # its creation would wake the owner
        return Seen(await self.kube.get(res, namespace, name), False)

    async def _verified(self, res: Resource, namespace: str, name: str,
                        cached: dict[str, Any]) -> Seen:
        """``cached``, or what the API server says when the entry has not moved for
        ``VERIFY_S`` (it may be a deleted child a relist left behind)."""
        key, now = (res.plural, namespace, name), time.monotonic()
        version = (cached.get("metadata") or {}).get("resourceVersion", "")
        seen = self._confirmed.get(key)
        if seen is None or seen[0] != version:
            self._confirmed[key] = (version, now)
            return Seen(cached, True)
        if now - seen[1] < VERIFY_S:
            return Seen(cached, True)
        live = await self.kube.get(res, namespace, name)
        if live is None:
            del self._confirmed[key]
            return Seen(None, False)
        self._confirmed[key] = ((live.get("metadata") or {}).get("resourceVersion", ""), now)
        return Seen(live, True)

    async def pods_of_job(self, namespace: str, job: Seen) -> list[dict[str, Any]]:
        """The Pods of a Job: from the index when the Job came from a watch (its Pods
        carry the same label), else listed."""
        name = (job.obj or {}).get("metadata", {}).get("name")
        if not name:
            return []
        index = self._index[PODS.plural]
        if index is not None and job.watched:
            return [dict(p) for p in index.get((namespace, name), ())]
        return await self.kube.list(PODS, namespace, f"{LABEL_JOB_NAME}={name}")

    def note(self, res: Resource, obj: dict[str, Any]) -> None:
        """Remember an object we just wrote, until its watch delivers it: only for a
        watched kind, and only when it carries the label the watch selects by."""
        meta = obj.get("metadata") or {}
        if self._index.get(res.plural) is None or \
                (meta.get("labels") or {}).get(api.LABEL_MANAGED_BY) != api.MANAGED_BY:
            return
        self._notes[(res.plural, meta.get("namespace", ""), meta["name"])] = (
            time.monotonic(), obj)

    def delivered(self, plural: str, body: Mapping[str, Any], deleted: bool) -> None:
        """A watch event: forget a note it makes stale (called after kopf indexed it)."""
        meta = body.get("metadata") or {}
        key = (plural, meta.get("namespace", ""), meta.get("name", ""))
        noted = self._notes.get(key)
        if noted is not None and (deleted or not older(dict(body), noted[1])):
            del self._notes[key]

    def _cached(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        index = self._index.get(res.plural)
        if index is None:
            return None
        for entry in index.get((namespace, name), ()):
            return dict(entry)
        return None

    def _note(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        key = (res.plural, namespace, name)
        noted = self._notes.get(key)
        if noted is None:
            return None
        if time.monotonic() - noted[0] > NOTE_TTL:
            del self._notes[key]
            return None
        return noted[1]


async def unserved_kinds(kube: Kube) -> frozenset[str]:
    """The child kinds the API server does not serve (discovery, readable by every
    authenticated user): the SeldonDeployment CRD before Seldon Core is installed."""
    missing = set()
    for res in WATCHED:
        group_version = res.path().rsplit("/", 1)[0]
        try:
            found = await kube.request("GET", group_version)
        except ApiException as exc:
            if exc.status != 404:
                continue  # discovery refused: taken as served, as kopf's watch will say
            found = {}
        if res.plural not in {r.get("name") for r in found.get("resources") or []}:
            missing.add(res.plural)
    return frozenset(missing)


async def require_watch_access(kube: Kube, namespaces: list[str] | None) -> None:
    """Refuse to start without ``list`` and ``watch`` on every child kind.

    kopf holds every handler until each indexed kind is listed, and a forbidden list is
    never retried: the operator would sit idle forever with its liveness probe green.
    A SelfSubjectAccessReview (allowed to every authenticated user) asks first, so a role
    that lacks them stops the operator at start-up with the rule to add."""
    missing = []
    for res in WATCHED:
        for ns in namespaces or [""]:
            for verb in ("list", "watch"):
                review = await kube.request(
                    "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {
                        "apiVersion": "authorization.k8s.io/v1",
                        "kind": "SelfSubjectAccessReview",
                        "spec": {"resourceAttributes": {
                            "group": res.group, "resource": res.plural, "verb": verb,
                            "namespace": ns}}})
                if not (review.get("status") or {}).get("allowed"):
                    group = f".{res.group}" if res.group else ""
                    missing.append(f"{verb} {res.plural}{group}"
                                   + (f" in namespace {ns}" if ns else " cluster-wide"))
    if missing:
        raise kopf.PermanentError(
            "the operator's role lacks what its watches of owned objects need: "
            + "; ".join(missing) + " (manifests/rbac.yaml grants them)")
