"""manifests/: kustomize renders it, the API server accepts it, and it agrees with the code.

The CRDs in it are crds/ itself (one source of truth); the Deployment's flags parse with
the CLI and its probes point at the ports the operator serves; the ConfigMap names only
settings that exist; every RBAC rule says why it is there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli import build_parser
from controller.paths import CRDS_DIR
from controller.settings import PREFIX, Settings
from tests.support.clusterwide import MANIFESTS, pick
from tests.support.kube import Cluster

SERVICEMONITOR_CRD = Path(__file__).parents[1] / "support" / "crds" / "servicemonitor.yaml"


def render(cluster: Cluster, path: Path) -> list[dict[str, Any]]:
    out = cluster.kubectl("kustomize", str(path)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def docs(cluster: Cluster) -> list[dict[str, Any]]:
    return render(cluster, MANIFESTS)


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = pick(docs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def test_crds_are_crds_dir_itself(docs: list[dict[str, Any]]) -> None:
    listed = yaml.safe_load((CRDS_DIR / "Kustomization").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in CRDS_DIR.glob("*.yaml"))
    for path in CRDS_DIR.glob("*.yaml"):
        source = yaml.safe_load(path.read_text())
        rendered = one(docs, "CustomResourceDefinition", source["metadata"]["name"])
        assert rendered["spec"] == source["spec"], path.name
    peering = {c["spec"]["names"]["kind"] for c in pick(docs, "CustomResourceDefinition")
               if c["spec"]["group"] == "kopf.dev"}
    assert peering == {"ClusterKopfPeering", "KopfPeering"}
    one(docs, "ClusterKopfPeering", "trellis")


def test_deployment_runs_two_peering_replicas_safely(docs: list[dict[str, Any]]) -> None:
    dep = one(docs, "Deployment", "trellis-operator")
    assert dep["metadata"]["namespace"] == "trellis-system"
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "trellis-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "operator" and args.peering == "trellis" and not args.namespace
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert ports["health"] == args.liveness_port
    config = one(docs, "ConfigMap", "trellis-operator-config")["data"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert ports["metrics"] == int(config["TRELLIS_METRICS_PORT"])
    assert ports["webhook"] == int(config["TRELLIS_WEBHOOK_PORT"])
    assert ports["request-logger"] == int(config["TRELLIS_REQUEST_LOGGER_PORT"])
    assert config["TRELLIS_REQUEST_LOGGER_URL"].endswith(
        f"trellis-operator.trellis-system.svc:{ports['request-logger']}/")
    # Either replica receives the drift inputs: they must land where both can read.
    assert config["TRELLIS_REQUEST_LOG_STORE"].startswith("s3://")
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert config["TRELLIS_STATE_DIR"] in mounts and "/tmp" in mounts
    assert {"configMapRef": {"name": "trellis-operator-config"}} in container["envFrom"]
    assert any(e["name"] == "POD_ID" for e in container["env"])  # kopf's peer identity


def test_configmap_names_only_real_settings(docs: list[dict[str, Any]]) -> None:
    data = one(docs, "ConfigMap", "trellis-operator-config")["data"]
    fields = {f.upper() for f in Settings.__dataclass_fields__}
    unknown = [k for k in data if not k.startswith(PREFIX) or k[len(PREFIX):] not in fields]
    assert unknown == []
    settings = Settings.from_env(data)
    assert settings.trainer_service_account == "trellis-trainer"
    assert settings.metrics_port == 8000


def test_metrics_are_scraped_from_the_service(docs: list[dict[str, Any]]) -> None:
    svc = one(docs, "Service", "trellis-operator")
    monitor = one(docs, "ServiceMonitor", "trellis-operator")
    dep = one(docs, "Deployment", "trellis-operator")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}


@pytest.mark.parametrize("name", ["rbac.yaml"])
def test_every_rbac_rule_says_why(name: str) -> None:
    lines = (MANIFESTS / name).read_text().splitlines()
    rules = [i for i, line in enumerate(lines) if re.match(r"\s*- apiGroups:", line)]
    assert rules
    for i in rules:
        assert lines[i - 1].strip().startswith("#"), f"{name}:{i + 1}: rule without a comment"


def test_team_namespace_gets_the_trainer_account_without_api_access(cluster: Cluster) -> None:
    docs = render(cluster, MANIFESTS / "team")
    account = one(docs, "ServiceAccount", "trellis-trainer")
    assert account["metadata"]["name"] == Settings().trainer_service_account
    assert account["automountServiceAccountToken"] is False
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding", "ClusterRole")]


@pytest.mark.cluster
def test_manifests_apply_to_a_real_api_server(cluster: Cluster,
                                              docs: list[dict[str, Any]]) -> None:
    crds = render(cluster, MANIFESTS / "crds")
    crds.append(yaml.safe_load(SERVICEMONITOR_CRD.read_text()))
    as_list = {"apiVersion": "v1", "kind": "List", "items": crds}
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                    input=json.dumps(as_list))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"crd/{c['metadata']['name']}" for c in crds])
    cluster.create_namespace("pumpkins")  # manifests/team's example namespace
    for path in (MANIFESTS, MANIFESTS / "team"):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(path))
    for kind, name, ns in [("deployment", "trellis-operator", "trellis-system"),
                           ("servicemonitor", "trellis-operator", "trellis-system"),
                           ("clusterkopfpeering", "trellis", None),
                           ("clusterrole", "trellis-operator", None),
                           ("serviceaccount", "trellis-trainer", "pumpkins")]:
        args = ["get", kind, name, "-o", "name"] + (["-n", ns] if ns else [])
        assert cluster.kubectl(*args).stdout.strip(), (kind, name)
    can = cluster.kubectl("auth", "can-i", "create", "jobs.batch", "-n", "pumpkins",
                          "--as=system:serviceaccount:trellis-system:trellis-operator")
    assert can.stdout.strip() == "yes"
