"""The ``trellis`` command line: dev cluster, operator, validate, plan, demo.

Errors the user can act on come out as one line on stderr with exit status 1 (or 2
for usage), never a traceback.

``validate`` and ``plan`` need only the base install (what a pull request's CI
installs); every other command imports its packages inside its function, and a missing
one is a message naming the extra that installs it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

CommandFn = Callable[[argparse.Namespace], int]


class UserError(Exception):
    """An error whose message is the whole story for the user."""


@contextlib.contextmanager
def requires_extra(extra: str, command: str) -> Iterator[None]:
    """Imports of ``command`` that come with the package's ``extra``: a missing package
    says which extra to install (a module of Trellis itself missing is a bug: raised)."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.partition(".")[0] == "controller":
            raise
        raise UserError(f"`trellis {command}` needs {exc.name}, which the {extra!r} extra "
                        f"installs: pip install 'trellis-mlops[{extra}]'") from exc


def _dev_cluster(args: argparse.Namespace) -> int:
    with requires_extra("operator", "dev-cluster"):
        from controller.devcluster.cluster import ClusterError, DevCluster

    cluster = DevCluster(Path(args.dir) if args.dir else None)
    try:
        if args.action == "up":
            st = cluster.up(node=args.node, s3=args.s3, prometheus=args.prometheus,
                            log=lambda m: print(m, file=sys.stderr))
            where = f"https://{st.host}:{st.apiserver_port}"
            print(f"dev cluster ready: {where} (kubeconfig {st.kubeconfig})"
                  + (f", node {cluster.node.state().name} Ready" if st.node else "")
                  + (f", S3 {st.s3_endpoint} (Secret trellis-system/trellis-s3)"
                     if st.s3_pid else "")
                  + (f", Prometheus {st.prometheus_url}" if st.prometheus_url else ""))
            print("\n".join(cluster.env_lines()))
        elif args.action == "down":
            print("dev cluster stopped" if cluster.down() else "dev cluster was not running")
        elif args.action == "status":
            return _dev_cluster_status(cluster)
        elif args.action == "env":
            print("\n".join(cluster.env_lines()))
        elif args.action == "images":
            return _dev_cluster_images(cluster, args)
    except ClusterError as exc:
        raise UserError(str(exc)) from exc
    return 0


def _dev_cluster_images(cluster, args: argparse.Namespace) -> int:
    """Build the project's images (cached by their inputs) and import them into the
    running node's containerd, under the names the manifests use."""
    from controller.devcluster import images

    node = cluster.node.state() if cluster.state() else None
    socket = node.containerd_socket if node else None
    try:
        infos = images.ensure_images(socket, tuple(args.image or images.NAMES),
                                     environments=args.environments, force=args.rebuild,
                                     log=lambda m: print(m, file=sys.stderr))
    except images.ImageError as exc:
        raise UserError(str(exc)) from exc
    for info in infos.values():
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in info.seconds.items()) or "cached"
        extra = f" + {info.mounts_size / 1e6:,.0f} MB mounted" if info.mounts else ""
        print(f"{info.name:<13} {info.ref:<48} {info.size / 1e6:>8,.0f} MB{extra} ({steps})")
    if socket is None:
        print("no node running: built only; `trellis dev-cluster up --node` then run this "
              "again to import them", file=sys.stderr)
    if any(info.mounts for info in infos.values()):
        print("mounted environments: only pods that mount them (the tests') can run these "
              "images; the operator's pods need --environments baked", file=sys.stderr)
    return 0


def _dev_cluster_status(cluster) -> int:
    st = cluster.state()
    if st is None:
        print("not running")
        return 1
    from controller.processes import pid_alive

    procs = {"etcd": st.etcd_pid, "kube-apiserver": st.apiserver_pid}
    node = cluster.node.state()
    procs.update(node.pids if node else {})
    if st.s3_pid:
        procs["weed (S3)"] = st.s3_pid
    prometheus = cluster.prometheus.state() if st.prometheus_url else None
    if prometheus:
        procs.update({"prometheus": prometheus.pid, "pod discovery": prometheus.discovery_pid})
    print(f"api server: https://{st.host}:{st.apiserver_port} (kubeconfig {st.kubeconfig})")
    for name, pid in procs.items():
        print(f"  {name:<24} pid {pid:<8} {'running' if pid_alive(pid) else 'NOT RUNNING'}")
    if node:
        print(f"  node {node.name}: containerd socket {node.containerd_socket}")
    if st.s3_pid:
        print(f"  S3: {st.s3_endpoint}, bucket trellis, Secret trellis-system/trellis-s3")
    if st.prometheus_url:
        print(f"  Prometheus: {st.prometheus_url}, scraping Seldon's pods in every namespace "
              "(ports named `metrics`, /prometheus)")
    healthy = cluster.running()
    print("healthy" if healthy else "degraded: `trellis dev-cluster down` then `up` again")
    return 0 if healthy else 1


