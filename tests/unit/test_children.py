"""``controller.children``: the watches' cache of what the operator owns, read before the
API server; and the operator's request counting (``controller.kube``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kopf
import pytest

from controller import api, children
from controller.children import Children
from controller.kube import JOBS, PODS, SELDON_DEPLOYMENTS, verb_and_resource
from controller.settings import Settings
from controller.training.kubernetes import KubernetesTrainingBackend, job_state
from tests.support.kopf_index import Index

NS = "farm"


def job(name: str, rv: int, *, conditions: list | None = None, labelled: bool = True,
        owner: str = "classifier") -> dict[str, Any]:
    labels = {api.LABEL_MANAGED_BY: api.MANAGED_BY, api.LABEL_EXPERIMENT: owner} \
        if labelled else {}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": NS, "uid": f"u-{name}",
                         "resourceVersion": str(rv), "labels": labels,
                         "ownerReferences": [{"apiVersion": api.API_VERSION,
                                              "kind": "Experiment", "name": owner,
                                              "uid": "x", "controller": True}],
                         "managedFields": [{"manager": "kube"}]},
            "spec": {"template": {"spec": {"containers": [{"name": "flow"}]}}},
            "status": {"active": 1, "conditions": conditions or []}}


def pod(name: str, job_name: str, waiting: str | None = None) -> dict[str, Any]:
    statuses = [{"name": "flow", "state": {"waiting": {"reason": waiting, "message": "nope"}}}] \
        if waiting else []
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "resourceVersion": "1",
                         "creationTimestamp": "2026-11-30T00:00:00Z",
                         "labels": {children.LABEL_JOB_NAME: job_name,
                                    api.LABEL_MANAGED_BY: api.MANAGED_BY,
                                    api.LABEL_EXPERIMENT: "classifier"},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                              "name": job_name, "controller": True}]},
            "spec": {"containers": [{"name": "flow", "image": "x"}]},
            "status": {"phase": "Pending", "containerStatuses": statuses}}


class FakeKube:
    def __init__(self, objects: dict[tuple[str, str], dict] | None = None) -> None:
        self.objects = objects or {}
        self.calls: list[tuple[str, str]] = []

    async def get(self, res, namespace, name):
        self.calls.append(("get", res.plural))
        return self.objects.get((res.plural, name))

    async def list(self, res, namespace=None, label_selector=None, field_selector=None):
        self.calls.append(("list", res.plural))
        return [o for (plural, _), o in self.objects.items() if plural == res.plural]

    async def create(self, res, namespace, obj):
        self.calls.append(("create", res.plural))
        created = {**obj, "metadata": {**obj["metadata"], "resourceVersion": "7"}}
        self.objects[(res.plural, obj["metadata"]["name"])] = created
        return created

    async def delete(self, res, namespace, name):
        self.calls.append(("delete", res.plural))
        return self.objects.pop((res.plural, name), None) is not None


def indices(jobs: Index | None = None, pods: Index | None = None,
            sdeps: Index | None = None) -> dict[str, Index]:
    return {children.JOBS_INDEX: Index() if jobs is None else jobs,
            children.PODS_INDEX: Index() if pods is None else pods,
            children.SELDON_INDEX: Index() if sdeps is None else sdeps}


# ----------------------------------------------------------------- index entries
def test_entries_keep_what_reconcilers_read_and_drop_the_rest() -> None:
    (key, entry), = children.job_entry(job("classifier-g1-a1", 5)).items()
    assert key == (NS, "classifier-g1-a1")
    assert entry["status"]["active"] == 1 and "spec" not in entry
    assert "managedFields" not in entry["metadata"]
    assert job_state(entry) == ("running", "Job created; waiting for its pods")
    (key, entry), = children.pod_entry(pod("p1", "classifier-g1-a1", "ImagePullBackOff")).items()
    assert key == (NS, "classifier-g1-a1")  # a Pod is found by its Job
    assert "spec" not in entry and entry["status"]["containerStatuses"]


def test_a_child_wakes_its_owner() -> None:
    assert children.owner_of(job("j", 1)) == ("Experiment", NS, "classifier")
    # a Pod is owned by its Job; the Job's pod template carries the Experiment's label
    assert children.owner_of(pod("p", "j")) == ("Experiment", NS, "classifier")
    sdep = {"metadata": {"namespace": NS, "name": "c", "ownerReferences": [
        {"apiVersion": api.API_VERSION, "kind": "ModelDeployment", "name": "c",
         "controller": True}]}}
    assert children.owner_of(sdep) == ("ModelDeployment", NS, "c")
    assert children.owner_of({"metadata": {"namespace": NS, "name": "stray"}}) is None


# ----------------------------------------------------------------------- reads
def test_a_watched_child_is_read_from_memory() -> None:
    kube = FakeKube()
    jobs = Index().add(children.job_entry(job("j", 5)))
    pods = Index().add(children.pod_entry(pod("p", "j", "ErrImagePull")))
    cache = Children(kube, indices(jobs, pods))
    seen = asyncio.run(cache.get(JOBS, NS, "j"))
    assert seen.watched and seen.obj["metadata"]["resourceVersion"] == "5"
    assert [p["metadata"]["name"] for p in asyncio.run(cache.pods_of_job(NS, seen))] == ["p"]
    assert kube.calls == []


def test_a_miss_asks_the_api_server() -> None:
    """A Job the watch cannot see (someone made it without our label): read by GET, and
    its Pods listed; no watch means no wake-up, so the caller polls it."""
    kube = FakeKube({("jobs", "foreign"): job("foreign", 3, labelled=False)})
    cache = Children(kube, indices())
    seen = asyncio.run(cache.get(JOBS, NS, "foreign"))
    assert seen.obj is not None and not seen.watched
    asyncio.run(cache.pods_of_job(NS, seen))
    assert asyncio.run(cache.get(JOBS, NS, "gone")).obj is None
    assert kube.calls == [("get", "jobs"), ("list", "pods"), ("get", "jobs")]


def test_an_unseen_child_is_absent_for_a_caller_that_applies_idempotently() -> None:
    """The Seldon driver's answer to "absent" is a server-side apply: a deployment still
    waiting for its model asks the API server nothing about its SeldonDeployment, while
    a Job, whose absence ends a run as lost, is still asked."""
    kube = FakeKube()
    cache = Children(kube, indices())
    seen = asyncio.run(cache.get(SELDON_DEPLOYMENTS, NS, "m", unseen_is_absent=True))
    assert seen == children.Seen(None, True) and kube.calls == []
    assert asyncio.run(cache.get(JOBS, NS, "j")).obj is None
    assert kube.calls == [("get", "jobs")]
    unwatched = Children(kube)  # no watch: only the API server knows
    asyncio.run(unwatched.get(SELDON_DEPLOYMENTS, NS, "m", unseen_is_absent=True))
    assert kube.calls[-1] == ("get", "seldondeployments")


class DiscoveryKube(FakeKube):
    """Serves API discovery: the Seldon group only once Seldon Core is installed."""

    def __init__(self, seldon: bool | None) -> None:
        super().__init__()
        self.seldon = seldon

    async def request(self, method: str, path: str, *_: Any) -> dict:
        if self.seldon is None:
            raise children.ApiException(status=403, reason="Forbidden")
        served = {"/apis/batch/v1": ["jobs", "jobs/status"], "/api/v1": ["pods", "events"]}
        if self.seldon:
            served["/apis/machinelearning.seldon.io/v1"] = ["seldondeployments"]
        if path not in served:
            raise children.ApiException(status=404, reason="Not Found")
        return {"resources": [{"name": n} for n in served[path]]}


def test_a_kind_not_served_at_start_up_is_read_by_request() -> None:
    """No Seldon CRD when the operator started: kopf may never watch SeldonDeployments,
    so their empty index says nothing about them and they are asked for."""
    assert asyncio.run(children.unserved_kinds(DiscoveryKube(seldon=True))) == frozenset()
    # Discovery refused (a cluster that withdrew it): every kind is taken as served.
    assert asyncio.run(children.unserved_kinds(DiscoveryKube(seldon=None))) == frozenset()
    kube = DiscoveryKube(seldon=False)
    unserved = asyncio.run(children.unserved_kinds(kube))
    assert unserved == {"seldondeployments"}
    cache = Children(kube, indices(), unserved)
    assert cache.watching(JOBS) and not cache.watching(SELDON_DEPLOYMENTS)
    seen = asyncio.run(cache.get(SELDON_DEPLOYMENTS, NS, "m", unseen_is_absent=True))
    assert not seen.watched and kube.calls == [("get", "seldondeployments")]


def test_without_watches_everything_is_read_by_request() -> None:
    kube = FakeKube({("jobs", "j"): job("j", 3)})
    cache = Children(kube)
    assert not cache.watching(JOBS)
    cache.note(JOBS, job("j", 9))  # nothing would deliver it: not kept
    assert asyncio.run(cache.get(JOBS, NS, "j")).obj["metadata"]["resourceVersion"] == "3"


def test_our_write_is_read_back_until_the_watch_delivers_it() -> None:
    kube = FakeKube()
    sdeps = Index().add(children.seldon_entry(job("c", 5)))
    cache = Children(kube, indices(sdeps=sdeps))
    cache.note(SELDON_DEPLOYMENTS, job("c", 8))  # applied: rv 8; the cache still has 5
    seen = asyncio.run(cache.get(SELDON_DEPLOYMENTS, NS, "c"))
    assert seen.obj["metadata"]["resourceVersion"] == "8" and not seen.watched
    cache.delivered(SELDON_DEPLOYMENTS.plural, job("c", 6), deleted=False)  # older: kept
    assert asyncio.run(cache.get(SELDON_DEPLOYMENTS, NS, "c")).obj["metadata"][
        "resourceVersion"] == "8"
    sdeps.clear()
    sdeps.add(children.seldon_entry(job("c", 8)))
    cache.delivered(SELDON_DEPLOYMENTS.plural, job("c", 8), deleted=False)
    seen = asyncio.run(cache.get(SELDON_DEPLOYMENTS, NS, "c"))
    assert seen.watched and seen.obj["metadata"]["resourceVersion"] == "8"
    assert kube.calls == []


def test_a_deleted_child_is_not_resurrected_by_our_note() -> None:
    kube = FakeKube()
    cache = Children(kube, indices())
    cache.note(JOBS, job("j", 4))
    assert asyncio.run(cache.get(JOBS, NS, "j")).obj is not None  # created, not delivered
    cache.delivered(JOBS.plural, job("j", 4), deleted=True)
    assert asyncio.run(cache.get(JOBS, NS, "j")).obj is None
    assert kube.calls == [("get", "jobs")]


def test_a_note_is_trusted_for_a_while_only(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(children.time, "monotonic", lambda: now[0])
    kube = FakeKube()
    cache = Children(kube, indices())
    cache.note(JOBS, job("j", 4))
    now[0] += children.NOTE_TTL + 1  # the watch never delivered it: ask the API server
    assert asyncio.run(cache.get(JOBS, NS, "j")).obj is None
    assert kube.calls == [("get", "jobs")]


def test_an_unlabelled_write_is_not_noted() -> None:
    cache = Children(FakeKube(), indices())
    cache.note(JOBS, job("j", 4, labelled=False))  # the watch would never deliver it
    assert asyncio.run(cache.get(JOBS, NS, "j")).obj is None


def test_the_training_backend_launches_once_and_follows_the_cache() -> None:
    kube = FakeKube()
    jobs = Index()
    pods = Index().add(children.pod_entry(pod("p", "j", "ImagePullBackOff")))
    cache = Children(kube, indices(jobs, pods))
    backend = KubernetesTrainingBackend(kube, Settings(), cache)
    created, adopted = asyncio.run(backend.launch(job("j", 1)))
    assert not adopted and kube.calls == [("get", "jobs"), ("create", "jobs")]
    # Adoption asks the API server (never a cache that may hold a deleted Job).
    assert asyncio.run(backend.launch(job("j", 1)))[1]
    jobs.add(children.job_entry(created))
    seen = asyncio.run(backend.observe(NS, "j"))
    assert seen.state == "running" and seen.blocked.reason == "ImagePullBackOff"
    assert kube.calls == [("get", "jobs"), ("create", "jobs"), ("get", "jobs")]


def test_a_failed_job_lists_its_pods_for_their_last_words() -> None:
    """The Pods' watch may lag the Job's: the failure message, written once, lists them."""
    failed = job("j", 5, conditions=[{"type": "Failed", "status": "True",
                                      "message": "BackoffLimitExceeded"}])
    dead = pod("p", "j")
    dead["status"]["containerStatuses"] = [{"name": "flow", "state": {"terminated": {
        "exitCode": 3, "reason": "Error", "message": "no data"}}}]
    kube = FakeKube({("pods", "p"): dead})
    cache = Children(kube, indices(Index().add(children.job_entry(failed)), Index()))
    seen = asyncio.run(KubernetesTrainingBackend(kube, Settings(), cache).observe(NS, "j"))
    assert seen.state == "failed" and "exit code 3" in seen.message
    assert "no data" in seen.message
    assert kube.calls == [("list", "pods")]


def _finished(conditions: list[dict], message: str) -> tuple[FakeKube, Children]:
    done = job("j", 5, conditions=conditions)
    ended = pod("p", "j")
    ended["status"]["containerStatuses"] = [{"name": "flow", "state": {"terminated": {
        "exitCode": 0, "reason": "Completed", "message": message}}}]
    kube = FakeKube({("pods", "p"): ended})
    return kube, Children(kube, indices(Index().add(children.job_entry(done)), Index()))


COMPLETE = [{"type": "Complete", "status": "True"}]


def test_a_completed_job_gives_the_run_result_from_its_pod() -> None:
    """The outcome comes from the pod's termination message, not Metaflow's metadata."""
    result = {"podrun": 1, "pathspec": "PumpkinFlow/7", "model_uri": "s3://b/m/7",
              "metrics": {"accuracy": 0.95}}
    kube, cache = _finished(COMPLETE, json.dumps(result))
    seen = asyncio.run(KubernetesTrainingBackend(kube, Settings(), cache).observe(NS, "j"))
    assert seen.state == "succeeded" and seen.result == result


@pytest.mark.parametrize("message", ["", "Traceback: the log's tail, not JSON",
                                     json.dumps({"podrun": 1, "pathspec": "F/1"}),
                                     json.dumps({"pathspec": "F/1", "model_uri": "s3://x"})])
def test_a_completed_job_without_a_run_result_is_a_failed_run(message: str) -> None:
    kube, cache = _finished(COMPLETE, message)
    seen = asyncio.run(KubernetesTrainingBackend(kube, Settings(), cache).observe(NS, "j"))
    assert seen.state == "failed" and "no run result" in seen.message


def test_a_failed_run_says_the_flows_error() -> None:
    result = {"podrun": 1, "returncode": 1, "error": "the flow exited with code 1",
              "output": "Traceback ...\nboom"}
    kube, cache = _finished([{"type": "Failed", "status": "True",
                              "message": "BackoffLimitExceeded"}], json.dumps(result))
    seen = asyncio.run(KubernetesTrainingBackend(kube, Settings(), cache).observe(NS, "j"))
    assert seen.state == "failed" and seen.message.endswith("boom")
    assert seen.message.startswith("BackoffLimitExceeded: the flow exited with code 1")


def test_an_entry_unchanged_for_long_is_confirmed_once(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """A relist keeps a child deleted during the gap in kopf's index: one GET per
    ``VERIFY_S`` per unchanged entry finds it gone."""
    now = [100.0]
    monkeypatch.setattr(children.time, "monotonic", lambda: now[0])
    kube = FakeKube({("jobs", "j"): job("j", 5)})
    jobs = Index().add(children.job_entry(job("j", 5)))
    cache = Children(kube, indices(jobs))
    assert asyncio.run(cache.get(JOBS, NS, "j")).watched and kube.calls == []
    now[0] += children.VERIFY_S + 1
    seen = asyncio.run(cache.get(JOBS, NS, "j"))  # still there: confirmed, watched
    assert seen.watched and kube.calls == [("get", "jobs")]
    now[0] += 10
    asyncio.run(cache.get(JOBS, NS, "j"))
    assert kube.calls == [("get", "jobs")]  # confirmed recently: memory again
    del kube.objects[("jobs", "j")]  # deleted while the watch was away
    now[0] += children.VERIFY_S + 1
    assert asyncio.run(cache.get(JOBS, NS, "j")).obj is None


class ReviewKube:
    def __init__(self, denied: set[tuple[str, str]]) -> None:
        self.denied = denied

    async def request(self, method: str, path: str, body: dict) -> dict:
        attrs = body["spec"]["resourceAttributes"]
        return {"status": {"allowed": (attrs["verb"], attrs["resource"]) not in self.denied}}


def test_start_up_refuses_a_role_that_cannot_watch_a_child_kind() -> None:
    """kopf would wait for that kind's index forever, every loop held, liveness green."""
    asyncio.run(children.require_watch_access(ReviewKube(set()), None))
    with pytest.raises(kopf.PermanentError, match="watch pods cluster-wide") as err:
        asyncio.run(children.require_watch_access(ReviewKube({("watch", "pods")}), None))
    assert "list" not in str(err.value).split("need: ")[1]
    with pytest.raises(kopf.PermanentError, match=r"list jobs\.batch in namespace farm"):
        asyncio.run(children.require_watch_access(ReviewKube({("list", "jobs")}), ["farm"]))


