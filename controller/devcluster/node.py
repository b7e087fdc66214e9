"""A real single-node cluster on this machine: containerd, kubelet, controller-manager,
scheduler and kube-proxy next to the dev control plane.

Everything runs as detached processes whose PIDs live in ``node.json`` beside the
control plane's state, so ``trellis dev-cluster down`` from another shell stops them.
The facts behind each flag (``restrict_oom_score_adj``, cgroup v1, image GC, the pause
image) were measured on this machine type; docs/devcluster.md says why each is there.
containerd's image store is kept in the cache between clusters (images cannot be pulled
back here), everything else is per cluster and removed on ``down``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from controller.devcluster import binaries, hostnet
from controller.devcluster.baseimage import PAUSE_IMAGE
from controller.processes import free_port, pid_alive, terminate

NODE_NAME = "trellis-node"
INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-node-deps.sh"
# Host tools the node needs, each from a Debian package (scripts/install-node-deps.sh).
HOST_TOOLS = ("containerd", "ctr", "runc", "nft", "iptables", "conntrack", "ip")
CNI_BIN_DIR = Path("/usr/lib/cni")
# The order matters on the way down: pods go through the kubelet first, so CNI releases
# their addresses and rules; containerd stops last.
STOP_ORDER = ("kube-proxy", "kubelet", "kube-scheduler", "kube-controller-manager",
              "containerd")


class NodeError(RuntimeError):
    """The node could not start; the message says which part and why."""


@dataclass
class NodeState:
    pids: dict[str, int]
    ports: dict[str, int]
    containerd_socket: str
    sysctls: dict[str, str]
    netns_before: list[str]
    host_before: list[str] = field(default_factory=list)  # hostnet.HOST_DIRS, recorded
    nft_before: list[str] = field(default_factory=list)
    name: str = NODE_NAME
    started_at: float = field(default_factory=time.time)


def containerd_root() -> Path:
    """containerd's content and snapshots: shared by every dev cluster, kept on ``down``."""
    return binaries.cache_root() / "containerd"


def _owner_file() -> Path:
    return containerd_root() / "owner"


def missing_host_tools() -> list[str]:
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if not (CNI_BIN_DIR / "bridge").exists():
        missing.append("containernetworking-plugins")
    return missing


def ensure_host_tools(log: Callable[[str], None]) -> None:
    """Install the node's Debian packages once (root), or say what to run."""
    if not missing_host_tools():
        return
    log(f"[trellis] installing node packages ({', '.join(missing_host_tools())} missing)")
    proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True)
    if proc.returncode != 0 or missing_host_tools():
        raise NodeError(f"node packages missing: {', '.join(missing_host_tools())}; "
                        f"run `sudo bash {INSTALL_SCRIPT}`\n{proc.stderr[-2000:]}")


