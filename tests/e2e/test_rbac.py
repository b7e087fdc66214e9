"""The operator as its ServiceAccount, with exactly the ClusterRole of ``manifests/``.

The ServiceAccount, ClusterRole and binding come from ``kubectl kustomize manifests``; the
operator (``python -m controller --peering trellis``, cluster-wide, as the Deployment runs
it) authenticates with a TokenRequest token, never as admin. One scenario uses every
permission: a SpecRepository syncing a bare git repository (apply, prune, webhook), an
Experiment with ``backend: kubernetes`` (a Job, whose unschedulable pod it names; another
whose pod the Job controller could not create, explained by its Events), a
ModelDeployment with ``backend: seldon`` and ``spec.auth`` (a Secret read, a
SeldonDeployment), a deleted ModelDeployment (its SeldonDeployment torn down, its finalizer
released), status writes, Events, and kopf's peering keep-alive; the Jobs, Pods and
SeldonDeployments the operator owns are watched (a forbidden watch holds every reconcile
loop: kopf fills its indices of them first). The expectations are the ``Scenario`` checks
below.

The ablation then runs the same scenario once per rule, with that rule removed from the
ClusterRole. How it decides "failed": the operator gets ``STARTUP_S`` to log that its
context is ready (exiting earlier is a failure), then ``PER_RULE_S`` for every
expectation to hold; a rule is needed when at least one expectation still does not
hold at that deadline (the baseline meets them all in a fraction of it). A rule whose
removal breaks nothing fails its test: it does not belong in the role.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from controller.processes import free_port
from tests.support.clusterwide import (
    MANIFESTS,
    READY_LOG,
    admin_api,
    get_custom,
    install_crds,
    kill_quietly,
    own_cluster,
    peers,
    pick,
    render,
    reset_peering,
    scrape,
    service_account_kubeconfig,
    wait_for_log,
)
from tests.support.gitrepo import FLOW, GitRepo, deployment, experiment
from tests.support.kube import Cluster, OperatorProcess, condition

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

SA, SA_NS = "trellis-operator", "trellis-system"
STARTUP_S = 120.0
PER_RULE_S = 15.0
BASELINE_S = 60.0
GROUP, VERSION = "mlops.trellis.dev", "v1alpha1"
WEBHOOK_SECRET = b"farm-hook-key"
TOKEN = "pumpkin-token"


def _rules() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((MANIFESTS / "rbac.yaml").read_text()) if d]
    return pick(docs, "ClusterRole", SA)[0]["rules"]


def rule_id(rule: dict[str, Any]) -> str:
    group = rule["apiGroups"][0] or "core"
    return f"{group}/{'+'.join(rule['resources'])}:{'+'.join(rule['verbs'])}"


RULES = _rules()


# ------------------------------------------------------------------ environment
@dataclass
class Env:
    cluster: Cluster
    api: k8s.ApiClient
    role: dict[str, Any]
    kubeconfig: Path
    farm: GitRepo
    work: Path
    runs: int = 0
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("rbac")
    with own_cluster(base / "cluster") as cluster:
        docs = render(cluster)
        install_crds(cluster, docs)
        seed = pick(docs, "Namespace") + pick(docs, "ServiceAccount", SA) + \
            pick(docs, "ClusterRoleBinding", SA) + pick(docs, "ClusterKopfPeering")
        cluster.apply(seed)
        role = pick(docs, "ClusterRole", SA)[0]
        assert role["rules"] == RULES, "the rendered ClusterRole differs from rbac.yaml"
        kubeconfig = service_account_kubeconfig(cluster, SA, SA_NS, base / "sa.kubeconfig")
        farm = GitRepo(base / "farm")
        farm.write("flows/pumpkin_flow.py", FLOW)
        farm.write("specs/experiment.yaml", experiment("from-git", namespace=None, gpu=0,
                                                       backend="kubernetes"))
        # A ModelDeployment in git puts that kind in the sync's scope (so `stale` is pruned).
        farm.write("specs/deployment.yaml", deployment("from-git", namespace=None,
                                                       experiment="from-git"))
        farm.commit_and_push("the farm's specs")
        api = admin_api(cluster)
        try:
            yield Env(cluster, api, role, kubeconfig, farm, base)
        finally:
            api.close()


def apply_role(e: Env, rules: list[dict[str, Any]]) -> None:
    """Replace the ClusterRole's rules and wait until the authorizer uses them."""
    role = copy.deepcopy(e.role)
    role["rules"] = rules
    e.cluster.apply(role)

    def effective() -> bool:
        for rule in RULES:
            resource, _, sub = rule["resources"][0].partition("/")
            group = rule["apiGroups"][0]
            target = f"{resource}.{group}" if group else resource
            proc = e.cluster.kubectl("auth", "can-i", rule["verbs"][0], target,
                                     *([f"--subresource={sub}"] if sub else []),
                                     f"--as=system:serviceaccount:{SA_NS}:{SA}",
                                     "--all-namespaces", check=False)
            if (proc.stdout.strip() == "yes") != (rule in rules):
                return False
        return True
    deadline = time.monotonic() + 20
    while not effective():
        assert time.monotonic() < deadline, "the ClusterRole change never took effect"
        time.sleep(0.2)