# ------------------------------------------------------------ request counting
@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", JOBS.path(NS, "j"), ("get", "jobs")),
    ("GET", JOBS.path(NS), ("list", "jobs")),
    ("GET", PODS.path(None), ("list", "pods")),
    ("POST", JOBS.path(NS), ("create", "jobs")),
    ("PATCH", "/apis/mlops.trellis.dev/v1alpha1/namespaces/farm/experiments/x/status",
     ("patch", "experiments/status")),
    ("DELETE", SELDON_DEPLOYMENTS.path(NS, "c"), ("delete", "seldondeployments")),
    ("GET", "/api/v1/namespaces/farm", ("get", "namespaces")),
    ("GET", "/api/v1/namespaces", ("list", "namespaces")),
])
def test_requests_are_named_as_the_authorizer_names_them(method: str, path: str,
                                                         expected: tuple[str, str]) -> None:
    assert verb_and_resource(method, path) == expected


# ------------------------------------------------------------------- wake-ups
def test_a_child_event_wakes_only_its_owner_and_a_namespace_wake_only_that_namespace() -> None:
    from controller.loop import Wakeups

    async def scenario() -> None:
        w = Wakeups()
        mine, other = w.get("Experiment", NS, "classifier"), w.get("Experiment", NS, "other")
        elsewhere = w.get("ModelDeployment", "elsewhere", "c")
        here = w.get("ModelDeployment", NS, "c")
        w.wake(*children.owner_of(job("j", 1)))
        assert mine.is_set() and not other.is_set()
        w.wake_namespace("ModelDeployment", NS)
        assert here.is_set() and not elsewhere.is_set()
        w.forget("Experiment", NS, "classifier")
        w.wake("Experiment", NS, "classifier")  # forgotten: nothing to wake, no error
        assert w.get("Experiment", NS, "classifier") is not mine
    asyncio.run(scenario())


