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


EXPERIMENT = "Experiment"
MDEP = "ModelDeployment"
# How the API server reads a document (found by the spec fuzzer, tests/support/specfuzz.py):
# (kind, path, value, accepted), pinned offline in tests/unit/test_validate_offline.py and
# on the real server in tests/integration/test_spec_fuzz.py.
AS_THE_SERVER_READS = [
    (EXPERIMENT, "spec.resources.gpu", None, True),  # null: pruned, then defaulted
    (EXPERIMENT, "spec.resources", None, True),
    (EXPERIMENT, "spec.flow", None, False),  # pruned: a required field is missing
    (EXPERIMENT, "spec.parameters", {"lr": None}, False),  # stricter: see semantic_problems
    (EXPERIMENT, "spec.resources.gpu", 2.0, True),  # an integral float is an integer
    (EXPERIMENT, "spec.resources.gpu", 2.5, False),
    (EXPERIMENT, "spec.resources.memory", 2**63, False),  # beyond int64: a float there
    (EXPERIMENT, "spec.objective.threshold", float("nan"), False),  # not JSON
    (EXPERIMENT, "spec.objective.threshold", 10**400, False),  # beyond float64
    (EXPERIMENT, "spec.flow.name", "Flow\n", False),  # Go's $ is the end of the text
    (EXPERIMENT, "status", {"phase": "Nope", "runs": "x"}, True),  # dropped on create
    (EXPERIMENT, "status", {"nope": 1}, False),  # ...but unknown fields still count
    (EXPERIMENT, "status", [{"nope": 1}], False),
    (EXPERIMENT, "metadata.name", "a.b", False),  # the CRDs' root rule: a DNS label
    (EXPERIMENT, "metadata.labels", {"a b": "x"}, False),
    (EXPERIMENT, "metadata.labels", {"app": None, 1: "x"}, True),
    (EXPERIMENT, "metadata.annotations", {"a": 1}, False),
    (EXPERIMENT, "metadata.finalizers", ["bad finalizer"], False),
    (EXPERIMENT, "metadata.generation", -1, True),  # set by the server
    (EXPERIMENT, "metadata.foo", "x", False),
    (MDEP, "spec.canary.steps", [10, 50, 100.0], True),  # a file's 100.0 is JSON's 100
    (MDEP, "spec.canary.steps", None, True),
    (MDEP, "spec.model.version", 2.0, True),
    (MDEP, "spec.drift", {"action": "retrain", "enabled": None}, False),
]

# spec.resources quantities: (path, value, accepted), judged alike by the CRD on the real
# API server (tests/integration/test_crds.py) and by ``trellis validate``
# (tests/unit/test_quantities.py).
CPU, MEMORY = "spec.resources.cpu", "spec.resources.memory"
QUANTITIES = [
    (CPU, "500m", True), (CPU, "2", True), (CPU, "1.5", True), (CPU, "0.1", True),
    (CPU, "1m", True), (CPU, "256", True), (CPU, "1.e+2", True), (CPU, "+0.5", True),
    (CPU, "2.", True), (CPU, "1000000n", True), (CPU, "0.25e+1", True), (CPU, 4, True),
    (CPU, 256, True),
    (CPU, "0.5m", False),  # below 1m
    (CPU, "999999n", False), (CPU, "0", False), (CPU, 0, False), (CPU, "-1", False),
    (CPU, "257", False), (CPU, "256001m", False), (CPU, 257, False), (CPU, "1e3", False),
    (CPU, "1k", False), (CPU, "0.256k", True),
    (CPU, "1 ", False), (CPU, "1K", False), (CPU, "1e1.5", False), (CPU, "1e100", False),
    (CPU, "e3", False), (CPU, "", False), (CPU, ".", False), (CPU, "1.5.", False),
    (CPU, "two", False), (CPU, "1\n", False), (CPU, "1mi", False), (CPU, 0.5, False),
    (MEMORY, "4Gi", True), (MEMORY, "512Mi", True), (MEMORY, "2G", True),
    (MEMORY, "128Mi", True), (MEMORY, "1Ti", True), (MEMORY, "134217728", True),
    (MEMORY, "1.5Gi", True), (MEMORY, "0.5Gi", True), (MEMORY, "1.5e+9", True),
    (MEMORY, "131072Ki", True), (MEMORY, "0.001Ti", True), (MEMORY, 2048, True),
    (MEMORY, 128, True), (MEMORY, 1048576, True),
    (MEMORY, "127Mi", False), (MEMORY, "134217727", False),  # one byte short of 128Mi
    (MEMORY, "2048", False),  # a string without a unit counts bytes
    (MEMORY, "1.0000001Ti", False), (MEMORY, "1100G", False), (MEMORY, "2Ei", False),
    (MEMORY, 127, False), (MEMORY, 1048577, False), (MEMORY, 0, False),
    (MEMORY, "4GB", False), (MEMORY, "4gi", False), (MEMORY, "4 Gi", False),
    (MEMORY, "-4Gi", False), (MEMORY, 2048.5, False),
]

