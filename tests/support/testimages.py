"""A busybox image for node tests, made from Debian's ``busybox-static`` without any
registry (umoci builds the layout, skopeo converts it, ``ctr`` imports it).

Test support only: the product's own images come from the Dockerfile
(``controller/devcluster/images.py``). busybox's ``wget`` crashes on this machine type,
so tests talk HTTP from the host, and busybox ``httpd``/``nc`` serve inside pods.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from controller.devcluster import binaries
from controller.devcluster.cluster import DevCluster

BUSYBOX_IMAGE = "docker.io/trellis-test/busybox:1"
BUSYBOX = Path("/bin/busybox")


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc.stdout


def busybox_archive() -> Path:
    """A docker-archive of busybox, cached by the busybox binary's hash."""
    digest = hashlib.sha256(BUSYBOX.read_bytes()).hexdigest()[:16]
    out = binaries.cache_root() / "images" / f"busybox-{digest}.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        layout, bundle = f"{tmp}/layout", f"{tmp}/bundle"
        _run("umoci", "init", "--layout", layout)
        _run("umoci", "new", "--image", f"{layout}:busybox")
        _run("umoci", "unpack", "--image", f"{layout}:busybox", bundle)
        rootfs = Path(bundle) / "rootfs"
        for sub in ("bin", "tmp", "etc", "www"):
            (rootfs / sub).mkdir(exist_ok=True)
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        for applet in _run(str(BUSYBOX), "--list").split():
            link = rootfs / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                               "nobody:x:65534:65534:nobody:/:/bin/sh\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\nnobody:x:65534:\n")
        _run("umoci", "repack", "--image", f"{layout}:busybox", bundle)
        _run("umoci", "config", "--image", f"{layout}:busybox", "--config.cmd", "/bin/sh",
             "--config.env", "PATH=/bin")
        partial = out.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        _run("skopeo", "copy", "--quiet", f"oci:{layout}:busybox",
             f"docker-archive:{partial}:{BUSYBOX_IMAGE}")
        partial.rename(out)
    return out


def ensure_test_images(dev: DevCluster) -> None:
    node = dev.node.state()
    assert node is not None, "the dev cluster has no node"
    ctr = ["ctr", "-a", node.containerd_socket, "-n", "k8s.io"]
    if BUSYBOX_IMAGE in _run(*ctr, "images", "ls", "-q").split():
        return
    _run(*ctr, "images", "import", str(busybox_archive()))
