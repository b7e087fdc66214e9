"""Experiment reconciler: one Metaflow run per generation (and per drift episode),
followed to completion and registered as a model version when it meets the objective.

The decisions live in ``controller.training.decide``; this module reads the world
(flow file, run state), launches through a training backend, and returns the status.
Launching is two-phase — first ``status.currentRun`` is written, then the run starts —
so an operator killed at any moment re-attaches instead of launching twice.

A retrain request is on the status of the ModelDeployment that made it; an idle pass
adopts it (``decide.adopt_retrain``) into ``status.retrain``, with the run it launches.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Any

from controller import api, conditions
from controller.context import Context
from controller.kube import EXPERIMENTS, JOBS
from controller.loop import Event, Outcome
from controller.metrics import Count
from controller.training import clone, decide
from controller.training.decide import Backoff, Idle, Launch, Observe, RunKey
from controller.training.kubernetes import KubernetesTrainingBackend, render_job
from controller.training.local import LocalTrainingBackend, RunRef, RunRequest
from controller.training.preflight import Preflight, cluster_source, preflight

log = logging.getLogger("trellis.experiments")
# How often a local run's files are read (a process, no API object to watch). A Job is
# not polled: its watch wakes the loop when it or its Pods change.
POLL_SECONDS = 2.0


class ExperimentReconciler:
    resource = EXPERIMENTS

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.local = LocalTrainingBackend(
            ctx.settings.datastore_root, python=ctx.settings.training_python or sys.executable)
        self.cluster = KubernetesTrainingBackend(ctx.kube, ctx.settings, ctx.children)

    def related(self, obj: dict[str, Any]) -> list[tuple[str, str, str | None]]:
        """The ModelDeployments serving this Experiment (a new model version is theirs
        to roll out); the namespace's, when no index says which those are."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        serving = self.ctx.references.deployments_of(ns, name)
        if serving is None:
            return [(api.MODEL_DEPLOYMENT.kind, ns, None)]
        return [(api.MODEL_DEPLOYMENT.kind, ns, d) for d in serving]

    async def reconcile(self, obj: dict[str, Any]) -> Outcome:
        meta, spec = obj["metadata"], obj["spec"]
        gen = meta["generation"]
        status = dict(obj.get("status") or {})
        status["observedGeneration"] = gen
        now = dt.datetime.now(dt.UTC)
        events: list[Event] = []
        counts: list[Count] = []
        requeue: float | None = None

        revision = (meta.get("annotations") or {}).get(api.ANN_FLOW_REVISION, "")
        events += await self._adopt_retrain(obj, status)
        action = decide.next_action(spec, status, gen, now, revision)
        if isinstance(action, Launch):
            probe = {**obj, "status": status}  # the retrain adopted in this pass included
            check = (self._backend_allowed(spec) or self._cluster_source(obj)
                     or await asyncio.to_thread(preflight, obj, self._source_root(obj),
                                                self._extra_parameters(probe, action.key)))
            if check.problem:
                return self._stalled(status, gen, check)
            status["currentRun"] = self._new_run(obj, action, check)
            status.pop("progress", None)
            requeue = 0.1
        elif isinstance(action, Observe):
            requeue = self._poll_seconds(spec)
            events += await self._observe(obj, status, action.current)
            if status.get("currentRun") is None:  # it finished: counted once written
                counts = _finished_counts(status["runs"][-1])
                # What follows the end (a retry's backoff, retries exhausted) goes out in
                # the same write: no reader sees a failed run without the verdict on it.
                after = decide.next_action(spec, status, gen, now, revision)
                if isinstance(after, Backoff | Idle):
                    action = after
                    if isinstance(after, Backoff):
                        requeue = after.seconds
        elif isinstance(action, Backoff):
            requeue = action.seconds
        status["conditions"] = conditions.remove_condition(status.get("conditions"),
                                                           api.Cond.STALLED)
        self._summarise(status, spec, gen, action)
        return Outcome(status, events, requeue_after=requeue, counts=counts)

    async def _adopt_retrain(self, obj: dict[str, Any], status: dict[str, Any]) -> list[Event]:
        """Take on a ModelDeployment's pending retrain request: ``status.retrain``."""
        if status.get("currentRun"):
            return []
        meta = obj["metadata"]
        requests = await self.ctx.retrain_requests.for_experiment(meta["namespace"], meta["name"])
        cooldown = float((obj["spec"].get("retrain") or {}).get("cooldownSeconds", 0))
        adopted = decide.adopt_retrain(
            status, [(r.deployment, r.status) for r in requests], experiment=meta["name"],
            cooldown_s=cooldown, created=conditions.parse_time(meta.get("creationTimestamp")))
        if adopted is None:
            return []
        status["retrain"] = adopted
        return [Event(api.Reason.RETRAIN_REQUESTED,
                      f"retraining for drift episode {adopted['episode']}, requested by "
                      f"ModelDeployment {adopted['deployment']}")]

    def _poll_seconds(self, spec: dict[str, Any]) -> float | None:
        """When to look at a running run again: a local run's files on a timer; a Job
        when its watch says it changed (None: the resync is the safety net), or on the
        timer where nothing watches Jobs."""
        if self._backend(spec) == "kubernetes" and self.ctx.children.watching(JOBS):
            return None
        return POLL_SECONDS

    def _backend(self, spec: dict[str, Any]) -> str:
        """The spec's backend, or this operator's default (``TRELLIS_DEFAULT_TRAINING_BACKEND``)."""
        return self.ctx.settings.training_backend(spec)

    def _backend_allowed(self, spec: dict[str, Any]) -> Preflight | None:
        """A refusal when this operator may not train in its own process."""
        if self._backend(spec) == "local" and not self.ctx.settings.allow_local_training:
            return Preflight(
                "backend: local would train inside the operator's pod, which this operator "
                "does not allow (TRELLIS_ALLOW_LOCAL_TRAINING=false); set "
                "spec.backend: kubernetes", api.Reason.LOCAL_TRAINING_DISABLED)
        return None

    def _cluster_source(self, obj: dict[str, Any]) -> Preflight | None:
        """A refusal when a ``kubernetes`` run's pod could not clone its source."""
        return cluster_source(obj) if self._backend(obj["spec"]) == "kubernetes" else None

    # --------------------------------------------------------------- running
    def _new_run(self, obj: dict[str, Any], action: Launch, check: Preflight) -> dict[str, Any]:
        meta = obj["metadata"]
        key = action.key
        # The workdir (and the tags) name every part of the run key: a flow-code-only
        # change keeps the generation and the attempt number, and must not find the
        # previous revision's run there and adopt it instead of training the new code.
        run_id = (f"g{key.generation}-a{action.attempt}" + (f"-{key.trigger}" if key.trigger
                                                            else "")
                  + (f"-f{key.revision}" if key.revision else ""))
        workdir = (self.ctx.settings.training_dir / meta["namespace"] / meta["name"]
                   / meta["uid"] / run_id)
        current = {
            "generation": key.generation, "attempt": action.attempt, "trigger": key.trigger,
            "flowRevision": key.revision,
            "workdir": str(workdir), "launched": False,
            "startedAt": conditions.now_iso(), "commit": check.commit,
            # Fixed at launch: a later change of the operator's default backend must not
            # make it look for this run where it is not.
            "backend": self._backend(obj["spec"]),
        }
        return {k: v for k, v in current.items() if v not in (None, "")} | {
            "trigger": key.trigger}

    def _tags(self, obj: dict[str, Any], current: dict[str, Any]) -> dict[str, str]:
        meta = obj["metadata"]
        tags = {"trellis.namespace": meta["namespace"], "trellis.name": meta["name"],
                "trellis.uid": meta["uid"], "trellis.generation": str(current["generation"]),
                "trellis.attempt": str(current["attempt"])}
        if current.get("trigger"):
            tags["trellis.trigger"] = current["trigger"]
        if current.get("flowRevision"):
            tags["trellis.flow-revision"] = current["flowRevision"]
        return tags

    async def _observe(self, obj: dict[str, Any], status: dict[str, Any],
                       current: dict[str, Any]) -> list[Event]:
        if (current.get("backend") or self._backend(obj["spec"])) == "kubernetes":
            return await self._observe_job(obj, status, current)
        key = _run_key(current)
        if not current.get("launched"):
            return await self._launch_local(obj, status, current, key)
        seen = await self.local.observe(RunRef.from_dict(current))
        if seen.pathspec and seen.pathspec != current.get("pathspec"):
            current = {**current, "pathspec": seen.pathspec}
            status["currentRun"] = current
        if seen.state in ("starting", "running"):
            status["progress"] = {k: v for k, v in (("step", seen.step), ("epoch", seen.epoch),
                                                    ("epochs", seen.epochs)) if v is not None}
            return []
        return self._finish(obj, status, current, seen.state, {
            "pathspec": seen.pathspec, "metrics": seen.metrics, "epochs": seen.epoch_metrics,
            "model_uri": seen.model_uri, "reference_uri": seen.reference_uri,
            "commit": seen.commit, "dataset_fingerprint": seen.dataset_fingerprint,
            "error": seen.error,
        })

    async def _launch_local(self, obj, status, current, key: RunKey) -> list[Event]:
        spec = obj["spec"]
        root = self._source_root(obj)
        existing = await self.local.find(self._tags(obj, current))
        workdir = await asyncio.to_thread(Path(current["workdir"]).resolve)
        if existing and not any(r.workdir and Path(r.workdir) == workdir for r in existing):
            ref = existing[0]  # launched from elsewhere just before a restart: adopt it
        else:
            # Idempotent per workdir: adopts a launch recorded there, and completes one an
            # operator killed mid-launch began (its launcher running unrecorded, or
            # never started) instead of calling it lost.
            ref = await self.local.launch(RunRequest(
                flow_file=root / spec["flow"]["file"], flow_name=spec["flow"]["name"],
                parameters={**(spec.get("parameters") or {}),
                            **self._extra_parameters(obj, key)},
                tags=self._tags(obj, current), resources=spec.get("resources"),
                workdir=Path(current["workdir"]),
                env={"TRELLIS_SOURCE_COMMIT": current.get("commit") or "",
                     "TRELLIS_MODEL_STORE": str(self.ctx.settings.model_store)},
            ))
        status["currentRun"] = {**current, "launched": True,
                                **({"pid": ref.pid} if ref.pid else {}),
                                **({"pathspec": ref.pathspec} if ref.pathspec else {})}
        if not existing:  # a run is counted once, by whoever started it
            self.ctx.metrics.runs.labels("started").inc()
        what = "re-attached to" if existing else "started"
        return [Event(api.Reason.RUN_STARTED, f"{what} run for {key.label()}, attempt "
                      f"{current['attempt']}")]

    async def _observe_job(self, obj, status, current) -> list[Event]:
        meta, spec = obj["metadata"], obj["spec"]
        key = _run_key(current)
        if not current.get("launched"):
            ann = meta.get("annotations") or {}
            job = render_job(obj, key, int(current["attempt"]), self.ctx.settings,
                             parameters={**(spec.get("parameters") or {}),
                                         **self._extra_parameters(obj, key)},
                             tags=self._tags(obj, current), commit=current.get("commit"),
                             source_url=ann.get(api.ANN_SOURCE_URL),
                             source_secret=clone.pod_secret(obj))
            created, adopted = await self.cluster.launch(job)
            status["currentRun"] = {**current, "launched": True,
                                    "job": created["metadata"]["name"]}
            if not adopted:  # a run is counted once, by whoever started it
                self.ctx.metrics.runs.labels("started").inc()
            name = created["metadata"]["name"]
            what = f"re-attached to Job {name}" if adopted else f"Job {name} created"
            return [Event(api.Reason.RUN_STARTED,
                          f"{what} for {key.label()}, attempt {current['attempt']}")]
        seen = await self.cluster.observe(meta["namespace"], current["job"])
        if seen.state == "running":
            status["progress"] = {"step": "job"}
            if seen.blocked:  # Kubernetes' own reason, where the user looks
                status["progress"] |= {"blockedReason": seen.blocked.reason,
                                       "blockedMessage": seen.blocked.message}
            return []
        if seen.state == "succeeded":
            return self._finish(obj, status, current, seen.state, seen.result or {})
        return self._finish(obj, status, current, seen.state,
                            {**(seen.result or {}), "error": seen.message})

    # ------------------------------------------------------------ completion
    def _finish(self, obj: dict[str, Any], status: dict[str, Any], current: dict[str, Any],
                state: str, result: dict[str, Any]) -> list[Event]:
        spec = obj["spec"]
        now = conditions.now_iso()
        started = conditions.parse_time(current.get("startedAt"))
        record: dict[str, Any] = {
            "pathspec": result.get("pathspec") or current.get("pathspec") or "",
            "generation": int(current["generation"]), "attempt": int(current["attempt"]),
            "trigger": current.get("trigger") or "",
            "flowRevision": current.get("flowRevision") or "",
            "commit": result.get("commit") or current.get("commit") or "",
            "startedAt": current.get("startedAt", now), "finishedAt": now,
            "metrics": {k: float(v) for k, v in (result.get("metrics") or {}).items()
                        if isinstance(v, int | float)},
            "epochs": [{k: float(v) for k, v in e.items() if isinstance(v, int | float)}
                       for e in result.get("epochs") or result.get("epoch_metrics") or []],
        }
        if started:
            record["durationSeconds"] = round(
                (conditions.parse_time(now) - started).total_seconds(), 1)
        events: list[Event] = []
        models = list(status.get("models") or [])
        if state == "succeeded":
            ok, sentence = decide.objective_met(spec["objective"], record["metrics"])
            record["phase"] = decide.SUCCEEDED
            if ok and not any(m.get("run") == record["pathspec"] for m in models):
                version = decide.next_version(models)
                models.append({k: v for k, v in {
                    "version": version, "run": record["pathspec"], "metrics": record["metrics"],
                    "artifactUri": result.get("model_uri"),
                    "referenceUri": result.get("reference_uri"),
                    "commit": record["commit"], "trigger": record["trigger"] or None,
                    "datasetFingerprint": result.get("dataset_fingerprint"),
                    "createdAt": now,
                }.items() if v not in (None, "")})
                record.update(reason=api.Reason.MODEL_REGISTERED,
                              message=f"model v{version} registered: {sentence}")
            else:
                record.update(reason=api.Reason.OBJECTIVE_NOT_MET,
                              message=f"objective not met: {sentence}; no model registered")
                events.append(Event(api.Reason.OBJECTIVE_NOT_MET, record["message"], "Warning"))
        else:
            lost = state == "lost"
            error = (result.get("error") or "").strip() or (
                "the run's process is gone and it never finished" if lost else "run failed")
            record.update(phase=decide.FAILED,
                          reason=api.Reason.RUN_LOST if lost else api.Reason.RUN_FAILED,
                          message=error[-3000:])
        record["message"] = record.get("message", "")
        status["runs"] = decide.trim_runs([*(status.get("runs") or []), record])
        status["models"] = models or None
        status["currentRun"] = None
        status["progress"] = None
        return events

    # ---------------------------------------------------------------- status
    def _summarise(self, status: dict[str, Any], spec: dict[str, Any], gen: int,
                   action: decide.Action) -> None:
        runs = status.get("runs") or []
        current = status.get("currentRun")
        models = status.get("models") or []
        status["phase"] = decide.phase_of(status, gen)
        last = runs[-1] if runs else None
        status["lastRun"] = (current or {}).get("pathspec") or (last or {}).get("pathspec") \
            or None
        metric = spec["objective"]["metric"]
        if last and metric in (last.get("metrics") or {}):
            status["objectiveValue"] = f"{metric}={last['metrics'][metric]:.4f}"
        status["latestModel"] = f"v{models[-1]['version']}" if models else None
        conds = status.get("conditions")
        if current:
            progress = status.get("progress") or {}
            where = f" step {progress['step']}" if progress.get("step") else ""
            if progress.get("epochs"):
                where += f", epoch {progress.get('epoch', 0)}/{progress['epochs']}"
            reason = api.Reason.RUN_RUNNING if current.get("launched") else api.Reason.RUN_PENDING
            msg = (f"run {current.get('pathspec') or '(starting)'} for generation "
                   f"{current['generation']}, attempt {current['attempt']}{where}")
            if progress.get("blockedReason"):
                reason = progress["blockedReason"]
                msg = f"{current.get('job', 'the Job')} is not progressing: " \
                      f"{progress.get('blockedMessage', '')}"
            conds = conditions.set_condition(conds, api.Cond.READY, False, reason, msg, gen)
        elif isinstance(action, Backoff):
            conds = conditions.set_condition(
                conds, api.Cond.READY, False, api.Reason.RETRYING,
                f"attempt {action.attempt - 1} failed: {_last_line(last)}; retrying in "
                f"{action.seconds:.0f}s", gen)
        elif isinstance(action, Idle) and action.exhausted is not None:
            conds = conditions.set_condition(
                conds, api.Cond.READY, False, api.Reason.RETRIES_EXHAUSTED,
                f"{action.exhausted.label()} failed after "
                f"{len(decide.runs_of(runs, action.exhausted))} attempt(s): "
                f"{(last or {}).get('message', '')}", gen)
            conds = conditions.set_condition(conds, api.Cond.STALLED, True,
                                             api.Reason.RETRIES_EXHAUSTED,
                                             "change the spec to try again", gen)
        elif last is not None:
            ok = last.get("reason") == api.Reason.MODEL_REGISTERED
            conds = conditions.set_condition(conds, api.Cond.READY, ok, last.get("reason", ""),
                                             last.get("message", ""), gen)
        else:
            conds = conditions.set_condition(conds, api.Cond.READY, False,
                                             api.Reason.RUN_PENDING, "no run yet", gen)
        status["conditions"] = conds

    def _stalled(self, status: dict[str, Any], gen: int, check: Preflight) -> Outcome:
        status["phase"] = api.Phase.FAILED
        conds = conditions.set_condition(status.get("conditions"), api.Cond.READY, False,
                                         check.reason, check.problem, gen)
        status["conditions"] = conditions.set_condition(conds, api.Cond.STALLED, True,
                                                        check.reason, check.problem, gen)
        # Nothing will change until the spec or the flow file does: no retry storm.
        return Outcome(status, requeue_after=None)

    # --------------------------------------------------------------- helpers
    def _source_root(self, obj: dict[str, Any]) -> Path:
        ann = obj["metadata"].get("annotations") or {}
        checkout = ann.get(api.ANN_SOURCE_CHECKOUT)
        return Path(checkout) if checkout else Path(self.ctx.settings.flows_root)

    def _extra_parameters(self, obj: dict[str, Any], key: RunKey) -> dict[str, Any]:
        """Retraining adds the labelled live data the drift monitor exported."""
        retrain = (obj.get("status") or {}).get("retrain") or {}
        if key.trigger and retrain.get("episode") == key.trigger and retrain.get("feedbackUri") \
                and (obj["spec"].get("retrain") or {}).get("includeFeedback", True):
            return {"feedback_uri": retrain["feedbackUri"]}
        return {}

    async def cleanup(self, obj: dict[str, Any]) -> None:
        """Stop the run in flight: its Job (so its pod, SIGTERM first), or its process.
        A Job also goes with its owner; deleting it here does not wait for the garbage
        collector, nor for the Experiment's finalizer to be the last one."""
        current = (obj.get("status") or {}).get("currentRun")
        if not current or not current.get("launched"):
            return
        if (current.get("backend") or self._backend(obj["spec"])) == "kubernetes":
            if current.get("job"):
                await self.cluster.delete(obj["metadata"]["namespace"], current["job"])
        else:
            await self.local.cancel(RunRef.from_dict(current))


def _run_key(current: dict[str, Any]) -> RunKey:
    """The key of the run in ``status.currentRun`` (its flow revision included)."""
    return RunKey(int(current["generation"]), current.get("trigger") or "",
                  current.get("flowRevision") or "")


def _finished_counts(record: dict[str, Any]) -> list[Count]:
    """The counters a finished run moves, applied by the loop once its record is on
    status (a failed write re-finishes the run on the next pass: counted once)."""
    if record.get("phase") == decide.FAILED:
        return [Count("runs", ("failed",))]
    if record.get("reason") == api.Reason.MODEL_REGISTERED:
        return [Count("runs", ("succeeded",)), Count("models")]
    return [Count("runs", ("objective_not_met",))]


def _last_line(run: dict[str, Any] | None) -> str:
    lines = ((run or {}).get("message") or "").strip().splitlines()
    return lines[-1] if lines else "unknown error"