# --------------------------------------------------------------------- scenario
def objects(ns: str, repo_url: str) -> list[dict[str, Any]]:
    """What an admin (or a SpecRepository) put in the namespace before the operator starts."""
    owner = {"app.kubernetes.io/managed-by": "trellis", "mlops.trellis.dev/specrepository": "farm",
             "mlops.trellis.dev/specrepository-namespace": ns}
    exp = yaml.safe_load(experiment("train", ns, gpu=0, backend="kubernetes"))
    refused = yaml.safe_load(experiment("refused", ns, gpu=0, backend="kubernetes"))
    registered = yaml.safe_load(experiment("registered", ns, gpu=0, backend="kubernetes"))
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "farm-secret", "namespace": ns},
         "stringData": {"webhook-secret": WEBHOOK_SECRET.decode()}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "classifier-auth", "namespace": ns}, "stringData": {"token": TOKEN}},
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SpecRepository",
         "metadata": {"name": "farm", "namespace": ns},
         "spec": {"url": repo_url, "ref": {"branch": "main"}, "path": "specs",
                  "interval": "10m", "secretRef": {"name": "farm-secret"}}},
        # Left git (it is not in the commit) but labelled as the repository's: pruned.
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
         "metadata": {"name": "stale", "namespace": ns, "labels": owner},
         "spec": {"model": {"experiment": "gone"}, "backend": "seldon"}},
        # Deleted before the operator starts, held by our finalizer: the operator's delete
        # handler tears its SeldonDeployment down, then releases it. (Deleted while a
        # reconcile loop runs, kopf may release an object without calling that optional
        # handler, whichever finishes first; see the report.)
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
         "metadata": {"name": "leaving", "namespace": ns,
                      "finalizers": ["mlops.trellis.dev/finalizer"]},
         "spec": {"model": {"experiment": "registered"}, "backend": "seldon"}},
        # ...and the SeldonDeployment an earlier operator rendered for it (no garbage
        # collector runs here: only the delete handler takes it down).
        {"apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment",
         "metadata": {"name": "leaving", "namespace": ns,
                      "labels": {"app.kubernetes.io/managed-by": "trellis"}},
         "spec": {"name": "leaving", "predictors": []}},
        exp,
        refused,
        registered,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
         "metadata": {"name": "classifier", "namespace": ns},
         "spec": {"model": {"experiment": "registered", "version": "latest"},
                  "backend": "seldon", "auth": {"secretRef": {"name": "classifier-auth"}}}},
    ]


REGISTERED_STATUS = {
    "observedGeneration": 1, "phase": "Succeeded",
    "runs": [{"pathspec": "PumpkinFlow/1", "generation": 1, "attempt": 1, "trigger": "",
              "phase": "Succeeded", "reason": "ModelRegistered", "message": "v1",
              "metrics": {"accuracy": 0.95}}],
    "models": [{"version": 1, "run": "PumpkinFlow/1", "artifactUri": "s3://trellis/models/v1",
                "metrics": {"accuracy": 0.95}}],
}


