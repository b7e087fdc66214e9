"""ModelDeployment reconciler: serve the target model version, canary each new one.

Thin by design: read the Experiment's registered models, measure the canary's window
when its interval is up, ask ``rollout.plan`` what happens next, make serving match
(local processes or a SeldonDeployment), and return the status. Drift monitoring is a
separate sub-step (``controller.drift_monitor``) that owns ``status.drift`` and the
DriftDetected / AccuracyDegraded conditions; when it fails (an unreadable reference),
the rollout's status is still written, with the failure on it (``Outcome.error``).
Metrics that cannot be read fail the pass before anything is decided: the canary holds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from controller import api, conditions
from controller.canary import Analysis, Policy, analyse, seconds_since, serving_failed, weights
from controller.context import Context
from controller.failures import MetricsUnavailable, StorageUnavailable
from controller.kube import MODEL_DEPLOYMENTS
from controller.loop import Event, Outcome
from controller.metrics import Count
from controller.request_logging import LogState, logging_conditions
from controller.rollout import Plan, canary_due, plan, select_target
from controller.serving.drivers import LocalDriver, SeldonDriver, ServingDriver, ServingState
from controller.serving.metrics_source import (
    Counters,
    LabelScheme,
    LocalScrape,
    MetricsSource,
    PrometheusQuery,
    window,
)
from controller.serving.seldon import Predictor

log = logging.getLogger("trellis.deployments")


class ModelDeploymentReconciler:
    resource = MODEL_DEPLOYMENTS

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.drivers: dict[str, ServingDriver] = {}
        self.sources: dict[str, MetricsSource] = {
            "local": LocalScrape(),
            "seldon": PrometheusQuery(ctx.settings.prometheus_url, LabelScheme(
                ctx.settings.prometheus_namespace_label,
                ctx.settings.prometheus_deployment_label)),
        }
        self.drift = None
        self.feed = None
        self.receiver = None
        self.receiver_runner = None

    def driver(self, backend: str) -> ServingDriver:
        if backend not in self.drivers:
            self.drivers[backend] = (LocalDriver(self.ctx) if backend == "local"
                                     else SeldonDriver(self.ctx))
        return self.drivers[backend]

    async def start(self) -> None:
        from controller.drift_feed import DriftFeed, replica_name
        from controller.drift_monitor import DriftMonitor

        self.drift = DriftMonitor(self.ctx)
        settings, replica = self.ctx.settings, replica_name()
        self.feed = DriftFeed(self.drift.store, settings.request_log_store_uri,
                              settings.request_log_dir, replica,
                              on_drop=self.ctx.metrics.record_log_drop)
        await self._start_receiver(replica)

    async def _start_receiver(self, replica: str) -> None:
        """Seldon's request logger (cluster mode) feeds the drift log through this: on
        every replica, standby included, into the shared store (``drift_feed``)."""
        from aiohttp import web

        from controller.serving.cloudevents import Receiver

        port = self.ctx.settings.request_logger_port
        if port < 0 or self.drift is None:
            return
        self.receiver = Receiver(self.drift.store, self.ctx.settings.request_log_store_uri,
                                 replica, on_drop=self.ctx.metrics.record_log_drop)
        runner = web.AppRunner(self.receiver.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "0.0.0.0", port).start()
        except OSError as exc:
            log.error("request-logger receiver disabled: cannot listen on port %d (%s)",
                      port, exc)
            await runner.cleanup()
            return
        self.receiver_runner = runner
        bound = runner.addresses[0][1] if runner.addresses else port
        self.ctx.extras["request_logger_port"] = bound

    def related(self, obj: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
        """The Experiment this deployment asks to retrain, while the episode that asked
        is open: the write that carries the request wakes it to adopt it."""
        if not retrain_pending(obj):
            return []
        return [(api.EXPERIMENT.kind, obj["metadata"]["namespace"],
                 obj["spec"]["model"]["experiment"])]

    async def reconcile(self, obj: dict[str, Any]) -> Outcome:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        gen = meta["generation"]
        status = dict(obj.get("status") or {})
        now = dt.datetime.now(dt.UTC)
        policy = Policy.from_spec(spec)
        backend = spec.get("backend", "local")
        status["observedGeneration"] = gen

        exp = await self.ctx.references.experiment(meta["namespace"],
                                                   spec["model"]["experiment"])
        if exp is None:
            return self._not_ready(status, gen, api.Reason.EXPERIMENT_NOT_FOUND,
                                   f"Experiment {spec['model']['experiment']!r} not found in "
                                   f"namespace {meta['namespace']}")
        models = (exp.get("status") or {}).get("models") or []
        target = select_target(spec, models, status.get("rejectedVersions") or [], gen)

        analysis, observed = None, None
        seen = await self.driver(backend).observe(obj)
        if status.get("canary") and seen is not None and seen.health == "failed":
            analysis = serving_failed(seen.message)  # roll back to stable, metrics or not
        elif canary_due(status.get("canary"), policy, now) and status.get("endpoint"):
            # Unreadable metrics raise MetricsUnavailable: the step holds, nothing decided.
            analysis, observed = await self._analyse(obj, status, policy, backend, now)
        p = plan(status, target, policy, gen, analysis, now)

        predictors = _predictors(p)
        if not predictors:
            return self._not_ready(status, gen, target.reason, target.message)
        try:
            token = await self._auth_token(obj)
        except MissingSecret as exc:
            return self._not_ready(status, gen, api.Reason.AUTH_SECRET_MISSING, str(exc))
        drift_on = bool((spec.get("drift") or {}).get("enabled"))
        serving = await self.driver(backend).apply(obj, predictors, drift_logging=drift_on,
                                                   auth_token=token)
        if p.canary is not None and p.decision == "advance" and observed:
            # The next step counts from where this step's analysis stopped reading, not
            # from after the new weights are written: consecutive windows tile, and no
            # request served under the new weights falls into a gap between them.
            p.canary["baseline"] = observed
        elif p.canary is not None and (p.needs_baseline or not p.canary.get("baseline")):
            if serving.ready:
                p.canary["baseline"] = await self._baseline(obj, serving, p, backend, now)
                p.canary["stepStartedAt"] = conditions.now_iso(now)
            else:
                p.canary.pop("baseline", None)

        status.update(self._rollout_status(p, serving))
        for key, value in (serving.status or {}).items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        if serving.failed and _reason(status) != api.Reason.SERVING_FAILED:
            p.events.append(Event(api.Reason.SERVING_FAILED, serving.message, "Warning"))
        status["conditions"] = self._conditions(status, p, serving, target, gen)
        drained, drain_error = None, None
        if drift_on and backend != "local":
            try:  # before the drift check: it reads what this adds to the log
                drained = await self._drain(obj)
            except StorageUnavailable as exc:
                drain_error = exc
        if drift_on and serving.ready:
            log_state = drained if backend != "local" else await self._log_state(obj, serving)
            status["conditions"] = logging_conditions(status["conditions"], log_state, gen)
        elif not drift_on:
            status["conditions"] = conditions.remove_condition(status["conditions"],
                                                               api.Cond.REQUEST_LOGGING)
        status["phase"] = _phase(p, serving)
        outcome = Outcome(status, list(p.events),
                          requeue_after=self._requeue(p, policy, serving, obj, now),
                          counts=_counts(p))
        if drain_error is not None:  # the log is not known to be whole: no verdict on it
            outcome.error = drain_error
        elif self.drift is not None and drift_on:
            try:
                found = await self.drift.check(obj, status, exp)
            except Exception as exc:  # the rollout's progress stands; the failure goes on it
                outcome.error = exc
                return outcome
            outcome.events += found
            if any(e.reason == api.Reason.DRIFT_DETECTED for e in found):
                outcome.counts.append(Count("drift"))
            if any(e.reason == api.Reason.RETRAIN_REQUESTED for e in found):
                outcome.counts.append(Count("retrains"))
        elif "drift" in status:
            status.pop("drift")
            status["conditions"] = conditions.remove_condition(status["conditions"],
                                                               api.Cond.DRIFT_DETECTED)
        return outcome

    # ------------------------------------------------------------------ steps
    async def _analyse(self, obj: dict[str, Any], status: dict[str, Any], policy: Policy,
                       backend: str, now: dt.datetime) -> tuple[Analysis, dict[str, Any]]:
        """The verdict on the current step, and where the next step's window begins."""
        source = self.sources[backend]
        canary, stable = status["canary"], status.get("stable")
        baseline = canary.get("baseline") or {}
        probe = {**obj, "status": status}
        since = conditions.parse_time(baseline.get("windowStart") or canary.get("stepStartedAt"))
        try:
            now_c = await source.counters(probe, "canary", canary["version"], since=since,
                                          until=now)
            now_s = (await source.counters(probe, "stable", stable["version"], since=since,
                                           until=now) if stable else None)
        except MetricsUnavailable as exc:
            raise MetricsUnavailable(f"canary analysis of v{canary['version']} at "
                                     f"{canary.get('weight')}% is on hold: {exc}") from exc
        if source.windowed:  # the answers are the window already
            stable_w = window(now_s, None) if now_s is not None else None
            return (analyse(policy, window(now_c, None), stable_w),
                    {"windowStart": conditions.now_iso(now)})
        canary_w = window(now_c, Counters.from_dict(baseline.get("canary")))
        observed = {"canary": now_c.to_dict()}
        stable_w = None
        if now_s is not None:
            stable_w = window(now_s, Counters.from_dict(baseline.get("stable")))
            observed["stable"] = now_s.to_dict()
        return analyse(policy, canary_w, stable_w), observed

    async def _baseline(self, obj: dict[str, Any], serving: ServingState, p: Plan,
                        backend: str, now: dt.datetime) -> dict[str, Any]:
        source = self.sources[backend]
        if source.windowed:  # Prometheus answers for any window: only its start is kept
            return {"windowStart": conditions.now_iso(now)}
        probe = {**obj, "status": {**(obj.get("status") or {}), "endpoint": serving.endpoint}}
        out: dict[str, Any] = {}
        try:
            for name, entry in (("stable", p.stable), ("canary", p.canary)):
                if entry:
                    out[name] = (await source.counters(probe, name, entry["version"])).to_dict()
        except MetricsUnavailable as exc:
            raise MetricsUnavailable(f"canary v{p.canary['version']} cannot start its step at "
                                     f"{p.canary['weight']}%: {exc}") from exc
        return out

    async def _drain(self, obj: dict[str, Any]) -> LogState | None:
        """Cluster mode: this pass's share of the deployment's inbox into its log, which
        the spec's byte bound applies to. None when this replica let the deployment go
        meanwhile (its daemon is stopping); ``StorageUnavailable`` when the store fails."""
        from controller.drift_feed import Released
        from controller.objectstore import ObjectStoreError

        if self.feed is None:
            return None
        meta, drift = obj["metadata"], obj["spec"]["drift"]
        bound = int((drift.get("storage") or {}).get("maxBytes", 268435456))
        try:
            return await asyncio.to_thread(self.feed.drain, meta["namespace"], meta["name"],
                                           bound)
        except Released:
            return None
        except (ObjectStoreError, OSError) as exc:
            raise StorageUnavailable(
                f"the drift log of {meta['namespace']}/{meta['name']} cannot be brought up "
                f"to date in {self.ctx.settings.request_log_store_uri}: {exc}") from exc

    async def _log_state(self, obj: dict[str, Any], serving: ServingState) -> LogState | None:
        """What the local router says of its log (None, condition kept, when its metrics
        cannot be read: the pass goes on without it)."""
        source = self.sources["local"]
        assert isinstance(source, LocalScrape)
        try:
            return await source.log_state({**obj, "status": {"endpoint": serving.endpoint}})
        except MetricsUnavailable as exc:
            log.info("request-log state of %s unknown this pass: %s",
                     obj["metadata"]["name"], exc)
            return None

    async def _auth_token(self, obj: dict[str, Any]) -> str | None:
        auth = (obj.get("spec") or {}).get("auth")
        if not auth:
            return None
        ref = auth["secretRef"]
        data = await self.ctx.kube.secret_data(obj["metadata"]["namespace"], ref["name"])
        key = ref.get("key", "token")
        if data is None:
            raise MissingSecret(f"auth Secret {ref['name']!r} not found")
        if key not in data or not data[key].strip():
            raise MissingSecret(f"auth Secret {ref['name']!r} has no key {key!r}")
        return data[key].decode().strip()

    # ----------------------------------------------------------------- status
    def _rollout_status(self, p: Plan, serving: ServingState) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stable": p.stable, "canary": p.canary, "rollouts": p.rollouts or None,
            "rejectedVersions": p.rejected or None, "endpoint": serving.endpoint,
            "stableVersion": f"v{p.stable['version']}" if p.stable else None,
            "canaryVersion": f"v{p.canary['version']}" if p.canary else None,
        }
        return out

    def _conditions(self, status: dict[str, Any], p: Plan, serving: ServingState, target,
                    gen: int) -> list[dict[str, Any]]:
        conds = status.get("conditions")
        stable_v = p.stable["version"] if p.stable else None
        if serving.failed:
            conds = conditions.set_condition(conds, api.Cond.READY, False,
                                             api.Reason.SERVING_FAILED, serving.message, gen)
        elif serving.ready:
            msg = f"serving v{stable_v} at {serving.endpoint}"
            if p.canary:
                msg += f"; canary v{p.canary['version']} at {p.canary['weight']}%"
            conds = conditions.set_condition(conds, api.Cond.READY, True, api.Reason.SERVING,
                                             msg, gen)
        else:
            conds = conditions.set_condition(conds, api.Cond.READY, False, api.Reason.DEPLOYING,
                                             serving.message, gen)
        if p.canary:
            step = int(p.canary["step"])
            last = (p.canary.get("analyses") or [{}])[-1].get("reason", "")
            conds = conditions.set_condition(
                conds, api.Cond.PROGRESSING, True,
                api.Reason.CANARY_ADVANCED if step else api.Reason.CANARY_STARTED,
                f"canary v{p.canary['version']} step {step + 1} at {p.canary['weight']}%"
                + (f" ({last})" if last else ""), gen)
        else:
            conds = conditions.remove_condition(conds, api.Cond.PROGRESSING)
        if p.decision == "rollback":
            rej = p.rejected[-1]
            conds = conditions.set_condition(conds, api.Cond.ROLLED_BACK, True,
                                             api.Reason.CANARY_ROLLED_BACK,
                                             f"v{rej['version']} rolled back: {rej['message']}",
                                             gen)
        elif p.decision == "promote":
            conds = conditions.remove_condition(conds, api.Cond.ROLLED_BACK)
        return conds

    def _not_ready(self, status: dict[str, Any], gen: int, reason: str,
                   message: str) -> Outcome:
        status["conditions"] = conditions.set_condition(status.get("conditions"),
                                                        api.Cond.READY, False, reason, message,
                                                        gen)
        status["phase"] = api.Phase.PENDING if not status.get("stable") else api.Phase.DEGRADED
        return Outcome(status, requeue_after=None)

    def _requeue(self, p: Plan, policy: Policy, serving: ServingState,
                 obj: dict[str, Any], now: dt.datetime) -> float | None:
        if not serving.ready:
            return None if serving.watched else 2.0  # a watched one wakes us when it changes
        delays = []
        if p.canary:
            started = p.canary.get("stepStartedAt")
            elapsed = seconds_since(started, now) if started else 0.0
            delays.append(max(0.5, policy.interval_s - elapsed))
        if (obj.get("spec") or {}).get("auth"):
            delays.append(5.0)  # pick up a rotated token without waiting for a resync
        if self.drift is not None and ((obj.get("spec") or {}).get("drift") or {}).get("enabled"):
            delays.append(self.drift.interval)
        return min(delays) if delays else None

    # ---------------------------------------------------------------- helpers
    async def cleanup(self, obj: dict[str, Any]) -> None:
        backend = (obj.get("spec") or {}).get("backend", "local")
        await self.driver(backend).teardown(obj)
        if self.drift is not None:
            self.drift.forget(obj)
        await self.release(obj["metadata"]["namespace"], obj["metadata"]["name"])

    async def release(self, namespace: str, name: str) -> None:
        """This process stops consuming the deployment's drift inbox (its daemon stopped:
        paused by peering, exiting, deleted); the next consumer adopts the store's copy."""
        if self.feed is not None:
            await asyncio.to_thread(self.feed.release, namespace, name)

    async def close(self) -> None:
        if self.receiver_runner is not None:
            await self.receiver_runner.cleanup()
        if self.receiver is not None:
            await self.receiver.close()
        if self.feed is not None:
            await asyncio.to_thread(self.feed.close)
        for driver in self.drivers.values():
            closer = getattr(driver, "close", None)
            if closer is not None:
                await closer()


