"""``trellis validate --repo`` and ``trellis plan`` over a real repository's history.

One repository, a series of commits a team would make (a parameter change, a change
of flow code, a new deployment, a deleted spec, broken YAML); each step is planned
and validated through the real command line, and the exact lines are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.paths import ROOT
from tests.support.gitrepo import FLOW, GitRepo, deployment, experiment
from tests.support.kube import Cluster

pytestmark = pytest.mark.e2e


def trellis(*args: str, env: dict[str, str] | None = None,
            cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def plan(repo: GitRepo, base: str | None, head: str, fmt: str = "text",
         *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["plan", "--repo", str(repo.work), "--head", head, "--path", "specs",
            "--format", fmt, *extra]
    return trellis(*args, *(["--base", base] if base else []))


def lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return proc.stdout.strip().splitlines()


@pytest.fixture
def farm(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "farm")
    repo.write("flows/pumpkin_flow.py", FLOW)
    repo.write("flows/helpers.py", "SIZE = 64\n")
    repo.write("specs/experiment.yaml", experiment())
    repo.write("specs/old.yaml", experiment("old", gpu=0))
    repo.write("specs/deployment.yaml", deployment())
    repo.commit("the farm's specs")
    return repo


def test_plan_over_a_series_of_commits(farm: GitRepo) -> None:
    c0 = farm.head()
    farm.write("specs/experiment.yaml", experiment(lr=0.001))
    c1 = farm.commit("lower the learning rate")
    farm.write("flows/helpers.py", "SIZE = 64\nCROP = 8\n")
    c2 = farm.commit("crop the photos")
    farm.write("specs/x.yaml", deployment("x"))
    c3 = farm.commit("a second deployment")
    farm.remove("specs/old.yaml")
    c4 = farm.commit("retire the old experiment")
    farm.write("specs/deployment.yaml", deployment(steps="[25, 100]"))
    c5 = farm.commit("faster canary")

    expected = {
        (c0, c1): ["Experiment pumpkins/classifier: parameters.lr 0.01 → 0.001 ⇒ new training "
                   "run (1 GPU)"],
        (c1, c2): ["flow code changed (flows/helpers.py) ⇒ pumpkins/classifier retrains",
                   "flow code changed (flows/helpers.py) ⇒ pumpkins/old retrains"],
        (c2, c3): ["ModelDeployment pumpkins/x: new ⇒ serves classifier latest"],
        (c3, c4): ["Experiment pumpkins/old: removed ⇒ pruned"],
        (c4, c5): ["ModelDeployment pumpkins/classifier: canary steps 10/50/100 → 25/100 ⇒ "
                   "next version rolls out in 2 steps"],
    }
    for (base, head), want in expected.items():
        proc = plan(farm, base, head)
        assert proc.returncode == 0, proc.stderr
        assert lines(proc) == want, (base, head)
        farm.git("checkout", "--quiet", head)
        ok = trellis("validate", "--repo", str(farm.work), "--ref", head,
                     str(farm.work / "specs"))
        assert ok.returncode == 0, ok.stderr
    farm.git("checkout", "--quiet", "main")

    # The whole range at once, as a PR comment.
    proc = plan(farm, c0, c5, "markdown")
    assert proc.returncode == 0, proc.stderr
    assert lines(proc)[0] == f"### Trellis plan: `{c0[:12]}` → `{c5[:12]}`"
    assert "\n".join(lines(proc)[2:7]) == "\n".join([
        "- Experiment pumpkins/classifier: parameters.lr 0.01 → 0.001, flow code changed "
        "(flows/helpers.py) ⇒ new training run (1 GPU)",
        "- Experiment pumpkins/old: removed ⇒ pruned",
        "- ModelDeployment pumpkins/classifier: canary steps 10/50/100 → 25/100 ⇒ next version "
        "rolls out in 2 steps",
        "- ModelDeployment pumpkins/x: new ⇒ serves classifier latest",
        "",
    ])
    assert "_0 object(s) unchanged._" in proc.stdout


def test_broken_yaml_is_an_error_section_and_the_rest_is_still_planned(farm: GitRepo) -> None:
    base = farm.head()
    farm.write("specs/experiment.yaml", experiment(epochs=8))
    farm.write("specs/old.yaml", "apiVersion: mlops.trellis.dev/v1alpha1\nkind: [\n")
    head = farm.commit("a typo")
    proc = plan(farm, base, head)
    assert proc.returncode == 1
    assert lines(proc) == [
        "Experiment pumpkins/classifier: parameters.epochs 4 → 8 ⇒ new training run (1 GPU)",
        "error: specs/old.yaml:3: YAML syntax error: expected the node content, but found "
        "'<stream end>'",
    ]  # the broken file's Experiment is not reported as removed
    data = json.loads(plan(farm, base, head, "json").stdout)
    assert data["ok"] is False and data["base"] == base and data["head"] == head
    assert data["errors"] == [{"path": "specs/old.yaml", "line": 3, "message":
                               "YAML syntax error: expected the node content, but found "
                               "'<stream end>'"}]
    assert [c["changes"] for c in data["changes"]] == [
        [{"path": "parameters.epochs", "old": 4, "new": 8}]]
    md = plan(farm, base, head, "markdown").stdout
    assert "#### ❌ 1 error(s): nothing from this commit will be applied until they are fixed" \
        in md


def test_base_defaults_to_the_merge_base_with_main(farm: GitRepo) -> None:
    farm.git("checkout", "--quiet", "-b", "feature")
    farm.write("specs/experiment.yaml", experiment(gpu=0, lr=0.02))
    farm.commit("cheaper")
    proc = trellis("plan", "--repo", str(farm.work), "--path", "specs", "--format", "text")
    assert proc.returncode == 0, proc.stderr
    assert lines(proc) == ["Experiment pumpkins/classifier: parameters.lr 0.01 → 0.02, "
                           "resources.gpu 1 → 0 ⇒ new training run (CPU)"]


def test_validate_checks_flows_references_and_coherence(farm: GitRepo) -> None:
    farm.write("specs/bad.yaml", "\n---\n".join([
        experiment("bad", flow_name="PumpkinFlw"),
        experiment("bad2", extra_params="\n    momentum: 0.9\n    variety: 3"),
        experiment("bad3", flow="flows/missing.py"),
        deployment("y1", experiment="nope"),  # a bare y is a boolean to kubectl (and to us)
        deployment("z", drift="\n  drift:\n    enabled: true\n    action: retrain\n"
                              "    cooldown: 1m\n    window: 50000"),
    ]))
    head = farm.commit("mistakes")
    proc = trellis("validate", "--repo", ".", "--ref", head, "specs/bad.yaml", cwd=farm.work)
    assert proc.returncode == 1
    f = "specs/bad.yaml"
    assert proc.stderr.strip().splitlines() == [
        f'{f}:9: spec.flow.name: flows/pumpkin_flow.py defines no FlowSpec class "PumpkinFlw" '
        "(FlowSpec classes there: PumpkinFlow)",
        f"{f}:34: spec.parameters.momentum: PumpkinFlow (flows/pumpkin_flow.py): parameter "
        "'momentum' is not declared by the flow (declared: epochs, lr, variety)",
        f"{f}:35: spec.parameters.variety: PumpkinFlow (flows/pumpkin_flow.py): parameter "
        "'variety' must be a string, got integer 3 (quote it)",
        f'{f}:52: spec.flow.file: flow file "flows/missing.py" not found in commit {head[:12]}',
        f'{f}:73: spec.model.experiment: Experiment "nope" not found in namespace "pumpkins" '
        "(not in the checked files or the repository)",
        f"{f}:95: spec.drift.cooldown: drift.cooldown 1m is shorter than one canary rollout "
        "(3 steps × 30s = 1m30s): a retrained version could arrive before the previous canary "
        "finished",
        f"{f}:96: spec.drift.window: drift.window of 50000 inputs needs about 610.4 MiB of "
        "request log but drift.storage.maxBytes is 256 MiB: the window would never fill",
    ]
    data = json.loads(trellis("validate", "--repo", ".", "--ref", head, "--format", "json",
                              "specs/bad.yaml", cwd=farm.work).stdout)
    assert data["ok"] is False and len(data["errors"]) == 7


def test_validate_reads_the_ref_or_the_work_tree(farm: GitRepo) -> None:
    """A parameter the flow declares only in the uncommitted work tree: the work tree
    accepts it, the committed ref does not."""
    farm.write("specs/experiment.yaml", experiment(extra_params="\n    momentum: 0.9"))
    farm.write("flows/pumpkin_flow.py", FLOW.replace(
        '    @step\n    def start',
        '    momentum = Parameter("momentum", type=float, default=0.0, help="M.")\n\n'
        '    @step\n    def start', 1))
    spec = str(farm.work / "specs" / "experiment.yaml")
    assert trellis("validate", "--repo", str(farm.work), spec).returncode == 0
    at_head = trellis("validate", "--repo", str(farm.work), "--ref", "HEAD", spec)
    assert at_head.returncode == 1
    assert "parameter 'momentum' is not declared by the flow" in at_head.stderr
    # A deployment whose Experiment lives elsewhere in the repository is fine.
    farm.write("other/exp.yaml", experiment("elsewhere"))
    farm.write("specs/deployment.yaml", deployment(experiment="elsewhere"))
    farm.commit("elsewhere")
    ok = trellis("validate", "--repo", str(farm.work), "--ref", "HEAD",
                 str(farm.work / "specs" / "deployment.yaml"))
    assert ok.returncode == 0, ok.stderr


def test_validate_and_plan_against_the_cluster(farm: GitRepo, cluster: Cluster,
                                               namespace: str) -> None:
    env = cluster.env()
    farm.write("specs/x.yaml", deployment("x", namespace=namespace, experiment="live-only"))
    farm.commit("refers to a live experiment")
    spec = str(farm.work / "specs" / "x.yaml")
    missing = trellis("validate", "--repo", str(farm.work), "--cluster", spec, env=env)
    assert missing.returncode == 1
    assert "not in the checked files or the repository nor in the cluster" in missing.stderr
    live = experiment("live-only", namespace=namespace, gpu=0)
    cluster.apply(live)
    found = trellis("validate", "--repo", str(farm.work), "--cluster", spec, env=env)
    assert found.returncode == 0, found.stderr

    # plan --cluster: the live namespace holds live-only (unmanaged: never pruned) and a
    # managed Experiment that git no longer has (pruned).
    managed = experiment("gone", namespace=namespace, gpu=0).replace(
        "  name: gone\n", "  name: gone\n  labels:\n    app.kubernetes.io/managed-by: trellis\n")
    cluster.apply(managed)
    farm.write("specs/live.yaml", experiment("live-only", namespace=namespace, gpu=0, lr=0.5))
    head = farm.commit("retune the live experiment")
    proc = trellis("plan", "--repo", str(farm.work), "--head", head, "--path", "specs",
                   "--cluster", "--format", "text", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [ln for ln in lines(proc) if namespace in ln] == [
        f"Experiment {namespace}/gone: removed ⇒ pruned",
        f"Experiment {namespace}/live-only: parameters.lr 0.01 → 0.5 ⇒ new training run (CPU)",
        f"ModelDeployment {namespace}/x: new ⇒ serves live-only latest",
    ]
