"""A real local control plane: etcd + kube-apiserver on loopback, envtest-style, and
optionally a real node (``node.py``) so pods run, an S3 server (``s3.py``) and a
Prometheus that finds model-server pods itself (``prometheus.py``).

The same class serves ``trellis dev-cluster up|down|status|env`` (processes detached,
state in a directory) and the pytest fixtures (a temporary state directory).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from controller.devcluster import binaries, certs, hostnet
from controller.devcluster.node import Node, NodeError
from controller.devcluster.prometheus import PrometheusError, PrometheusServer
from controller.devcluster.s3 import S3Error, S3Server, apply_secret
from controller.paths import CRDS_DIR
from controller.processes import free_port, pid_alive, terminate


class ClusterError(RuntimeError):
    pass


@dataclass
class ClusterState:
    etcd_pid: int
    apiserver_pid: int
    etcd_port: int
    apiserver_port: int
    kubeconfig: str
    kubectl: str
    started_at: float
    # With a node the API server listens on the node address, which pods reach too.
    host: str = "127.0.0.1"
    node: bool = False
    # With `--s3`: SeaweedFS's weed (its ports and the rest: s3/server.json).
    s3_pid: int = 0
    s3_endpoint: str = ""
    # With `--prometheus`: its URL (the rest: prometheus/server.json).
    prometheus_url: str = ""


def default_state_dir() -> Path:
    return Path(os.environ.get("TRELLIS_DEV_CLUSTER_DIR") or binaries.cache_root() / "dev-cluster")


class DevCluster:
    """etcd and kube-apiserver processes plus the admin kubeconfig that reaches them."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.dir = (state_dir or default_state_dir()).resolve()
        self.state_file = self.dir / "state.json"

    # ----------------------------------------------------------------- state
    def state(self) -> ClusterState | None:
        if not self.state_file.exists():
            return None
        return ClusterState(**json.loads(self.state_file.read_text()))

    def running(self) -> bool:
        st = self.state()
        return bool(st and pid_alive(st.etcd_pid) and pid_alive(st.apiserver_pid)
                    and self._ready(st)
                    and (not st.node or all(self.node.running().values()))
                    and (not st.s3_pid or pid_alive(st.s3_pid))
                    and (not st.prometheus_url or self.prometheus.running()))

    @property
    def node(self) -> Node:
        st = self.state()
        return Node(self.dir, self.kubeconfig, st.kubectl if st else "kubectl")

    @property
    def s3(self) -> S3Server:
        return S3Server(self.dir)

    @property
    def prometheus(self) -> PrometheusServer:
        """All namespaces, the namespace under ``namespace`` (a PodMonitor's label)."""
        return PrometheusServer(self.dir / "prometheus", kubeconfig=self.kubeconfig)

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    # -------------------------------------------------------------- lifecycle
    def up(self, *, install_crds: bool = True, node: bool = False, s3: bool = False,
           prometheus: bool = False, timeout: float = 90.0, log=print) -> ClusterState:
        """Start the control plane (and a node, an S3 server, a Prometheus) unless it
        already runs; install the CRDs.

        Returns when everything promised answers: the CRDs are served through discovery
        (``kubectl get mlops`` works), with a node pods can run and reach the API, with
        S3 the default bucket exists and the Secret ``trellis-system/trellis-s3`` says
        how to reach it, with Prometheus it answers ready.
        """
        st = self.state()
        if (st and st.node == node and bool(st.s3_pid) == s3
                and bool(st.prometheus_url) == prometheus and self.running()):
            if install_crds:
                self.install_crds(st)
            return st
        self.down()
        bins = binaries.ensure_all()
        weed = binaries.ensure_weed() if s3 else None
        self.dir.mkdir(parents=True, exist_ok=True)
        pki = certs.generate(self.dir / "pki")
        host = "127.0.0.1"
        if node:
            # The bridge must carry the node address before the API server binds to it.
            kubectl_path = str(bins["kubectl"])
            node_bins, node_state = Node(self.dir, self.kubeconfig, kubectl_path,
                                         log).prepare(log)
            host = hostnet.GATEWAY
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_data = self.dir / "etcd-data"
        etcd_cmd = [
            str(bins["etcd"]),
            f"--data-dir={etcd_data}",
            "--name=trellis",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=trellis=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]
        etcd = self._spawn(etcd_cmd, "etcd.log")
        api_cmd = [
            str(bins["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--secure-port={api_port}",
            f"--bind-address={host}",
            f"--advertise-address={host}",
            f"--cert-dir={self.dir / 'pki'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            # As OpenShift does: an ownerReference with blockOwnerDeletion only from who
            # may update the owner's finalizers (the operator's role must say so).
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            "--v=0",
        ]
        if node:
            # Pods get ServiceAccount tokens; the `kubernetes` Service gets an endpoint;
            # logs and exec reach the kubelet on the node address.
            api_cmd += [f"--kubelet-client-certificate={pki.admin_cert}",
                        f"--kubelet-client-key={pki.admin_key}",
                        "--kubelet-preferred-address-types=InternalIP"]
        else:
            # Without a controller-manager no ServiceAccount would ever exist.
            api_cmd += ["--disable-admission-plugins=ServiceAccount",
                        "--endpoint-reconciler-type=none"]
        api = self._spawn(api_cmd, "apiserver.log")
        # Started now, it comes up while the API server does (the gateway on `host`: pods
        # reach it where they reach the API server).
        s3_state = self.s3.start(weed, host) if weed else None
        self._write_kubeconfig(host, api_port, pki)
        st = ClusterState(
            etcd_pid=etcd.pid,
            apiserver_pid=api.pid,
            etcd_port=etcd_port,
            apiserver_port=api_port,
            kubeconfig=str(self.kubeconfig),
            kubectl=str(bins["kubectl"]),
            started_at=time.time(),
            host=host,
            node=node,
            s3_pid=s3_state.pid if s3_state else 0,
            s3_endpoint=s3_state.endpoint if s3_state else "",
        )
        self.state_file.write_text(json.dumps(asdict(st), indent=2))
        deadline = time.monotonic() + timeout
        while not self._ready(st):
            if not pid_alive(st.apiserver_pid) or not pid_alive(st.etcd_pid):
                self.down()
                raise ClusterError(
                    "the control plane exited while starting; last log lines:\n"
                    + self._tail("apiserver.log") + self._tail("etcd.log")
                )
            if time.monotonic() > deadline:
                self.down()
                raise ClusterError(f"kube-apiserver not ready after {timeout:.0f}s")
            time.sleep(0.25)
        if node:
            try:
                Node(self.dir, self.kubeconfig, str(bins["kubectl"]), log).start(
                    node_bins, node_state, self.dir / "pki")
            except NodeError as exc:
                self.down()
                raise ClusterError(str(exc)) from exc
        if install_crds:
            self.install_crds(st)
        if s3_state:
            try:
                self.s3.wait_ready()
                apply_secret(s3_state, self.s3.credentials(), self.kubectl)
            except (S3Error, ClusterError) as exc:
                self.down()
                raise ClusterError(str(exc)) from exc
        if prometheus:
            try:
                st.prometheus_url = self.prometheus.start().url
            except (PrometheusError, binaries.BinaryError) as exc:
                self.down()
                raise ClusterError(str(exc)) from exc
            self.state_file.write_text(json.dumps(asdict(st), indent=2))
        return st

    def down(self) -> bool:
        """Stop the processes and forget the state; True if something was running.

        The local-mode processes of operators that used this cluster go too (model
        servers, routers, training runs: detached on purpose, they would outlive it).
        """
        st = self.state()
        stopped = self.node.stop()
        stopped |= self.s3.stop()
        stopped |= self.prometheus.stop()
        shutil.rmtree(self.dir / "prometheus", ignore_errors=True)  # its port and series
        if st:
            for pid in (st.apiserver_pid, st.etcd_pid):
                stopped |= terminate(pid, 10.0)
            self.state_file.unlink(missing_ok=True)
        stopped |= self._stop_local_work() > 0
        etcd_data = self.dir / "etcd-data"
        if etcd_data.exists():
            subprocess.run(["rm", "-rf", str(etcd_data)], check=False)
        return stopped

    def _stop_local_work(self) -> int:
        """Stop what operators recorded as working against this cluster (see
        ``controller.localwork``: an operator records its state dir under the CA it
        trusts, and this directory's CA outlives restarts of the cluster)."""
        from controller import localwork
        from controller.settings import Settings

        ca = self.dir / "pki" / "ca.crt"
        if not ca.exists():
            return 0
        return localwork.stop_for_cluster(Settings.from_env().registry_dir,
                                          localwork.cluster_id(ca, ""))

    def env_lines(self) -> list[str]:
        st = self.state()
        if st is None:
            raise ClusterError("no dev cluster is running: run `trellis dev-cluster up`")
        bindir = str(Path(st.kubectl).parent)
        lines = [f"export KUBECONFIG={st.kubeconfig}", f'export PATH="{bindir}:$PATH"']
        if st.s3_pid:
            creds = self.s3.credentials()
            lines += [f"export AWS_ENDPOINT_URL={st.s3_endpoint}",
                      f"export AWS_ACCESS_KEY_ID={creds.access_key}",
                      f"export AWS_SECRET_ACCESS_KEY={creds.secret_key}"]
        if st.prometheus_url:
            lines.append(f"export TRELLIS_PROMETHEUS_URL={st.prometheus_url}")
        return lines

    # ---------------------------------------------------------------- helpers
    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        st = self.state()
        if st is None:
            raise ClusterError("no dev cluster is running")
        proc = subprocess.run(
            [st.kubectl, f"--kubeconfig={st.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def install_crds(self, st: ClusterState | None = None, crds_dir: Path = CRDS_DIR) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts",
                     "--field-manager=trellis", "-f", str(crds_dir))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds_dir))
        # Established is not yet served: discovery lags a moment behind it, and until it
        # catches up `kubectl get mlops` says "the server doesn't have a resource type".
        deadline = time.monotonic() + 60
        while self.kubectl("get", "mlops", "-A", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ClusterError("the CRDs are Established but not served by discovery")
            time.sleep(0.2)

    def _spawn(self, cmd: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.dir / log_name, "ab")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def _tail(self, name: str, lines: int = 15) -> str:
        path = self.dir / name
        if not path.exists():
            return ""
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {name}\n" + "\n".join(tail) + "\n"

    def _ready(self, st: ClusterState) -> bool:
        pki = self.dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        try:
            with urllib.request.urlopen(
                f"https://{st.host}:{st.apiserver_port}/readyz", context=ctx, timeout=2
            ) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _write_kubeconfig(self, host: str, port: int, pki: certs.Pki) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "trellis-dev",
                "cluster": {"server": f"https://{host}:{port}",
                            "certificate-authority": str(pki.ca_cert)},
            }],
            "users": [{
                "name": "trellis-admin",
                "user": {"client-certificate": str(pki.admin_cert),
                         "client-key": str(pki.admin_key)},
            }],
            "contexts": [{
                "name": "trellis-dev",
                "context": {"cluster": "trellis-dev", "user": "trellis-admin",
                            "namespace": "default"},
            }],
            "current-context": "trellis-dev",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)

