"""The CRDs on the real API server: installation, printer columns, and every schema rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import specfuzz
from tests.support.kube import Cluster
from tests.support.specs import DELETE, QUANTITIES, REJECTED, SPEC_REPO, base, mutate

pytestmark = pytest.mark.cluster


def test_crds_installed_with_categories_and_short_names(cluster: Cluster) -> None:
    out = cluster.kubectl("api-resources", "--api-group=mlops.trellis.dev", "-o", "wide").stdout
    for short in ("exp", "mdep", "specrepo"):
        assert short in out
    assert out.count("mlops") >= 3


def test_examples_accepted_and_printer_columns(cluster: Cluster, namespace: str) -> None:
    for kind in ("Experiment", "ModelDeployment"):
        cluster.apply(base(kind), namespace)
    cluster.apply(SPEC_REPO, namespace)
    header = cluster.kubectl("get", "experiments", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "RUN", "METRIC", "MODEL", "AGE"]
    header = cluster.kubectl("get", "mdep", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "STABLE", "CANARY", "WEIGHT", "DRIFT", "PHASE", "AGE"]
    header = cluster.kubectl("get", "specrepo", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "COMMIT", "READY", "AGE"]
    everything = cluster.kubectl("get", "mlops", "-n", namespace).stdout
    for kind in ("experiment.mlops.trellis.dev/classifier",
                 "modeldeployment.mlops.trellis.dev/classifier",
                 "specrepository.mlops.trellis.dev/farm"):
        assert kind in everything


def test_defaults_applied_by_the_api_server(cluster: Cluster, namespace: str) -> None:
    doc = base("ModelDeployment")
    doc["spec"] = {"model": {"experiment": "classifier"}}
    cluster.apply(doc, namespace)
    spec = cluster.get("mdep", "classifier", namespace)["spec"]
    assert spec["model"]["version"] == "latest"
    assert spec["canary"]["steps"] == [10, 50, 100]
    assert spec["backend"] == "local"
    assert spec["drift"]["pValue"] == 0.05


@pytest.mark.parametrize(("kind", "path", "value", "words"), REJECTED,
                         ids=[f"{k}:{p}={v if v is not DELETE else '<missing>'}"
                              for k, p, v, _ in REJECTED])
def test_schema_rule_rejected_by_api_server(cluster: Cluster, namespace: str, kind: str,
                                            path: str, value: Any, words: list[str]) -> None:
    doc = mutate(base(kind), path, value)
    proc = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc),
                           check=False)
    assert proc.returncode != 0, f"accepted: {doc}"
    for word in words:
        assert word in proc.stderr, proc.stderr


def test_quantities_one_verdict(cluster: Cluster, tmp_path: Path) -> None:
    """spec.resources cpu/memory quantities (pattern and CEL bounds): the API server and
    ``trellis validate`` accept and refuse the same table, and it is the table's verdict."""
    cases = [specfuzz.Case(i, "Experiment", mutate(base("Experiment"), path, value),
                           ("quantity",)) for i, (path, value, _) in enumerate(QUANTITIES)]
    server = specfuzz.ApiServer(cluster.dev).verdicts(cases)
    wrong = []
    for (path, value, ok), case, verdict in zip(QUANTITIES, cases, server, strict=True):
        offline = specfuzz.offline_verdict(case, tmp_path)
        if (verdict.accepted, offline.accepted) != (ok, ok):
            wrong.append(f"{path}={value!r}: wanted {ok}, server {verdict.accepted} "
                         f"({verdict.detail}), validate {offline.accepted} ({offline.detail})")
    assert not wrong, "\n".join(wrong)


def test_quantities_stored_as_written(cluster: Cluster, namespace: str) -> None:
    doc = mutate(mutate(base("Experiment"), "spec.resources.cpu", "500m"),
                 "spec.resources.memory", "4Gi")
    cluster.apply(doc, namespace)
    resources = cluster.get("experiment", doc["metadata"]["name"], namespace)["spec"]["resources"]
    assert (resources["cpu"], resources["memory"]) == ("500m", "4Gi")