@dataclass
class Scenario:
    e: Env
    ns: str
    webhook_port: int
    metrics_port: int
    pod_id: str
    webhook_status: int | None = None
    pod_created: bool = False
    refusal_posted: bool = False

    def custom(self, plural: str, name: str) -> dict[str, Any] | None:
        return get_custom(self.e.api, GROUP, VERSION, plural, name, self.ns)

    # Each check returns None when its expectation holds, else what is missing.
    def specrepository_synced(self) -> str | None:
        repo = self.custom("specrepositories", "farm")
        ready = condition(repo, "Ready")
        if ready and ready["status"] == "True" and \
                repo["status"].get("lastSyncedCommit") == self.e.farm.head():
            return None
        return f"Ready: {ready}"

    def spec_applied_from_git(self) -> str | None:
        exp = self.custom("experiments", "from-git")
        ann = ((exp or {}).get("metadata") or {}).get("annotations") or {}
        ok = ann.get("mlops.trellis.dev/source-commit") == self.e.farm.head()
        return None if ok else "Experiment from-git not applied"

    def stale_spec_pruned(self) -> str | None:
        stale = self.custom("modeldeployments", "stale")
        return None if stale is None else \
            f"still there (deletionTimestamp {stale['metadata'].get('deletionTimestamp')})"

    def deleted_deployment_released(self) -> str | None:
        leaving = self.custom("modeldeployments", "leaving")
        return None if leaving is None else "still held by its finalizer"

    def deleted_deployment_torn_down(self) -> str | None:
        sdep = get_custom(self.e.api, "machinelearning.seldon.io", "v1", "seldondeployments",
                          "leaving", self.ns)
        return None if sdep is None else "its SeldonDeployment is still there"

    def training_job_created(self) -> str | None:
        exp = self.custom("experiments", "train")
        jobs = k8s.BatchV1Api(self.e.api).list_namespaced_job(self.ns).items
        mine = [j for j in jobs if any(o.uid == exp["metadata"]["uid"]
                                       for o in j.metadata.owner_references or [])]
        current = ((exp.get("status") or {}).get("currentRun") or {})
        if len(mine) == 1 and current.get("job") == mine[0].metadata.name:
            return None
        return f"jobs {[j.metadata.name for j in mine]}, currentRun {current}"

    def stuck_training_pod_named(self) -> str | None:
        """The Job's pod cannot be scheduled, and the Experiment says so (reading pods).

        No node and no Job controller here: the test plays both, creating the Job's pod
        and writing the scheduler's verdict onto it, as an admin."""
        exp = self.custom("experiments", "train") or {}
        job = ((exp.get("status") or {}).get("currentRun") or {}).get("job")
        if not job:
            return "no Job recorded yet"
        if not self.pod_created:
            core = k8s.CoreV1Api(self.e.api)
            pod = core.create_namespaced_pod(self.ns, {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{job}-x1", "labels": {
                    "batch.kubernetes.io/job-name": job,
                    "app.kubernetes.io/managed-by": "trellis"}},  # as the Job's template
                "spec": {"containers": [{"name": "train", "image": "trellis/trainer:dev"}]}})
            core.patch_namespaced_pod_status(pod.metadata.name, self.ns, {"status": {
                "conditions": [{"type": "PodScheduled", "status": "False",
                                "reason": "Unschedulable",
                                "message": "0/1 nodes are available: 1 Insufficient cpu."}]}})
            self.pod_created = True
        progress = (exp.get("status") or {}).get("progress") or {}
        return None if progress.get("blockedReason") == "Unschedulable" else \
            f"progress: {progress}"

    def refused_training_pod_named(self) -> str | None:
        """The Job controller cannot create the Job's pod, and the Experiment says why
        (reading the Job's Events). The test plays the Job controller: it starts the Job
        (``status.startTime``) and posts the FailedCreate Event it would, as an admin."""
        exp = self.custom("experiments", "refused") or {}
        job = ((exp.get("status") or {}).get("currentRun") or {}).get("job")
        if not job:
            return "no Job recorded yet"
        if not self.refusal_posted:
            batch, core = k8s.BatchV1Api(self.e.api), k8s.CoreV1Api(self.e.api)
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
            uid = batch.read_namespaced_job(job, self.ns).metadata.uid
            core.create_namespaced_event(self.ns, {
                "metadata": {"generateName": f"{job}."}, "type": "Warning",
                "reason": "FailedCreate", "count": 3, "lastTimestamp": started,
                "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": job,
                                   "namespace": self.ns, "uid": uid},
                "source": {"component": "job-controller"},
                "message": f'Error creating: pods "{job}-x1" is forbidden: exceeded quota: '
                           "pods, requested: pods=1, used: pods=0, limited: pods=0"})
            batch.patch_namespaced_job_status(job, self.ns, {"status": {"startTime": started}})
            self.refusal_posted = True
        progress = (exp.get("status") or {}).get("progress") or {}
        return None if progress.get("blockedReason") == "FailedCreate" else \
            f"progress: {progress}"

    def seldondeployment_rendered(self) -> str | None:
        sdep = get_custom(self.e.api, "machinelearning.seldon.io", "v1", "seldondeployments",
                          "classifier", self.ns)
        ann = ((sdep or {}).get("metadata") or {}).get("annotations") or {}
        ok = ann.get("mlops.trellis.dev/auth-secret") == "classifier-auth"
        return None if ok else f"SeldonDeployment: {sdep and sdep['metadata']}"

    def deployment_status_written(self) -> str | None:
        ready = condition(self.custom("modeldeployments", "classifier"), "Ready")
        ok = ready is not None and ready.get("observedGeneration") == 1
        return None if ok else f"Ready: {ready}"

    def events_posted(self) -> str | None:
        events = k8s.CoreV1Api(self.e.api).list_namespaced_event(self.ns).items
        ours = [ev for ev in events if ev.reporting_component == "trellis-operator"]
        return None if ours else "no Event from trellis-operator"

    def peering_keepalive(self) -> str | None:
        seen = peers(self.e.api)
        return None if self.pod_id in seen else f"peers: {sorted(seen)}"

    def webhook_accepted(self) -> str | None:
        if self.webhook_status != 202:
            body = b'{"ref": "refs/heads/main"}'
            sig = "sha256=" + hmac.new(WEBHOOK_SECRET, body, hashlib.sha256).hexdigest()
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.webhook_port}/hooks/{self.ns}/farm", data=body,
                method="POST", headers={"X-Hub-Signature-256": sig})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    self.webhook_status = resp.status
            except urllib.error.HTTPError as exc:
                self.webhook_status = exc.code
            except OSError:
                self.webhook_status = None
        return None if self.webhook_status == 202 else f"answered {self.webhook_status}"


