"""Fixtures for the image tests: the images (built once per session, cached across runs)
and a private containerd to import them into (``tests/support/containerd.py``)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.devcluster import images, oci
from tests.support.containerd import private_containerd

TOOLS = ("buildah", "ctr", "containerd", "debootstrap")


@pytest.fixture(scope="session")
def built() -> dict[str, images.ImageInfo]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `sudo bash scripts/install-node-deps.sh`")
    return images.ensure_images(None, ("base", *images.NAMES))


def buildah_run(ref: str, script: str, mounts: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``sh -c script`` in a throw-away container of ``ref`` (chroot isolation: no
    daemon, nothing left running), the image's user and environment, ``mounts`` read-only."""
    container = subprocess.run(["buildah", "from", "--pull=never", "--quiet", ref],
                               capture_output=True, text=True, check=True,
                               env=oci.tool_env()).stdout.strip()
    volumes = [a for inside, host in (mounts or {}).items() for a in ("-v", f"{host}:{inside}:ro")]
    try:
        return subprocess.run(["buildah", "run", "--isolation", "chroot", *volumes, container,
                               "--", "sh", "-c", script],
                              capture_output=True, text=True, timeout=timeout,
                              env=oci.tool_env())
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, env=oci.tool_env())


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with private_containerd(tmp_path_factory.mktemp("ctrd")) as socket:
        yield socket
