"""The two images built from scratch here: the Python base the Dockerfile builds on, and
the pod sandbox (pause) image. No registry is reachable, so neither can be pulled.

The base honours the Dockerfile's ``PYTHON_IMAGE`` contract (``/usr/local/bin/python3.11``,
``python3``, ``pip``, ``groupadd``/``useradd``, a working ``apt-get``) with Debian's own
Python: ``debootstrap --variant=minbase bookworm`` plus ``python3.11-venv``, and a venv
*at* ``/usr/local``. Why a venv rather than building CPython or symlinking Debian's:
Debian's interpreter is marked externally managed (PEP 668), so a plain ``pip install``
into it is refused, while a venv is exactly the place pip may install into; its
``bin/`` gives the official image's names; and every wheel in the lock files is built
for this glibc. uv, asked for ``/usr/local/bin/python3.11``, finds the base interpreter
(``/usr/bin/python3.11``) behind the venv and builds its own environments on that.

The local base also trusts what the host trusts: certificates in the host's
``/usr/local/share/ca-certificates`` (a TLS-inspecting proxy's, say) are added, and
``SSL_CERT_FILE`` points tools that carry their own roots (uv) at the system bundle.
apt inside the image uses the host's Debian mirror URIs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from controller.devcluster import binaries, oci
from controller.devcluster.oci import ImageError, Log, StoredImage

BASE_IMAGE = "localhost/trellis/python:3.11-bookworm"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3.11-venv", "python3-distutils", "python3-lib2to3", "python3",
            "ca-certificates")
INPUTS_LABEL = "dev.trellis.image.inputs"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
PAUSE_SOURCE = Path(__file__).with_name("pause.go")
# Run inside the base once the rootfs is in place (part of the base's cache key).
BASE_SETUP = """set -e
rm -f /etc/apt/sources.list
update-ca-certificates >/dev/null
python3.11 -m venv /usr/local
rm -f /usr/local/bin/activate* /usr/local/bin/Activate.ps1
/usr/local/bin/python3.11 -c 'import ssl, sqlite3, venv'
/usr/local/bin/pip --version
"""
BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt")
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/man", "usr/share/info")


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def cache_dir() -> Path:
    return binaries.cache_root() / "images"


def digest_of(*parts: object) -> str:
    """sha256 (hex) of JSON-able parts: the cache keys here."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- apt sources
def host_apt_sources(root: Path = Path("/etc/apt"), suite: str = SUITE) -> list[AptSource]:
    """The host's Debian entries for ``suite`` (``suite``, ``suite-updates``, ``-security``),
    from one-line ``.list`` files and deb822 ``.sources`` files."""
    entries: list[AptSource] = []
    files = [root / "sources.list", *sorted((root / "sources.list.d").glob("*.list"))]
    for path in filter(Path.is_file, files):
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["deb"]:
                if len(words) > 1 and words[1].startswith("["):
                    while words and not words[1].endswith("]"):
                        words.pop(1)
                    words.pop(1)
                if len(words) >= 4:
                    entries.append(AptSource(words[1], (words[2],), tuple(words[3:])))
    for path in sorted((root / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.split()
            if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
                entries += [AptSource(uri, tuple(fields.get("suites", [])),
                                      tuple(fields.get("components", []))) for uri in
                            fields.get("uris", [])]
    mine = []
    for entry in entries:
        suites = tuple(s for s in entry.suites if s == suite or s.startswith(suite + "-"))
        if suites and "main" in entry.components:
            mine.append(AptSource(entry.uri, suites, ("main",)))
    return mine


def image_apt_sources(suite: str = SUITE) -> tuple[str, list[AptSource]]:
    """(debootstrap mirror, the image's apt entries): ``TRELLIS_DEBIAN_MIRROR`` if set,
    else the host's own entries, else Debian's redirector."""
    override = os.environ.get("TRELLIS_DEBIAN_MIRROR")
    sources = [] if override else host_apt_sources(suite=suite)
    mirror = override or next((s.uri for s in sources if suite in s.suites), DEFAULT_MIRROR)
    if not any(suite in s.suites for s in sources):
        sources.insert(0, AptSource(mirror, (suite, f"{suite}-updates"), ("main",)))
    return mirror, sources


def deb822(sources: list[AptSource]) -> str:
    return "\n".join(
        f"Types: deb\nURIs: {s.uri}\nSuites: {' '.join(s.suites)}\n"
        f"Components: {' '.join(s.components)}\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n" for s in sources)


# -------------------------------------------------------------------- rootfs
def rootfs_key(mirror: str) -> str:
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "debootstrap"],
                             capture_output=True, text=True).stdout.strip()
    return digest_of("rootfs", SUITE, mirror, PACKAGES, TRIM, version, os.uname().machine)


