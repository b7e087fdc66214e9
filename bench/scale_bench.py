"""Scale benchmark: an operator with N Experiments (``backend: kubernetes``, no node, so
the Jobs never start) and N ModelDeployments (``backend: seldon``, each serving one of
those Experiments, so each waits for a model that never comes: ``ModelNotReady``), from
the apply to a quiet steady state.

For each N (100 and 1,000 by default; ``--sizes 100 1000 5000`` for the growth) the
operator runs as a process
(``python -m controller -n <namespace>``, as in a pod) against a fresh dev cluster
(etcd + kube-apiserver, no controller-manager). Measured:

- converge: seconds from the start of ``kubectl apply --server-side`` of the 2N objects
  to N Jobs on the API server, and to every Experiment's status recording its Job and
  every ModelDeployment's its ``Ready`` condition;
- steady state, over ``--window`` seconds once converged: API requests per second on
  the kinds the operator touches (the API server's own ``apiserver_request_total``, so
  kopf's requests count too; its self-maintenance on leases and endpoints does not),
  the operator's CPU (% of one core, from /proc) and its resident memory.

``--baseline-root DIR`` runs the same against another checkout (say, the commit before
a change) and reports it as each row's baseline. Issue 15's targets for 1,000 objects:
converge < 60 s; steady state <= 1 request/s, <= 5% of a core, RSS < 300 MB.

Prints a JSON list of rows ``{"name","value","unit","baseline","baseline_value",
"ratio","notes"}``; ``--out FILE`` writes it too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client.parser import text_string_to_metric_families

from bench import rows
from bench.rows import emit
from controller.api import Cond, Reason
from controller.devcluster.cluster import DevCluster
from controller.paths import ROOT
from controller.processes import free_port
from tests.support.clusterwide import SELDON_CRD
from tests.support.gitrepo import deployment, experiment
from tests.support.kube import healthy

GROUP, VERSION = "mlops.trellis.dev", "v1alpha1"
# What the operator (and kopf for it) may ask about; the API server's own upkeep
# (leases, endpoints, namespaces, RBAC bootstrap) is not the operator's.
OPERATOR_RESOURCES = {"jobs", "pods", "experiments", "modeldeployments", "specrepositories",
                      "seldondeployments", "events", "secrets", "clusterkopfpeerings"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
row = partial(rows.row, digits=4)



@dataclass
class Measured:
    applied_s: float  # kubectl apply of N Experiments and N ModelDeployments returned
    jobs_s: float  # apply -> N Jobs exist
    recorded_s: float  # apply -> every Experiment's status names its Job
    deployments_s: float  # apply -> every ModelDeployment's status has its Ready condition
    requests: Counter = field(default_factory=Counter)  # (verb, resource) -> count in window
    window_s: float = 0.0
    cpu_pct: float = 0.0
    rss_mb: float = 0.0
    operator_requests: Counter = field(default_factory=Counter)  # its own counter
    apply_alone_s: float = 0.0  # the same apply into a namespace no operator watches
    converge_requests: Counter = field(default_factory=Counter)  # apply start -> converged

    @property
    def per_s(self) -> float:
        return sum(self.requests.values()) / self.window_s


def apiserver_requests(dev: DevCluster) -> Counter:
    """``apiserver_request_total`` on the operator's kinds, by (verb, resource)."""
    text = dev.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    out: Counter = Counter()
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for s in family.samples:
            if s.name == "apiserver_request_total" and s.labels.get("resource") in \
                    OPERATOR_RESOURCES:
                res = s.labels["resource"] + (f"/{s.labels['subresource']}"
                                              if s.labels.get("subresource") else "")
                out[(s.labels["verb"], res)] += int(s.value)
    return out


