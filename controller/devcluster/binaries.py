"""Find or build the dev cluster's binaries (etcd, kube-apiserver, kubectl, node, weed),
and fetch the tests' Prometheus.

Lookup order follows controller-runtime's envtest: ``TEST_ASSET_<NAME>``, then
``$KUBEBUILDER_ASSETS/<name>``, then our own per-version cache. A cache miss builds
the binary from Go modules in a throw-away wrapper module outside the repository:
``k8s.io/kubernetes`` is only consumable as a module when every staging module it
requires at ``v0.0.0`` is replaced by the matching published ``v0.X.Y``. Prometheus is
not built: it is Debian's package, unpacked into the cache without being installed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KUBERNETES_VERSION = "1.34.4"
ETCD_VERSION = "3.6.16"
GO_DIRECTIVE = "1.24"
# SeaweedFS (the dev cluster's S3 server, `--s3`): the module version the proxy serves.
SEAWEEDFS_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"
SEAWEEDFS_MODULE = "github.com/seaweedfs/seaweedfs"
# Prometheus (canary analysis' metrics server in tests): the upstream version of Debian
# bookworm's package (2.42.0+ds-5+deb12uN), fetched with `apt-get download` and unpacked
# with `dpkg -x`, never installed: its postinst would add a user and start a service.
PROMETHEUS_VERSION = "2.42.0"
PROMETHEUS_PACKAGE = "prometheus"

NAMES = ("etcd", "kube-apiserver", "kubectl")
# What a node adds: built from the same module set, so every component reports one version.
NODE_NAMES = ("kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy")


class BinaryError(RuntimeError):
    """A binary could not be found or built; the message says what to do."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trellis"


def cache_dir() -> Path:
    return cache_root() / f"k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}"


def weed_cache_dir() -> Path:
    return cache_root() / f"seaweedfs-{SEAWEEDFS_VERSION}"


def prometheus_cache_dir() -> Path:
    return cache_root() / f"prometheus-{PROMETHEUS_VERSION}"


def _cache_bin(name: str) -> Path:
    if name == "weed":
        return weed_cache_dir() / "bin" / name
    if name == "prometheus":
        return prometheus_cache_dir() / "bin" / name
    return cache_dir() / "bin" / name


def _env_asset(name: str) -> Path | None:
    explicit = os.environ.get("TEST_ASSET_" + name.upper().replace("-", "_"))
    if explicit:
        return Path(explicit)
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (Path(assets) / name).is_file():
        return Path(assets) / name
    return None


def locate(name: str) -> Path | None:
    """The binary for ``name`` if one is available without building."""
    found = _env_asset(name)
    if found is not None:
        return found
    cached = _cache_bin(name)
    return cached if cached.is_file() else None


def ensure_all(log=sys.stderr) -> dict[str, Path]:
    """Every control-plane binary, building the missing ones once (under a file lock)."""
    missing = [n for n in NAMES if locate(n) is None]
    if missing:
        with _build_lock():
            missing = [n for n in NAMES if locate(n) is None]
            if {"kube-apiserver", "kubectl"} & set(missing):
                _build_kubernetes(log, "src-kubernetes", ("kube-apiserver", "kubectl"))
            if "etcd" in missing:
                _build_etcd(log)
    return _located(NAMES)


def ensure_node(log=sys.stderr) -> dict[str, Path]:
    """The node's binaries (kubelet, controller-manager, scheduler, kube-proxy), built once."""
    if any(locate(n) is None for n in NODE_NAMES):
        with _build_lock():
            if any(locate(n) is None for n in NODE_NAMES):
                _build_kubernetes(log, "src-node", NODE_NAMES)
    return _located(NODE_NAMES)


def ensure_weed(log=sys.stderr) -> Path:
    """SeaweedFS's ``weed`` (the S3 server of ``dev-cluster up --s3``), built once."""
    if locate("weed") is None:
        with _build_lock(weed_cache_dir()):
            if locate("weed") is None:
                _build_weed(log)
    return _located(("weed",))["weed"]


def ensure_prometheus(log=sys.stderr) -> Path:
    """Debian's ``prometheus`` binary in the cache, fetched once (see ``_fetch_prometheus``)."""
    if locate("prometheus") is None:
        with _build_lock(prometheus_cache_dir()):
            if locate("prometheus") is None:
                _fetch_prometheus(log)
    return _located(("prometheus",))["prometheus"]


