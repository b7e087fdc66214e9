"""SpecRepository sync against a real API server and real git (a bare repo as the remote).

The operator runs in-process for the test's namespace. Specs in git carry no
namespace, so they land in the SpecRepository's (the test's). Experiments use
``backend: kubernetes`` (no kubelet here: nothing trains) so that the other
reconcilers sharing the process stay light.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from controller.processes import free_port
from tests.support.gitrepo import FLOW, GitRepo, deployment, experiment
from tests.support.kube import Cluster, condition, wait_for

pytestmark = pytest.mark.e2e
INTERVAL = 2.0


@pytest.fixture
def webhook_port(monkeypatch: pytest.MonkeyPatch) -> int:
    port = free_port()
    monkeypatch.setenv("TRELLIS_WEBHOOK_PORT", str(port))
    return port


@pytest.fixture
def gitops(webhook_port: int, request: pytest.FixtureRequest) -> int:
    """The operator, started after its webhook port is chosen."""
    request.getfixturevalue("operator")
    return webhook_port


@pytest.fixture
def farm(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "farm")
    repo.write("flows/pumpkin_flow.py", FLOW)
    repo.write("specs/experiment.yaml", experiment(namespace=None, gpu=0, backend="kubernetes"))
    repo.write("specs/deployment.yaml", deployment(namespace=None))
    repo.commit_and_push("the farm's specs")
    return repo


def specrepo(farm: GitRepo, interval: str = "2s", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "SpecRepository",
            "metadata": {"name": "farm"},
            "spec": {"url": str(farm.remote), "ref": {"branch": "main"}, "path": "specs",
                     "interval": interval, **spec}}


def synced(cluster: Cluster, ns: str, commit: str, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = cluster.get("specrepo", "farm", ns)
        ready = condition(obj, "Ready")
        if obj and ready and ready["status"] == "True" and \
                obj["status"].get("lastSyncedCommit") == commit:
            return obj
        return None
    return wait_for(check, timeout=timeout, what=f"farm synced at {commit[:12]}")


def lr_of(cluster: Cluster, ns: str) -> Any:
    obj = cluster.get("experiment", "classifier", ns)
    return obj and obj["spec"]["parameters"]["lr"]


def managed_fields(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "experiment", "classifier", "-n", ns, "-o", "json",
                          "--show-managed-fields").stdout
    return json.loads(out)["metadata"]["managedFields"]


def test_push_is_applied_within_an_interval_and_deleted_files_are_pruned(
        cluster: Cluster, namespace: str, gitops: int, farm: GitRepo) -> None:
    c0 = farm.head()
    cluster.apply(specrepo(farm), namespace)
    repo = synced(cluster, namespace, c0)
    st = repo["status"]
    assert st["objects"] == 2 and st["errors"] == []
    assert st["inventory"] == [
        {"kind": "Experiment", "namespace": namespace, "name": "classifier"},
        {"kind": "ModelDeployment", "namespace": namespace, "name": "classifier"}]
    assert condition(repo, "Ready")["reason"] == "Synced"
    assert condition(repo, "Stalled") is None

    exp = cluster.get("experiment", "classifier", namespace)
    meta = exp["metadata"]
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "trellis",
                              "mlops.trellis.dev/specrepository": "farm",
                              "mlops.trellis.dev/specrepository-namespace": namespace}
    ann = meta["annotations"]
    assert ann["mlops.trellis.dev/source-commit"] == c0
    assert ann["mlops.trellis.dev/source-path"] == "specs/experiment.yaml"
    assert ann["mlops.trellis.dev/source-repository"] == f"{namespace}/farm"
    assert ann["mlops.trellis.dev/source-url"] == str(farm.remote)
    assert ann["mlops.trellis.dev/source-secret"] == ""  # no secretRef: a Job clones without
    assert len(ann["mlops.trellis.dev/flow-revision"]) == 16
    checkout = Path(ann["mlops.trellis.dev/source-checkout"])
    assert checkout.name == c0
    assert (checkout / "flows" / "pumpkin_flow.py").read_text() == FLOW
    assert not os.stat(checkout / "flows" / "pumpkin_flow.py").st_mode & stat.S_IWUSR
    managers = {m["manager"]: m["operation"] for m in managed_fields(cluster, namespace)}
    assert managers.get("trellis") == "Apply"

    farm.write("specs/experiment.yaml", experiment(namespace=None, gpu=0, lr=0.002,
                                                   backend="kubernetes"))
    pushed = time.monotonic()
    c1 = farm.commit_and_push("lower the learning rate")
    wait_for(lambda: lr_of(cluster, namespace) == 0.002, timeout=INTERVAL + 15,
             interval=0.1, what="the new lr applied")
    elapsed = time.monotonic() - pushed
    assert elapsed < INTERVAL + 5, f"applied {elapsed:.1f}s after the push"
    synced(cluster, namespace, c1)
    commits = {kind: cluster.get(kind, "classifier", namespace)["metadata"]["annotations"][
        "mlops.trellis.dev/source-commit"] for kind in ("experiment", "modeldeployment")}
    assert commits == {"experiment": c1, "modeldeployment": c0}  # only what changed moved

    farm.remove("specs/deployment.yaml")
    c2 = farm.commit_and_push("no deployment yet")
    repo = synced(cluster, namespace, c2)
    assert cluster.get("modeldeployment", "classifier", namespace) is None
    assert repo["status"]["objects"] == 1
    assert [i["kind"] for i in repo["status"]["inventory"]] == ["Experiment"]

    def synced_events() -> list[str] | None:
        events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o",
                                            "json").stdout)["items"]
        found = sorted(e["message"] for e in events if e["reason"] == "Synced"
                       and e["involvedObject"]["kind"] == "SpecRepository")
        return found if len(found) >= 3 else None

    assert wait_for(synced_events, timeout=10, what="Synced events") == sorted([
        f"commit {c0[:12]}: 2 applied, 0 pruned, 2 managed",
        f"commit {c1[:12]}: 1 applied, 0 pruned, 2 managed",
        f"commit {c2[:12]}: 0 applied, 1 pruned, 1 managed"])


def test_invalid_commit_applies_nothing_until_the_fix(
        cluster: Cluster, namespace: str, gitops: int, farm: GitRepo) -> None:
    good = farm.head()
    cluster.apply(specrepo(farm), namespace)
    synced(cluster, namespace, good)
    farm.write("specs/experiment.yaml", experiment(namespace=None, gpu=0, lr=0.5,
                                                   backend="kubernetes"))
    farm.write("specs/broken.yaml", experiment("broken", namespace=None, gpu=-1))
    bad = farm.commit_and_push("one valid change, one invalid spec")

    def stalled() -> dict[str, Any] | None:
        obj = cluster.get("specrepo", "farm", namespace)
        return obj if condition(obj, "Stalled") else None

    repo = wait_for(stalled, timeout=20, what="Stalled")
    st = repo["status"]
    ready, stall = condition(repo, "Ready"), condition(repo, "Stalled")
    assert (ready["status"], ready["reason"]) == ("False", "ValidationFailed")
    assert (stall["status"], stall["reason"]) == ("True", "ValidationFailed")
    reason = "specs/broken.yaml:13: spec.resources.gpu: Invalid value: -1: should be >= 0"
    assert stall["message"] == f"commit {bad[:12]}: {reason}"
    assert reason in ready["message"] and f"still at {good[:12]}" in ready["message"]
    assert st["lastAttemptedCommit"] == bad and st["lastSyncedCommit"] == good
    assert st["errors"] == [reason]
    assert lr_of(cluster, namespace) == 0.01  # the valid half was not applied either
    assert cluster.get("experiment", "broken", namespace) is None

    farm.write("specs/broken.yaml", experiment("broken", namespace=None, gpu=0,
                                               backend="kubernetes"))
    fixed = farm.commit_and_push("fix the gpu count")
    repo = synced(cluster, namespace, fixed)
    assert condition(repo, "Stalled") is None
    assert lr_of(cluster, namespace) == 0.5
    assert cluster.get("experiment", "broken", namespace) is not None


def test_a_write_the_api_server_refuses_applies_nothing_and_is_retried(
        cluster: Cluster, namespace: str, gitops: int, farm: GitRepo) -> None:
    good = farm.head()
    cluster.apply(specrepo(farm), namespace)
    synced(cluster, namespace, good)
    elsewhere = f"{namespace}-x"
    farm.write("specs/experiment.yaml", experiment(namespace=None, gpu=0, lr=0.3,
                                                   backend="kubernetes"))
    farm.write("specs/elsewhere.yaml", experiment("elsewhere", namespace=elsewhere, gpu=0,
                                                  backend="kubernetes"))
    head = farm.commit_and_push("into a namespace that does not exist yet")

    def apply_failed() -> dict[str, Any] | None:
        obj = cluster.get("specrepo", "farm", namespace)
        ready = condition(obj, "Ready")
        return obj if ready and ready["reason"] == "ApplyFailed" else None

    repo = wait_for(apply_failed, timeout=20, what="ApplyFailed")
    assert repo["status"]["errors"] == [
        f'Experiment {elsewhere}/elsewhere: namespaces "{elsewhere}" not found']
    assert repo["status"]["lastSyncedCommit"] == good
    assert lr_of(cluster, namespace) == 0.01  # the dry run stopped the whole commit
    cluster.create_namespace(elsewhere)
    synced(cluster, namespace, head, timeout=30)  # retried with backoff, by itself
    assert lr_of(cluster, namespace) == 0.3
    assert cluster.get("experiment", "elsewhere", elsewhere) is not None


def _post(port: int, path: str, body: bytes, signature: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers,
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())["message"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["message"]


def test_webhook_and_annotation_sync_at_once(
        cluster: Cluster, namespace: str, gitops: int, farm: GitRepo) -> None:
    secret = b"pumpkin-patch"
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "farm-git"},
                   "stringData": {"webhook-secret": secret.decode()}}, namespace)
    cluster.apply(specrepo(farm, interval="1h", secretRef={"name": "farm-git"}), namespace)
    synced(cluster, namespace, farm.head())
    exp = cluster.get("experiment", "classifier", namespace)
    assert exp["metadata"]["annotations"]["mlops.trellis.dev/source-secret"] == \
        f"{namespace}/farm-git"  # where its training Job's clone finds the credentials

    farm.write("specs/experiment.yaml", experiment(namespace=None, gpu=0, lr=0.003,
                                                   backend="kubernetes"))
    c1 = farm.commit_and_push("via the webhook")
    body = json.dumps({"ref": "refs/heads/main", "after": c1}).encode()
    good = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    hook = f"/hooks/{namespace}/farm"
    code, message = _post(gitops, hook, body, None)
    assert code == 401 and "missing X-Hub-Signature-256" in message
    code, message = _post(gitops, hook, body, "sha256=" + "0" * 64)
    assert code == 403 and "does not match" in message
    code, message = _post(gitops, f"/hooks/{namespace}/nope", body, good)
    assert (code, message) == (404, f"no SpecRepository {namespace}/nope")
    assert lr_of(cluster, namespace) == 0.01  # none of those triggered anything

    posted = time.monotonic()
    code, message = _post(gitops, hook, body, good)
    assert code == 202, message
    wait_for(lambda: lr_of(cluster, namespace) == 0.003, timeout=15, interval=0.05,
             what="the webhook's sync")
    assert time.monotonic() - posted < 5
    synced(cluster, namespace, c1)

    def request_handled() -> str | None:  # recorded as Flux's receivers do: on the object
        obj = cluster.get("specrepo", "farm", namespace)
        asked = obj["metadata"].get("annotations", {}).get(
            "mlops.trellis.dev/reconcile-requested-at")
        return asked if asked and obj["status"].get("lastHandledReconcileAt") == asked else None

    wait_for(request_handled, timeout=10, what="the webhook's request recorded and handled")

    farm.write("specs/experiment.yaml", experiment(namespace=None, gpu=0, lr=0.004,
                                                   backend="kubernetes"))
    c2 = farm.commit_and_push("via the annotation")
    stamp = "2026-01-01T00:00:00Z"
    cluster.kubectl("annotate", "specrepo", "farm", "-n", namespace, "--overwrite",
                    f"mlops.trellis.dev/reconcile-requested-at={stamp}")
    repo = synced(cluster, namespace, c2, timeout=15)
    assert lr_of(cluster, namespace) == 0.004
    assert repo["status"]["lastHandledReconcileAt"] == stamp


def test_force_push_to_an_older_commit_is_followed(
        cluster: Cluster, namespace: str, gitops: int, farm: GitRepo) -> None:
    c0 = farm.head()
    cluster.apply(specrepo(farm), namespace)
    synced(cluster, namespace, c0)
    farm.write("specs/extra.yaml", experiment("extra", namespace=None, gpu=0,
                                              backend="kubernetes"))
    c1 = farm.commit_and_push("an extra experiment")
    synced(cluster, namespace, c1)
    assert cluster.get("experiment", "extra", namespace) is not None

    farm.git("reset", "--quiet", "--hard", c0)
    farm.push(force=True)
    repo = synced(cluster, namespace, c0)
    assert cluster.get("experiment", "extra", namespace) is None
    exp = cluster.get("experiment", "classifier", namespace)
    assert exp["metadata"]["annotations"]["mlops.trellis.dev/source-commit"] == c0
    assert repo["status"]["objects"] == 2


def applied(obj: dict[str, Any]) -> tuple[Any, ...]:
    """What a sync writes of an object: its spec and its source annotations."""
    return (obj["metadata"]["generation"], obj["spec"],
            obj["metadata"]["annotations"].get("mlops.trellis.dev/source-commit"))


def test_unreachable_remote_then_recovery(
        cluster: Cluster, namespace: str, gitops: int, farm: GitRepo) -> None:
    c0 = farm.head()
    cluster.apply(specrepo(farm), namespace)
    synced(cluster, namespace, c0)
    before = applied(cluster.get("experiment", "classifier", namespace))
    away = farm.move_remote_away()

    def fetch_failed() -> dict[str, Any] | None:
        obj = cluster.get("specrepo", "farm", namespace)
        ready = condition(obj, "Ready")
        return obj if ready and ready["reason"] == "FetchFailed" else None

    repo = wait_for(fetch_failed, timeout=20, what="FetchFailed")
    ready = condition(repo, "Ready")
    assert ready["status"] == "False"
    assert ready["message"] == (f"fetching {farm.remote} failed: fatal: '{farm.remote}' "
                                "does not appear to be a git repository")
    assert repo["status"]["lastSyncedCommit"] == c0
    assert condition(repo, "Stalled") is None
    after = applied(cluster.get("experiment", "classifier", namespace))
    assert after == before  # objects untouched (their own status moves on meanwhile)
    time.sleep(2 * INTERVAL)  # retried meanwhile: announced once, on the transition
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    fetch = [e for e in events["items"] if e["reason"] == "FetchFailed"
             and e["involvedObject"]["name"] == "farm"]
    assert [(e["type"], e["message"]) for e in fetch] == [("Warning", ready["message"])]

    farm.bring_remote_back(away)
    repo = synced(cluster, namespace, c0, timeout=30)
    assert repo["status"]["errors"] == []


def test_hand_edit_is_reverted_and_suspend_stops_syncs(
        cluster: Cluster, namespace: str, gitops: int, farm: GitRepo) -> None:
    cluster.apply(specrepo(farm), namespace)
    synced(cluster, namespace, farm.head())
    cluster.kubectl("patch", "experiment", "classifier", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"parameters": {"lr": 0.9}}}))
    assert lr_of(cluster, namespace) == 0.9
    wait_for(lambda: lr_of(cluster, namespace) == 0.01, timeout=INTERVAL + 15,
             what="the hand edit reverted")

    # A lost cache (an operator restarted on an empty disk) is rebuilt for live objects,
    # also for an Experiment still pointing at an older commit's checkout.
    c0 = farm.head()
    farm.write("specs/deployment.yaml", deployment(namespace=None, steps="[50, 100]"))
    synced(cluster, namespace, farm.commit_and_push("only the deployment changes"))
    exp = cluster.get("experiment", "classifier", namespace)
    checkout = Path(exp["metadata"]["annotations"]["mlops.trellis.dev/source-checkout"])
    assert checkout.name == c0
    shutil.rmtree(checkout)
    wait_for(lambda: (checkout / "flows" / "pumpkin_flow.py").is_file(),
             timeout=INTERVAL + 15, what="the checkout restored")

    cluster.kubectl("patch", "specrepo", "farm", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"suspend": True}}))

    def suspended() -> dict[str, Any] | None:
        obj = cluster.get("specrepo", "farm", namespace)
        ready = condition(obj, "Ready")
        return obj if ready and ready["reason"] == "Suspended" else None

    wait_for(suspended, timeout=15, what="Suspended")
    farm.write("specs/experiment.yaml", experiment(namespace=None, gpu=0, lr=0.7,
                                                   backend="kubernetes"))
    c1 = farm.commit_and_push("while suspended")
    deadline = time.monotonic() + 3 * INTERVAL
    while time.monotonic() < deadline:  # three intervals in which nothing may happen
        assert lr_of(cluster, namespace) == 0.01
        time.sleep(0.5)
    cluster.kubectl("patch", "specrepo", "farm", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"suspend": False}}))
    synced(cluster, namespace, c1)
    assert lr_of(cluster, namespace) == 0.7


def test_quiet_when_nothing_changes(
        cluster: Cluster, namespace: str, gitops: int, farm: GitRepo) -> None:
    cluster.apply(specrepo(farm), namespace)
    repo = synced(cluster, namespace, farm.head())
    applied_at = [m["time"] for m in managed_fields(cluster, namespace)
                  if m["manager"] == "trellis"]
    events_before = _events_about(cluster, namespace, "farm")
    time.sleep(4 * INTERVAL)  # four sync intervals: fetch, compare, and write nothing
    after = cluster.get("specrepo", "farm", namespace)
    assert after["metadata"]["resourceVersion"] == repo["metadata"]["resourceVersion"]
    assert [m["time"] for m in managed_fields(cluster, namespace)
            if m["manager"] == "trellis"] == applied_at
    assert _events_about(cluster, namespace, "farm") == events_before


def _events_about(cluster: Cluster, namespace: str, name: str) -> list[tuple[str, int]]:
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    return sorted((e["metadata"]["name"], e.get("count", 1)) for e in events["items"]
                  if e["involvedObject"]["name"] == name
                  and e["involvedObject"]["kind"] == "SpecRepository")


def test_server_side_apply_of_an_unchanged_object_writes_nothing(
        cluster: Cluster, namespace: str, operator_env: dict[str, str]) -> None:
    """Why re-applying is safe: the API server treats an identical apply as a no-op."""
    import asyncio

    import yaml

    from controller.kube import Kube

    obj = yaml.safe_load(experiment(namespace=namespace, gpu=0, backend="kubernetes"))

    async def twice() -> tuple[str, str, list[str], list[str]]:
        kube = Kube.from_env()
        try:
            first = await kube.apply(obj)
            second = await kube.apply(obj)
        finally:
            await kube.close()
        times = [[m["time"] for m in o["metadata"]["managedFields"]] for o in (first, second)]
        return (first["metadata"]["resourceVersion"], second["metadata"]["resourceVersion"],
                *times)

    rv1, rv2, t1, t2 = asyncio.run(twice())
    assert (rv1, t1) == (rv2, t2)