# Plain YAML scalars read as kubectl reads them (go-yaml v2, then JSON), not as PyYAML
# does: (what, spec file text, accepted); kubectl's verdicts, checked against the real
# server in tests/integration/test_spec_fuzz.py.
_EXP = """apiVersion: mlops.trellis.dev/v1alpha1
kind: Experiment
metadata: {{name: e{meta}}}
spec:
  flow: {{file: flows/f.py, name: {name}}}
  objective: {{metric: accuracy, goal: maximize, threshold: {threshold}}}
  resources: {{gpu: {gpu}{resources}}}
"""
_MDEP = """apiVersion: mlops.trellis.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: m}}
spec:
  model: {{experiment: e, version: {version}}}
  canary: {{steps: {steps}, interval: {interval}}}
"""
_REPO = """apiVersion: mlops.trellis.dev/v1alpha1
kind: SpecRepository
metadata: {{name: s}}
spec:
  url: https://example.com/farm.git
  ref: {{branch: {branch}}}
"""


def _exp(name: str = "F", threshold: str = "0.9", gpu: str = "0", meta: str = "",
         resources: str = "") -> str:
    return _EXP.format(name=name, threshold=threshold, gpu=gpu, meta=meta,
                       resources=resources)


def _mdep(version: str = "latest", steps: str = "[10, 50, 100]", interval: str = "30s") -> str:
    return _MDEP.format(version=version, steps=steps, interval=interval)


SPELLINGS = [
    ("threshold: 1e3 is a float (PyYAML: a string)", _exp(threshold="1e3"), True),
    ("threshold: 1.0e3 is a float (PyYAML: a string)", _exp(threshold="1.0e3"), True),
    ("gpu: 0x1 is an integer", _exp(gpu="0x1"), True),
    ("gpu: 0o7 is an integer (PyYAML: a string)", _exp(gpu="0o7"), True),
    ("gpu: 1_0 is 10", _exp(gpu="1_0"), True),
    ("gpu: 2.0 is the integer 2", _exp(gpu="2.0"), True),
    ("gpu: ~ is null: defaulted", _exp(gpu="~"), True),
    ("gpu: 1:30 is a string (PyYAML: 90)", _exp(gpu="1:30"), False),
    ("threshold: .NaN cannot be sent", _exp(threshold=".NaN"), False),
    ("threshold: 1e400 is a string", _exp(threshold="1e400"), False),
    ("flow name y is a boolean (PyYAML: a string)", _exp(name="y"), False),
    ("flow name N is a boolean", _exp(name="N"), False),
    ("flow name on is a boolean", _exp(name="on"), False),
    ("a label value yes is a boolean", _exp(meta=", labels: {app: yes}"), False),
    ("a label value 2024-01-01 is the string", _exp(meta=", labels: {day: 2024-01-01}"),
     True),  # PyYAML: a date
    ("cpu: 500m is a quantity", _exp(resources=", cpu: 500m"), True),
    ("cpu: 0.5 is a float: refused (quote it, or write 500m)", _exp(resources=", cpu: 0.5"),
     False),
    ("cpu: 2.0 is the integer 2", _exp(resources=", cpu: 2.0"), True),
    ("cpu: 1e2 is the integer 100 (PyYAML: a string)", _exp(resources=", cpu: 1e2"), True),
    ("memory: 4Gi is a quantity", _exp(resources=", memory: 4Gi"), True),
    ("memory: 1e3 is the integer 1000: MiB", _exp(resources=", memory: 1e3"), True),
    ("memory: '1e3' is a quantity: 1000 bytes", _exp(resources=", memory: '1e3'"), False),
    ("steps [10, 50, 100.0] are integers (JSON carries 100)", _mdep(steps="[10, 50, 100.0]"),
     True),
    ("version 0x2 is 2", _mdep(version="0x2"), True),
    ("version 2.0 is 2", _mdep(version="2.0"), True),
    ("interval 1:30 is a string", _mdep(interval="1:30"), False),
    ("branch y is a boolean", _REPO.format(branch="y"), False),
    ("branch 2024-01-01 is a string", _REPO.format(branch="2024-01-01"), True),
    ("branch 1.10 is a number", _REPO.format(branch="1.10"), False),
]

# Plain scalars whose reading by kubectl (go-yaml v2 resolve, Go's JSON) is subtle: each
# is read by ``controller.specfiles`` and by kubectl itself in
# tests/integration/test_spec_fuzz.py, and must come out the same.
SCALARS = [
    "y", "n", "Yes", "OFF", "~", "Null", "tRue", "1e3", "1.0e3", "1e-3", ".5", "-.5", "+1", "-0",
    "-0.0", "0x1f", "0X1F", "0o17", "017", "08", "09.5", "0b101", "-0b101", "1_000", "1__0",
    "0x_1", "0_1", "1_0.5", "3.14_15", ".5_0", ".5e1_0", "._5", ".5_", "1:30", "2024-01-01",
    "2024-1-2", "2001-12-14t21:59:43.10-05:00", "100.0", "2.0", "1.", "12e", "0x", "1e400",
    "1e-400", "1e20", "1e21", "1.5e300", "0.1", "9223372036854775807", "9223372036854775808",
    "18446744073709551615", "18446744073709551616", "-9223372036854775808",
    "-9223372036854775809", "-9223372036854775808.0", "9223372036854774784.0",
    "0x8000000000000000", "0xFFFFFFFFFFFFFFFF", "123456789012345678901234567890", "NaN",
    "inf", "Infinity", "0x1p3", "1,000", "+", "_", ".", ".0", "0.",
]
