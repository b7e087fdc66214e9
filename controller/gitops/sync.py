"""What a SpecRepository sync should do, as pure functions.

Given the documents of one commit and what the cluster holds, decide the objects to
apply (with the labels and annotations that tie them to their source), which of them
drifted from git, which managed objects left git (the prune set), and the next status.
The reconciler only reads, calls these and writes.

Ownership is by labels (``app.kubernetes.io/managed-by: trellis`` plus the
SpecRepository's name and namespace) and by ``status.inventory``; an object is pruned
only while its live labels still say this SpecRepository owns it, so an object another
repository (or a person) took over is never deleted by mistake.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller import api, conditions
from controller.specfiles import Document

Key = tuple[str, str, str]  # kind, namespace, name
MAX_ERRORS = 50
FIRST_RETRY_S = 5.0
MAX_RETRY_S = 300.0


@dataclass(frozen=True)
class Source:
    """Where objects of one sync come from."""

    namespace: str  # the SpecRepository's
    name: str
    url: str  # as it may be shown (no credentials)
    commit: str
    checkout: str | None = None  # export of the commit, for Experiments
    flow_revisions: Mapping[str, str] = field(default_factory=dict)  # flow file -> digest
    secret: str | None = None  # the SpecRepository's spec.secretRef name (git credentials)


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(obj.get("kind")), str(meta.get("namespace")), str(meta.get("name")))


def owner_labels(namespace: str, name: str) -> dict[str, str]:
    return {api.LABEL_MANAGED_BY: api.MANAGED_BY, api.LABEL_SPECREPO: name,
            api.LABEL_SPECREPO_NS: namespace}


def owned_by(obj: Mapping[str, Any], namespace: str, name: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in owner_labels(namespace, name).items())


def desired_object(doc: Document, source: Source) -> dict[str, Any]:
    """The object to apply for one document: its spec, our labels and annotations."""
    obj = copy.deepcopy(doc.obj)
    meta = obj.get("metadata") or {}
    annotations = {**(meta.get("annotations") or {}),
                   api.ANN_SOURCE_REPO: f"{source.namespace}/{source.name}",
                   api.ANN_SOURCE_URL: source.url,
                   api.ANN_SOURCE_PATH: doc.path.as_posix(),
                   api.ANN_SOURCE_COMMIT: source.commit}
    if obj.get("kind") == api.EXPERIMENT.kind:
        if source.checkout:
            annotations[api.ANN_SOURCE_CHECKOUT] = source.checkout
        # Always there, empty without credentials: a secretRef removed from the
        # SpecRepository changes the annotation, so the Experiment is rewritten and its
        # next Job stops mounting a Secret that may be gone.
        annotations[api.ANN_SOURCE_SECRET] = (f"{source.namespace}/{source.secret}"
                                              if source.secret else "")
        flow_file = ((obj.get("spec") or {}).get("flow") or {}).get("file")
        if flow_file in source.flow_revisions:
            annotations[api.ANN_FLOW_REVISION] = source.flow_revisions[flow_file]
    obj["metadata"] = {
        "name": meta["name"],
        "namespace": meta.get("namespace") or source.namespace,
        "labels": {**(meta.get("labels") or {}),
                   **owner_labels(source.namespace, source.name)},
        "annotations": annotations,
    }
    obj.pop("status", None)
    return obj


def desired_objects(docs: Iterable[Document], source: Source) -> list[dict[str, Any]]:
    return sorted((desired_object(d, source) for d in docs), key=key_of)


def inventory(objs: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    return [{"kind": k, "namespace": ns, "name": n} for k, ns, n in sorted(map(key_of, objs))]


def inventory_keys(entries: Iterable[Mapping[str, Any]] | None) -> set[Key]:
    return {(str(e.get("kind")), str(e.get("namespace")), str(e.get("name")))
            for e in entries or []}


def scopes(desired: Iterable[Mapping[str, Any]],
           previous: Iterable[Mapping[str, Any]] | None) -> set[tuple[str, str]]:
    """(kind, namespace) pairs to look at: where objects are wanted or were before."""
    keys = {key_of(o) for o in desired} | inventory_keys(previous)
    return {(kind, ns) for kind, ns, _ in keys}


def is_subset(want: Any, have: Any) -> bool:
    """Whether every field of ``want`` has the same value in ``have`` (lists exactly).

    The live object carries defaults and fields of other managers; only what git says
    matters. A field set by hand to another value, or removed, breaks the subset.
    """
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and is_subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return (isinstance(have, list) and len(want) == len(have)
                and all(is_subset(w, h) for w, h in zip(want, have, strict=True)))
    if isinstance(want, bool) or isinstance(have, bool):
        return want is have
    if isinstance(want, int | float) and isinstance(have, int | float):
        return float(want) == float(have)
    return bool(want == have)


@dataclass(frozen=True)
class Plan:
    """One sync's writes: objects to apply, keys to delete."""

    apply: list[dict[str, Any]]
    prune: list[Key]


