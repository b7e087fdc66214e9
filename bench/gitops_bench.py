"""GitOps benchmark: syncing 500 spec files vs ``kubectl apply --server-side``, and the
time from a push to the applied change through the webhook.

A fresh dev cluster (``DevCluster`` in a temporary directory) serves both sides. The
sync side is the SpecRepository reconciler itself (fetch from a bare repository,
validate the whole commit: schema, CEL, unique names, flows, references, coherence,
export the commit, server-side apply with concurrency, status write), driven by a
minimal loop instead of kopf so that no other reconciler shares the machine. The
baseline applies the same files with ``kubectl apply --server-side -f DIR`` (no
repository checks, one request per object).

Prints a JSON list of rows ``{"name","value","unit","baseline","baseline_value",
"ratio","notes"}``; ``--out FILE`` writes it too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import rows
from bench.rows import emit
from controller import api
from controller.context import Context
from controller.devcluster.cluster import DevCluster
from controller.kube import EXPERIMENTS, SPEC_REPOSITORIES, Kube
from controller.loop import reconcile_once
from controller.processes import free_port
from controller.reconcilers.specrepos import SpecRepositoryReconciler
from controller.settings import Settings
from tests.support.gitrepo import FLOW, GitRepo, deployment, experiment

row = partial(rows.row, digits=4)

SECRET = b"bench-webhook-secret"



def make_repo(root: Path, files: int) -> GitRepo:
    """``files`` spec files: half Experiments, half ModelDeployments serving them."""
    repo = GitRepo(root / "specs-repo")
    repo.write("flows/pumpkin_flow.py", FLOW)
    for i in range(files // 2):
        repo.write(f"specs/exp-{i:03d}.yaml",
                   experiment(f"exp-{i:03d}", namespace=None, gpu=0, backend="kubernetes"))
        repo.write(f"specs/mdep-{i:03d}.yaml",
                   deployment(f"mdep-{i:03d}", namespace=None, experiment=f"exp-{i:03d}"))
    repo.commit_and_push(f"{files} specs")
    return repo


def kubectl_apply(dev: DevCluster, directory: Path, namespace: str) -> float:
    started = time.perf_counter()
    dev.kubectl("apply", "--server-side", "--field-manager=bench", "-n", namespace, "-f",
                str(directory), timeout=600)
    return time.perf_counter() - started


class Harness:
    """The reconciler with its webhook, and a loop for one SpecRepository."""

    def __init__(self, state: Path, kubeconfig: str) -> None:
        self.port = free_port()
        self.ctx = Context(settings=Settings(state_dir=state, webhook_port=self.port),
                           kube=Kube.from_env(kubeconfig))
        self.rec = SpecRepositoryReconciler(self.ctx)
        self.ctx.reconcilers = {api.SPEC_REPOSITORY.kind: self.rec}

    async def create(self, ns: str, repo: GitRepo, interval: str) -> dict[str, Any]:
        await self.ctx.kube.create(SPEC_REPOSITORIES, ns, {
            "apiVersion": api.API_VERSION, "kind": "SpecRepository",
            "metadata": {"name": "farm", "namespace": ns},
            "spec": {"url": str(repo.remote), "path": "specs", "interval": interval,
                     "secretRef": {"name": "farm-git"}}})
        obj = await self.ctx.kube.get(SPEC_REPOSITORIES, ns, "farm")
        assert obj is not None
        return obj

    async def once(self, ns: str) -> None:
        obj = await self.ctx.kube.get(SPEC_REPOSITORIES, ns, "farm")
        assert obj is not None
        await reconcile_once(self.rec, self.ctx.kube, obj)

    async def loop(self, ns: str, stop: asyncio.Event) -> None:
        wake = self.ctx.wakeups.get(api.SPEC_REPOSITORY.kind, ns, "farm")
        while not stop.is_set():
            wake.clear()
            await self.once(ns)
            waiter = asyncio.ensure_future(wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, timeout=30,
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()


def post_hook(port: int, ns: str) -> None:
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    sig = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/{ns}/farm", data=body,
                                 headers={"X-Hub-Signature-256": sig}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202


async def webhook_latency(h: Harness, repo: GitRepo, ns: str, rounds: int) -> list[float]:
    stop = asyncio.Event()
    task = asyncio.create_task(h.loop(ns, stop))
    latencies = []
    try:
        for r in range(rounds):
            lr = 0.1 + r / 100
            repo.write("specs/exp-000.yaml", experiment("exp-000", namespace=None, gpu=0,
                                                        lr=lr, backend="kubernetes"))
            repo.commit("retune")
            started = time.perf_counter()
            await asyncio.to_thread(repo.push)
            await asyncio.to_thread(post_hook, h.port, ns)
            while True:
                obj = await h.ctx.kube.get(EXPERIMENTS, ns, "exp-000")
                if obj and obj["spec"]["parameters"]["lr"] == lr:
                    break
                await asyncio.sleep(0.01)
            latencies.append(time.perf_counter() - started)
    finally:
        stop.set()
        await task
    return latencies


async def trellis_side(dev: DevCluster, repo: GitRepo, state: Path,
                       rounds: int) -> dict[str, Any]:
    ns = "bench-trellis"
    dev.kubectl("create", "namespace", ns)
    dev.kubectl("create", "secret", "generic", "farm-git", "-n", ns,
                f"--from-literal=webhook-secret={SECRET.decode()}")
    st = dev.state()
    assert st is not None
    h = Harness(state, st.kubeconfig)
    await h.rec.start()
    try:
        await h.create(ns, repo, "1h")
        started = time.perf_counter()
        await h.once(ns)  # the first sync: clone, validate, export, 500 applies, status
        first = time.perf_counter() - started
        obj = await h.ctx.kube.get(SPEC_REPOSITORIES, ns, "farm")
        assert obj and obj["status"]["objects"] == len(list((repo.work / "specs").iterdir())), \
            obj and obj["status"]
        h.rec._mem(ns, "farm").next_sync = 0  # an interval has passed: resync, no change
        started = time.perf_counter()
        await h.once(ns)
        quiet = time.perf_counter() - started
        latencies = await webhook_latency(h, repo, ns, rounds)
    finally:
        await h.rec.close()
        await h.ctx.close()
    return {"first": first, "quiet": quiet, "latencies": latencies}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5, help="webhook pushes to time")
    parser.add_argument("--out", help="also write the JSON rows here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="trellis-gitops-bench-") as tmp:
        root = Path(tmp)
        dev = DevCluster(root / "cluster")
        dev.up()
        try:
            repo = make_repo(root, args.files)
            dev.kubectl("create", "namespace", "bench-kubectl")
            kubectl_first = kubectl_apply(dev, repo.work / "specs", "bench-kubectl")
            kubectl_again = kubectl_apply(dev, repo.work / "specs", "bench-kubectl")
            got = asyncio.run(trellis_side(dev, repo, root / "state", args.rounds))
        finally:
            dev.down()
    lat = got["latencies"]
    rows = [
        row(f"sync_{args.files}_specs", got["first"], "s",
            f"kubectl apply --server-side -f ({args.files} files)", kubectl_first,
            "first sync of a SpecRepository: fetch, validate the whole commit (schema, CEL, "
            "names, flows, references, coherence), export the commit, server-side apply "
            "(8 concurrent), status"),
        row(f"resync_{args.files}_unchanged", got["quiet"], "s",
            "kubectl apply --server-side -f again (no changes)", kubectl_again,
            "an interval with nothing new: fetch, list the scopes, compare; zero writes"),
        row("webhook_push_to_applied_p50", statistics.median(lat), "s",
            notes=f"git push + signed POST until the changed Experiment is served by the API "
                  f"server, {args.files} specs in the repository, {len(lat)} rounds, max "
                  f"{max(lat):.3f}s"),
    ]
    emit(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
