"""``controller.references``: a ModelDeployment reads its Experiment from memory, and an
Experiment's change wakes the deployments serving it and no other."""

from __future__ import annotations

import asyncio
from typing import Any

from controller import api, references
from controller.context import Context
from controller.reconcilers.experiments import ExperimentReconciler
from controller.references import References
from controller.settings import Settings
from tests.support.kopf_index import Index

NS = "farm"
MODELS = [{"version": "v1", "uri": "s3://models/classifier/v1"}]


class FakeKube:
    def __init__(self, objects: dict[str, dict] | None = None) -> None:
        self.objects, self.calls = objects or {}, 0

    async def get(self, res: Any, namespace: str, name: str) -> dict | None:
        self.calls += 1
        return self.objects.get(name)


RETRAIN = {"episode": "web-v1-20261203-120000", "requestedAt": "2026-12-03T12:00:00Z",
           "deployment": "web"}


def experiment(name: str, models: list | None = None, uid: str = "u") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS, "uid": uid, "generation": 2,
                         "resourceVersion": "41", "managedFields": [{"manager": "x"}]},
            "spec": {"objective": {"metric": "accuracy"}, "flow": "flows/train.py"},
            "status": {"models": models or [], "currentRun": {"attempt": 1},
                       "retrain": RETRAIN, "conditions": [{"type": "Ready"}]}}


def deployment(name: str, serves: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"experiment": serves}}}


def test_entries_keep_what_a_deployment_reads_and_key_deployments_by_experiment() -> None:
    entry = references.experiment_entry(experiment("classifier", MODELS))
    assert entry == {(NS, "classifier"): {
        "metadata": {"name": "classifier", "namespace": NS, "uid": "u", "generation": 2,
                     "resourceVersion": "41"},
        "spec": {"objective": {"metric": "accuracy"}, "flow": "flows/train.py"},
        "status": {"models": MODELS, "retrain": RETRAIN}}}  # the drift cooldown reads it
    assert references.deployment_entry(deployment("web", "classifier")) == {
        (NS, "classifier"): "web"}
    assert references.deployment_entry({"metadata": {"name": "x", "namespace": NS}}) == {}


def test_the_experiment_is_read_from_the_index_and_by_get_only_without_one() -> None:
    kube = FakeKube({"classifier": experiment("classifier", MODELS)})
    index = Index().add(references.experiment_entry(experiment("classifier", MODELS)))
    indexed = References(kube, {references.EXPERIMENTS_INDEX: index})  # type: ignore[arg-type]
    found = asyncio.run(indexed.experiment(NS, "classifier"))
    assert found is not None and found["status"]["models"] == MODELS
    found["status"]["models"].clear()  # a copy: the index is kopf's
    assert index[(NS, "classifier")][0]["status"]["models"] == MODELS
    assert asyncio.run(indexed.experiment(NS, "missing")) is None
    assert kube.calls == 0
    # Deleted and made again (kopf keys entries by uid): two entries, the API server says.
    index.add(references.experiment_entry(experiment("classifier", [], uid="u2")))
    assert asyncio.run(indexed.experiment(NS, "classifier"))["status"]["models"] == MODELS
    assert kube.calls == 1
    unindexed = References(kube)  # type: ignore[arg-type]
    assert asyncio.run(unindexed.experiment(NS, "classifier"))["status"]["models"] == MODELS
    assert kube.calls == 2


def wakes(ctx: Context, obj: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return ExperimentReconciler(ctx).related(obj)


def test_an_experiment_wakes_only_the_deployments_serving_it(tmp_path) -> None:
    index = Index()
    for name, serves in (("b", "classifier"), ("a", "classifier"), ("c", "other")):
        index.add(references.deployment_entry(deployment(name, serves)))
    ctx = Context(settings=Settings(state_dir=tmp_path), kube=None,  # type: ignore[arg-type]
                  references=References(None, {  # type: ignore[arg-type]
                      references.DEPLOYMENTS_INDEX: index}))
    kind = api.MODEL_DEPLOYMENT.kind
    assert wakes(ctx, experiment("classifier")) == [(kind, NS, "a"), (kind, NS, "b")]
    assert wakes(ctx, experiment("unserved")) == []
    ctx.references = References(None)  # type: ignore[arg-type]
    assert wakes(ctx, experiment("classifier")) == [(kind, NS, None)]  # the namespace