def operator_requests(port: int) -> Counter:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: Counter = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "trellis_api_requests_total":
                out[(s.labels["verb"], s.labels["resource"])] += int(s.value)
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait(fn, timeout: float, what: str, interval: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def start_operator(root: Path, kubeconfig: str, ns: str, work: Path, port: int
                   ) -> subprocess.Popen:
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONPATH": str(root),
           "TRELLIS_STATE_DIR": str(work / "state"), "TRELLIS_METRICS_PORT": str(port),
           "TRELLIS_WEBHOOK_PORT": "-1", "TRELLIS_REQUEST_LOGGER_PORT": "-1",
           "TRELLIS_LOG_FORMAT": "json"}
    log = open(work / "operator.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen([sys.executable, "-m", "controller", "-n", ns], env=env,
                            cwd=root, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def measure(dev: DevCluster, api: k8s.ApiClient, root: Path, n: int, window: float,
            work: Path, log=print) -> Measured:
    ns = f"scale-{n}-{int(time.time()) % 100000}"
    dev.kubectl("create", "namespace", ns)
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    proc = start_operator(root, str(dev.kubeconfig), ns, work, port)
    objs, batch = k8s.CustomObjectsApi(api), k8s.BatchV1Api(api)
    try:
        wait(lambda: healthy(port), 120, "the operator's /healthz", 0.5)
        # The apply alone, where no operator looks: how much of "converged" is kubectl's.
        alone = f"{ns}-alone"
        dev.kubectl("create", "namespace", alone)
        started = time.monotonic()
        dev.kubectl("apply", "--server-side", "--field-manager=scale-bench", "-f", "-",
                    input=objects_doc(n, alone), timeout=1800)
        apply_alone_s = time.monotonic() - started
        log(f"[scale] {n}: the apply alone took {apply_alone_s:.1f}s")

        doc = objects_doc(n, ns)
        requests_before = apiserver_requests(dev)
        started = time.monotonic()
        dev.kubectl("apply", "--server-side", "--field-manager=scale-bench", "-f", "-",
                    input=doc, timeout=1800)
        applied_s = time.monotonic() - started
        log(f"[scale] {n}: applied in {applied_s:.1f}s")

        def jobs() -> bool:
            return len(batch.list_namespaced_job(ns, _request_timeout=60).items) >= n
        wait(jobs, 900, f"{n} Jobs")
        jobs_s = time.monotonic() - started
        log(f"[scale] {n}: {n} Jobs after {jobs_s:.1f}s")

        def recorded() -> bool:
            exps = objs.list_namespaced_custom_object(GROUP, VERSION, ns, "experiments",
                                                      _request_timeout=60)["items"]
            return sum(((e.get("status") or {}).get("progress") or {}).get("step") == "job"
                       for e in exps) >= n
        wait(recorded, 900, f"{n} statuses")
        recorded_s = time.monotonic() - started

        def waiting() -> bool:
            mdeps = objs.list_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments",
                                                       _request_timeout=60)["items"]
            return sum(any(c.get("type") == Cond.READY
                               and c.get("reason") == Reason.MODEL_NOT_READY
                           for c in (m.get("status") or {}).get("conditions") or [])
                       for m in mdeps) >= n
        wait(waiting, 900, f"{n} ModelDeployment statuses")
        deployments_s = time.monotonic() - started
        converge_requests = apiserver_requests(dev) - requests_before
        log(f"[scale] {n}: all recorded after {recorded_s:.1f}s, deployments after "
            f"{deployments_s:.1f}s ({describe(converge_requests)}); settling")
        settle(dev)

        before, own_before = apiserver_requests(dev), operator_requests(port)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(window)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        after, own_after = apiserver_requests(dev), operator_requests(port)
        out = Measured(applied_s, jobs_s, recorded_s, deployments_s, after - before, t1 - t0,
                       100 * (cpu1 - cpu0) / (t1 - t0), rss_mb(proc.pid),
                       own_after - own_before, apply_alone_s, converge_requests)
        log(f"[scale] {n}: {out.per_s:.2f} req/s {dict(out.requests)}, cpu {out.cpu_pct:.1f}%,"
            f" rss {out.rss_mb:.0f} MB; operator's own: {dict(out.operator_requests)}")
        return out
    finally:
        stop(proc)


def objects_doc(n: int, ns: str) -> str:
    """N Experiments (``backend: kubernetes``) and N ModelDeployments serving them
    (``backend: seldon``), as one List for ``kubectl apply``."""
    items = []
    for i in range(n):
        items.append(yaml.safe_load(experiment(f"exp-{i:04d}", ns, gpu=0,
                                               backend="kubernetes")))
        mdep = yaml.safe_load(deployment(f"mdep-{i:04d}", ns, experiment=f"exp-{i:04d}"))
        mdep["spec"]["backend"] = "seldon"
        items.append(mdep)
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def settle(dev: DevCluster, quiet_s: float = 10.0, limit_s: float = 300.0) -> None:
    """Wait until the operator has written nothing (status, Events) for ``quiet_s``:
    its backlog of watch events is done and what follows is the steady state."""
    deadline = time.monotonic() + limit_s
    last = apiserver_requests(dev)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = apiserver_requests(dev)
        writes = {k: v for k, v in (now - last).items() if k[0] in WRITES}
        if not writes:
            return
        last = now


