"""``trellis demo``: the pumpkin farm's whole story, unattended, ending in a report.

Level 0 — a first Experiment trains, a ModelDeployment serves it, the townsfolk get
answers over the Seldon REST endpoint. Level 1 — a pull request tunes the
hyperparameters; ``trellis validate`` and ``trellis plan`` speak; the merge syncs; the
model retrains, is canaried and promoted. Level 2 — genetically modified white pumpkins
arrive; drift is detected; retraining happens by itself; the new version is canaried
and promoted; drift clears. Every object lives on a real API server.

That is local mode: the operator a process here, training and serving processes too.
``trellis demo --cluster`` (``controller.demo.cluster``) tells the first chapter as a
cluster runs it: the operator as pods, training in a pod, the model in S3.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from controller.demo import farm
from controller.demo.recorder import Recorder
from controller.demo.traffic import Townsfolk
from controller.devcluster.cluster import ClusterError, DevCluster
from controller.localwork import reap
from controller.paths import CRDS_DIR, ROOT
from controller.processes import free_port

NS = farm.NAMESPACE
WEBHOOK_SECRET = "pumpkin-patch"


class DemoFailed(RuntimeError):
    pass


LOCAL_PARTS = [
    {"part": "Kubernetes", "ran": True,
     "how": "dev cluster: etcd and kube-apiserver on this machine (no node: nothing runs "
            "as a pod)"},
    {"part": "operator", "ran": True, "how": "one process on this machine (local mode)"},
    {"part": "GitOps", "ran": True,
     "how": "a SpecRepository synced the farm's repository; a pull request validated, "
            "planned, merged and pushed with a signed webhook"},
    {"part": "training", "ran": True, "how": "Metaflow runs as processes on this machine"},
    {"part": "model store", "ran": True, "how": "files in the operator's state directory"},
    {"part": "serving", "ran": True,
     "how": "seldon-core-microservice processes behind a weighted router on loopback"},
    {"part": "canary analysis, drift, retraining", "ran": True,
     "how": "on the townsfolk's live traffic"},
]


class Demo:
    mode = "local"

    def __init__(self, workdir: Path, report_dir: Path) -> None:
        self.workdir, self.report_dir = workdir, report_dir
        self.state = workdir / "state"
        self.cluster: DevCluster | None = None
        self.kubeconfig = ""
        self.kubectl_path = "kubectl"
        self.operator: subprocess.Popen[bytes] | None = None
        self.recorder: Recorder | None = None
        self.folk: Townsfolk | None = None
        self.repo = farm.FarmRepo(workdir / "git")
        self.phases: list[dict[str, Any]] = []
        self.started = time.time()
        self.webhook_port = free_port()
        self.tty = sys.stdout.isatty()

    # ------------------------------------------------------------------ output
    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def kubectl(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run([self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args],
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise DemoFailed(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def show_mlops(self) -> str:
        text = self.kubectl("get", "mlops", "-n", NS)
        self.say("\n$ kubectl get mlops -n pumpkins\n" + text.rstrip())
        return text

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.say(f"\n=== {name} " + "=" * max(3, 70 - len(name)))
        began = time.monotonic()
        entry = {"name": name, "seconds": 0.0, "ok": False}
        self.phases.append(entry)
        try:
            yield
            entry["ok"] = True
        finally:
            entry["seconds"] = round(time.monotonic() - began, 1)
            self.say(f"--- {name}: {entry['seconds']:.0f}s"
                     + ("" if entry["ok"] else " (did not finish)"))

    def status_line(self) -> str:
        e, d = self.objects()
        prog = e.get("progress") or {}
        train = f"{e.get('phase', '-')}"
        if prog.get("epochs"):
            train += f" epoch {prog.get('epoch', 0)}/{prog['epochs']}"
        elif prog.get("step"):
            train += f" {prog['step']}"
        return (f"[{time.time() - self.started:5.0f}s] training: {train}, model "
                f"{e.get('latestModel', '-')} | {self.serving_line(d)}")

    def serving_line(self, d: dict[str, Any]) -> str:
        canary = d.get("canary") or {}
        serve = f"stable {d.get('stableVersion', '-')}"
        if canary:
            serve += f", canary v{canary.get('version')} at {canary.get('weight')}%"
        drift = (d.get("drift") or {}).get("summary", "-")
        return f"serving: {serve} | drift: {drift}"

    def wait(self, what: str, ready: Callable[[], Any], timeout: float) -> Any:
        """Poll ``ready`` with a live status line until it returns something truthy."""
        deadline = time.monotonic() + timeout
        last_print = 0.0
        while time.monotonic() < deadline:
            self._check_operator()
            assert self.recorder is not None
            self.recorder.refresh()  # one read per second serves ready() and the status line
            value = ready()
            line = self.status_line()
            if self.tty:
                print("\r" + line[:160].ljust(160), end="", flush=True)
            elif time.monotonic() - last_print > 10:
                self.say(line)
                last_print = time.monotonic()
            if value:
                if self.tty:
                    print()
                self.say(f"  ✓ {what}")
                return value
            time.sleep(1)
        if self.tty:
            print()
        raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what} "
                         f"(operator log: {self.workdir / 'operator.log'})")

    def _check_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is not None:
            raise DemoFailed(f"the operator exited ({self.operator.returncode}); see "
                             f"{self.workdir / 'operator.log'}")

    # -------------------------------------------------------------- plumbing
    def objects(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Experiment and ModelDeployment status as of the last refresh."""
        assert self.recorder is not None
        row = self.recorder.latest
        return row["experiment"], row["deployment"]

    def start_cluster(self) -> None:
        external = os.environ.get("KUBECONFIG")
        if external and Path(external).is_file():
            self.kubeconfig = external
            self.kubectl_path = shutil.which("kubectl") or "kubectl"
            self.say(f"using the cluster in $KUBECONFIG ({external})")
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS_DIR))
            self.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true")
        else:
            self.cluster = DevCluster(self.workdir / "cluster")
            st = self.cluster.up()
            self.kubeconfig, self.kubectl_path = st.kubeconfig, st.kubectl
            self.say(f"dev cluster: kube-apiserver https://127.0.0.1:{st.apiserver_port} "
                     f"(etcd pid {st.etcd_pid}); CRDs installed")
        self.kubectl("create", "namespace", NS)

    def start_operator(self) -> None:
        env = {
            **os.environ, "KUBECONFIG": self.kubeconfig, "TRELLIS_STATE_DIR": str(self.state),
            "TRELLIS_LOG_FORMAT": "json", "TRELLIS_DRIFT_INTERVAL_SECONDS": "2",
            "TRELLIS_RESYNC_SECONDS": "15", "TRELLIS_WEBHOOK_PORT": str(self.webhook_port),
            "TRELLIS_METRICS_PORT": "0", "TRELLIS_RETRAIN_MIN_LABELS": "200",
            "METAFLOW_USER": os.environ.get("METAFLOW_USER", "trellis"),
        }
        log = open(self.workdir / "operator.log", "wb")  # noqa: SIM115 - the child's
        self.operator = subprocess.Popen([sys.executable, "-m", "controller", "-n", NS],
                                         env=env, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT)
        log.close()
        self.say(f"operator: pid {self.operator.pid}, watching namespace {NS} "
                 f"(log {self.workdir / 'operator.log'})")

    def ring_webhook(self) -> None:
        body = json.dumps({"ref": "refs/heads/main"}).encode()
        sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.webhook_port}/hooks/{NS}/farm", body,
            {"Content-Type": "application/json", "X-Hub-Signature-256": sig,
             "X-GitHub-Event": "push"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            self.say(f"push webhook → HTTP {resp.status}")

    def trellis(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "controller.cli", *args],
                              capture_output=True, text=True, cwd=self.repo.work, timeout=120)
        out = (proc.stdout + proc.stderr).rstrip()
        self.say(f"$ trellis {' '.join(args)}\n{out}")
        if proc.returncode != 0:
            raise DemoFailed(f"trellis {args[0]} failed")
        return out

    # ------------------------------------------------------------------ story
    def run(self) -> int:
        self.prepare()
        with self.phase("Control plane and operator"):
            self.start_cluster()
            self.recorder = Recorder(self.kubeconfig, NS)
            self.start_operator()
        with self.phase("GitOps: the farm's spec repository"):
            commit = self.repo.create()
            self.say(f"git repository {self.repo.remote} at {commit[:8]}: specs/ + flows/")
            self.kubectl("create", "secret", "generic", "farm-git", "-n", NS,
                         f"--from-literal=webhook-secret={WEBHOOK_SECRET}")
            self._apply_specrepo()
            self.wait("SpecRepository synced", lambda: self._specrepo_ready(commit), 60)
            self.recorder.start()
        with self.phase("Level 0 — train, serve, predict"):
            self.level0()
        with self.phase("Level 1 — a pull request tunes the model"):
            self.level1()
        with self.phase("Level 2 — genetically modified pumpkins"):
            self.level2()
        self.finish()
        return 0

    def level0(self) -> None:
        self.wait("model v1 trained and registered",
                  lambda: self.objects()[0].get("latestModel") == "v1", 420)
        endpoint = self.wait("v1 serving", lambda: (d := self.objects()[1]).get("phase")
                             == "Serving" and d.get("endpoint"), 180)
        self.say(f"Seldon REST endpoint: {endpoint}")
        self.folk = Townsfolk(endpoint, batch=4, rate=4, seed=1)
        self.folk.start()
        self.wait("the townsfolk get answers", lambda: self.folk.tally.answered["stable"] >= 40,
                  60)
        self.say(f"  orange pumpkins judged right: {self.folk.tally.accuracy('stable'):.0%} of "
                 f"{self.folk.tally.answered['stable']}")
        self.show_mlops()

    def level1(self) -> None:
        head = self.repo.pull_request("tune-lr", farm.experiment(lr=0.002, epochs=5),
                                      farm.deployment(), "Tune the learning rate and epochs")
        self.say(f"pull request tune-lr at {head[:8]}")
        self.trellis("validate", "--repo", ".", "--ref", "tune-lr", "specs/")
        self.trellis("plan", "--repo", ".", "--base", "main", "--head", "tune-lr",
                     "--path", "specs", "--format", "text")
        merged = self.repo.merge("tune-lr")
        self.say(f"merged into main at {merged[:8]}")
        self.ring_webhook()
        self.wait("the merge synced (generation 2)",
                  lambda: self._specrepo_ready(merged), 60)
        self.wait("model v2 trained", lambda: self.objects()[0].get("latestModel") == "v2", 420)
        self.wait("v2 canaried and promoted",
                  lambda: self.objects()[1].get("stableVersion") == "v2", 300)
        self.show_mlops()

    def level2(self) -> None:
        assert self.folk is not None
        self.say("the farm switches to genetically modified white pumpkins")
        self.folk.set_mix("white")
        self.wait("drift detected", lambda: self.objects()[1].get("drift", {}).get("detected"),
                  120)
        self.wait("retraining started by itself",
                  lambda: (self.objects()[0].get("currentRun") or {}).get("trigger")
                  or self.objects()[0].get("latestModel") == "v3", 180)
        self.wait("model v3 trained on the labelled white pumpkins",
                  lambda: self.objects()[0].get("latestModel") == "v3", 420)
        self.wait("v3 canaried and promoted",
                  lambda: self.objects()[1].get("stableVersion") == "v3", 300)
        self.wait("drift cleared", lambda: (d := self.objects()[1].get("drift", {}))
                  .get("referenceVersion") == 3 and d.get("detected") is False, 180)
        for version in ("v2", "v3"):
            acc = self.folk.tally.accuracy(version)
            if acc is not None:
                self.say(f"  {version} judged white pumpkins right: {acc:.0%} of "
                         f"{self.folk.tally.answered[version]} (townsfolk feedback)")
        self.show_mlops()

    def finish(self) -> None:
        from controller.demo.report import write_markdown, write_report

        assert self.recorder is not None
        self.recorder.stop()
        exp = self.recorder.get("experiments")
        mdep = self.recorder.get("modeldeployments")
        specrepo = self.recorder.get("specrepositories", "farm")
        data = {
            "title": "Trellis demo — the pumpkin farm", "started_at": self.started,
            "finished_at": time.time(), "phases": self.phases, "experiment": exp,
            "deployment": mdep, "specrepo": specrepo, "samples": self.recorder.samples,
            "events": self.recorder.events(),
            "kubectl_get_mlops": self.kubectl("get", "mlops", "-n", NS),
            **self.report_data(),
        }
        path = write_report(data, self.report_dir)
        write_markdown(data, self.report_dir)
        (self.report_dir / "data.json").write_text(json.dumps(data, default=str))
        self.say(f"\nMode: {self.mode}")
        for part in data["parts"]:
            self.say(f"  {'ran' if part['ran'] else 'NOT RUN':<8} {part['part']}: "
                     f"{part['how']}")
        self.say("\nPhase times:")
        for p in self.phases:
            self.say(f"  {p['name']:<45} {p['seconds']:>6.0f}s {'ok' if p['ok'] else 'FAILED'}")
        self.say(f"  {'total':<45} {time.time() - self.started:>6.0f}s")
        self.say(f"\nReport: {path}")

    def report_data(self) -> dict[str, Any]:
        """What the report says about the mode: which parts ran, and how."""
        parts = [dict(p) for p in LOCAL_PARTS]
        if self.cluster is None:  # $KUBECONFIG's cluster
            parts[0]["how"] = f"the cluster of $KUBECONFIG ({self.kubeconfig})"
        return {"mode": self.mode, "parts": parts}

    def _apply_specrepo(self, url: str | None = None, secret: str | None = "farm-git") -> None:
        doc = {"apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "SpecRepository",
               "metadata": {"name": "farm", "namespace": NS},
               "spec": {"url": url or str(self.repo.remote), "ref": {"branch": "main"},
                        "path": "specs", "interval": "30s", "prune": True}}
        if secret:
            doc["spec"]["secretRef"] = {"name": secret}
        subprocess.run([self.kubectl_path, f"--kubeconfig={self.kubeconfig}", "apply", "-f",
                        "-"], input=json.dumps(doc), text=True, check=True,
                       capture_output=True, timeout=60)

    def _specrepo_ready(self, commit: str) -> bool:
        out = self.kubectl("get", "specrepo", "farm", "-n", NS, "-o", "json", check=False)
        if not out:
            return False
        st = json.loads(out).get("status") or {}
        return st.get("lastSyncedCommit", "").startswith(commit[:12]) or \
            commit.startswith(st.get("lastSyncedCommit", "-") or "-")

    # ---------------------------------------------------------- lifecycle
    def prepare(self) -> None:
        """Leave nothing of a previous run: processes, cluster, state."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        killed = len(reap(self.state))
        if killed:
            self.say(f"stopped {killed} process(es) left by a previous run")
        DevCluster(self.workdir / "cluster").down()
        for sub in ("state", "git", "cluster"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)

    def teardown(self) -> None:
        for part in (self.folk, self.recorder):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        if self.operator is not None and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGTERM)
            try:
                self.operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait(timeout=10)
        reap(self.state)
        if self.cluster is not None:
            self.cluster.down()


def run_demo(args: argparse.Namespace) -> int:
    kind: type[Demo] = Demo
    if getattr(args, "cluster", False):
        from controller.demo.cluster import ClusterDemo

        kind = ClusterDemo
    suffix = "-cluster" if kind.mode == "cluster" else ""
    demo = kind(Path(args.workdir or f".trellis/demo{suffix}").resolve(),
                Path(args.report or f"demo-report{suffix}").resolve())
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return demo.run()
    except (DemoFailed, ClusterError) as exc:
        print(f"\ntrellis demo: {exc}", file=sys.stderr)
        return 1
    finally:
        demo.teardown()
