"""Generated specs: the API server and ``trellis validate`` give the same verdict.

A fixed-seed slice of the spec fuzzer (``tests/support/specfuzz.py``; the full run is
``bench/fuzz_bench.py``): Experiments, ModelDeployments and SpecRepositories derived
from the CRDs, valid and deliberately broken, each judged by the real API server
(dry-run create, strict field validation; through kubectl, and as the JSON the
SpecRepository sync sends) and by ``trellis validate`` on the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller import specfiles
from tests.support import specfuzz
from tests.support.kube import Cluster
from tests.support.specs import AS_THE_SERVER_READS, SCALARS, SPELLINGS, base, mutate

pytestmark = pytest.mark.cluster

SEED = 14
CASES = 200


def one_verdict(out: specfuzz.Outcome) -> None:
    """No traceback, no server error, and the API server and `trellis validate` agree."""
    print(out.summary())
    assert not out.tracebacks, "\n\n".join(out.tracebacks[:3])
    assert not out.server_errors, "\n".join(out.server_errors[:5])
    assert not out.disagreements, "\n\n".join(out.disagreements[:5])
    assert not out.sync_disagreements, "\n\n".join(out.sync_disagreements[:5])


def test_generated_specs_get_one_verdict(cluster: Cluster, tmp_path: Path) -> None:
    cases = specfuzz.generate(CASES, SEED)
    out = specfuzz.run(cases, specfuzz.ApiServer(cluster.dev), tmp_path)
    one_verdict(out)
    # A slice that tests something: both verdicts common, most kinds of breakage drawn.
    assert out.accepted >= CASES // 5 and out.rejected >= CASES // 5, out.summary()
    assert len(out.breakages) >= 12, out.summary()


def test_generated_quantities_get_one_verdict(cluster: Cluster, tmp_path: Path) -> None:
    """spec.resources cpu/memory: generated quantities, edges, misspellings and YAML
    spellings; the pattern and the CEL bounds (Kubernetes' quantity library on the server,
    ``controller.quantities`` offline) give one verdict."""
    cases = specfuzz.generate_quantities(150, SEED)
    out = specfuzz.run(cases, specfuzz.ApiServer(cluster.dev), tmp_path)
    one_verdict(out)
    assert out.accepted >= 30 and out.rejected >= 30, out.summary()


def _judge(cluster: Cluster, tmp_path: Path, docs: list[tuple[str, Any]]
           ) -> list[tuple[bool | None, bool | None, str]]:
    cases = [specfuzz.Case(i, kind, doc, ("table",)) for i, (kind, doc) in enumerate(docs)]
    server = specfuzz.ApiServer(cluster.dev).verdicts(cases)
    offline = [specfuzz.offline_verdict(c, tmp_path) for c in cases]
    return [(s.accepted, o.accepted, f"server: {s.detail}\nvalidate: {o.detail}")
            for s, o in zip(server, offline, strict=True)]


def test_how_the_server_reads_a_document(cluster: Cluster, tmp_path: Path) -> None:
    """The rules the unit tests pin offline (nulls pruned, integral floats, status
    dropped, Go-anchored patterns, ObjectMeta) hold on the real server too."""
    docs = [(kind, mutate(base(kind), path, value))
            for kind, path, value, _ in AS_THE_SERVER_READS
            if path != "spec.parameters"]  # the documented exception, below
    wanted = [ok for _, path, _, ok in AS_THE_SERVER_READS if path != "spec.parameters"]
    for (server, offline, detail), ok in zip(_judge(cluster, tmp_path, docs), wanted,
                                             strict=True):
        assert (server, offline) == (ok, ok), detail


@pytest.mark.parametrize("parameters", [{"Bad-Name": 1}, {"nested": {"a": 1}},
                                        {"listed": [1]}, {"lr": None}])
def test_documented_exception_parameters(cluster: Cluster, tmp_path: Path,
                                         parameters: dict[str, Any]) -> None:
    """``trellis validate`` is stricter than the server about ``spec.parameters``: the
    schema cannot type untyped values for CEL, so the server takes any shape, and the
    operator refuses such a spec before a launch anyway."""
    doc = mutate(base("Experiment"), "spec.parameters", parameters)
    [(server, offline, detail)] = _judge(cluster, tmp_path, [("Experiment", doc)])
    assert server is True and offline is False, detail
    assert specfuzz.parameters_only(detail.split("validate: ", 1)[1])


def test_documented_exception_near_integral_floats(cluster: Cluster, tmp_path: Path) -> None:
    """The server's OpenAPI validator takes a float within a relative 1e-9 of an integer
    for an integer (go-openapi's IsFloat64AJSONInteger) and stores the float; ``trellis
    validate`` takes only integral values (2.0), so ``replicas: 1.0000000000000002``
    is refused offline. The generator draws no such floats."""
    doc = mutate(base("ModelDeployment"), "spec.replicas", 1.0000000000000002)
    [(server, offline, detail)] = _judge(cluster, tmp_path, [("ModelDeployment", doc)])
    assert server is True and offline is False, detail


@pytest.mark.parametrize(("what", "text", "ok"), SPELLINGS, ids=[w for w, _, _ in SPELLINGS])
def test_plain_scalars_mean_what_they_mean_to_kubectl(cluster: Cluster, tmp_path: Path,
                                                      what: str, text: str, ok: bool) -> None:
    f = tmp_path / "spec.yaml"
    f.write_text(text)
    cluster.kubectl("create", "namespace", specfuzz.NAMESPACE, check=False)
    proc = cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-n",
                           specfuzz.NAMESPACE, "-f", str(f), check=False)
    assert (proc.returncode == 0) is ok, proc.stderr
    case = specfuzz.Case(0, "Experiment", {}, ())
    case.text = text.encode()
    assert specfuzz.offline_verdict(case, tmp_path).accepted is ok


def _as_the_server_types(value: Any) -> Any:
    """A JSON integer past int64 is a float to the API server (and to ``trellis validate``)."""
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        return float(value)
    return value


def test_scalars_come_out_as_kubectl_reads_them(cluster: Cluster, tmp_path: Path) -> None:
    """``controller.specfiles`` against kubectl's own reading of one file (``kubectl label
    --local -o json``: no server involved), scalar by scalar."""
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\nvalues:\n" + "".join(
        f"  k{i}: {s}\n" for i, s in enumerate(SCALARS))
    f = tmp_path / "scalars.yaml"
    f.write_text(text)
    proc = cluster.kubectl("label", "--local", "-f", str(f), "-o", "json", "fuzz=1")
    theirs = json.loads(proc.stdout)["values"]
    docs, errors = specfiles.parse(f, text)
    assert not errors, errors
    ours = docs[0].obj["values"]
    differ = []
    for i, scalar in enumerate(SCALARS):
        a, b = (_as_the_server_types(v[f"k{i}"]) for v in (theirs, ours))
        if not (a == b and type(a) is type(b)):
            differ.append(f"{scalar!r}: kubectl {a!r}, trellis {b!r}")
    assert not differ, "\n".join(differ)