def describe(counts: Counter) -> str:
    return ", ".join(f"{v} {verb} {res}" for (verb, res), v in counts.most_common()) or "none"


def rows_for(n: int, m: Measured, base: Measured | None, base_name: str | None
             ) -> list[dict[str, Any]]:
    what = f"scale: {n} Experiments + {n} ModelDeployments (cluster backends, no node)"

    def b(attr: str) -> float | None:
        return getattr(base, attr) if base else None
    return [
        row(f"{what}: all Jobs created", m.jobs_s, "s", base_name, b("jobs_s"),
            f"from the start of kubectl apply --server-side of {n} Experiments and {n} "
            f"ModelDeployments (which took {m.applied_s:.1f}s) to {n} Jobs on the API "
            f"server; every Experiment's status recorded after {m.recorded_s:.1f}s. "
            "One run."),
        row(f"{what}: converged", max(m.recorded_s, m.deployments_s), "s", base_name,
            max(base.recorded_s, base.deployments_s) if base else None,
            f"from the start of the apply to every status written: the Experiments' "
            f"(their Job recorded) after {m.recorded_s:.1f}s, the ModelDeployments' "
            f"(Ready=False ModelNotReady: their Experiment never trains) after "
            f"{m.deployments_s:.1f}s. The apply alone, into a namespace no operator "
            f"watches, takes {m.apply_alone_s:.1f}s. API requests on the way: "
            f"{describe(m.converge_requests)} (the apply's own PATCHes included). "
            "Target at 1,000: < 60 s. One run."),
        row(f"{what}: steady-state API requests", m.per_s, "req/s", base_name,
            base.per_s if base else None,
            f"apiserver_request_total on the operator's kinds over {m.window_s:.0f}s once "
            f"converged: {describe(m.requests)}" + (f" (baseline: {describe(base.requests)})"
                                                    if base else "")
            + f"; the reconcilers' own: {describe(m.operator_requests)}. Target <= 1/s."),
        row(f"{what}: operator CPU, steady state", m.cpu_pct, "% of a core", base_name,
            b("cpu_pct"), f"user+system CPU of the operator process over {m.window_s:.0f}s, "
            "from /proc. Target <= 5%."),
        row(f"{what}: operator RSS", m.rss_mb, "MB", base_name, b("rss_mb"),
            "resident memory of the operator process at the end of the window. "
            "Target < 300 MB."),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--window", type=float, default=65.0,
                        help="the steady-state window: longer than one resync (60 s)")
    parser.add_argument("--baseline-root", type=Path,
                        help="another checkout to measure as the baseline")
    parser.add_argument("--baseline-name", default="the baseline checkout")
    parser.add_argument("--kubeconfig", help="use this running dev cluster's admin kubeconfig "
                        "(its state dir is the kubeconfig's)")
    parser.add_argument("--work", type=Path, help="keep the operators' logs here")
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trellis-scale-") as tmp:
        work = args.work or Path(tmp)
        own = args.kubeconfig is None
        dev = DevCluster(Path(tmp) / "cluster" if own else Path(args.kubeconfig).parent)
        if own:
            dev.up()
        # The ModelDeployments' backend: the operator watches SeldonDeployments.
        dev.kubectl("apply", "--server-side", "-f", str(SELDON_CRD))
        dev.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "-f", str(SELDON_CRD))
        api = k8s_config.new_client_from_config(config_file=str(dev.kubeconfig))
        try:
            for n in args.sizes:
                base = None
                if args.baseline_root:
                    base = measure(dev, api, args.baseline_root.resolve(), n, args.window,
                                   work / f"base-{n}", log)
                mine = measure(dev, api, ROOT, n, args.window, work / f"run-{n}", log)
                rows += rows_for(n, mine, base, args.baseline_name if base else None)
        finally:
            api.close()
            if own:
                dev.down()
    emit(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
