"""Spec documents for tests: the examples, and a table of documents breaking each rule."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from controller.paths import EXAMPLES_DIR

DELETE = object()


def example(kind: str) -> dict[str, Any]:
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind:
                doc["metadata"].pop("namespace", None)
                return doc
    raise AssertionError(f"no example {kind}")


def mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *parents, leaf = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return out



# (kind, field path, bad value, words the API server's message must contain)
REJECTED = [
    ("Experiment", "spec.flow.name", DELETE, ["spec.flow.name", "Required"]),
    ("Experiment", "spec.flow", DELETE, ["spec.flow", "Required"]),
    ("Experiment", "spec.flow.file", "flows/x.txt", ["spec.flow.file", "*.py"]),
    ("Experiment", "spec.flow.file", "../outside.py", ["spec.flow.file", "relative"]),
    ("Experiment", "spec.resources.gpu", -1, ["spec.resources.gpu", "greater than or equal to 0"]),
    ("Experiment", "spec.objective.goal", "maximise", ["spec.objective.goal", "Unsupported value"]),
    ("Experiment", "spec.objective", DELETE, ["spec.objective", "Required"]),
    ("Experiment", "spec.backend", "slurm", ["spec.backend", "Unsupported value"]),
    ("Experiment", "spec.retry.limit", 99, ["spec.retry.limit", "less than or equal to 10"]),
    ("ModelDeployment", "spec.canary.steps", [10, 50, 30, 100], ["spec.canary.steps",
                                                                 "strictly increasing"]),
    ("ModelDeployment", "spec.canary.steps", [10, 50, 50, 100], ["spec.canary.steps",
                                                                 "strictly increasing"]),
    ("ModelDeployment", "spec.canary.steps", [10, 50], ["spec.canary.steps", "last canary step"]),
    ("ModelDeployment", "spec.canary.steps", [10, 120], ["spec.canary.steps[1]",
                                                         "less than or equal to 100"]),
    ("ModelDeployment", "spec.canary.steps", [0, 100], ["spec.canary.steps[0]",
                                                        "greater than or equal to 1"]),
    ("ModelDeployment", "spec.canary.interval", "soon", ["spec.canary.interval"]),
    ("ModelDeployment", "spec.model.version", 0, ["spec.model.version", "integer >= 1"]),
    ("ModelDeployment", "spec.model.version", "newest", ["spec.model.version", "latest"]),
    ("ModelDeployment", "spec.model.experiment", DELETE, ["spec.model.experiment", "Required"]),
    ("ModelDeployment", "spec.backend", "kserve", ["spec.backend", "Unsupported value"]),
    ("ModelDeployment", "spec.drift.minSamples", 5000, ["spec.drift", "minSamples"]),
    ("ModelDeployment", "spec.drift.test", "chi2", ["spec.drift.test", "Unsupported value"]),
    ("ModelDeployment", "spec.drift.pValue", 1.5, ["spec.drift.pValue"]),
    ("ModelDeployment", "spec.drift.enabled", False, ["drift.action 'retrain' needs"]),
    ("ModelDeployment", "spec.canary.analysis.maxErrorRate", 2,
     ["spec.canary.analysis.maxErrorRate"]),
    ("SpecRepository", "spec.url", "ftp://x", ["spec.url"]),
    ("SpecRepository", "spec.ref", {"branch": "main", "tag": "v1"}, ["spec.ref", "exactly one"]),
    ("SpecRepository", "spec.path", "/etc", ["spec.path", "relative"]),
    ("SpecRepository", "spec.interval", "1 minute", ["spec.interval"]),
]

SPEC_REPO = {
    "apiVersion": "mlops.trellis.dev/v1alpha1",
    "kind": "SpecRepository",
    "metadata": {"name": "farm"},
    "spec": {"url": "https://example.com/farm.git", "ref": {"branch": "main"}},
}


def base(kind: str) -> dict[str, Any]:
    return copy.deepcopy(SPEC_REPO) if kind == "SpecRepository" else example(kind)


