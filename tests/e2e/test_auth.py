"""Authorized prediction access through the operator (local mode): a bearer token from a
Secret the ModelDeployment names; rotation without a restart; the token never leaks."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_model import make_images, payload, write_model_version
from tests.support.kube import Cluster, OperatorProcess, wait_for
from tests.support.specs import base

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]
OLD, NEW = "tok-" + "a1b2c3d4e5f6" * 2, "tok-" + "9z8y7x6w5v4u" * 2


def call(url: str, token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps(payload(make_images(1, seed=4))).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=15) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def secret(token: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "farm-token"},
            "data": {"token": base64.b64encode(token.encode()).decode()}}


def test_bearer_token_required_rotated_and_never_leaked(
        cluster: Cluster, namespace: str, operator_env: dict[str, str], tmp_path: Path,
        state_dir: Path) -> None:
    model = write_model_version(tmp_path / "v1", seed=1)
    op = OperatorProcess(operator_env, tmp_path / "operator.log", ["-n", namespace]).start()
    try:
        cluster.apply(secret(OLD), namespace)
        exp = base("Experiment")
        exp["spec"]["flow"]["file"] = "flows/not-here.py"
        cluster.apply(exp, namespace)
        cluster.kubectl("patch", "exp", "classifier", "-n", namespace, "--subresource=status",
                        "--type=merge", "-p", json.dumps({"status": {"models": [
                            {"version": 1, "artifactUri": f"file://{model}"}]}}))
        mdep = base("ModelDeployment")
        mdep["spec"]["drift"] = {"enabled": False}
        mdep["spec"]["auth"] = {"secretRef": {"name": "farm-token"}}
        cluster.apply(mdep, namespace)
        url = wait_for(lambda: ((cluster.get("mdep", "classifier", namespace) or {})
                                .get("status") or {}).get("phase") == "Serving"
                       and cluster.get("mdep", "classifier", namespace)["status"]["endpoint"],
                       timeout=120, what="serving")
        assert call(url, None) == 401
        assert call(url, "wrong") == 403
        assert call(url, OLD) == 200

        cluster.apply(secret(NEW), namespace)  # rotate: no restart of anything
        wait_for(lambda: call(url, NEW) == 200, timeout=30, interval=1, what="new token")
        assert call(url, OLD) == 403
    finally:
        op.stop()
    obj = cluster.get("mdep", "classifier", namespace)
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    logs = op.log() + "".join(p.read_text(errors="replace")
                              for p in state_dir.rglob("*.log"))
    for token in (OLD, NEW):
        assert token not in json.dumps(obj)
        assert token not in events
        assert token not in logs
