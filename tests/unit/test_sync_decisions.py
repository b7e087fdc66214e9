"""``controller.gitops.sync`` (and the coherence rules, backoff): pure decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller import api
from controller.gitops import coherence, sync
from controller.schema import with_defaults
from controller.specfiles import Document

SOURCE = sync.Source("farm-ns", "farm", "https://git.example.com/farm.git", "c" * 40,
                     "/cache/farm-ns/farm/commits/" + "c" * 40,
                     {"flows/pumpkin_flow.py": "0123456789abcdef"})
OWNER = {"app.kubernetes.io/managed-by": "trellis", "mlops.trellis.dev/specrepository": "farm",
         "mlops.trellis.dev/specrepository-namespace": "farm-ns"}


def doc(kind: str, name: str, namespace: str | None = None, path: str = "specs/a.yaml",
        **meta: Any) -> Document:
    spec: dict[str, Any] = {"model": {"experiment": "e"}}
    if kind == "Experiment":
        spec = {"flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"},
                "objective": {"metric": "accuracy", "goal": "maximize", "threshold": 0.9}}
    metadata = {"name": name, **({"namespace": namespace} if namespace else {}), **meta}
    obj = {"apiVersion": api.API_VERSION, "kind": kind, "metadata": metadata, "spec": spec,
           "status": {"phase": "Running"}}
    return Document(Path(path), 0, obj, 1)


def test_desired_object_carries_its_source() -> None:
    obj = sync.desired_object(doc("Experiment", "e", labels={"team": "farm"},
                                  annotations={"note": "hi"}, uid="x"), SOURCE)
    assert obj["metadata"] == {
        "name": "e", "namespace": "farm-ns",  # no namespace in git: the SpecRepository's
        "labels": {"team": "farm", **OWNER},
        "annotations": {
            "note": "hi",
            "mlops.trellis.dev/source-repository": "farm-ns/farm",
            "mlops.trellis.dev/source-url": "https://git.example.com/farm.git",
            "mlops.trellis.dev/source-path": "specs/a.yaml",
            "mlops.trellis.dev/source-commit": "c" * 40,
            "mlops.trellis.dev/source-checkout": SOURCE.checkout,
            "mlops.trellis.dev/flow-revision": "0123456789abcdef",
            "mlops.trellis.dev/source-secret": "",  # the SpecRepository has no secretRef
        }}
    assert "status" not in obj


def test_an_experiment_names_its_repositorys_credentials_secret() -> None:
    """Where the training Job's clone finds its git credentials; dropping the secretRef
    changes the annotation, so the Experiment is rewritten without it."""
    with_secret = sync.Source(**{**SOURCE.__dict__, "secret": "farm-git"})
    exp = sync.desired_object(doc("Experiment", "e", namespace="other"), with_secret)
    assert exp["metadata"]["annotations"][api.ANN_SOURCE_SECRET] == "farm-ns/farm-git"
    mdep = sync.desired_object(doc("ModelDeployment", "d"), with_secret)
    assert api.ANN_SOURCE_SECRET not in mdep["metadata"]["annotations"]
    before = live(exp, **OWNER)
    assert not sync.drifted(exp, before)
    assert sync.drifted(sync.desired_object(doc("Experiment", "e", namespace="other"), SOURCE),
                        before)


def test_only_experiments_get_the_checkout_and_namespaces_in_git_win() -> None:
    obj = sync.desired_object(doc("ModelDeployment", "d", namespace="other"), SOURCE)
    assert obj["metadata"]["namespace"] == "other"
    assert api.ANN_SOURCE_CHECKOUT not in obj["metadata"]["annotations"]
    assert api.ANN_FLOW_REVISION not in obj["metadata"]["annotations"]


SUBSET = [
    ("equal", {"a": 1}, {"a": 1}, True),
    ("live has more (defaults, other managers)", {"a": 1}, {"a": 1, "b": 2}, True),
    ("changed by hand", {"a": 1}, {"a": 2}, False),
    ("removed by hand", {"a": {"b": 1}}, {"a": {}}, False),
    ("1 and 1.0 are one number", {"lr": 1}, {"lr": 1.0}, True),
    ("true is not 1", {"x": True}, {"x": 1}, False),
    ("lists compare whole", {"s": [10, 100]}, {"s": [10, 50, 100]}, False),
    ("lists of maps, element-wise subsets", {"s": [{"a": 1}]}, {"s": [{"a": 1, "b": 0}]}, True),
    ("a map where a scalar is", {"a": {"b": 1}}, {"a": 3}, False),
]


@pytest.mark.parametrize(("want", "have", "ok"), [c[1:] for c in SUBSET],
                         ids=[c[0] for c in SUBSET])
def test_is_subset(want: Any, have: Any, ok: bool) -> None:
    assert sync.is_subset(want, have) is ok


def live(obj: dict[str, Any], **labels: str) -> dict[str, Any]:
    """``obj`` as the API server returns it: defaults, extra metadata."""
    out = with_defaults(obj)
    out["metadata"] = {**obj["metadata"], "uid": "u", "resourceVersion": "7",
                       "labels": {**obj["metadata"]["labels"], **labels},
                       "annotations": {**obj["metadata"]["annotations"], "kopf": "x"}}
    out["status"] = {"phase": "Succeeded"}
    return out


def test_plan_sync_applies_only_what_drifted_and_prunes_only_what_it_owns() -> None:
    same = sync.desired_object(doc("Experiment", "same"), SOURCE)
    edited = sync.desired_object(doc("Experiment", "edited"), SOURCE)
    missing = sync.desired_object(doc("ModelDeployment", "missing"), SOURCE)
    hand = live(edited)
    hand["spec"]["flow"]["name"] = "OtherFlow"
    gone_ours = live(sync.desired_object(doc("Experiment", "gone"), SOURCE))
    gone_theirs = live(sync.desired_object(doc("Experiment", "theirs"), SOURCE))
    gone_theirs["metadata"]["labels"]["mlops.trellis.dev/specrepository"] = "other-repo"
    unmanaged = {"kind": "Experiment", "metadata": {"name": "manual", "namespace": "farm-ns"}}
    found = {sync.key_of(o): o for o in (live(same), hand, gone_ours, gone_theirs, unmanaged)}

    decided = sync.plan_sync([same, edited, missing], found, "farm-ns", "farm", prune=True)
    assert [sync.key_of(o) for o in decided.apply] == [
        ("Experiment", "farm-ns", "edited"), ("ModelDeployment", "farm-ns", "missing")]
    assert decided.prune == [("Experiment", "farm-ns", "gone")]
    assert sync.plan_sync([same], found, "farm-ns", "farm", prune=False).prune == []


def test_a_new_commit_rewrites_only_what_changed() -> None:
    old = live(sync.desired_object(doc("Experiment", "e"), SOURCE))
    newer = sync.Source(**{**SOURCE.__dict__, "commit": "d" * 40, "checkout": "/d"})
    assert not sync.drifted(sync.desired_object(doc("Experiment", "e"), newer), old)
    moved = sync.desired_object(doc("Experiment", "e", path="specs/b.yaml"), newer)
    assert sync.drifted(moved, old)
    recoded = sync.Source(**{**newer.__dict__,
                             "flow_revisions": {"flows/pumpkin_flow.py": "fedcba9876543210"}})
    assert sync.drifted(sync.desired_object(doc("Experiment", "e"), recoded), old)


def test_checkouts_in_use_and_kept() -> None:
    newer = sync.Source(**{**SOURCE.__dict__, "commit": "d" * 40, "checkout": "/d"})
    desired = [sync.desired_object(doc("Experiment", n), newer) for n in ("same", "edited")]
    desired.append(sync.desired_object(doc("ModelDeployment", "m"), newer))
    found = {sync.key_of(o): live(sync.desired_object(doc(o["kind"], o["metadata"]["name"]),
                                                      SOURCE)) for o in desired}
    found[("Experiment", "farm-ns", "edited")]["spec"]["flow"]["name"] = "Other"
    decided = sync.plan_sync(desired, found, "farm-ns", "farm", prune=True)
    assert [sync.key_of(o)[2] for o in decided.apply] == ["edited"]
    assert sync.kept_checkouts(desired, decided, found) == [
        (("Experiment", "farm-ns", "same"), "c" * 40, SOURCE.checkout)]
    assert sync.commits_in_use(desired, decided, found) == {"c" * 40, "d" * 40}


def test_scopes_cover_where_objects_are_wanted_and_were() -> None:
    desired = [sync.desired_object(doc("Experiment", "e"), SOURCE)]
    previous = [{"kind": "ModelDeployment", "namespace": "elsewhere", "name": "d"}]
    assert sync.scopes(desired, previous) == {("Experiment", "farm-ns"),
                                              ("ModelDeployment", "elsewhere")}


def _conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_status_transitions() -> None:
    objs = [sync.desired_object(doc("Experiment", "e"), SOURCE)]
    ok = sync.status_synced({}, 1, "a" * 40, objs, "branch main", "2026-01-01T00:00:00Z", True)
    assert ok["lastSyncedCommit"] == ok["lastAttemptedCommit"] == "a" * 40
    assert ok["objects"] == 1 and ok["errors"] == [] and ok["observedGeneration"] == 1
    assert ok["inventory"] == [{"kind": "Experiment", "namespace": "farm-ns", "name": "e"}]
    assert _conds(ok) == {"Ready": ("True", "Synced")}

    quiet = sync.status_synced(ok, 1, "a" * 40, objs, "branch main", "2026-01-02T00:00:00Z",
                               False)
    assert quiet == ok  # nothing written: lastSyncedAt stays

    bad = sync.status_invalid(ok, 1, "b" * 40, ["specs/x.yaml:3: spec.flow: Required value",
                                                "specs/y.yaml:1: other"])
    assert bad["lastSyncedCommit"] == "a" * 40 and bad["lastAttemptedCommit"] == "b" * 40
    assert _conds(bad) == {"Ready": ("False", "ValidationFailed"),
                           "Stalled": ("True", "ValidationFailed")}
    stalled = next(c for c in bad["conditions"] if c["type"] == "Stalled")
    assert stalled["message"] == (f"commit {'b' * 12}: specs/x.yaml:3: spec.flow: Required "
                                  "value (and 1 more)")
    assert bad["inventory"] == ok["inventory"]  # the last good objects stay

    fixed = sync.status_synced(bad, 1, "c" * 40, objs, "branch main", "2026-01-03T00:00:00Z",
                               True)
    assert _conds(fixed) == {"Ready": ("True", "Synced")}  # Stalled exists only while true

    down = sync.status_fetch_failed(fixed, 2, "https://git.example.com/farm.git",
                                    "fatal: unable to access")
    assert _conds(down) == {"Ready": ("False", "FetchFailed")}
    assert down["lastSyncedCommit"] == "c" * 40 and down["observedGeneration"] == 2

    refused = sync.status_apply_failed(fixed, 1, "d" * 40, ["Experiment farm-ns/e: denied"], 3)
    assert _conds(refused) == {"Ready": ("False", "ApplyFailed")}
    assert "1 of 3 write(s) failed" in refused["conditions"][0]["message"]

    assert _conds(sync.status_suspended(fixed, 3)) == {"Ready": ("False", "Suspended")}


@pytest.mark.parametrize(("failures", "interval", "delay"), [
    (1, 2.0, 2.0), (2, 2.0, 4.0), (3, 2.0, 8.0), (20, 2.0, 300.0),
    (1, 60.0, 5.0), (4, 60.0, 40.0), (9, 60.0, 300.0), (9, 3600.0, 1280.0), (11, 3600.0, 3600.0),
])
def test_retry_backoff(failures: int, interval: float, delay: float) -> None:
    assert sync.retry_delay(failures, interval) == delay


MD = {"apiVersion": api.API_VERSION, "kind": "ModelDeployment", "metadata": {"name": "d"},
      "spec": {"model": {"experiment": "e"}}}
EXP_SPEC = {"objective": {"metric": "accuracy", "goal": "maximize", "threshold": 0.9}}
COHERENCE = [
    ("defaults are coherent", {}, None, []),
    ("retrain cooldown shorter than a rollout",
     {"drift": {"enabled": True, "action": "retrain", "cooldown": "1m"},
      "canary": {"interval": "1m"}}, None, ["spec.drift.cooldown"]),
    ("alert only: the cooldown does not matter",
     {"drift": {"enabled": True, "cooldown": "1s"}}, None, []),
    ("window larger than the log", {"drift": {"enabled": True, "window": 40000}}, None,
     ["spec.drift.window"]),
    ("window fits a bigger log",
     {"drift": {"enabled": True, "window": 40000, "storage": {"maxBytes": 1 << 30}}}, None, []),
    ("pinned version with retrain",
     {"model": {"experiment": "e", "version": 2}, "drift": {"enabled": True,
                                                            "action": "retrain"}},
     None, ["spec.model.version"]),
    ("minAccuracy above the objective", {"drift": {"enabled": True, "minAccuracy": 0.95}},
     EXP_SPEC, ["spec.drift.minAccuracy"]),
    ("minAccuracy below the objective", {"drift": {"enabled": True, "minAccuracy": 0.85}},
     EXP_SPEC, []),
]


@pytest.mark.parametrize(("spec", "experiment", "fields"), [c[1:] for c in COHERENCE],
                         ids=[c[0] for c in COHERENCE])
def test_coherence_rules(spec: dict[str, Any], experiment: dict[str, Any] | None,
                         fields: list[str]) -> None:
    obj = with_defaults({**MD, "spec": {**MD["spec"], **spec}})
    found = coherence.deployment_problems(obj["spec"], experiment)
    assert [p.field for p in found] == fields


def test_durations_and_sizes_read_like_specs() -> None:
    assert [coherence.format_seconds(s) for s in (0.25, 30, 90, 3600, 3661)] == [
        "250ms", "30s", "1m30s", "1h", "1h1m1s"]
    assert coherence.format_bytes(268435456) == "256 MiB"


def test_cached_commit_checks_match_trellis_validate() -> None:
    """The operator's cached document checks say exactly what ``trellis validate`` says."""
    import yaml

    from controller import validate
    from controller.specfiles import parse
    from tests.support.specs import REJECTED, base, mutate

    bodies = [mutate(base(kind), path, value) for kind, path, value, _ in REJECTED]
    bodies += [base("Experiment"), base("Experiment"), base("ModelDeployment"),
               mutate(base("Experiment"), "spec.parameters", {"Bad-Name": 1, "x": [1]})]
    text = "\n---\n".join(yaml.safe_dump(b, sort_keys=False) for b in bodies)
    docs, errors = parse(Path("specs/all.yaml"), text)
    assert not errors
    validate._PROBLEMS.clear()
    want = [str(e) for e in validate.check_documents(docs)]
    assert len(want) > len(REJECTED)  # every rejection, the duplicate, the parameters
    for _ in range(2):  # cold and warm cache
        assert [str(e) for e in validate.check_documents(docs, [])] == want