def _operator(args: argparse.Namespace) -> int:
    with requires_extra("operator", "operator"):
        from controller import operator

    operator.run(namespaces=args.namespace or None, peering=args.peering,
                 liveness_port=args.liveness_port, verbose=args.verbose)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from controller.validate import validate_paths

    checks = []
    if args.repo:
        from controller.gitops.repochecks import repo_checks

        checks = repo_checks(Path(args.repo), ref=args.ref, cluster=args.cluster)
    report = validate_paths([Path(p) for p in args.paths], checks)
    if args.format == "json":
        print(report.json())
    elif report.errors:
        print(report.text(), file=sys.stderr)
    else:
        print(f"ok: {len(report.documents)} document(s) valid")
    return 0 if report.ok else 1


def _plan(args: argparse.Namespace) -> int:
    from controller.gitops.plan_cli import run_plan

    return run_plan(args)


def _demo(args: argparse.Namespace) -> int:
    with requires_extra("demo", "demo"):
        from controller.demo.main import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trellis", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    dc = sub.add_parser("dev-cluster", help="a local etcd + kube-apiserver (envtest-style)")
    dc.add_argument("action", choices=["up", "down", "status", "env", "images"])
    dc.add_argument("--dir", help="state directory (default ~/.cache/trellis/dev-cluster)")
    dc.add_argument("--node", action="store_true",
                    help="with `up`: also a real node (containerd, kubelet, kube-proxy, "
                         "controller-manager, scheduler) so pods run")
    dc.add_argument("--s3", action="store_true",
                    help="with `up`: also an S3 server (SeaweedFS) with a bucket `trellis`; "
                         "its endpoint and keys in Secret trellis-system/trellis-s3")
    dc.add_argument("--prometheus", action="store_true",
                    help="with `up`: also a Prometheus on loopback that finds Seldon's model "
                         "pods as Seldon's PodMonitor does (the canary analysis' metrics; "
                         "its URL in `env` as TRELLIS_PROMETHEUS_URL)")
    dc.add_argument("--image", action="append", choices=["pause", "controller", "trainer",
                                                          "model-server"],
                    help="with `images`: only this image (repeatable); default: all")
    dc.add_argument("--environments", choices=["baked", "mounted"], default="baked",
                    help="with `images`: Python environments inside the images (what the "
                         "operator's pods need) or mounted from the host (the tests' mode)")
    dc.add_argument("--rebuild", action="store_true",
                    help="with `images`: rebuild even when the inputs are unchanged")
    dc.set_defaults(fn=_dev_cluster)

    op = sub.add_parser("operator", help="run the kopf operator")
    op.add_argument("-n", "--namespace", action="append",
                    help="watch this namespace (repeatable); default: cluster-wide")
    op.add_argument("--peering", help="kopf peering name (for HA); default: standalone")
    op.add_argument("--liveness-port", type=int, help="serve kopf's liveness probe here")
    op.add_argument("-v", "--verbose", action="store_true")
    op.set_defaults(fn=_operator)

    va = sub.add_parser("validate", help="check spec files against the CRD schemas")
    va.add_argument("paths", nargs="+", help="files or directories")
    va.add_argument("--format", choices=["text", "json"], default="text")
    va.add_argument("--repo", help="repository root for flow and reference checks")
    va.add_argument("--ref", help="git ref of --repo to read flows from (default: work tree)")
    va.add_argument("--cluster", action="store_true",
                    help="also resolve references against the live cluster")
    va.set_defaults(fn=_validate)

    pl = sub.add_parser("plan", help="what a change to the spec repository will do")
    pl.add_argument("--repo", required=True)
    pl.add_argument("--base", help="base ref (default: merge-base with --head)")
    pl.add_argument("--head", default="HEAD")
    pl.add_argument("--path", default=".", help="spec directory inside the repository")
    pl.add_argument("--format", choices=["markdown", "json", "text"], default="markdown")
    pl.add_argument("--cluster", action="store_true",
                    help="compare with the live objects instead of the base ref")
    pl.set_defaults(fn=_plan)

    de = sub.add_parser("demo", help="the pumpkin farm's whole story, unattended")
    de.add_argument("--workdir", help="default .trellis/demo (cluster mode: "
                    ".trellis/demo-cluster)")
    de.add_argument("--report", help="default demo-report (cluster mode: "
                    "demo-report-cluster)")
    de.add_argument("--cluster", action="store_true",
                    help="cluster mode: a dev cluster with a node and S3, the operator as "
                         "pods, training in a pod, the model in S3 (no serving: Seldon "
                         "Core's operator cannot run here)")
    de.set_defaults(fn=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as exc:
        print(f"trellis: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("trellis: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