def _located(names: tuple[str, ...]) -> dict[str, Path]:
    result = {}
    for name in names:
        path = locate(name)
        if path is None:
            raise BinaryError(f"{name} is still missing after the build; see the log above")
        result[name] = path
    return result


@contextmanager
def _build_lock(directory: Path | None = None) -> Iterator[None]:
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BinaryError(
            "Go is needed once to build kube-apiserver and etcd (or set KUBEBUILDER_ASSETS "
            "to a directory with envtest binaries)"
        )
    return go


def _run(cmd: list[str], cwd: Path, log, nice: bool = False) -> str:
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    print(f"[trellis] $ {' '.join(cmd)}", file=log, flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          preexec_fn=(lambda: os.nice(10)) if nice else None)
    if proc.returncode != 0:
        raise BinaryError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def staging_replaces(kubernetes_gomod: str, version: str) -> list[str]:
    """``replace`` lines pinning each staging module to its published ``v0.X.Y``."""
    staging_version = "v0." + version.split(".", 1)[1]
    modules = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", kubernetes_gomod, re.M)
    if not modules:
        raise BinaryError("no staging replace block found in k8s.io/kubernetes go.mod")
    return [f"replace {m} => {m} {staging_version}" for m in sorted(set(modules))]


def version_ldflags(version: str = KUBERNETES_VERSION) -> str:
    """Without these a module build reports ``v0.0.0-master+$Format:%H$`` (Node, /version)."""
    major, minor, _ = version.split(".")
    pkg = "k8s.io/component-base/version"
    return (f"-X {pkg}.gitVersion=v{version} -X {pkg}.gitMajor={major} "
            f"-X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean")


def _build_kubernetes(log, workdir: str, commands: tuple[str, ...]) -> None:
    work = cache_dir() / workdir
    work.mkdir(parents=True, exist_ok=True)
    meta = json.loads(
        _run([_go(), "mod", "download", "-json", f"k8s.io/kubernetes@v{KUBERNETES_VERSION}"],
             work, log)
    )
    gomod = Path(meta["GoMod"]).read_text()
    lines = [
        "module trellis.dev/devcluster/kubernetes",
        "",
        f"go {GO_DIRECTIVE}",
        "",
        f"require k8s.io/kubernetes v{KUBERNETES_VERSION}",
        "",
        *staging_replaces(gomod, KUBERNETES_VERSION),
        "",
    ]
    (work / "go.mod").write_text("\n".join(lines))
    packages = [f"k8s.io/kubernetes/cmd/{c}" for c in commands]
    imports = "".join(f'\t_ "{p}"\n' for p in packages)
    (work / "tools.go").write_text(
        f"//go:build tools\n\npackage tools\n\nimport (\n{imports})\n"
    )
    _run([_go(), "mod", "tidy"], work, log)
    out = cache_dir() / "bin"
    out.mkdir(parents=True, exist_ok=True)
    _run([_go(), "build", "-trimpath", "-ldflags", version_ldflags(), "-o", str(out) + "/",
          *packages], work, log)


def _build_etcd(log) -> None:
    work = cache_dir() / "src-etcd"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(
        f"module trellis.dev/devcluster/etcd\n\ngo {GO_DIRECTIVE}\n\n"
        f"require go.etcd.io/etcd/server/v3 v{ETCD_VERSION}\n"
    )
    (work / "tools.go").write_text(
        '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n'
    )
    _run([_go(), "mod", "tidy"], work, log)
    out = cache_dir() / "bin"
    out.mkdir(parents=True, exist_ok=True)
    _run([_go(), "build", "-trimpath", "-o", str(out / "etcd"), "go.etcd.io/etcd/server/v3"],
         work, log)


def module_replaces(gomod: str) -> list[str]:
    """A go.mod's ``replace`` directives by other modules (local paths cannot be repeated):
    a module that requires it must repeat them (``go install module@version`` refuses a
    module with any, and without them its build fails)."""
    gomod = re.sub(r"//.*", "", gomod)
    specs = re.findall(r"^replace\s+(?!\()(.+)$", gomod, re.M)
    for block in re.findall(r"^replace\s*\((.*?)^\)", gomod, re.M | re.S):
        specs += block.splitlines()
    specs = [" ".join(spec.split()) for spec in specs if "=>" in spec]
    return [f"replace {spec}" for spec in specs
            if not spec.split("=>", 1)[1].strip().startswith((".", "/"))]


def go_directive(gomod: str) -> str:
    match = re.search(r"^go\s+(\S+)", gomod, re.M)
    return match.group(1) if match else GO_DIRECTIVE


