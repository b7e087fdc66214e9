"""``controller.gitops.plan``: one line per consequence, table-driven."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller import schema
from controller.gitops import plan as planner
from controller.gitops.plan import Key

EXP: dict[str, Any] = {
    "apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "Experiment",
    "metadata": {"name": "classifier", "namespace": "pumpkins"},
    "spec": {"flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"},
             "parameters": {"lr": 0.01, "epochs": 4}, "resources": {"gpu": 1},
             "objective": {"metric": "accuracy", "goal": "maximize", "threshold": 0.9}},
}
MDEP: dict[str, Any] = {
    "apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "ModelDeployment",
    "metadata": {"name": "classifier", "namespace": "pumpkins"},
    "spec": {"model": {"experiment": "classifier"}},
}


def obj(base: dict[str, Any], name: str | None = None, **changes: Any) -> dict[str, Any]:
    """``base`` with dotted-path changes (``spec__parameters__lr=0.1``), defaults applied."""
    out = copy.deepcopy(base)
    if name:
        out["metadata"]["name"] = name
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return schema.with_defaults(out)


def objects(*objs: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    return {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs}


CLASSIFIER: Key = ("Experiment", "pumpkins", "classifier")
CASES = [
    ("parameter change", [obj(EXP)], [obj(EXP, spec__parameters__lr=0.001)], {}, {},
     ["Experiment pumpkins/classifier: parameters.lr 0.01 → 0.001 ⇒ new training run (1 GPU)"]),
    ("CPU when gpu is 0", [obj(EXP, spec__resources__gpu=0)],
     [obj(EXP, spec__resources__gpu=0, spec__parameters__epochs=8)], {}, {},
     ["Experiment pumpkins/classifier: parameters.epochs 4 → 8 ⇒ new training run (CPU)"]),
    ("several GPUs, a new parameter", [obj(EXP)],
     [obj(EXP, spec__resources__gpu=2, spec__parameters__seed=7)], {}, {},
     ["Experiment pumpkins/classifier: parameters.seed unset → 7, resources.gpu 1 → 2 ⇒ new "
      "training run (2 GPUs)"]),
    ("same number, other spelling", [obj(EXP)], [obj(EXP, spec__parameters__epochs=4.0)], {}, {},
     []),
    ("policy only", [obj(EXP)], [obj(EXP, spec__retry__limit=3)], {}, {},
     ["Experiment pumpkins/classifier: retry.limit 1 → 3 ⇒ policy updated, no new run"]),
    ("flow code only", [obj(EXP)], [obj(EXP)],
     {CLASSIFIER: {"flows/pumpkin_flow.py": "a", "flows/data.py": "b"}},
     {CLASSIFIER: {"flows/pumpkin_flow.py": "a", "flows/data.py": "c"}},
     ["flow code changed (flows/data.py) ⇒ pumpkins/classifier retrains"]),
    ("flow code and parameters: one run", [obj(EXP)], [obj(EXP, spec__parameters__lr=0.1)],
     {CLASSIFIER: {"flows/pumpkin_flow.py": "a"}}, {CLASSIFIER: {"flows/pumpkin_flow.py": "b"}},
     ["Experiment pumpkins/classifier: parameters.lr 0.01 → 0.1, flow code changed "
      "(flows/pumpkin_flow.py) ⇒ new training run (1 GPU)"]),
    ("new experiment", [], [obj(EXP, spec__resources__gpu=0)], {}, {},
     ["Experiment pumpkins/classifier: new ⇒ first training run (CPU)"]),
    ("removed experiment", [obj(EXP, "old")], [], {}, {},
     ["Experiment pumpkins/old: removed ⇒ pruned"]),
    ("labels only", [obj(EXP)], [obj(EXP, metadata__labels={"team": "farm"})], {}, {},
     ["Experiment pumpkins/classifier: labels or annotations changed ⇒ metadata only, no new "
      "run"]),
    ("sync annotations are not user changes", [obj(EXP)],
     [obj(EXP, metadata__annotations={"mlops.trellis.dev/source-commit": "abc"})], {}, {}, []),
    ("new deployment", [], [obj(MDEP, "x")], {}, {},
     ["ModelDeployment pumpkins/x: new ⇒ serves classifier latest"]),
    ("new pinned deployment", [], [obj(MDEP, spec__model__version=3)], {}, {},
     ["ModelDeployment pumpkins/classifier: new ⇒ serves classifier v3"]),
    ("canary steps", [obj(MDEP)], [obj(MDEP, spec__canary__steps=[5, 25, 50, 100])], {}, {},
     ["ModelDeployment pumpkins/classifier: canary steps 10/50/100 → 5/25/50/100 ⇒ next "
      "version rolls out in 4 steps"]),
    ("canary steps as the brief writes them", [obj(MDEP, spec__canary__steps=[100])],
     [obj(MDEP)], {}, {},
     ["ModelDeployment pumpkins/classifier: canary steps 100 → 10/50/100 ⇒ next version rolls "
      "out in 3 steps"]),
    ("pin a version", [obj(MDEP)], [obj(MDEP, spec__model__version=2)], {}, {},
     ["ModelDeployment pumpkins/classifier: model.version latest → 2 ⇒ serves classifier v2 "
      "(rolled out as a canary)"]),
    ("several effects, one line each", [obj(MDEP)],
     [obj(MDEP, spec__replicas=3, spec__canary__interval="1m",
          spec__canary__analysis={"minRequests": 50})], {}, {},
     ["ModelDeployment pumpkins/classifier: canary.analysis.minRequests 20 → 50, "
      "canary.interval 30s → 1m ⇒ applies to the next rollout",
      "ModelDeployment pumpkins/classifier: replicas 1 → 3 ⇒ scales to 3 replica(s)"]),
    ("drift on", [obj(MDEP)],
     [obj(MDEP, spec__drift={"enabled": True, "action": "retrain", "window": 200})], {}, {},
     ["ModelDeployment pumpkins/classifier: drift.action alert → retrain, drift.window 500 → "
      "200 ⇒ drift policy updated",
      "ModelDeployment pumpkins/classifier: drift.enabled false → true ⇒ drift checks start "
      "(ks, window 200, action retrain)"]),
    ("removed deployment", [obj(MDEP)], [], {}, {},
     ["ModelDeployment pumpkins/classifier: removed ⇒ pruned (stops serving)"]),
    ("backend", [obj(MDEP)], [obj(MDEP, spec__backend="seldon")], {}, {},
     ["ModelDeployment pumpkins/classifier: backend local → seldon ⇒ redeployed on seldon"]),
]


@pytest.mark.parametrize(("old", "new", "code_old", "code_new", "want"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_lines(old: list[dict[str, Any]], new: list[dict[str, Any]],
                    code_old: dict[Key, dict[str, str]], code_new: dict[Key, dict[str, str]],
                    want: list[str]) -> None:
    result = planner.plan(objects(*old), objects(*new), code_old=code_old, code_new=code_new)
    assert [c.line() for c in result.consequences] == want


def test_blocked_objects_are_neither_removed_nor_changed() -> None:
    old = objects(obj(EXP), obj(EXP, "broken"))
    new = objects(obj(EXP, spec__parameters__lr=0.2))
    result = planner.plan(old, new, blocked={("Experiment", "pumpkins", "broken")})
    assert [c.line() for c in result.consequences] == [
        "Experiment pumpkins/classifier: parameters.lr 0.01 → 0.2 ⇒ new training run (1 GPU)"]


def test_prune_off_says_what_stays() -> None:
    result = planner.plan(objects(obj(EXP, "old")), {}, prune=False)
    assert [c.line() for c in result.consequences] == [
        "Experiment pumpkins/old: removed ⇒ left in the cluster (prune off)"]


def test_json_form_carries_old_and_new_values() -> None:
    result = planner.plan(objects(obj(EXP)), objects(obj(EXP, spec__parameters__lr=0.5)))
    (c,) = result.consequences
    assert c.as_json() == {
        "kind": "Experiment", "namespace": "pumpkins", "name": "classifier",
        "action": "update",
        "line": "Experiment pumpkins/classifier: parameters.lr 0.01 → 0.5 ⇒ new training run "
                "(1 GPU)",
        "effect": "new training run (1 GPU)",
        "changes": [{"path": "parameters.lr", "old": 0.01, "new": 0.5}], "files": []}


def test_unchanged_objects_are_counted() -> None:
    result = planner.plan(objects(obj(EXP), obj(MDEP)), objects(obj(EXP), obj(MDEP)))
    assert result.consequences == [] and result.unchanged == 2
