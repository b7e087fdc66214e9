"""``trellis demo --cluster``: the farm's first chapter as a cluster runs it.

A dev cluster with a real node (kubelet, containerd) and a real S3 server (SeaweedFS);
the controller and trainer images built here from the Dockerfile and imported into the
node's containerd; the operator deployed from ``manifests/`` as docs/install.md deploys
it (two replicas peering, the manifests' RBAC, nothing admin); a team namespace with
``manifests/team`` and the S3 Secret. The farm's spec repository is served over HTTP, a
SpecRepository syncs it, and the Experiment (``backend: kubernetes``) trains in a Job's
pod to a model version in S3. Mid-run the active operator replica is force-deleted: the
standby takes over and re-attaches to the Job (one run, one Job).

What does not run here is said, not faked: in a cluster a ModelDeployment is served by
Seldon Core's operator (``backend: seldon``), which cannot be built or run on this
machine (design.md); so neither serving nor what builds on it (canary analysis, drift,
retraining) runs in this mode. ``make demo`` (local mode) shows those.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from controller import api, objectstore
from controller.demo import farm
from controller.demo.main import Demo, DemoFailed
from controller.demo.recorder import Recorder
from controller.devcluster import deploy, hostnet, images
from controller.devcluster.cluster import ClusterError, DevCluster

NS = farm.NAMESPACE
# cpu: the node has 2 and the operator's replicas request 0.1 each; the pod may use more
# (no cpu limit). memory is also the pod's limit.
RESOURCES = {"gpu": 0, "cpu": 1, "memory": 3072}
SERVING_NOT_RUN = (
    "Serving needs Seldon Core's operator: in a cluster a ModelDeployment (backend: seldon) "
    "becomes a SeldonDeployment that Seldon Core's operator turns into pods, and that "
    "operator cannot be built or run here (its Go module is not served). So no "
    "ModelDeployment is applied in this mode; `make demo` (local mode) serves, canaries, "
    "detects drift and retrains.")


def cluster_parts(failover: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What this mode ran and what it did not, for the output and the report."""
    takeover = ""
    if failover and failover.get("took_over_after_s") is not None:
        takeover = (f"; failover: {failover['deleted']} force-deleted mid-run, "
                    f"{failover['new_active']} took over after "
                    f"{failover['took_over_after_s']:.0f} s and re-attached to the run's Job")
    return [
        {"part": "Kubernetes", "ran": True,
         "how": "dev cluster: etcd, kube-apiserver, controller-manager, scheduler and a real "
                "node (kubelet, containerd, kube-proxy) on this machine"},
        {"part": "operator", "ran": True,
         "how": "2 replicas of the controller image as pods (manifests/), peering as "
                f"`trellis`: one active, one standby{takeover}"},
        {"part": "GitOps", "ran": True,
         "how": "a SpecRepository synced the farm's repository (served over HTTP) into "
                "the cluster"},
        {"part": "training", "ran": True,
         "how": "a Job's pod from the trainer image ran the whole Metaflow flow, its "
                "datastore in S3"},
        {"part": "model store", "ran": True,
         "how": "the model version (model.pt, reference, metrics, meta) in S3 (SeaweedFS)"},
        {"part": "serving", "ran": False, "how": SERVING_NOT_RUN},
        {"part": "canary analysis, drift, retraining", "ran": False,
         "how": "they act on served traffic: not without serving"},
        {"part": "pull request: validate, plan, webhook", "ran": False,
         "how": "shown by `make demo`; this mode stops after the first model"},
    ]