def weed_gomod(seaweedfs_gomod: str) -> str:
    """The wrapper module's go.mod: seaweedfs at the pinned version, its ``go`` line (a
    requirer must not be older) and its replaces."""
    return "\n".join([
        "module trellis.dev/devcluster/seaweedfs",
        "",
        f"go {go_directive(seaweedfs_gomod)}",
        "",
        f"require {SEAWEEDFS_MODULE} {SEAWEEDFS_VERSION}",
        "",
        *module_replaces(seaweedfs_gomod),
        "",
    ])


def _build_weed(log) -> None:
    """A ~230 MB binary and a long build (minutes): niced, stripped (``-s -w``)."""
    work = weed_cache_dir() / "src"
    work.mkdir(parents=True, exist_ok=True)
    meta = json.loads(_run([_go(), "mod", "download", "-json",
                            f"{SEAWEEDFS_MODULE}@{SEAWEEDFS_VERSION}"], work, log))
    (work / "go.mod").write_text(weed_gomod(Path(meta["GoMod"]).read_text()))
    (work / "tools.go").write_text(
        '//go:build tools\n\npackage tools\n\nimport _ "github.com/seaweedfs/seaweedfs/weed"\n'
    )
    print("[trellis] building SeaweedFS's weed once (several minutes)", file=log, flush=True)
    _run([_go(), "mod", "tidy"], work, log, nice=True)
    out = weed_cache_dir() / "bin"
    out.mkdir(parents=True, exist_ok=True)
    _run([_go(), "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "weed"),
          f"{SEAWEEDFS_MODULE}/weed"], work, log, nice=True)


def apt_candidate(policy: str) -> str | None:
    """The version ``apt-cache policy PACKAGE`` would install (None: no candidate)."""
    match = re.search(r"^\s*Candidate:\s*(\S+)", policy, re.M)
    return None if match is None or match.group(1) == "(none)" else match.group(1)


def upstream_version(debian_version: str) -> str:
    """``2.42.0`` out of ``2.42.0+ds-5+deb12u1`` (epoch, repack suffix and revision off)."""
    version = debian_version.split(":", 1)[-1]
    return re.split(r"[+~-]", version, maxsplit=1)[0]


def _fetch_prometheus(log) -> None:
    """``apt-get download`` the package (as any user; lists refreshed once as root when
    they know no candidate), ``dpkg -x`` it into a scratch dir and keep the binary and its
    copyright under ``prometheus-<version>/``."""
    root = os.geteuid() == 0
    policy = _run(["apt-cache", "policy", PROMETHEUS_PACKAGE], Path("/"), log)
    if apt_candidate(policy) is None and root:
        _run(["apt-get", "update", "-qq"], Path("/"), log)
        policy = _run(["apt-cache", "policy", PROMETHEUS_PACKAGE], Path("/"), log)
    candidate = apt_candidate(policy)
    if candidate is None or upstream_version(candidate) != PROMETHEUS_VERSION:
        raise BinaryError(
            f"apt offers {PROMETHEUS_PACKAGE} {candidate or 'in no version'}, not "
            f"{PROMETHEUS_VERSION}: run apt-get update on Debian 12 (bookworm), or set "
            "TEST_ASSET_PROMETHEUS to a prometheus 2.42 binary")
    out = prometheus_cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix="fetch-") as tmp:
        work = Path(tmp)
        # root downloads unsandboxed (the cache is not _apt's to write), as apt would after
        # warning; the package is still checked against the archive's signed index.
        sandbox = ["-o", "APT::Sandbox::User=root"] if root else []
        _run(["apt-get", "download", *sandbox, f"{PROMETHEUS_PACKAGE}={candidate}"], work, log)
        [deb] = work.glob(f"{PROMETHEUS_PACKAGE}_*.deb")
        _run(["dpkg", "-x", str(deb), str(work / "root")], work, log)
        binary = work / "root" / "usr" / "bin" / "prometheus"
        said = _run([str(binary), "--version"], work, log)
        if f"version {PROMETHEUS_VERSION}" not in said:
            raise BinaryError(f"{deb.name} holds another Prometheus: {said.splitlines()[:1]}")
        (out / "share").mkdir(exist_ok=True)
        shutil.copy2(work / "root" / "usr" / "share" / "doc" / "prometheus" / "copyright",
                     out / "share" / "copyright")
        (out / "bin").mkdir(exist_ok=True)
        os.replace(binary, out / "bin" / "prometheus")
