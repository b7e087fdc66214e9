"""The host-side state a dev-cluster node creates, and how to give it back.

A kubelet node changes the machine it runs on: a bridge for the pods, nftables and
iptables rules (kube-proxy, kubelet, the CNI bridge plugin's masquerade), network
namespaces, mounts, cgroups and a handful of kernel sysctls. CI runs on the developer's
own machine, so ``dev-cluster down`` must leave it as it was: everything here is
recorded before the node starts and removed or restored by name afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

BRIDGE = "trellis0"
CNI_NETWORK = "trellis"
POD_CIDR = "10.244.0.0/24"
# The bridge's address is the node's address: the kubelet serves on it and pods reach
# the API server through it (the `kubernetes` Service's endpoint), never the host's NIC.
GATEWAY = "10.244.0.1"
SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"

# Written by kubelet (setupKernelTunables), kube-proxy and the bridge plugin.
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)

# Paths kubelet, containerd and the CNI plugins write outside the directories a node is
# given, hard-coded upstream: the device-plugin socket, the flexvolume probe directory,
# container log links, containerd 1.6's shim sockets, the CNI result cache. What is
# there before `up` is recorded; what is new goes at `down`.
HOST_DIRS = ("/var/lib/kubelet", "/usr/libexec/kubernetes", "/var/log/containers",
             "/run/containerd", "/var/lib/cni")

_KUBELET_CHAINS = (
    ("filter", "KUBE-FIREWALL"),
    ("filter", "KUBE-KUBELET-CANARY"),
    ("nat", "KUBE-KUBELET-CANARY"),
    ("mangle", "KUBE-KUBELET-CANARY"),
    ("mangle", "KUBE-IPTABLES-HINT"),
)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    """Current values of the sysctls a node may change (absent ones left out)."""
    values = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = _sysctl_path(name).read_text().strip()
    return values


def restore_sysctls(original: dict[str, str]) -> list[str]:
    """Write back every value that moved; the names restored."""
    restored = []
    for name, value in original.items():
        path = _sysctl_path(name)
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
                restored.append(name)
        except OSError:
            continue
    return restored


# kubelet writes these once, at start (protectKernelDefaults off): an oops then panics
# and the machine reboots ten seconds later. Nothing of the node needs them, so the
# host's own values go back as soon as the node is Ready.
PANIC_SYSCTLS = ("kernel.panic", "kernel.panic_on_oops")


def restore_panic_sysctls(original: dict[str, str]) -> list[str]:
    """Put back the host's panic behaviour that kubelet's start replaced."""
    return restore_sysctls({k: v for k, v in original.items() if k in PANIC_SYSCTLS})


def enable_bridge_netfilter() -> None:
    """Pod -> ClusterIP -> a pod on the same bridge needs bridged traffic to pass the
    netfilter hooks; kube-proxy neither sets nor checks it (recorded and restored with
    the other sysctls)."""
    path = _sysctl_path("net.bridge.bridge-nf-call-iptables")
    with contextlib.suppress(OSError):
        if path.read_text().strip() != "1":
            path.write_text("1")


def resolv_conf() -> str:
    """The resolver file pods get: systemd-resolved's upstream list where it runs (its
    stub, 127.0.0.53, is unreachable from a pod's network namespace)."""
    upstream = Path("/run/systemd/resolve/resolv.conf")
    return str(upstream) if upstream.exists() else "/etc/resolv.conf"


def host_entries(dirs: Iterable[str] = HOST_DIRS) -> list[str]:
    """Every path under ``dirs`` (the directories themselves included), as it is now."""
    out = []
    for top in dirs:
        if not os.path.lexists(top):
            continue
        out.append(top)
        for dirpath, dirnames, filenames in os.walk(top):
            out += [os.path.join(dirpath, name) for name in (*dirnames, *filenames)]
    return sorted(out)


def remove_new_entries(before: Iterable[str], dirs: Iterable[str] = HOST_DIRS) -> list[str]:
    """Remove what appeared under ``dirs`` since ``before`` (deepest first); the paths."""
    kept = set(before)
    new = [path for path in host_entries(dirs) if path not in kept]
    for path in sorted(new, key=len, reverse=True):
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
    return new


def flush_conntrack() -> None:
    """Connection-tracking entries of pod and Service addresses (a later node reuses the
    same addresses; stale NAT entries would misroute its first packets)."""
    for args in (("-s", POD_CIDR), ("-d", POD_CIDR), ("-d", SERVICE_CIDR)):
        subprocess.run(["conntrack", "-D", *args], capture_output=True)