def rootfs_tarball(mirror: str, log: Log) -> Path:
    """A trimmed ``debootstrap --variant=minbase`` rootfs as a tar, cached by its inputs."""
    tarball = cache_dir() / f"rootfs-{SUITE}-{rootfs_key(mirror)[:16]}.tar"
    if tarball.exists():
        return tarball
    oci.require_tools(("debootstrap", "tar"))
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root to build the base image's rootfs")
    cache_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir()))
    try:
        rootfs = work / "rootfs"
        log(f"[trellis] debootstrap {SUITE} from {mirror} (once; about a minute)")
        oci.run(["nice", "-n", "10", "debootstrap", "--variant=minbase", "--components=main",
                 f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror], log)
        for rel in TRIM:
            for child in (rootfs / rel).glob("*"):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() \
                    else child.unlink()
        locales = rootfs / "usr/share/locale"
        for child in locales.glob("*"):
            if child.is_dir():
                shutil.rmtree(child)
        partial = work / "rootfs.tar"
        # /dev is the runtime's to fill; numeric owners so nothing maps through host names.
        oci.run(["tar", "--numeric-owner", "--xattrs", "--exclude=./dev/*", "-C", str(rootfs),
                 "-cf", str(partial), "."])
        for old in cache_dir().glob(f"rootfs-{SUITE}-*.tar"):
            old.unlink()
        partial.rename(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


# ---------------------------------------------------------------------- images
def _host_cas() -> list[Path]:
    return sorted(p for p in HOST_CA_DIR.glob("*.crt") if p.is_file())


def ensure_base(log: Log) -> tuple[StoredImage, bool]:
    """The local ``PYTHON_IMAGE``; (image, built now)."""
    mirror, sources = image_apt_sources()
    cas = {p.name: p.read_text() for p in _host_cas()}
    key = digest_of("base", rootfs_key(mirror), deb822(sources), cas, BASE_SETUP, BASE_ENV)
    found = oci.inspect(BASE_IMAGE)
    if found and found.labels.get(INPUTS_LABEL) == key:
        return found, False
    tarball = rootfs_tarball(mirror, log)
    log(f"[trellis] building {BASE_IMAGE}")
    with tempfile.TemporaryDirectory(prefix="trellis-base-") as tmp:
        sources_file = Path(tmp) / "debian.sources"
        sources_file.write_text(deb822(sources))
        steps = [["add", "{c}", str(tarball), "/"],
                 ["copy", "{c}", str(sources_file), "/etc/apt/sources.list.d/debian.sources"],
                 *[["copy", "{c}", str(p), f"{HOST_CA_DIR}/{p.name}"] for p in _host_cas()],
                 ["run", "{c}", "--", "sh", "-c", BASE_SETUP],
                 ["config", *[a for e in BASE_ENV for a in ("--env", e)], "--cmd", '["python3"]',
                  "--label", f"{INPUTS_LABEL}={key}", "{c}"]]
        image = _assemble(BASE_IMAGE, steps, found, log)
    return image, True


def ensure_pause(log: Log) -> tuple[StoredImage, bool]:
    """containerd's ``sandbox_image``: a static binary (``pause.go``) alone in an image."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    go_version = subprocess.run([go, "version"], capture_output=True, text=True).stdout
    key = digest_of("pause", PAUSE_SOURCE.read_text(), go_version)
    found = oci.inspect(PAUSE_IMAGE)
    if found and found.labels.get(INPUTS_LABEL) == key:
        return found, False
    log(f"[trellis] building {PAUSE_IMAGE} from {PAUSE_SOURCE.name}")
    with tempfile.TemporaryDirectory(prefix="trellis-pause-") as tmp:
        shutil.copy(PAUSE_SOURCE, Path(tmp) / "main.go")
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false",
               "GOTOOLCHAIN": "local", "GO111MODULE": "off"}
        oci.run([go, "build", "-trimpath", "-ldflags=-s -w", "-o", "pause", "main.go"],
                log, env=env, cwd=Path(tmp))
        steps = [["copy", "--chmod", "0755", "{c}", str(Path(tmp) / "pause"), "/pause"],
                 ["config", "--entrypoint", '["/pause"]', "--cmd", "", "--user", "65535:65535",
                  "--label", f"{INPUTS_LABEL}={key}", "{c}"]]
        image = _assemble(PAUSE_IMAGE, steps, found, log)
    return image, True


def _assemble(ref: str, steps: list[list[str]], previous: StoredImage | None,
              log: Log) -> StoredImage:
    """``buildah from scratch``, the steps (``{c}`` is the working container), commit."""
    container = oci.buildah("from", "--quiet", "scratch").strip()
    try:
        for step in steps:
            oci.buildah(*[container if a == "{c}" else a for a in step], log=log)
        oci.buildah("commit", "--quiet", "--rm", container, ref, log=log)
    except BaseException:
        subprocess.run(["buildah", "rm", container], capture_output=True)
        raise
    image = oci.inspect(ref)
    if image is None:
        raise ImageError(f"{ref} is missing right after its commit")
    if previous and previous.image_id != image.image_id:
        oci.remove_image(previous.image_id)
    return image