def _refused_job(started: str) -> dict[str, Any]:
    started_job = job("j", 3)
    started_job["status"] = {"active": 0, "startTime": started}
    return started_job


FAILED_CREATE = {"reason": "FailedCreate", "type": "Warning", "count": 4,
                 "involvedObject": {"kind": "Job", "name": "j", "uid": "u-j"},
                 "lastTimestamp": "2026-11-30T00:00:09Z",
                 "message": 'Error creating: pods "j-x" is forbidden: violates PodSecurity '
                            '"restricted:latest": hostPath volumes (volume "host-0")'}


def test_a_started_job_without_pods_is_explained_by_its_events_with_a_backoff() -> None:
    """The Job controller's FailedCreate (Pod Security, a quota) is all Kubernetes says:
    the Job stays active with no pod. Its Events are asked once, then not again until
    the backoff has passed — a request per troubled Job, none for a healthy one."""
    kube = FakeKube({("events", "e1"): FAILED_CREATE})
    cache = Children(kube, indices(Index().add(children.job_entry(
        _refused_job("2026-11-30T00:00:00Z"))), Index()))
    backend = KubernetesTrainingBackend(kube, Settings(), cache)
    seen = asyncio.run(backend.observe(NS, "j"))
    assert seen.state == "running" and seen.blocked.reason == "FailedCreate"
    assert 'violates PodSecurity "restricted:latest"' in seen.blocked.message
    assert "(4 attempts)" in seen.blocked.message
    again = asyncio.run(backend.observe(NS, "j"))
    assert again.blocked == seen.blocked  # remembered, not asked again
    assert kube.calls == [("list", "events")]


def test_deleting_a_refused_job_forgets_what_its_events_said() -> None:
    """An Experiment deleted while its Job is refused takes the Job's backoff entry with
    it: the operator keeps nothing per deleted run."""
    kube = FakeKube({("events", "e1"): FAILED_CREATE})
    cache = Children(kube, indices(Index().add(children.job_entry(
        _refused_job("2026-11-30T00:00:00Z"))), Index()))
    backend = KubernetesTrainingBackend(kube, Settings(), cache)
    assert asyncio.run(backend.observe(NS, "j")).blocked is not None
    assert backend._refusals
    asyncio.run(backend.delete(NS, "j"))
    assert not backend._refusals


def test_a_job_just_started_or_not_started_asks_nothing() -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for status in ({"active": 0, "startTime": now}, {"active": 0}):
        fresh = job("j", 3)
        fresh["status"] = status
        kube = FakeKube({("events", "e1"): FAILED_CREATE})
        cache = Children(kube, indices(Index().add(children.job_entry(fresh)), Index()))
        seen = asyncio.run(KubernetesTrainingBackend(kube, Settings(), cache).observe(NS, "j"))
        assert seen.state == "running" and seen.blocked is None
        assert kube.calls == []