# Where the content came from, not content: a new commit alone does not rewrite an object.
PROVENANCE = (api.ANN_SOURCE_COMMIT, api.ANN_SOURCE_CHECKOUT)


def drifted(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """True when applying ``desired`` would change (or create) the live object.

    The commit and checkout annotations are left out: an object keeps the commit its
    current content came from until its content (spec, labels, path, flow code
    revision) changes, so a commit touching one file of 500 writes one object.
    """
    if live is None:
        return True
    meta = desired["metadata"]
    annotations = {k: v for k, v in meta["annotations"].items() if k not in PROVENANCE}
    want = {"metadata": {"labels": meta["labels"], "annotations": annotations},
            **{k: v for k, v in desired.items() if k not in ("metadata", "apiVersion", "kind")}}
    return not is_subset(want, live)


def kept_checkouts(desired: list[dict[str, Any]], plan: Plan,
                   live: Mapping[Key, Mapping[str, Any]]) -> list[tuple[Key, str, str]]:
    """(key, commit, checkout path) of Experiments left as they are, whose checkout
    must still exist (a restarted operator may have lost its cache)."""
    applied = {key_of(o) for o in plan.apply}
    out = []
    for obj in desired:
        key = key_of(obj)
        if key[0] != api.EXPERIMENT.kind or key in applied or key not in live:
            continue
        ann = (live[key].get("metadata") or {}).get("annotations") or {}
        if ann.get(api.ANN_SOURCE_COMMIT) and ann.get(api.ANN_SOURCE_CHECKOUT):
            out.append((key, ann[api.ANN_SOURCE_COMMIT], ann[api.ANN_SOURCE_CHECKOUT]))
    return out


def commits_in_use(desired: list[dict[str, Any]], plan: Plan,
                   live: Mapping[Key, Mapping[str, Any]]) -> set[str]:
    """Commits whose checkouts the managed Experiments point at after ``plan``."""
    applied = {key_of(o) for o in plan.apply}
    used = set()
    for obj in desired:
        source = obj if key_of(obj) in applied else live.get(key_of(obj)) or obj
        commit = ((source.get("metadata") or {}).get("annotations") or {}).get(
            api.ANN_SOURCE_COMMIT)
        if commit:
            used.add(commit)
    return used


def plan_sync(desired: list[dict[str, Any]], live: Mapping[Key, Mapping[str, Any]],
              source_ns: str, source_name: str, prune: bool) -> Plan:
    """Apply what drifted or is missing; prune owned objects that left git.

    ``live`` holds the objects found in the scopes (any owner).
    """
    to_apply = [o for o in desired if drifted(o, live.get(key_of(o)))]
    wanted = {key_of(o) for o in desired}
    gone = sorted(k for k, obj in live.items()
                  if k not in wanted and owned_by(obj, source_ns, source_name))
    return Plan(to_apply, gone if prune else [])


def retry_delay(failures: int, interval: float) -> float:
    """Backoff after ``failures`` failed syncs in a row: from min(interval, 5s), doubling,
    up to max(interval, 5m); a short outage is noticed fast, a long one costs little."""
    first = min(interval, FIRST_RETRY_S)
    return min(first * 2 ** max(failures - 1, 0), max(interval, MAX_RETRY_S))


# ----------------------------------------------------------------------------- status
def _base(prev: Mapping[str, Any], generation: int) -> dict[str, Any]:
    status = copy.deepcopy(dict(prev))
    status["observedGeneration"] = generation
    return status


def _ready(status: dict[str, Any], ok: bool, reason: str, message: str, gen: int,
           stalled: str | None = None) -> dict[str, Any]:
    conds = conditions.set_condition(status.get("conditions"), api.Cond.READY, ok, reason,
                                     message, gen)
    if stalled is not None:
        conds = conditions.set_condition(conds, api.Cond.STALLED, True, reason, stalled, gen)
    else:
        conds = conditions.remove_condition(conds, api.Cond.STALLED)
    status["conditions"] = conds
    return status


def short(sha: str | None) -> str:
    return (sha or "")[:12] or "nothing"


def status_synced(prev: Mapping[str, Any], gen: int, commit: str, objs: list[dict[str, Any]],
                  ref: str, now: str, changed: bool) -> dict[str, Any]:
    """Ready=True Synced; ``lastSyncedAt`` moves only when this sync wrote something."""
    status = _base(prev, gen)
    status.update(lastSyncedCommit=commit, lastAttemptedCommit=commit, objects=len(objs),
                  inventory=inventory(objs), errors=[])
    if changed or not status.get("lastSyncedAt"):
        status["lastSyncedAt"] = now
    return _ready(status, True, api.Reason.SYNCED,
                  f"synced {ref} at {short(commit)}: {len(objs)} object(s)", gen)


def status_fetch_failed(prev: Mapping[str, Any], gen: int, url: str,
                        error: str) -> dict[str, Any]:
    """Ready=False FetchFailed; the objects and the last synced commit stay as they are."""
    status = _base(prev, gen)
    message = f"fetching {url} failed: {error}"
    status["errors"] = [message]
    return _ready(status, False, api.Reason.FETCH_FAILED, message, gen)


def status_invalid(prev: Mapping[str, Any], gen: int, commit: str,
                   errors: list[str]) -> dict[str, Any]:
    """Ready=False and Stalled=True ValidationFailed: nothing of ``commit`` was applied."""
    status = _base(prev, gen)
    status["lastAttemptedCommit"] = commit
    status["errors"] = errors[:MAX_ERRORS]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    first = f"{errors[0]}{more}" if errors else "invalid"
    kept = short(status.get("lastSyncedCommit"))
    return _ready(status, False, api.Reason.VALIDATION_FAILED,
                  f"commit {short(commit)} is invalid, nothing applied (still at {kept}): "
                  f"{first}", gen, stalled=f"commit {short(commit)}: {first}")


def status_apply_failed(prev: Mapping[str, Any], gen: int, commit: str, errors: list[str],
                        total: int) -> dict[str, Any]:
    """Ready=False ApplyFailed (retried: the API server may accept it later)."""
    status = _base(prev, gen)
    status["lastAttemptedCommit"] = commit
    status["errors"] = errors[:MAX_ERRORS]
    return _ready(status, False, api.Reason.APPLY_FAILED,
                  f"commit {short(commit)}: {len(errors)} of {total} write(s) failed: "
                  f"{errors[0] if errors else ''}", gen)


def status_suspended(prev: Mapping[str, Any], gen: int) -> dict[str, Any]:
    status = _base(prev, gen)
    return _ready(status, False, api.Reason.SUSPENDED,
                  f"suspended: no syncs (still at {short(status.get('lastSyncedCommit'))})", gen)


def status_unchanged(prev: Mapping[str, Any], gen: int) -> dict[str, Any]:
    return _base(prev, gen)
