"""``controller.devcluster.deploy``'s pure parts (which peer is active, which API an
object needs) and the farm repository the cluster demo serves over HTTP to its pods."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from controller.demo import farm
from controller.devcluster.deploy import active_peer, live_peers, pick, plural_name

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _peer(priority: int, lastseen: str, lifetime: int = 60) -> dict:
    return {"priority": priority, "lifetime": lifetime, "lastseen": lastseen}


@pytest.mark.parametrize(("status", "live", "active"), [
    pytest.param({}, {}, None, id="nobody"),
    pytest.param({"a": _peer(-100, "2027-01-15T07:59:50Z"),
                  "b": _peer(-200, "2027-01-15T07:59:55Z")},
                 {"a": -100, "b": -200}, "a", id="the-oldest-start-wins"),
    pytest.param({"a": _peer(-100, "2027-01-15T07:58:59Z"),
                  "b": _peer(-200, "2027-01-15T07:59:55Z")},
                 {"b": -200}, "b", id="a-lapsed-keepalive-hands-over"),
    pytest.param({"a": _peer(-100, "2027-01-15T07:59:00.5+00:00", lifetime=120),
                  "b": "garbage", "c": _peer(-50, "yesterday")},
                 {"a": -100}, "a", id="own-lifetime-and-junk"),
])
def test_the_active_peer_is_the_live_one_of_highest_priority(
        status: dict, live: dict, active: str | None) -> None:
    assert live_peers(status, NOW) == live
    assert active_peer(status, NOW) == active


@pytest.mark.parametrize(("doc", "name"), [
    ({"apiVersion": "v1", "kind": "Namespace"}, "namespaces"),
    ({"apiVersion": "apps/v1", "kind": "Deployment"}, "deployments.apps"),
    ({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering"}, "clusterkopfpeerings.kopf.dev"),
    ({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor"},
     "servicemonitors.monitoring.coreos.com"),
    ({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget"},
     "poddisruptionbudgets.policy"),
])
def test_plural_names_as_api_resources_lists_them(doc: dict, name: str) -> None:
    assert plural_name(doc) == name


def test_pick_by_kind_and_name() -> None:
    docs = [{"kind": "ConfigMap", "metadata": {"name": n}} for n in ("a", "b")]
    assert pick(docs, "ConfigMap") == docs
    assert pick(docs, "ConfigMap", "b") == docs[1:]
    assert pick(docs, "Secret") == []


def test_the_farm_repository_clones_over_http_and_nothing_else_is_served(
        tmp_path: Path) -> None:
    repo = farm.FarmRepo(tmp_path / "git")
    exp = farm.experiment(backend="kubernetes", resources={"gpu": 0, "cpu": 1, "memory": 3072})
    first = repo.create(exp, None)
    assert not (repo.work / "specs" / "modeldeployment.yaml").exists()
    server = farm.GitHttpServer(repo, "127.0.0.1")
    try:
        assert server.url.endswith("/farm.git")
        clone = tmp_path / "clone"
        subprocess.run(["git", "clone", "-q", server.url, str(clone)], check=True, timeout=60)
        assert subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip() == first
        assert "backend: kubernetes" in (clone / "specs" / "experiment.yaml").read_text()
        # a merge is fetched too (the push refreshed what dumb HTTP clients read)
        repo.pull_request("tune", farm.experiment(backend="kubernetes", lr=0.002), None, "lr")
        merged = repo.merge("tune")
        subprocess.run(["git", "-C", str(clone), "pull", "-q"], check=True, timeout=60)
        assert subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip() == merged
        base = server.url.rsplit("/", 1)[0]
        for path in ("/", "/farm/specs/experiment.yaml", "/farm.git/../farm/flows"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + path, timeout=5)
            assert err.value.code == 404, path
    finally:
        server.stop()
