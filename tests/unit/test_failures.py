"""Failure classification (pure) and what the loop writes for a failed pass (fake API)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import urllib3.exceptions

from controller import api, failures
from controller.failures import Failure, MetricsUnavailable, ModelUnreadable, classify
from controller.gitops.git_source import FetchError
from controller.kube import ApiException, Resource
from controller.loop import Event, Outcome, reconcile_once
from controller.metrics import Count, OperatorMetrics


def api_error(status: int, message: str = "", request: str | None = None) -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"kind": "Status", "message": message}) if message else None
    if request:
        exc.request = request
    return exc


INVALID = ('seldondeployments.machinelearning.seldon.io "classifier" is forbidden: '
           "ValidatingAdmissionPolicy 'farm-images' denied request: images must come from "
           "registry.farm.example")


@pytest.mark.parametrize(("exc", "permanent", "reason", "message"), [
    (api_error(422, INVALID, "PATCH /apis/x"), True, "Rejected",
     f"{INVALID} (422 on PATCH /apis/x)"),
    (api_error(400, "bad patch"), True, "Rejected", "bad patch (400)"),
    (api_error(413), True, "Rejected", "413 Reason (413)"),
    (api_error(403, 'jobs.batch is forbidden: User "x" cannot create'), True, "Forbidden",
     'jobs.batch is forbidden: User "x" cannot create (403)'),
    (api_error(401), True, "Unauthorized", "401 Reason (401)"),
    (api_error(404, "the server could not find the requested resource", "GET /apis/m/v1/s"),
     False, "ResourceNotFound",
     "the server could not find the requested resource (404 on GET /apis/m/v1/s)"),
    (api_error(500, "etcdserver: request timed out"), False, "APIUnavailable",
     "etcdserver: request timed out (500)"),
    (api_error(503), False, "APIUnavailable", "503 Reason (503)"),
    (api_error(429, "too many requests"), False, "APIUnavailable", "too many requests (429)"),
    (api_error(0), False, "APIUnavailable", "0 Reason (0)"),
    (urllib3.exceptions.MaxRetryError(None, "/api", ConnectionRefusedError("refused")), False,
     "APIUnavailable", "cannot reach the Kubernetes API server: None: Max retries exceeded "
     "with url: /api (Caused by ConnectionRefusedError('refused'))"),
    (MetricsUnavailable("Prometheus at http://p:9090 cannot be queried: refused"), False,
     "MetricsUnavailable", "Prometheus at http://p:9090 cannot be queried: refused"),
    (ModelUnreadable("the drift reference of model v1 (file:///x) cannot be read: gone"), True,
     "ModelUnreadable", "the drift reference of model v1 (file:///x) cannot be read: gone"),
    (FetchError("fatal: repository not found"), False, "FetchFailed",
     "fatal: repository not found"),
    (TimeoutError(), False, "ReconcileFailed", "TimeoutError: TimeoutError"),
    (KeyError("spec"), False, "ReconcileFailed", "KeyError: 'spec'"),
])
def test_classify_by_intent(exc: BaseException, permanent: bool, reason: str,
                            message: str) -> None:
    failure = classify(exc)
    assert (failure.permanent, failure.reason, failure.message) == (permanent, reason, message)
    assert failure.kind == ("permanent" if permanent else "transient")
    assert not failure.quiet


def test_a_conflict_is_a_quiet_race() -> None:
    failure = classify(api_error(409, "the object has been modified"))
    assert failure.quiet and not failure.permanent and failure.reason == "Conflict"


def test_kopf_errors_keep_their_meaning() -> None:
    import kopf

    assert classify(kopf.PermanentError("no")) == Failure(True, "ReconcileFailed", "no")
    assert classify(kopf.TemporaryError("later", delay=3)) == Failure(
        False, "ReconcileFailed", "later")


def test_retry_delay_backs_off_with_jitter_up_to_the_resync() -> None:
    transient = Failure(False, "APIUnavailable", "x")
    low = [failures.retry_delay(transient, n, resync=60, rng=lambda: 0.0) for n in (1, 2, 3, 9)]
    high = [failures.retry_delay(transient, n, resync=60, rng=lambda: 1.0) for n in (1, 2, 3, 9)]
    assert low == [0.5, 1.0, 2.0, 30.0] and high == [1.0, 2.0, 4.0, 60.0]
    permanent = Failure(True, "Rejected", "x")
    assert failures.retry_delay(permanent, 1, resync=60, rng=lambda: 0.5) == 45.0
    conflict = classify(api_error(409))
    assert failures.retry_delay(conflict, 1, resync=60, rng=lambda: 1.0) == pytest.approx(0.2)


def test_failed_status_keeps_progress_and_recovery_clears_only_the_loops_stalled() -> None:
    status = {"phase": "Progressing", "canary": {"step": 1}, "conditions": []}
    down = failures.failed_status(status, Failure(True, "Rejected", "denied"), 3)
    ready = {c["type"]: c for c in down["conditions"]}
    assert down["canary"] == {"step": 1} and down["phase"] == "Progressing"
    assert (ready["Ready"]["status"], ready["Ready"]["reason"]) == ("False", "Rejected")
    assert ready["Stalled"]["status"] == "True" and ready["Stalled"]["observedGeneration"] == 3
    assert failures.left_by_loop(down)
    transient = failures.failed_status(down, Failure(False, "APIUnavailable", "503"), 3)
    assert [c["type"] for c in transient["conditions"]] == ["Ready"]
    assert [c["type"] for c in failures.recovered(down)["conditions"]] == ["Ready"]
    own = {"conditions": [{"type": "Stalled", "status": "True", "reason": "FlowNotFound"}]}
    assert failures.recovered(own) == own
    assert failures.failed_status(own, Failure(False, "APIUnavailable", "x"), 1)[
        "conditions"][1]["reason"] == "FlowNotFound"


# ------------------------------------------------------------------ the loop, faked API
RES = Resource(api.GROUP, api.VERSION, "ModelDeployment", "modeldeployments")


class FakeKube:
    """Status writes and Events, recorded; a write can be made to fail."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.fail_writes: Exception | None = None
        self.status: dict[str, Any] = {}

    async def patch_status(self, res: Resource, ns: str, name: str, patch: dict) -> dict:
        if self.fail_writes is not None:
            raise self.fail_writes
        self.patches.append(patch)
        for key, value in patch.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value
        return obj(self.status, rv=str(100 + len(self.patches)))

    async def event(self, involved: dict, *, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


class Scripted:
    """A reconciler that fails, succeeds or half-succeeds as the test says."""

    resource = RES

    def __init__(self) -> None:
        self.next: Exception | Outcome = Outcome({})

    async def reconcile(self, o: dict[str, Any]) -> Outcome:
        if isinstance(self.next, Exception):
            raise self.next
        return self.next

    async def cleanup(self, o: dict[str, Any]) -> None:
        return None


def obj(status: dict[str, Any], rv: str = "1") -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": "ModelDeployment",
            "metadata": {"name": "classifier", "namespace": "farm", "generation": 2,
                         "resourceVersion": rv, "uid": "u"},
            "status": json.loads(json.dumps(status))}


