"""SpecRepository reconciler: git → validate the whole commit → server-side apply → prune.

Sub-steps, each owning the conditions it sets (Flux's shape):

1. ``suspend``  – Ready=False Suspended; nothing else happens while it is true.
2. fetch        – Ready=False FetchFailed on error (objects untouched; retried with
                  exponential backoff from min(interval, 5s) up to max(interval, 5m)).
3. validate     – Ready=False + Stalled=True ValidationFailed when any spec of the
                  commit is invalid: nothing of it is applied, the last good commit's
                  objects stay; the next commit is tried when it arrives.
4. apply/prune  – Ready=False ApplyFailed when the API server refuses a write
                  (retried); else Ready=True Synced and Stalled removed.

A sync runs when ``spec.interval`` elapsed, the spec changed, the annotation
``mlops.trellis.dev/reconcile-requested-at`` holds a new value (recorded in
``status.lastHandledReconcileAt``) or the webhook asked. Between syncs, watch events
(our own status writes included) cost nothing: no fetch, no write. A sync of an
unchanged commit compares the live objects with git and applies only what drifted,
so a quiet repository makes no writes at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller import api, conditions, failures, schema
from controller.canary import parse_duration
from controller.context import Context
from controller.gitops import applier, commits, git_source, sync
from controller.gitops.webhook import WebhookServer
from controller.kube import EXPERIMENTS, SPEC_REPOSITORIES
from controller.loop import Event, Outcome
from controller.metrics import Count
from controller.specfiles import Document

log = logging.getLogger("trellis.specrepos")


@dataclass
class _Memory:
    """Per-object scheduling state; losing it (a restart) only means an early sync."""

    next_sync: float = 0.0
    failures: int = 0
    requested: bool = False
    valid: tuple[str, str, list[Document], dict[str, str]] | None = None  # known good:
    # (sha, path, documents, flow revisions)


class SpecRepositoryReconciler:
    resource = SPEC_REPOSITORIES

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._memory: dict[tuple[str, str], _Memory] = {}
        self._results: dict[tuple[str, str], list[str]] = {}  # this pass' sync results
        self.webhook: WebhookServer | None = None

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Serve the push webhook (port 0: a free one, negative: none); the bound port goes
        to ``ctx.extras["webhook_port"]``. A taken port is logged, not fatal."""
        port = self.ctx.settings.webhook_port
        self.ctx.extras["webhook_port"] = None
        if port < 0:
            return
        server = WebhookServer(self.ctx.kube, self.request_sync, port=port)
        try:
            self.ctx.extras["webhook_port"] = await server.start()
        except OSError as exc:
            log.error("webhook endpoint disabled: cannot listen on port %d (%s)", port, exc)
            return
        self.webhook = server

    async def close(self) -> None:
        if self.webhook is not None:
            await self.webhook.stop()

    def request_sync(self, namespace: str, name: str) -> None:
        self._mem(namespace, name).requested = True
        self.ctx.wakeups.wake(api.SPEC_REPOSITORY.kind, namespace, name)

    def _result(self, namespace: str, name: str, result: str) -> None:
        """A sync result to count, once the status reporting it is written (the loop
        applies ``Outcome.counts``): a failed write repeats the sync, not the count."""
        self._results.setdefault((namespace, name), []).append(result)

    def _mem(self, namespace: str, name: str) -> _Memory:
        return self._memory.setdefault((namespace, name), _Memory())

    async def cleanup(self, obj: dict[str, Any]) -> None:
        """Forget the fetched repository; the objects it applied stay (deleting a
        SpecRepository must not stop what it deployed)."""
        meta = obj["metadata"]
        self._memory.pop((meta["namespace"], meta["name"]), None)
        await asyncio.to_thread(git_source.remove_mirror, self.ctx.settings.repo_cache_dir,
                                meta["namespace"], meta["name"])

    # ------------------------------------------------------------- reconcile
    async def reconcile(self, obj: dict[str, Any]) -> Outcome:
        meta = obj["metadata"]
        ns, name, gen = meta["namespace"], meta["name"], meta["generation"]
        spec = schema.with_defaults(obj)["spec"]
        prev = obj.get("status") or {}
        mem = self._mem(ns, name)
        requested_at = (meta.get("annotations") or {}).get(api.ANN_RECONCILE_REQUESTED)
        forced = (mem.requested or prev.get("observedGeneration") != gen
                  or failures.left_by_loop(prev)  # a failed pass: try again now, not later
                  or (requested_at is not None and requested_at != prev.get(
                      "lastHandledReconcileAt")))
        if spec["suspend"]:
            mem.requested = False
            return Outcome(_handled(sync.status_suspended(prev, gen), requested_at))
        now = time.monotonic()
        if not forced and now < mem.next_sync:
            return Outcome(sync.status_unchanged(prev, gen), requeue_after=mem.next_sync - now)
        mem.requested = False
        self._results.pop((ns, name), None)  # left by a pass that raised: never written
        interval = max(parse_duration(spec["interval"]), 1.0)
        status, ok, events = await self._sync(obj, spec, prev, gen, mem)
        mem.failures = 0 if ok else mem.failures + 1
        delay = interval if ok else sync.retry_delay(mem.failures, interval)
        mem.next_sync = time.monotonic() + delay
        return Outcome(_handled(status, requested_at), events, requeue_after=delay,
                       counts=[Count("syncs", (result,)) for result in self._results.pop(
                           (ns, name), [])])

    async def _sync(self, obj: dict[str, Any], spec: dict[str, Any], prev: dict[str, Any],
                    gen: int, mem: _Memory) -> tuple[dict[str, Any], bool, list[Event]]:
        """Fetch, then validate, then apply: (next status, whether it succeeded or now
        waits for a new commit, Events for what moved)."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        url = git_source.display_url(spec["url"])
        try:
            creds = await self._credentials(ns, spec)
            sha = await git_source.fetch(self.ctx.settings.repo_cache_dir, ns, name,
                                         spec["url"], spec["ref"], creds)
        except git_source.FetchError as exc:
            self._result(ns, name, "fetch_failed")
            log.warning("fetch of SpecRepository %s/%s failed: %s", ns, name, exc)
            return sync.status_fetch_failed(prev, gen, url, str(exc)), False, []

        docs, revisions, errors = await self._validated(ns, name, sha, spec["path"], mem)
        if errors:
            events = []
            if prev.get("lastAttemptedCommit") != sha:
                self._result(ns, name, "invalid")
                log.warning("commit %s of %s/%s is invalid: %s", sha[:12], ns, name, errors[0])
                events.append(Event(api.Reason.VALIDATION_FAILED,
                                    f"commit {sync.short(sha)} is invalid, nothing applied: "
                                    f"{errors[0]}", "Warning"))
            return sync.status_invalid(prev, gen, sha, errors), True, events
        checkout = None
        if any(d.kind == api.EXPERIMENT.kind for d in docs):
            checkout = str(await asyncio.to_thread(git_source.checkout_for, self.ctx.settings,
                                                   ns, name, sha))
        source = sync.Source(ns, name, url, sha, checkout, revisions,
                             secret=(spec.get("secretRef") or {}).get("name"))
        return await self._apply(docs, source, spec, prev, gen)

    async def _apply(self, docs: list[Document], source: sync.Source, spec: dict[str, Any],
                     prev: dict[str, Any], gen: int
                     ) -> tuple[dict[str, Any], bool, list[Event]]:
        """Write what drifted and prune what left git, all or nothing as far as the API
        server can tell beforehand (a dry run of every write comes first)."""
        ns, name, sha = source.namespace, source.name, source.commit
        desired = sync.desired_objects(docs, source)
        live = await applier.read_scopes(self.ctx.kube,
                                         sync.scopes(desired, prev.get("inventory")))
        plan = sync.plan_sync(desired, live, ns, name, prune=spec["prune"])
        lost = await asyncio.to_thread(self._restore_checkouts, ns, name,
                                       sync.kept_checkouts(desired, plan, live))
        if lost:  # point those Experiments at this commit's checkout instead
            plan = sync.Plan([*plan.apply, *(o for o in desired if sync.key_of(o) in lost)],
                             plan.prune)
        failed = await applier.apply_objects(self.ctx.kube, plan.apply, dry_run=True)
        if not failed:
            failed = await applier.apply_objects(self.ctx.kube, plan.apply)
        if not failed:  # prune only once everything wanted is in place
            failed = await applier.delete_objects(self.ctx.kube, plan.prune)
        if failed:
            self._result(ns, name, "apply_failed")
            log.warning("applying commit %s of %s/%s failed: %s", sha[:12], ns, name, failed[0])
            return sync.status_apply_failed(prev, gen, sha, failed,
                                            len(plan.apply) + len(plan.prune)), False, []
        events = []
        if plan.apply or plan.prune or sha != prev.get("lastSyncedCommit"):
            self._result(ns, name, "synced")
            log.info("SpecRepository %s/%s synced %s: %d applied, %d pruned", ns, name,
                     sha[:12], len(plan.apply), len(plan.prune))
            events.append(Event(api.Reason.SYNCED,
                                f"commit {sync.short(sha)}: {len(plan.apply)} applied, "
                                f"{len(plan.prune)} pruned, {len(desired)} managed"))
            await asyncio.to_thread(git_source.gc_checkouts, self.ctx.settings, ns, name,
                                    sync.commits_in_use(desired, plan, live) | {sha})
        status = sync.status_synced(prev, gen, sha, desired,
                                    git_source.describe_ref(spec["ref"]), conditions.now_iso(),
                                    changed=bool(events))
        return status, True, events

    def _restore_checkouts(self, ns: str, name: str,
                           kept: list[tuple[sync.Key, str, str]]) -> set[sync.Key]:
        """Re-export checkouts live Experiments point at; the keys that cannot be."""
        lost = set()
        for key, commit, path in kept:
            if Path(path).is_dir():
                continue
            try:
                restored = git_source.checkout_for(self.ctx.settings, ns, name, commit)
            except git_source.FetchError:
                restored = None
            if restored is None or str(restored) != path:
                lost.add(key)
        return lost

    async def _credentials(self, ns: str, spec: dict[str, Any]) -> git_source.Credentials:
        ref = (spec.get("secretRef") or {}).get("name")
        if not ref:
            return git_source.Credentials()
        data = await self.ctx.kube.secret_data(ns, ref)
        if data is None:
            raise git_source.FetchError(f"Secret {ns}/{ref} (spec.secretRef) not found")
        return git_source.Credentials.from_secret(data)

    async def _validated(self, ns: str, name: str, sha: str, path: str, mem: _Memory
                         ) -> tuple[list[Document], dict[str, str], list[str]]:
        """The commit's documents, flow revisions and problems; a good commit is
        checked once."""
        if mem.valid is not None and mem.valid[:2] == (sha, path):
            return mem.valid[2], mem.valid[3], []
        mirror = git_source.mirror_dir(self.ctx.settings.repo_cache_dir, ns, name)
        docs, file_errors = await asyncio.to_thread(commits.load_commit, mirror, sha, path, ns)
        live: dict[tuple[str, str], dict[str, Any]] = {}
        for other_ns in sorted(commits.referenced_namespaces(docs)):
            for exp in await self.ctx.kube.list(EXPERIMENTS, other_ns):
                # Ours and gone from this commit means pruned: it does not count.
                if not sync.owned_by(exp, ns, name):
                    live[(other_ns, exp["metadata"]["name"])] = exp
        errors = await asyncio.to_thread(commits.validate_commit, mirror, sha, docs,
                                         file_errors, ns, live)
        if errors:
            return docs, {}, errors
        revisions = await asyncio.to_thread(commits.flow_revisions, mirror, sha, docs)
        mem.valid = (sha, path, docs, revisions)
        return docs, revisions, []


def _handled(status: dict[str, Any], requested_at: str | None) -> dict[str, Any]:
    if requested_at is not None:
        status["lastHandledReconcileAt"] = requested_at
    return status