class MissingSecret(RuntimeError):
    pass


def retrain_pending(obj: Mapping[str, Any]) -> bool:
    """Whether the deployment's open drift episode asked for a retrain."""
    drift = (obj.get("status") or {}).get("drift") or {}
    request = drift.get("retrain") or {}
    return bool(drift.get("detected") and drift.get("retrainRequested")
                and request.get("episode") and request.get("episode") == drift.get("episode"))


def _counts(p: Plan) -> list[Count]:
    """Canary decisions are counted once the status recording them is written."""
    return [Count("canary", (p.decision,))] if p.decision in ("advance", "promote",
                                                               "rollback") else []


def _predictors(p: Plan) -> list[Predictor]:
    split = weights(int(p.stable["version"]) if p.stable else None,
                    int(p.canary["version"]) if p.canary else None,
                    int(p.canary["weight"]) if p.canary else 0)
    return [Predictor(name, int(entry["version"]), entry["modelUri"], split[name])
            for name, entry in (("stable", p.stable), ("canary", p.canary)) if entry]


def _reason(status: dict[str, Any]) -> str | None:
    ready = conditions.find(status.get("conditions"), api.Cond.READY)
    return ready.get("reason") if ready else None


def _phase(p: Plan, serving: ServingState) -> str:
    if serving.failed:
        return api.Phase.FAILED
    if not serving.ready:
        return api.Phase.DEPLOYING if p.decision == "deploy" or not p.stable else \
            api.Phase.DEGRADED
    return api.Phase.PROGRESSING if p.canary else api.Phase.SERVING