class ClusterDemo(Demo):
    mode = "cluster"

    def __init__(self, workdir: Path, report_dir: Path) -> None:
        super().__init__(workdir, report_dir)
        self.git_http: farm.GitHttpServer | None = None
        self.commit = ""
        self.facts: dict[str, Any] = {}

    @property
    def dev(self) -> DevCluster:
        assert self.cluster is not None
        return self.cluster

    # ------------------------------------------------------------------ story
    def run(self) -> int:
        self.prepare()
        with self.phase("Dev cluster: control plane, node, S3"):
            self.start_cluster()
        with self.phase("The operator as pods"):
            self.start_operator()
        with self.phase("GitOps: the farm's spec repository"):
            self.sync_specs()
        with self.phase("Level 0 — train in a pod, model to S3, a failover"):
            self.level0()
        self.say("\nServing: not run in cluster mode. " + SERVING_NOT_RUN)
        self.finish()
        return 0

    def start_cluster(self) -> None:
        self.cluster = DevCluster(self.workdir / "cluster")
        try:
            st = self.cluster.up(node=True, s3=True, log=self.say)
        except ClusterError as exc:
            raise DemoFailed(f"the dev cluster did not start: {exc}") from exc
        self.kubeconfig, self.kubectl_path = st.kubeconfig, st.kubectl
        self.say(f"dev cluster: kube-apiserver https://{st.host}:{st.apiserver_port}, "
                 f"S3 {st.s3_endpoint} (bucket trellis), node:")
        self.show("get", "nodes")
        self.recorder = Recorder(self.kubeconfig, NS)

    def start_operator(self) -> None:
        node = self.dev.node.state()
        assert node is not None
        try:
            built = images.ensure_images(Path(node.containerd_socket),
                                         names=("controller", "trainer"), log=self.say)
        except images.ImageError as exc:
            raise DemoFailed(f"building the images failed: {exc}") from exc
        self.say(images.table(built))
        config = {"TRELLIS_RESYNC_SECONDS": "15"}
        if built["trainer"].mounts:  # the trainer's environment from the host (mounted)
            config["TRELLIS_TRAINER_HOST_MOUNTS"] = json.dumps(built["trainer"].mounts)
        try:
            skipped = deploy.deploy_operator(self.dev, config)
        except ClusterError as exc:
            raise DemoFailed(f"the operator did not roll out: {exc}") from exc
        for doc in skipped:
            self.say(f"not applied: {doc['kind']} {doc['metadata']['name']} "
                     f"({doc['apiVersion']} is not served here: no Prometheus operator)")

        def peering() -> list[str] | None:
            names = [p["metadata"]["name"] for p in deploy.operator_pods(self.dev)]
            live = deploy.live_peers(deploy.peering_status(self.dev))
            return names if len(names) == 2 and set(names) <= set(live) else None

        names = self.wait("both replicas peering", peering, 120)
        self.show("get", "pods", "-n", deploy.SYSTEM_NAMESPACE, "-o", "wide")
        active = deploy.active_peer(deploy.peering_status(self.dev))
        self.say(f"active replica: {active} (the oldest); the other stands by")
        self.facts["operator_pods"] = names
        self.facts["images"] = {n: {"ref": i.ref, "environments": i.environments}
                                for n, i in built.items()}

    def sync_specs(self) -> None:
        deploy.team_namespace(self.dev, NS)
        self.say(f"team namespace {NS}: manifests/team (ServiceAccount trellis-trainer) "
                 "and the S3 Secret trellis-s3")
        exp = farm.experiment(backend="kubernetes", resources=RESOURCES)
        self.commit = self.repo.create(exp, None)
        self.git_http = farm.GitHttpServer(self.repo, hostnet.GATEWAY)
        self.say(f"git repository {self.git_http.url} at {self.commit[:8]}: specs/ + flows/ "
                 "(served over HTTP to the operator's and the trainer's pods)")
        self._apply_specrepo(self.git_http.url, secret=None)
        self.wait("SpecRepository synced", lambda: self._specrepo_ready(self.commit), 90)
        assert self.recorder is not None
        self.recorder.start()

    def level0(self) -> None:
        job = self.wait("the run's Job created", self._job, 120)
        self.say(f"Job {job}: one pod runs the whole flow")
        self.facts["failover"] = self.failover()
        self.wait("model v1 trained in the pod and registered",
                  lambda: self.objects()[0].get("latestModel") == "v1", 600)
        self.collect()

    def failover(self) -> dict[str, Any]:
        """Force-delete the active replica while the run is in flight; the standby takes
        over when the deleted one's keep-alive lapses (kopf's peering)."""
        active = deploy.active_peer(deploy.peering_status(self.dev))
        standby = next((p for p in deploy.operator_pods(self.dev)
                        if p["metadata"]["name"] != active), None)
        if active is None or standby is None:
            raise DemoFailed(f"no active and standby replica to fail over (active {active})")
        name = standby["metadata"]["name"]
        before = deploy.reconciles(standby) or 0.0
        self.say(f"force-deleting the active replica {active} mid-run "
                 f"(standby {name} has reconciled {before:.0f} times)")
        self.kubectl("delete", "pod", active, "-n", deploy.SYSTEM_NAMESPACE, "--force",
                     "--grace-period=0")
        deleted_at = time.monotonic()
        self.wait(f"{name} took over", lambda: deploy.active_peer(
            deploy.peering_status(self.dev)) == name, 180)
        took = time.monotonic() - deleted_at
        # kopf withdraws a replica's keep-alive when it stops on SIGTERM (a forced delete
        # still sends one); one killed outright is waited out (its keep-alive lapses).
        withdrew = active not in deploy.peering_status(self.dev)
        self.say("  the deleted replica's keep-alive "
                 + ("was withdrawn as it stopped" if withdrew else "lapsed"))
        self.wait(f"{name} reconciles", lambda: (deploy.reconciles(standby) or 0) > before,
                  120)
        return {"deleted": active, "new_active": name,
                "took_over_after_s": round(took, 1),
                "keepalive": "withdrawn" if withdrew else "lapsed",
                "reconciled_after_s": round(time.monotonic() - deleted_at, 1)}

    def collect(self) -> None:
        """The facts the demo shows and the report keeps: pods, the Job, the Experiment's
        status, the model's files in S3, its accuracy and source commit."""
        self.show("get", "pods", "-A")
        self.show("get", "jobs", "-n", NS)
        self.show("get", "experiment", "classifier", "-n", NS)
        exp = json.loads(self.kubectl("get", "experiment", "classifier", "-n", NS, "-o",
                                      "json"))
        status = exp.get("status") or {}
        model = (status.get("models") or [{}])[-1]
        runs = status.get("runs") or []
        jobs = json.loads(self.kubectl("get", "jobs", "-n", NS, "-o", "json"))["items"]
        pods = json.loads(self.kubectl("get", "pods", "-n", NS, "-l",
                                       f"{api.LABEL_EXPERIMENT}=classifier", "-o",
                                       "json"))["items"]
        where = objectstore.parse(model.get("artifactUri") or "s3://-/-")
        bucket, prefix = where.bucket, where.key
        client = self.dev.s3.client()
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
        objects = [{"key": o["Key"], "size": o["Size"]} for o in listed.get("Contents", [])]
        datastore = client.list_objects_v2(Bucket=bucket, Prefix="metaflow/PumpkinFlow/")
        accuracy = (model.get("metrics") or {}).get("accuracy")
        self.say(f"\nExperiment classifier: {status.get('phase')}, {len(runs)} run(s), "
                 f"model v{model.get('version')} from run {model.get('run')}")
        self.say(f"  accuracy {accuracy:.3f} (objective ≥ 0.9)" if accuracy is not None
                 else "  accuracy: not recorded")
        same = "= the farm repository's main" if model.get("commit") == self.commit else \
            f"(the repository's main is {self.commit[:8]})"
        self.say(f"  source commit {str(model.get('commit'))[:8]} {same}")
        self.say(f"\n$ aws s3 ls --recursive {model.get('artifactUri')}/")
        for o in objects:
            self.say(f"  {o['size']:>10}  s3://{bucket}/{o['key']}")
        self.say(f"  (and {datastore.get('KeyCount', 0)} objects of Metaflow's datastore "
                 f"under s3://{bucket}/metaflow/PumpkinFlow/)")
        self.facts.update({
            "namespace": NS, "source_commit": self.commit,
            "repository_url": self.git_http.url if self.git_http else "",
            "experiment_phase": status.get("phase"), "runs": len(runs),
            "model": {"version": model.get("version"), "run": model.get("run"),
                      "artifactUri": model.get("artifactUri"), "accuracy": accuracy,
                      "commit": model.get("commit")},
            "jobs": [{"name": j["metadata"]["name"],
                      "succeeded": (j.get("status") or {}).get("succeeded", 0)}
                     for j in jobs],
            "pods": [{"name": p["metadata"]["name"], "phase": p["status"].get("phase"),
                      "image": p["spec"]["containers"][0]["image"],
                      "node": p["spec"].get("nodeName"),
                      "requests": p["spec"]["containers"][0]["resources"].get("requests")}
                     for p in pods],
            "s3": {"bucket": bucket, "prefix": prefix, "objects": objects,
                   "datastore_objects": datastore.get("KeyCount", 0)},
            "kubectl_get_pods": self.kubectl("get", "pods", "-A"),
        })

    # -------------------------------------------------------------- plumbing
    def _job(self) -> str | None:
        current = self.objects()[0].get("currentRun") or {}
        return current.get("job") if current.get("launched") else None

    def show(self, *args: str) -> str:
        text = self.kubectl(*args)
        self.say(f"$ kubectl {' '.join(args)}\n{text.rstrip()}")
        return text

    def serving_line(self, d: dict[str, Any]) -> str:
        return "serving: not in cluster mode"

    def report_data(self) -> dict[str, Any]:
        return {"mode": self.mode, "parts": cluster_parts(self.facts.get("failover")),
                "cluster": self.facts}

    # ---------------------------------------------------------- lifecycle
    def teardown(self) -> None:
        """Keep the pods' logs, then stop everything: the git server, the dev cluster
        (its node drains every pod first) and the S3 server."""
        if self.cluster is not None and self.cluster.state() is not None:
            for name, args in (
                    ("operator.log", ["-n", deploy.SYSTEM_NAMESPACE, "-l",
                                      deploy.OPERATOR_SELECTOR]),
                    ("trainer.log", ["-n", NS, "-l", f"{api.LABEL_EXPERIMENT}=classifier"])):
                proc = self.cluster.kubectl("logs", *args, "--prefix", "--tail=-1",
                                            "--all-containers", check=False, timeout=60)
                (self.workdir / name).write_text(proc.stdout + proc.stderr)
        began = time.monotonic()
        if self.git_http is not None:
            self.git_http.stop()
        super().teardown()
        if self.cluster is not None:
            self.say(f"stopped everything it started (the node drained, the dev cluster and "
                     f"the S3 server down): {time.monotonic() - began:.0f}s")