CHECKS: list[Callable[[Scenario], str | None]] = [
    Scenario.specrepository_synced, Scenario.spec_applied_from_git, Scenario.stale_spec_pruned,
    Scenario.deleted_deployment_released, Scenario.deleted_deployment_torn_down,
    Scenario.training_job_created, Scenario.stuck_training_pod_named,
    Scenario.refused_training_pod_named,
    Scenario.seldondeployment_rendered,
    Scenario.deployment_status_written, Scenario.events_posted, Scenario.peering_keepalive,
    Scenario.webhook_accepted,
]


@dataclass
class Outcome:
    unmet: dict[str, str]  # expectation -> what was still missing at the deadline
    log: str
    metrics: dict[str, float] = field(default_factory=dict)  # the operator's, at the end


def run_scenario(e: Env, limit: float) -> Outcome:
    """Run the operator as the ServiceAccount through the scenario, then stop it."""
    e.runs += 1
    ns = f"rbac-{e.runs}"
    reset_peering(e.api)
    e.cluster.create_namespace(ns)
    items = objects(ns, str(e.farm.remote))
    e.cluster.apply(items)
    e.cluster.kubectl("patch", "experiment", "registered", "-n", ns, "--subresource=status",
                      "--type=merge", "-p", json.dumps({"status": REGISTERED_STATUS}))
    e.cluster.kubectl("delete", "modeldeployment", "leaving", "-n", ns, "--wait=false")
    sc = Scenario(e, ns, free_port(), free_port(), pod_id=f"rbac-operator-{e.runs}")
    op = OperatorProcess({
        "KUBECONFIG": str(e.kubeconfig), "POD_ID": sc.pod_id,
        "TRELLIS_STATE_DIR": str(e.work / f"state-{e.runs}"),
        "TRELLIS_WEBHOOK_PORT": str(sc.webhook_port),
        "TRELLIS_METRICS_PORT": str(sc.metrics_port),
        "TRELLIS_RESYNC_SECONDS": "5", "TRELLIS_LOG_FORMAT": "json",
    }, e.work / f"operator-{e.runs}.log", ["--peering", "trellis"]).start()
    unmet: dict[str, str] = {}
    try:
        started = time.monotonic()
        try:
            wait_for_log(op, READY_LOG, timeout=STARTUP_S)
        except AssertionError as exc:
            return Outcome({"operator started": str(exc)[:500]}, op.log())
        e.timings[ns] = time.monotonic() - started
        pending = {check.__name__: check for check in CHECKS}
        deadline = time.monotonic() + limit
        while pending and time.monotonic() < deadline:
            for name, check in list(pending.items()):
                unmet[name] = check(sc) or ""
                if not unmet[name]:
                    del pending[name], unmet[name]
            time.sleep(0.3)
        e.timings[f"{ns} scenario"] = time.monotonic() - started
        return Outcome(unmet, op.log(), scrape(sc.metrics_port) if not unmet else {})
    finally:
        kill_quietly(op)
        _clear(e, ns)