def serving() -> Outcome:
    return Outcome({"phase": "Serving", "conditions": [
        {"type": "Ready", "status": "True", "reason": "Serving", "message": "v1",
         "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2}]})


def run(rec: Scripted, kube: FakeKube, metrics: OperatorMetrics | None = None,
        attempt: int = 1):
    return asyncio.run(reconcile_once(rec, kube, obj(kube.status), metrics, attempt))


def errors(metrics: OperatorMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value(
        "trellis_reconcile_errors_total", {"kind": "ModelDeployment", "reason": reason}) or 0


def test_a_failure_is_written_once_with_one_event_and_cleared_by_success() -> None:
    kube, rec, metrics = FakeKube(), Scripted(), OperatorMetrics()
    rec.next = serving()
    run(rec, kube, metrics)
    kube.patches.clear()
    kube.events.clear()
    rec.next = MetricsUnavailable("Prometheus at http://p cannot be queried: refused")
    for attempt in (1, 2, 3):
        result = run(rec, kube, metrics, attempt)
        assert result.failure is not None and result.failure.reason == "MetricsUnavailable"
    assert len(kube.patches) == 1  # the transition; the retries found it already said
    ready = kube.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "MetricsUnavailable")
    assert ready["message"] == "Prometheus at http://p cannot be queried: refused"
    assert kube.events == [("Warning", "MetricsUnavailable", ready["message"])]
    assert kube.status["phase"] == "Serving"  # nothing else of the status moved
    assert errors(metrics, "MetricsUnavailable") == 3

    rec.next = serving()
    assert run(rec, kube, metrics).failure is None
    ready = kube.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("True", "Serving")
    assert kube.events[-1] == ("Normal", "Serving", "v1")


def test_a_permanent_failure_stalls_with_one_event_and_recovery_removes_stalled() -> None:
    kube, rec = FakeKube(), Scripted()
    rec.next = api_error(422, INVALID, "PATCH /apis/machinelearning.seldon.io/v1/x")
    run(rec, kube)
    run(rec, kube)
    types = {c["type"]: c for c in kube.status["conditions"]}
    assert types["Stalled"]["reason"] == types["Ready"]["reason"] == "Rejected"
    assert INVALID in types["Stalled"]["message"]
    assert [e[1] for e in kube.events] == ["Rejected"] and len(kube.patches) == 1
    rec.next = serving()
    run(rec, kube)
    assert [c["type"] for c in kube.status["conditions"]] == ["Ready"]


def test_a_refused_status_write_is_itself_reported_and_nothing_is_counted() -> None:
    kube, rec, metrics = FakeKube(), Scripted(), OperatorMetrics()
    out = serving()
    out.status["canary"] = {"weight": 500}
    out.counts = [Count("canary", ("advance",))]
    rec.next = out
    calls = 0
    real = kube.patch_status

    async def invalid_once(*args: Any) -> dict:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise api_error(422, 'ModelDeployment "classifier" is invalid: status.canary.weight:'
                                 " Invalid value: 500: must be less than or equal to 100")
        return await real(*args)

    kube.patch_status = invalid_once  # type: ignore[method-assign]
    result = run(rec, kube, metrics)
    assert result.failure is not None and result.failure.permanent
    assert "canary" not in kube.status  # the failure went onto the last good status
    assert kube.status["conditions"][0]["reason"] == "Rejected"
    assert "status.canary.weight" in kube.status["conditions"][0]["message"]
    assert metrics.registry.get_sample_value("trellis_canary_decisions_total",
                                             {"decision": "advance"}) is None


def test_counts_follow_the_write_and_partial_progress_is_kept() -> None:
    kube, rec, metrics = FakeKube(), Scripted(), OperatorMetrics()
    out = serving()
    out.counts = [Count("canary", ("promote",))]
    out.events = [Event("CanaryPromoted", "v2 promoted")]
    out.error = ModelUnreadable("the drift reference of model v2 (file:///r) cannot be read")
    rec.next = out
    result = run(rec, kube, metrics)
    assert result.failure is not None and result.failure.reason == "ModelUnreadable"
    assert kube.status["phase"] == "Serving"
    assert {c["type"]: c["reason"] for c in kube.status["conditions"]} == {
        "Ready": "ModelUnreadable", "Stalled": "ModelUnreadable"}
    assert [e[1] for e in kube.events] == ["ModelUnreadable", "CanaryPromoted"]
    assert metrics.registry.get_sample_value("trellis_canary_decisions_total",
                                             {"decision": "promote"}) == 1


def test_an_unreachable_api_server_leaves_status_alone_and_only_logs() -> None:
    kube, rec, metrics = FakeKube(), Scripted(), OperatorMetrics()
    rec.next = serving()
    rec.next.counts = [Count("models")]
    kube.fail_writes = urllib3.exceptions.MaxRetryError(None, "/apis", "refused")
    result = run(rec, kube, metrics)
    assert result.failure is not None and result.failure.reason == "APIUnavailable"
    assert kube.patches == [] and kube.events == []
    assert metrics.registry.get_sample_value("trellis_model_versions_registered_total") == 0


def test_conflicts_stay_off_status_unless_they_last() -> None:
    kube, rec = FakeKube(), Scripted()
    rec.next = api_error(409, "the object has been modified")
    assert run(rec, kube, attempt=1).failure.quiet
    assert run(rec, kube, attempt=2).failure.quiet
    assert kube.patches == []
    run(rec, kube, attempt=failures.QUIET_ATTEMPTS)
    assert kube.status["conditions"][0]["reason"] == "Conflict"


def test_a_half_successful_pass_keeps_the_stored_transition_time() -> None:
    stored = failures.failed_status({}, Failure(True, "ModelUnreadable", "x"), 1)
    for cond in stored["conditions"]:
        cond["lastTransitionTime"] = "2026-01-01T00:00:00Z"
    computed = serving().status  # this pass got as far as Ready=True, then failed
    again = failures.failed_status(computed, Failure(True, "ModelUnreadable", "x"), 1, stored)
    assert [c["lastTransitionTime"] for c in again["conditions"]] == ["2026-01-01T00:00:00Z"] * 2


def test_a_loop_reads_its_own_write_until_the_watch_delivers_it_then_lets_it_go() -> None:
    from controller.loop import latest

    def at(rv: str) -> dict:
        return {"metadata": {"resourceVersion": rv}}

    ours = at("12")
    assert latest(at("11"), ours) == (ours, ours)  # the watch is behind our write
    assert latest(at("12"), ours) == (at("12"), None)  # caught up: kopf's copy only
    assert latest(at("15"), ours) == (at("15"), None)
    assert latest(at("11"), None) == (at("11"), None)
    assert latest({"metadata": {"resourceVersion": "opaque"}}, ours)[1] is None
