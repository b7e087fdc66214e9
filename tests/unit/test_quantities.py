"""Resource quantities: exact parsing, rendering per consumer, and one verdict offline."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import quantities as q
from controller import schema
from controller.settings import Settings
from controller.training.decide import RunKey
from controller.training.kubernetes import container_resources, render_job
from controller.training.preflight import preflight
from controller.validate import validate_paths
from tests.support.specfuzz import QUANTITY_EDGES
from tests.support.specs import QUANTITIES, base, mutate

GI = 2**30

PARSED = [
    ("500m", Fraction(1, 2)), ("2", Fraction(2)), ("1.5", Fraction(3, 2)),
    ("0.1", Fraction(1, 10)), ("100m", Fraction(1, 10)), ("1Gi", Fraction(GI)),
    ("4Gi", Fraction(4 * GI)), ("512Mi", Fraction(512 * 2**20)), ("2G", Fraction(2 * 10**9)),
    ("1e3", Fraction(1000)), ("1E3", Fraction(1000)), ("1E", Fraction(10**18)),
    ("1.5e+9", Fraction(1_500_000_000)), ("25e-2", Fraction(1, 4)), ("+.5", Fraction(1, 2)),
    ("2.", Fraction(2)), ("1k", Fraction(1000)), ("1Ki", Fraction(1024)),
    ("1.5Gi", Fraction(3 * GI, 2)), ("0", Fraction(0)), ("-1m", Fraction(-1, 1000)),
    ("0.1n", Fraction(1, 10**9)),  # rounded up to the nanounit, as ParseQuantity does
    ("1.0000000001", Fraction(1_000_000_001, 10**9)),  # ...away from zero
    ("8Ei", Fraction(2**63 - 1)),  # binary SI capped at int64
    ("1u", Fraction(1, 10**6)), ("0.000001", Fraction(1, 10**6)),
]
NOT_QUANTITIES = ["", " 1", "1 ", "1\n", "1K", "1k ", "1mi", "1KB", "4GB", "gi", "Mi", ".",
                  "e3", "1e", "1e1.5", "1e100", "1e+", "0x10", "1_000", "1,5", "--1", "1..5",
                  "Infinity", "NaN", "1Gi1", "m1", "１"]


@pytest.mark.parametrize(("text", "value"), PARSED, ids=[t for t, _ in PARSED])
def test_parse_exact(text: str, value: Fraction) -> None:
    assert q.parse(text) == value
    assert q.is_quantity(text)


@pytest.mark.parametrize("text", NOT_QUANTITIES)
def test_parse_refuses(text: str) -> None:
    with pytest.raises(q.QuantityError):
        q.parse(text)
    assert not q.is_quantity(text)


def test_no_float_drift() -> None:
    assert q.parse("0.1") == q.parse("100m") and q.parse("0.1") * 3 == q.parse("0.3")
    assert q.memory_bytes("1Gi") == 1073741824 == q.memory_bytes(1024)
    assert q.cpu_cores("0.7") + q.cpu_cores("0.2") == q.cpu_cores("900m")


def test_plain_integers_keep_their_units() -> None:
    assert q.memory_bytes(2048) == 2048 * 2**20  # MiB, as before quantities
    assert q.memory_bytes("2048") == 2048  # a string is a quantity: bytes
    assert q.cpu_cores(2) == 2 == q.cpu_cores("2")
    with pytest.raises(q.QuantityError):
        q.cpu_cores(True)


@pytest.mark.parametrize(("cpu", "cores"), [
    (2, "2"), ("500m", "0.5"), ("1.5", "1.5"), ("1m", "0.001"), ("1500000001n", "1.501"),
    ("0.0011", "0.002"), ("256", "256"), ("1.e+2", "100"), ("250m", "0.25")])
def test_metaflow_cpu_rounds_up_to_the_millicore(cpu: int | str, cores: str) -> None:
    assert q.metaflow_cpu(cpu) == cores
    assert Fraction(cores) >= q.cpu_cores(cpu)


@pytest.mark.parametrize(("memory", "mb"), [
    ("4Gi", 4295), ("512Mi", 537), ("2G", 2000), (2048, 2148), (128, 135), ("128Mi", 135),
    ("1Ti", 1099512), ("1.5e+9", 1500), ("1000000001", 1001), ("0.5Gi", 537)])
def test_metaflow_memory_in_whole_mb_never_less(memory: int | str, mb: int) -> None:
    assert q.metaflow_memory(memory) == mb
    assert mb * 10**6 >= q.memory_bytes(memory) > (mb - 1) * 10**6


def test_kubernetes_renders_exactly_what_was_asked() -> None:
    assert q.kubernetes_cpu("500m") == "500m" and q.kubernetes_cpu(2) == "2"
    assert q.kubernetes_memory("4Gi") == "4Gi" and q.kubernetes_memory(2048) == "2048Mi"
    assert q.metaflow_resources({"cpu": "500m", "memory": "4Gi", "gpu": 1, "x": None}) == {
        "cpu": "0.5", "memory": "4295", "gpu": "1"}
    assert q.threads("500m") == 1 and q.threads("1.5") == 2 and q.threads(4) == 4


SETTINGS = Settings(trainer_image="reg/trainer:1", datastore_s3_root="s3://bucket/mf")


def _experiment(resources: dict[str, Any]) -> dict[str, Any]:
    exp = base("Experiment")
    exp["metadata"].update(namespace="farm", uid="u-1")
    exp["spec"]["resources"] = resources
    return exp


def test_job_carries_the_exact_quantities() -> None:
    exp = _experiment({"cpu": "1500m", "memory": "4Gi"})
    job = render_job(exp, RunKey(1), 1, SETTINGS, parameters={}, tags={}, commit=None,
                     source_url=None)
    res = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res == {"requests": {"cpu": "1500m", "memory": "4Gi"},
                   "limits": {"memory": "4Gi"}}  # no gpu: none asked


def test_container_resources_fill_the_crd_defaults_and_keep_mib() -> None:
    # the CRD's defaults (cpu 1, memory 2048 MiB), read from the schema: MiB stay MiB
    assert container_resources({}) == {"requests": {"cpu": "1", "memory": "2048Mi"},
                                       "limits": {"memory": "2048Mi"}}
    assert container_resources({"gpu": 2, "memory": 128, "cpu": "250m"}) == {
        "requests": {"cpu": "250m", "memory": "128Mi"},
        "limits": {"memory": "128Mi", "nvidia.com/gpu": "2"}}


def test_crd_pattern_is_the_module_pattern() -> None:
    props = schema.load_crds()["Experiment"]["properties"]["spec"]["properties"]["resources"]
    for name in ("cpu", "memory"):
        assert props["properties"][name]["pattern"] == q.PATTERN
        assert props["properties"][name]["x-kubernetes-int-or-string"] is True


@pytest.mark.parametrize("text", [t for t, _ in PARSED] + NOT_QUANTITIES + [
    v for edges in QUANTITY_EDGES.values() for v in edges if isinstance(v, str)])
def test_crd_pattern_accepts_what_parses(text: str) -> None:
    """The CRD's pattern (Go-anchored, as the API server applies it) and the parser agree:
    the CEL rules never meet a string ``quantity()`` refuses."""
    assert bool(schema.go_regex(q.PATTERN).search(text)) == q.is_quantity(text)


@pytest.mark.parametrize(("path", "value", "ok"), QUANTITIES,
                         ids=[f"{p.rsplit('.', 1)[1]}={v!r}" for p, v, _ in QUANTITIES])
def test_trellis_validate_verdicts(tmp_path: Path, path: str, value: Any, ok: bool) -> None:
    """The table the real API server judges in tests/integration/test_crds.py."""
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(mutate(base("Experiment"), path, value), sort_keys=False))
    report = validate_paths([f])
    assert report.ok is ok, report.text()
    if not ok:
        assert path in report.text()


def test_preflight_refuses_resources_out_of_bounds(tmp_path: Path) -> None:
    """An object stored before today's CRD is judged by today's rules, on status."""
    for resources, words in [({"memory": "64Mi"}, "memory must be from 128Mi"),
                             ({"cpu": "0.1m"}, "cpu must be from 1m"),
                             ({"cpu": "lots"}, "not a Kubernetes quantity")]:
        found = preflight(_experiment(resources), tmp_path, {})
        assert found.reason == "InvalidResources" and words in found.problem, found
    assert preflight(_experiment({"cpu": "500m"}), tmp_path, {}).reason == "FlowNotFound"
