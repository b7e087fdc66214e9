"""What a dev-cluster node may leave on the machine, listed so two moments compare.

Scoped to the node: processes whose command line names its state directory (etcd,
the API server, containerd, the kubelet...) or its containerd socket (the shims), and
mounts under its directories, the containerd image store and the netns directory.
Whatever else the machine does meanwhile (an image build, another test's cluster)
is not the node's to clean up.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from controller.devcluster import hostnet
from controller.devcluster.node import containerd_root

NODE_PROCESSES = ("containerd", "containerd-shim", "kubelet", "kube-proxy",
                  "kube-controller-manager", "kube-scheduler", "kube-apiserver", "etcd")


@dataclass(frozen=True)
class HostSnapshot:
    processes: frozenset[str]
    mounts: frozenset[str]
    links: frozenset[str]
    nft_tables: frozenset[str]
    iptables_chains: frozenset[str]
    netns: frozenset[str]
    host_paths: frozenset[str]  # under hostnet.HOST_DIRS: kubelet's and containerd's own
    sysctls: tuple[tuple[str, str], ...]

    def leftovers(self, before: HostSnapshot) -> dict[str, list[str]]:
        """What this snapshot has that ``before`` had not (sysctls: what changed)."""
        out = {name: sorted(getattr(self, name) - getattr(before, name))
               for name in ("processes", "mounts", "links", "nft_tables", "iptables_chains",
                            "netns", "host_paths")}
        was = dict(before.sysctls)
        out["sysctls"] = [f"{k}: {was.get(k)} -> {v}" for k, v in self.sysctls
                          if was.get(k) != v]
        return {k: v for k, v in out.items() if v}


def _processes(scope: Path) -> frozenset[str]:
    found = set()
    marker = str(scope).encode()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        argv = raw.split(b"\0")
        exe = os.path.basename(argv[0].decode(errors="replace")) if argv and argv[0] else ""
        if marker in raw and any(exe.startswith(name) for name in NODE_PROCESSES):
            found.add(f"{pid} {exe}")
    return frozenset(found)


def _mount_roots(scope: Path) -> tuple[str, ...]:
    return (str(scope), str(containerd_root()), "/var/run/netns", "/run/netns",
            "/sys/fs/cgroup/")


def snapshot(scope: Path) -> HostSnapshot:
    """The host as the node in ``scope`` (its state directory) could have changed it."""
    roots = _mount_roots(scope)
    mounts = frozenset(point for point in (line.split()[1] for line in
                       Path("/proc/self/mounts").read_text().splitlines())
                       if point.startswith(roots))
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return HostSnapshot(
        processes=_processes(scope),
        mounts=mounts,
        links=frozenset(line.split(":")[1].strip().split("@")[0] for line in links.splitlines()),
        nft_tables=frozenset(hostnet.nft_tables()),
        iptables_chains=frozenset(hostnet.iptables_chains()),
        netns=frozenset(hostnet.netns_names()),
        host_paths=frozenset(hostnet.host_entries()),
        sysctls=tuple(sorted(hostnet.read_sysctls().items())),
    )
