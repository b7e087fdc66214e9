"""How a ModelDeployment's retrain request reaches its Experiment: the index entry, the
reads (index or list), and which deployment events wake the Experiment."""

from __future__ import annotations

import asyncio
from typing import Any

from controller.reconcilers.deployments import retrain_pending
from controller.retrain_requests import Request, RetrainRequests, index_entry

REQUEST = {"episode": "a-v1-20261127-120000", "requestedAt": "2026-11-27T12:00:00Z",
           "experiment": "classifier", "pValues": {"hue": 1e-6}}


def mdep(name: str, request: dict[str, Any] | None = None, *, experiment: str = "classifier",
         detected: bool = True) -> dict[str, Any]:
    drift: dict[str, Any] = {"detected": detected, "episode": "a-v1-20261127-120000",
                             "retrainRequested": request is not None}
    if request is not None:
        drift["retrain"] = request
    return {"metadata": {"name": name, "namespace": "farm"},
            "spec": {"model": {"experiment": experiment}}, "status": {"drift": drift}}


def test_index_entry_keys_the_request_by_the_experiment_served() -> None:
    assert index_entry(mdep("a", REQUEST)) == {
        ("farm", "classifier"): {"deployment": "a", "request": REQUEST}}
    assert index_entry(mdep("a")) == {}  # never asked: kopf drops what it had indexed
    assert index_entry({"metadata": {"name": "a", "namespace": "farm"}}) == {}


class FakeKube:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items, self.calls = items, 0

    async def list(self, res: Any, namespace: str | None = None) -> list[dict[str, Any]]:
        self.calls += 1
        return [i for i in self.items if i["metadata"]["namespace"] == namespace]


def test_reads_come_from_the_index_and_list_only_without_one() -> None:
    objs = [mdep("b", REQUEST), mdep("a", REQUEST), mdep("c", REQUEST, experiment="other"),
            mdep("d")]
    index: dict[Any, list[Any]] = {}
    for obj in objs:
        for key, value in index_entry(obj).items():
            index.setdefault(key, []).append(value)
    kube = FakeKube(objs)
    indexed = asyncio.run(RetrainRequests(kube, index).for_experiment(  # type: ignore[arg-type]
        "farm", "classifier"))
    listed = asyncio.run(RetrainRequests(kube).for_experiment(  # type: ignore[arg-type]
        "farm", "classifier"))
    assert indexed == listed == [Request("a", REQUEST), Request("b", REQUEST)]
    assert kube.calls == 1  # the index answered without the API server


def test_only_an_open_episode_that_asked_wakes_the_experiment() -> None:
    assert retrain_pending(mdep("a", REQUEST))
    assert not retrain_pending(mdep("a"))
    assert not retrain_pending(mdep("a", REQUEST, detected=False))  # the episode ended
    assert not retrain_pending(mdep("a", {**REQUEST, "episode": "a-v1-older"}))
    assert not retrain_pending({"metadata": {}, "spec": {}})
