"""Thin wrappers around the Debian-packaged image tools: buildah (build, store) and ctr
(containerd's client, import).

buildah always runs with chroot isolation: no runc, no network namespace (RUN steps
use the host's network and resolver, which is what reaches the package mirrors here) and
no daemon, so nothing is left running once a command returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.devcluster import binaries

Log = Callable[[str], None]
# containerd's namespace for images the kubelet (CRI) sees.
K8S_NAMESPACE = "k8s.io"
TOOLS = ("buildah", "ctr")


class ImageError(RuntimeError):
    """An image could not be built, exported or imported; the message says which step."""


@dataclass(frozen=True)
class StoredImage:
    """What buildah's store says about one image."""

    ref: str
    image_id: str  # the config digest, hex; containerd reports the same after an import
    size: int  # bytes, uncompressed layers
    labels: dict[str, str]


def require_tools(tools: Sequence[str] = TOOLS) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise ImageError(f"{', '.join(missing)} not found: run `sudo bash "
                         f"scripts/install-node-deps.sh` (Debian packages)")


def tool_env() -> dict[str, str]:
    # buildah keeps RUN cache mounts and blob copies under TMPDIR: a directory of the
    # machine's cache, so they persist across builds and never land in a test's temp dir.
    scratch = binaries.cache_root() / "images" / "buildah-tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "BUILDAH_ISOLATION": "chroot", "TMPDIR": str(scratch)}


def run(cmd: Sequence[str], log: Log | None = None, *, env: dict[str, str] | None = None,
        cwd: Path | None = None, output: Path | None = None) -> str:
    """Run a tool; on failure raise ``ImageError`` with the tail of its output.

    ``output`` keeps the whole output (a build's log) in that file as well."""
    if log:
        log(f"[trellis] $ {' '.join(cmd)}")
    # A session of its own: a RUN step's processes share it, so none outlives the build.
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env or tool_env(), cwd=cwd, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, _ = proc.communicate()
    except BaseException:
        # SIGINT lets buildah remove its working containers; SIGKILL would leave them.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if output is not None:
        output.write_text(out)
    if proc.returncode != 0:
        saved = f" (whole log: {output})" if output else ""
        raise ImageError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}){saved}:\n"
                         f"{out[-4000:]}")
    return out


def buildah(*args: str, log: Log | None = None, output: Path | None = None) -> str:
    return run(["buildah", *args], log, output=output)


# ------------------------------------------------------------------ buildah's store
def inspect(ref: str) -> StoredImage | None:
    """The image ``ref`` in buildah's store, or None."""
    proc = subprocess.run(["buildah", "inspect", "--type", "image", ref],
                          capture_output=True, text=True, env=tool_env())
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    manifest = json.loads(data["Manifest"])
    size = sum(layer["size"] for layer in manifest.get("layers", []))
    labels = (data.get("OCIv1", {}).get("config") or {}).get("Labels") or {}
    return StoredImage(ref, data["FromImageID"], size, labels)


def remove_image(image_id: str) -> None:
    """Drop an image that a rebuild left without a name; an image still in use stays."""
    subprocess.run(["buildah", "rmi", image_id], capture_output=True, env=tool_env())


def export_archive(ref: str, path: Path, log: Log | None = None) -> None:
    """``docker-archive`` tar of ``ref``, named ``ref``: what ``ctr images import`` reads."""
    path.unlink(missing_ok=True)
    buildah("push", "--quiet", ref, f"docker-archive:{path}:{ref}", log=log)


# ---------------------------------------------------------------------- containerd
def _ctr(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ctr", "-a", str(socket), "-n", K8S_NAMESPACE, *args],
                          capture_output=True, text=True, timeout=60)


def containerd_image_ids(socket: Path) -> dict[str, str]:
    """``{ref: config digest hex}`` of the images in containerd's k8s.io namespace."""
    proc = _ctr(socket, "images", "ls")
    if proc.returncode != 0:
        raise ImageError(f"ctr images ls on {socket} failed: {proc.stderr.strip()}")
    found: dict[str, str] = {}
    for line in proc.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 3 or not parts[2].startswith("sha256:"):
            continue
        config = _config_digest(socket, parts[2])
        if config:
            found[parts[0]] = config
    return found


def _config_digest(socket: Path, digest: str) -> str | None:
    proc = _ctr(socket, "content", "get", digest)
    if proc.returncode != 0:
        return None
    doc = json.loads(proc.stdout)
    if "manifests" in doc:  # an index: follow this platform's manifest
        for entry in doc["manifests"]:
            if entry.get("platform", {}).get("architecture") in (None, "amd64"):
                return _config_digest(socket, entry["digest"])
        return None
    config = doc.get("config", {}).get("digest", "")
    return config.removeprefix("sha256:") or None


def import_archive(socket: Path, path: Path, log: Log | None = None) -> None:
    """Import and unpack (for the CRI's snapshotter) a docker-archive into containerd."""
    run(["ctr", "-a", str(socket), "-n", K8S_NAMESPACE, "images", "import", str(path)], log)