def _clear(e: Env, ns: str) -> None:
    """Make the namespace inert for the next run's cluster-wide operator: no objects of
    ours left (there is no namespace controller here to delete them with the namespace)."""
    objs = k8s.CustomObjectsApi(e.api)
    for plural in ("experiments", "modeldeployments", "specrepositories"):
        for item in objs.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]:
            name = item["metadata"]["name"]
            try:
                objs.patch_namespaced_custom_object(GROUP, VERSION, ns, plural, name,
                                                    {"metadata": {"finalizers": None}})
                objs.delete_namespaced_custom_object(GROUP, VERSION, ns, plural, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def forbidden_lines(log: str) -> list[str]:
    """Lines about a 403: the status code, not a timestamp's milliseconds (``.403Z``)."""
    return [line for line in log.splitlines()
            if re.search(r"(?<![\d.:])403(?!\d|Z)", line) or "orbidden" in line]


_DENIED = r'cannot (\w+) resource \\*"([\w/]+)\\*"(?: in API group \\*"([\w.]*)\\*")?'


def denials(log: str) -> list[str]:
    """What the API server refused, as far as the log says (kopf names verb and resource;
    our loop only logs "403 Forbidden")."""
    named = {f"{verb} {res}" + (f".{group}" if group else "")
             for verb, res, group in re.findall(_DENIED, log)}
    ours = sum("(403 Forbidden)" in line for line in log.splitlines())
    return sorted(named) + ([f"{ours} reconcile(s) failed with 403"] if ours else [])


# ------------------------------------------------------------------------ tests
def test_operator_works_with_exactly_the_manifests_role(env: Env) -> None:
    apply_role(env, RULES)
    out = run_scenario(env, BASELINE_S)
    assert out.unmet == {}, f"{out.unmet}\n{out.log[-4000:]}"
    assert forbidden_lines(out.log) == [], forbidden_lines(out.log)[:5]
    # The work shows on the operator's /metrics: the commit synced (once more when the
    # webhook's sync ends before the scrape), three Jobs launched.
    assert out.metrics['trellis_spec_syncs_total{result="synced"}'] in (1, 2)
    assert out.metrics['trellis_training_runs_total{outcome="started"}'] == 3
    assert out.metrics['trellis_reconciles_total{kind="ModelDeployment",result="success"}'] >= 1
    print(f"\nbaseline: {env.timings}")


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_each_rule_is_needed(env: Env, rule: dict[str, Any]) -> None:
    apply_role(env, [r for r in RULES if r is not rule])
    out = run_scenario(env, PER_RULE_S)
    print(f"\nwithout {rule_id(rule)}: unmet {sorted(out.unmet)}; denied: {denials(out.log)}")
    assert out.unmet, f"nothing broke without {rule_id(rule)}: remove it from manifests/rbac.yaml"