def _ip(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def create_bridge() -> None:
    """The pods' bridge with the node address on it, before anything needs the address.

    The CNI bridge plugin adopts an existing bridge of the same name and keeps its
    gateway address, so the API server can bind to it before the first pod exists.
    """
    if _ip("link", "show", BRIDGE).returncode != 0:
        _ip("link", "add", BRIDGE, "type", "bridge", check=True)
    addrs = _ip("-o", "addr", "show", "dev", BRIDGE).stdout
    if f" {GATEWAY}/" not in addrs:
        _ip("addr", "add", f"{GATEWAY}/24", "dev", BRIDGE, check=True)
    _ip("link", "set", BRIDGE, "up", check=True)


def bridge_ports() -> list[str]:
    out = _ip("-o", "link", "show", "master", BRIDGE).stdout
    return [m.group(1) for m in re.finditer(r"^\d+: ([^@:]+)", out, re.M)]


def delete_bridge() -> None:
    for port in bridge_ports():
        _ip("link", "del", port)
    if _ip("link", "show", BRIDGE).returncode == 0:
        _ip("link", "del", BRIDGE)


def netns_names() -> set[str]:
    try:
        return set(os.listdir("/var/run/netns"))
    except OSError:
        return set()


def remove_netns(names: set[str]) -> None:
    for name in names:
        path = Path("/var/run/netns") / name
        subprocess.run(["umount", str(path)], capture_output=True)
        with contextlib.suppress(OSError):
            path.unlink()


def unmount_under(*roots: Path) -> list[str]:
    """Unmount every mount point below ``roots``, deepest first."""
    prefixes = [str(r.resolve()) + "/" for r in roots]
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if any(point.startswith(p) or point + "/" == p for p in prefixes):
            points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    return points


def nft_tables() -> set[str]:
    out = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True)
    if out.returncode != 0:
        return set()
    tables = set()
    for item in json.loads(out.stdout or "{}").get("nftables", []):
        table = item.get("table")
        if table:
            tables.add(f"{table['family']} {table['name']}")
    return tables


def remove_netfilter_rules() -> None:
    """kube-proxy's nft tables, kubelet's iptables chains, the bridge plugin's masquerade."""
    for family in ("ip", "ip6"):
        subprocess.run(["nft", "delete", "table", family, "kube-proxy"], capture_output=True)
    for tool in ("iptables", "ip6tables"):
        for chain_in in ("INPUT", "OUTPUT"):
            subprocess.run([tool, "-t", "filter", "-D", chain_in, "-j", "KUBE-FIREWALL"],
                           capture_output=True)
        for table, chain in _KUBELET_CHAINS:
            subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
            subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)
    # The bridge plugin's per-sandbox chains, left when a sandbox never got a CNI DEL.
    saved = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    marker = f'name: \\"{CNI_NETWORK}\\"'
    chains = set()
    for line in saved.splitlines():
        if line.startswith("-A POSTROUTING") and marker in line:
            rule = line[len("-A POSTROUTING"):].strip()
            subprocess.run(["sh", "-c", f"iptables -t nat -D POSTROUTING {rule}"],
                           capture_output=True)
            found = re.search(r"-j (CNI-[0-9a-f]+)", line)
            if found:
                chains.add(found.group(1))
    for chain in chains:
        subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True)
        subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True)


def iptables_chains() -> set[str]:
    """Every chain in every table, for before/after comparisons."""
    chains = set()
    for tool in ("iptables", "ip6tables"):
        out = subprocess.run([f"{tool}-save"], capture_output=True, text=True).stdout
        table = ""
        for line in out.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                chains.add(f"{tool} {table} {line[1:].split()[0]}")
    return chains


def remove_cgroups(names: tuple[str, ...] = ("kubepods", "kubepods.slice")) -> None:
    """The cgroups kubelet made, in every v1 hierarchy and the v2 root (deepest first).

    A process still inside one (a container whose shim died with containerd) is killed
    first: a cgroup with members cannot be removed."""
    root = Path("/sys/fs/cgroup")
    if not root.is_dir():
        return
    tops = [root / name for name in names]
    tops += [h / name for h in root.iterdir() if h.is_dir() for name in names]
    for top in tops:
        if not top.is_dir():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
            _kill_members(Path(dirpath))
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def _kill_members(cgroup: Path, timeout: float = 2.0) -> None:
    procs = cgroup / "cgroup.procs"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except (OSError, ValueError):
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def remove_new_empty_tables(before: Iterable[str]) -> list[str]:
    """nft tables that appeared since ``before`` and hold no rule: iptables-nft creates
    ``ip filter``/``nat``/``mangle`` for kubelet's chains, and flushing the chains
    never removes the tables."""
    removed = []
    for table in sorted(nft_tables() - set(before)):
        family, name = table.split(" ", 1)
        out = subprocess.run(["nft", "-j", "list", "table", family, name],
                             capture_output=True, text=True)
        items = json.loads(out.stdout or "{}").get("nftables", []) if out.returncode == 0 \
            else [{"rule": "unknown"}]
        if any("rule" in item for item in items):
            continue
        if subprocess.run(["nft", "delete", "table", family, name],
                          capture_output=True).returncode == 0:
            removed.append(table)
    return removed
