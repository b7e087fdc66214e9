"""The ModelDeployment's drift sub-step: live inputs vs the stable model's reference.

Owns ``status.drift`` and the DriftDetected / AccuracyDegraded conditions. Reads the
request log (written by the local router, or in a cluster by ``controller.drift_feed``
from what Seldon's request logger sent any replica), decides with
``drift_episodes.next_drift_state``, and on a retrain decision exports the labelled live
inputs (to S3 when the retrain runs in a pod: ``controller.feedback``) and puts the
request on the deployment's own status (``status.drift.retrain``), written with the rest
of the status in the loop's one patch.
It writes nothing else: the Experiment reconciler, woken by that write, adopts the
request into the Experiment's ``status.retrain`` and starts exactly one run per episode
(``training.decide.adopt_retrain``). The Experiment is only read here — its objective,
retrain policy and last retrain (the cooldown clock). References and feedback are
objects by URI (``controller.objectstore``): local files or S3.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
from pathlib import Path
from typing import Any

from controller import conditions, feedback
from controller.context import Context
from controller.drift import Reference
from controller.drift_episodes import DriftPolicy, LastRetrain, next_drift_state
from controller.failures import FeedbackExportFailed, ModelUnreadable, StorageUnavailable
from controller.logs import object_ref
from controller.loop import Event
from controller.objectstore import ObjectStore, ObjectStoreError, parse
from controller.serving.requestlog_read import RequestLogReader, deployment_log_dir

log = logging.getLogger("trellis.drift")


def read_reference(store: ObjectStore, uri: str) -> Reference:
    """The reference at ``uri`` (a local version directory means its reference.json).
    Blocking; raises ``ObjectStoreError`` or, for a bad URI or content, ``ValueError``."""
    loc = parse(uri)
    if loc.scheme == "file" and Path(loc.path).is_dir():
        uri = str(Path(loc.path) / "reference.json")
    return Reference.from_json(store.read(uri).decode())


class DriftMonitor:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.interval = ctx.settings.drift_interval_seconds
        self.store = ObjectStore(ctx.settings.s3_endpoint_url)
        # The stable model's reference per deployment: replaced on promotion, not piled up.
        self._references: dict[tuple[str, str], tuple[str, Reference]] = {}
        self._seen: dict[tuple[str, str], str] = {}  # last input signature checked

    def forget(self, obj: dict[str, Any]) -> None:
        """The deployment is gone: drop what was kept for its checks."""
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self._references.pop(key, None)
        self._seen.pop(key, None)

    def log_dir(self, obj: dict[str, Any]) -> Path:
        meta = obj["metadata"]
        return deployment_log_dir(self.ctx.settings.request_log_dir, meta["namespace"],
                                  meta["name"])

    async def check(self, obj: dict[str, Any], status: dict[str, Any],
                    exp: dict[str, Any]) -> list[Event]:
        """Update ``status`` in place (drift + conditions); return the Events to post."""
        stable = status.get("stable") or {}
        ref_uri = stable.get("referenceUri")
        if not ref_uri:
            return []
        meta, spec = obj["metadata"], obj.get("spec") or {}
        objective = (exp.get("spec") or {}).get("objective") or {}
        threshold = objective.get("threshold") if objective.get("metric") == "accuracy" else None
        policy = DriftPolicy.from_spec(spec.get("drift"), threshold)
        exp_cooldown = float(((exp.get("spec") or {}).get("retrain") or {})
                             .get("cooldownSeconds", 0))
        policy = dataclasses.replace(policy, cooldown_s=max(policy.cooldown_s, exp_cooldown))
        reference = await self._reference((meta["namespace"], meta["name"]), ref_uri,
                                          int(stable["version"]))
        reader = RequestLogReader(self.log_dir(obj))
        previous = status.get("drift") or {}
        # Labels that arrived after the detection describe the new world; the window that
        # revealed the drift still mixes in the old one, so it is not learnt from.
        ongoing = previous.get("detected") and previous.get("referenceVersion") == int(
            stable["version"]) and previous.get("detectedAt")
        onset = conditions.parse_time(previous["detectedAt"]).timestamp() if ongoing else None
        window, labelled, accuracy, onset, since_onset = await asyncio.to_thread(
            self._observe, reader, policy.window, int(stable["version"]), onset)
        key = (meta["namespace"], meta["name"])
        signature = hashlib.sha1(
            window.tobytes() + f"{labelled}/{accuracy}/{ref_uri}/{policy}".encode()).hexdigest()
        # A retrain deferred by the cooldown becomes due with time alone, not with input.
        clock_bound = bool(previous.get("detected")) and policy.action == "retrain" and not (
            previous.get("retrainRequested"))
        if self._seen.get(key) == signature and previous and not clock_bound:
            return []  # nothing new since the last check: no verdict, no write

        result = None
        if len(window) >= policy.min_samples and window.shape[1] == len(reference.feature_names):
            result = policy.evaluate(reference, window)
        deployment = f"{meta['namespace']}/{meta['name']}"
        exp_status = exp.get("status") or {}
        wants_labels = ((exp.get("spec") or {}).get("retrain") or {}).get("includeFeedback", True)
        decision = next_drift_state(
            status.get("drift"), result, policy=policy, now=dt.datetime.now(dt.UTC),
            deployment=meta["name"], reference_version=int(stable["version"]),
            samples=len(window), last_retrain=LastRetrain.from_status(exp_status.get("retrain")),
            live_accuracy=accuracy, labelled=labelled,
            labels_wanted=self.ctx.settings.retrain_min_labels if wants_labels else 0,
            labels_since_onset=since_onset, experiment=exp["metadata"]["name"])
        if decision.retrain is not None:
            exported = await self._export_feedback(obj, exp, decision.retrain.episode, onset,
                                                   export=wants_labels)
            if exported:
                decision.status["retrain"]["feedbackUri"] = exported
        status["drift"] = decision.status
        self._seen[key] = signature  # only now: a failed export is decided again next pass
        conds = status.get("conditions")
        for ctype, value in decision.conditions.items():
            if value is None:
                conds = conditions.remove_condition(conds, ctype)
            else:
                conds = conditions.set_condition(conds, ctype, True, value[0], value[1],
                                                 meta["generation"])
        status["conditions"] = conds
        events = [Event(e.reason, e.message, e.type) for e in decision.events]
        if events:
            log.info("drift %s: %s", deployment, decision.status.get("summary"),
                     extra=object_ref(obj))
        return events

    @staticmethod
    def _observe(reader: RequestLogReader, n: int, version: int, onset: float | None):
        features, _ = reader.recent_features(n)
        labelled, since, accuracy = reader.label_summary(version, onset)
        return features, labelled, accuracy, onset, since

    async def _reference(self, key: tuple[str, str], uri: str, version: int) -> Reference:
        """The stable model's training reference. ``StorageUnavailable`` while the store
        cannot answer; ``ModelUnreadable`` when it answers no (missing, refused, no
        credentials) or the content is not a reference: the same URI will not read
        better by itself. Either way the loop writes the rest of the pass's status."""
        cached = self._references.get(key)
        if cached is None or cached[0] != uri:
            what = f"the drift reference of model v{version} ({uri})"
            try:
                cached = (uri, await asyncio.to_thread(read_reference, self.store, uri))
            except ObjectStoreError as exc:
                if exc.transient:
                    raise StorageUnavailable(f"{what} cannot be read now: {exc}") from exc
                raise ModelUnreadable(f"{what} cannot be read: {exc}") from exc
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ModelUnreadable(f"{what} cannot be read: {exc}") from exc
            self._references[key] = cached
        return cached[1]

    async def _export_feedback(self, obj: dict[str, Any], exp: dict[str, Any], episode: str,
                               onset: float | None, *, export: bool) -> str | None:
        """The labelled live inputs since the onset, exported where the Experiment's retrain
        can read them (``feedback.export_uri``); None: none, or the Experiment does not
        learn from feedback (``retrain.includeFeedback``). A status write lost after this
        leaves the object unread: the next request re-exports."""
        meta, exp_meta = obj["metadata"], exp["metadata"]
        settings = self.ctx.settings
        count, target = 0, ""
        if export:
            try:
                target = feedback.export_uri(
                    backend=settings.training_backend(exp.get("spec") or {}),
                    s3_root=settings.datastore_s3_root, state_dir=settings.state_dir,
                    namespace=meta["namespace"], deployment=meta["name"], episode=episode)
                count = await asyncio.to_thread(feedback.export_labelled,
                                                RequestLogReader(self.log_dir(obj)), target,
                                                onset, self.store)
            except ObjectStoreError as exc:
                message = (f"feedback for the retrain of episode {episode} not exported to "
                           f"{target}: {exc}")
                if exc.transient:
                    raise StorageUnavailable(message) from exc
                raise FeedbackExportFailed(message) from exc
            except ValueError as exc:  # no place it can go (a bad S3 root)
                raise FeedbackExportFailed(f"feedback for the retrain of episode {episode} "
                                           f"not exported: {exc}") from exc
        log.info("retrain of %s/%s requested (episode %s, %d labelled inputs%s)",
                 exp_meta["namespace"], exp_meta["name"], episode, count,
                 f" in {target}" if count else "", extra=object_ref(obj))
        return target if count else None