class Node:
    """The node half of a dev cluster; ``DevCluster`` owns one when started with a node."""

    def __init__(self, state_dir: Path, kubeconfig: Path, kubectl: str,
                 log: Callable[[str], None] = print) -> None:
        self._log = log
        self.dir = state_dir
        self.kubeconfig = kubeconfig
        self.kubectl = kubectl
        self.state_file = state_dir / "node.json"

    # ----------------------------------------------------------------- state
    def state(self) -> NodeState | None:
        if not self.state_file.exists():
            return None
        return NodeState(**json.loads(self.state_file.read_text()))

    def _save(self, st: NodeState) -> None:
        self.state_file.write_text(json.dumps(asdict(st), indent=2))

    def running(self) -> dict[str, bool]:
        st = self.state()
        return {name: pid_alive(pid) for name, pid in (st.pids if st else {}).items()}

    # -------------------------------------------------------------- lifecycle
    def prepare(self, log: Callable[[str], None]) -> tuple[dict[str, Path], NodeState]:
        """Everything that must exist before the API server starts on the node address."""
        ensure_host_tools(log)
        bins = binaries.ensure_node()
        self._claim_containerd_root()
        st = NodeState(pids={}, ports={}, containerd_socket=str(self.dir / "containerd.sock"),
                       sysctls=hostnet.read_sysctls(),
                       netns_before=sorted(hostnet.netns_names()),
                       host_before=hostnet.host_entries(),
                       nft_before=sorted(hostnet.nft_tables()))
        self._save(st)  # from here on, `down` knows what to restore
        hostnet.create_bridge()
        hostnet.enable_bridge_netfilter()
        return bins, st

    def start(self, bins: dict[str, Path], st: NodeState, pki_dir: Path,
              timeout: float = 120.0) -> NodeState:
        """Start containerd and the node components; return when pods can run."""
        (self.dir / "logs").mkdir(exist_ok=True)
        st.ports = {name: free_port() for name in
                    ("kubelet", "kubelet-healthz", "kcm", "scheduler", "proxy-healthz",
                     "proxy-metrics")}
        st.pids["containerd"] = self._start_containerd(st)
        self._save(st)
        # The CRI sandbox image: without it no pod starts, and nothing can pull it here.
        from controller.devcluster import images

        try:
            images.ensure_images(Path(st.containerd_socket), names=("pause",), log=self._log)
        except images.ImageError as exc:
            raise NodeError(f"the pause image: {exc}") from exc
        st.pids["kube-controller-manager"] = self._spawn("kube-controller-manager", [
            str(bins["kube-controller-manager"]), *self._client_flags(),
            f"--secure-port={st.ports['kcm']}", "--bind-address=127.0.0.1",
            f"--service-account-private-key-file={pki_dir / 'sa.key'}",
            f"--root-ca-file={pki_dir / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki_dir / 'ca.crt'}",
            f"--cluster-signing-key-file={pki_dir / 'ca.key'}",
            # No cloud and no IPAM controller: the CNI bridge plugin hands out pod IPs.
            "--controllers=*,-nodeipam", "--leader-elect=false",
            "--use-service-account-credentials=false", "--v=1",
        ])
        st.pids["kube-scheduler"] = self._spawn("kube-scheduler", [
            str(bins["kube-scheduler"]), *self._client_flags(),
            f"--secure-port={st.ports['scheduler']}", "--bind-address=127.0.0.1",
            "--leader-elect=false", "--v=1",
        ])
        st.pids["kubelet"] = self._spawn("kubelet", [
            str(bins["kubelet"]), f"--config={self._write_kubelet_config(st, pki_dir)}",
            f"--kubeconfig={self.kubeconfig}", f"--root-dir={self.dir / 'kubelet'}",
            f"--cert-dir={self.dir / 'kubelet' / 'pki'}",
            f"--hostname-override={st.name}", f"--node-ip={hostnet.GATEWAY}", "--v=1",
        ])
        st.pids["kube-proxy"] = self._spawn("kube-proxy", [
            str(bins["kube-proxy"]), f"--kubeconfig={self.kubeconfig}",
            "--proxy-mode=nftables", f"--hostname-override={st.name}",
            f"--cluster-cidr={hostnet.POD_CIDR}",
            f"--healthz-bind-address=127.0.0.1:{st.ports['proxy-healthz']}",
            f"--metrics-bind-address=127.0.0.1:{st.ports['proxy-metrics']}",
            "--conntrack-max-per-core=0", "--v=1",
        ])
        self._save(st)
        self._wait_ready(st, timeout)
        hostnet.restore_panic_sysctls(st.sysctls)
        return st

    def stop(self) -> bool:
        """Stop every process, remove what they made on the host; True if any ran."""
        st = self.state()
        if st is None:
            return False
        alive = self.running()
        if alive.get("kubelet") and alive.get("containerd"):
            self._drain_pods()
        for name in STOP_ORDER:
            pid = st.pids.get(name)
            if pid and name == "containerd":
                self._remove_sandboxes(st)
            if pid:
                terminate(pid, timeout=10.0)
        self._kill_shims(st)
        hostnet.unmount_under(self.dir, containerd_root())
        # The sandboxes' namespaces only (CNI names them cni-*): another program's are
        # not ours to remove.
        hostnet.remove_netns({n for n in hostnet.netns_names() - set(st.netns_before)
                              if n.startswith("cni-")})
        # Not `kube-proxy --cleanup`: it cleans every proxy mode, IPVS included, which
        # wipes the host's IPVS rules; our nftables tables go by name below.
        hostnet.remove_netfilter_rules()
        hostnet.remove_new_empty_tables(st.nft_before)
        hostnet.flush_conntrack()
        hostnet.delete_bridge()
        hostnet.remove_cgroups()
        hostnet.remove_new_entries(st.host_before)
        hostnet.restore_sysctls(st.sysctls)
        for sub in ("kubelet", "containerd-state", "cni"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            if _owner_file().read_text().strip() == str(self.dir):
                _owner_file().unlink()
        return any(alive.values())

    # ---------------------------------------------------------------- helpers
    def _claim_containerd_root(self) -> None:
        """One node at a time owns the shared image store (and the bridge's name)."""
        root = containerd_root()
        root.mkdir(parents=True, exist_ok=True)
        owner = _owner_file()
        if owner.exists():
            other = Path(owner.read_text().strip())
            if other != self.dir and (other / "node.json").exists():
                pids = json.loads((other / "node.json").read_text()).get("pids", {})
                if any(pid_alive(p) for p in pids.values()):
                    raise NodeError(f"a dev-cluster node already runs from {other}; "
                                    f"`trellis dev-cluster down --dir {other}` first")
        owner.write_text(str(self.dir))

    def _client_flags(self) -> list[str]:
        kc = str(self.kubeconfig)
        return [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}"]

    def _spawn(self, name: str, cmd: list[str]) -> int:
        log = open(self.dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child's
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        return proc.pid

    def _start_containerd(self, st: NodeState) -> int:
        cni_conf = self.dir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-trellis.conflist").write_text(json.dumps(cni_config(self.dir / "cni")))
        config = self.dir / "containerd.toml"
        config.write_text(containerd_config(
            root=containerd_root() / "root", state=self.dir / "containerd-state",
            socket=Path(st.containerd_socket), cni_conf_dir=cni_conf))
        pid = self._spawn("containerd", ["containerd", f"--config={config}"])
        deadline = time.monotonic() + 30
        while not _socket_answers(Path(st.containerd_socket)):
            if not pid_alive(pid) or time.monotonic() > deadline:
                raise NodeError("containerd did not start:\n" + self.tail("containerd"))
            time.sleep(0.1)
        return pid

    def _write_kubelet_config(self, st: NodeState, pki_dir: Path) -> Path:
        path = self.dir / "kubelet-config.json"
        path.write_text(json.dumps(kubelet_config(
            port=st.ports["kubelet"], healthz_port=st.ports["kubelet-healthz"],
            socket=Path(st.containerd_socket), ca=pki_dir / "ca.crt",
            pod_logs=self.dir / "pod-logs",
            volume_plugins=self.dir / "kubelet" / "volume-plugins"), indent=2))
        return path

    def _wait_ready(self, st: NodeState, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        checks: list[tuple[str, Callable[[], bool]]] = [
            ("the Node to be Ready", lambda: self._node_ready(st.name)),
            ("the default ServiceAccount", lambda: self._ok("get", "serviceaccount", "default",
                                                            "-n", "default")),
            ("the kubernetes Service's endpoints", self._api_endpoints_ready),
            ("kube-proxy to sync", lambda: _http_ok(st.ports["proxy-healthz"], "/healthz")),
        ]
        for what, check in checks:
            while not check():
                dead = [name for name, ok in self.running().items() if not ok]
                if dead:
                    raise NodeError(f"{', '.join(dead)} exited while waiting for {what}:\n"
                                    + "".join(self.tail(n) for n in dead))
                if time.monotonic() > deadline:
                    raise NodeError(f"timed out after {timeout:.0f}s waiting for {what}:\n"
                                    + self.tail("kubelet"))
                time.sleep(0.25)

    def _ok(self, *args: str) -> bool:
        return self._kubectl(*args).returncode == 0

    def _kubectl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.kubectl, f"--kubeconfig={self.kubeconfig}", *args],
                              capture_output=True, text=True, timeout=timeout)

    def _node_ready(self, name: str) -> bool:
        out = self._kubectl("get", "node", name, "-o",
                            "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
        return out.returncode == 0 and out.stdout.strip() == "True"

    def _api_endpoints_ready(self) -> bool:
        out = self._kubectl("get", "endpointslices", "-n", "default", "-l",
                            "kubernetes.io/service-name=kubernetes",
                            "-o", "jsonpath={.items[*].endpoints[*].addresses[*]}")
        return hostnet.GATEWAY in out.stdout.split()

    def _drain_pods(self) -> None:
        """Let the kubelet stop every pod, so CNI DEL releases addresses and rules."""
        self._kubectl("delete", "deployments,statefulsets,daemonsets,replicasets,jobs,pods",
                      "--all", "--all-namespaces", "--grace-period=1", "--wait=true",
                      "--timeout=60s", timeout=90)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = self._kubectl("get", "pods", "-A", "-o", "name")
            if out.returncode != 0 or not out.stdout.strip():
                return
            time.sleep(0.5)

    def _ctr(self, st: NodeState, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "-a", st.containerd_socket, "-n", "k8s.io", *args],
                              capture_output=True, text=True, timeout=30)

    def _remove_sandboxes(self, st: NodeState) -> None:
        """Whatever the kubelet left (it died first, or a drain timed out)."""
        if not _socket_answers(Path(st.containerd_socket)):
            return
        tasks = self._ctr(st, "tasks", "ls", "-q").stdout.split()
        for task in tasks:
            self._ctr(st, "tasks", "kill", "-s", "SIGKILL", task)
        for task in tasks:
            for _ in range(20):
                if self._ctr(st, "tasks", "rm", "-f", task).returncode == 0:
                    break
                time.sleep(0.1)
        for container in self._ctr(st, "containers", "ls", "-q").stdout.split():
            self._ctr(st, "containers", "rm", container)

    def _kill_shims(self, st: NodeState) -> None:
        """containerd's shims outlive it by design; ours name our socket."""
        marker = st.containerd_socket.encode()
        for pid in _pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and marker in cmdline:
                terminate(pid, timeout=5.0, group=False)

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.dir / "logs" / f"{name}.log"
        if not path.exists():
            return ""
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {name}\n" + "\n".join(text) + "\n"


# -------------------------------------------------------------------- configs
def containerd_config(*, root: Path, state: Path, socket: Path, cni_conf_dir: Path) -> str:
    """containerd 1.6 with private paths. ``restrict_oom_score_adj``: root here lacks
    CAP_SYS_RESOURCE, and without it runc fails every sandbox."""
    return f"""version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{state}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf_dir}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{state}/opt"
"""


def cni_config(cni_dir: Path) -> dict:
    return {
        "cniVersion": "0.4.0",
        "name": hostnet.CNI_NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": hostnet.BRIDGE, "isGateway": True, "ipMasq": True,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": hostnet.POD_CIDR,
                                                         "gateway": hostnet.GATEWAY}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(cni_dir / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(*, port: int, healthz_port: int, socket: Path, ca: Path,
                   pod_logs: Path, volume_plugins: Path) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": hostnet.GATEWAY,
        "port": port,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "readOnlyPort": 0,
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,  # this machine mounts cgroup v1 controllers
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{socket}",
        "podLogsDir": str(pod_logs),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "AlwaysAllow"},
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        # Nothing can be pulled back here: never garbage-collect imported images.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "resolvConf": hostnet.resolv_conf(),
        # Its default, /usr/libexec/kubernetes/..., would be created on the host.
        "volumePluginDir": str(volume_plugins),
        "serializeImagePulls": False,
        "registerNode": True,
    }


# ------------------------------------------------------------------ processes
def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _socket_answers(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
            return True
        except OSError:
            return False


def _http_ok(port: int, path: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False
