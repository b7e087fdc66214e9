"""The images built here without a registry: the local Python base keeps the Dockerfile's
``PYTHON_IMAGE`` contract, the controller image carries no torch/matplotlib/CUDA, the
trainer and model-server run with their environments (mounted from the host cache by
default, baked into the layers under ``make test-images``), the pause image does a
sandbox's job, and a second ``ensure_images`` builds and imports nothing.

Runs need root, buildah, containerd and debootstrap (``scripts/install-node-deps.sh``);
the first run on a machine builds everything (minutes), later runs reuse the cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from controller.devcluster import baseimage, images, oci
from tests.images.conftest import buildah_run

pytestmark = pytest.mark.images


def test_base_image_keeps_the_python_image_contract(built: dict[str, images.ImageInfo]) -> None:
    """What the Dockerfile's stages use: python3.11/python3/pip in /usr/local/bin, a pip
    that installs (a venv at /usr/local, so PEP 668 does not refuse it), groupadd/useradd,
    apt-get with the host's Debian mirror."""
    mirror, _ = baseimage.image_apt_sources()
    proc = buildah_run(images.REFS["base"], (
        "set -e; id -u; /usr/local/bin/python3.11 -V; test -x /usr/local/bin/python3;"
        "test -x /usr/local/bin/pip; command -v groupadd useradd apt-get;"
        "python3 -c 'import sys, ssl, sqlite3; assert sys.prefix == \"/usr/local\"';"
        "pip install --dry-run --no-index --no-deps /usr/share/python-wheels/pip-*.whl;"
        "cat /etc/apt/sources.list.d/debian.sources; test ! -e /etc/apt/sources.list;"
        "echo SSL_CERT_FILE=$SSL_CERT_FILE"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.splitlines()[0] == "0"
    assert "Python 3.11." in out
    assert f"URIs: {mirror}\n" in out
    assert "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in out
    assert built["base"].size < 250e6, f"base image is {built['base'].size / 1e6:.0f} MB"


def test_controller_image_has_no_torch_matplotlib_or_cuda(
        built: dict[str, images.ImageInfo]) -> None:
    info = built["controller"]
    assert info.environments == "baked" and not info.mounts
    proc = buildah_run(info.ref, (
        "id -u; cd /tmp;"
        "for m in torch matplotlib; do python -c \"import $m\" 2>/dev/null && echo HAS $m; done;"
        "ls /app/.venv/lib/python3.11/site-packages | grep -ci -e nvidia -e cuda;"
        "python -c 'import controller.handlers, controller.cli, kopf, numpy, scipy' && echo OK;"
        "trellis --help >/dev/null && echo CLI"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.split()
    assert lines[0] == "10001", "the controller image runs as root"
    assert "HAS" not in proc.stdout, proc.stdout
    assert lines[1] == "0", "CUDA packages in the controller's environment"
    assert "OK" in lines and "CLI" in lines, proc.stdout + proc.stderr
    # The old single environment (torch + CUDA) made this image ~6.4 GB.
    assert info.size < 1.0e9, f"controller image is {info.size / 1e6:.0f} MB"


def test_trainer_image_imports_its_training_stack(built: dict[str, images.ImageInfo]) -> None:
    info = built["trainer"]
    proc = buildah_run(info.ref, (
        "cd /app/flows && python - <<'EOF'\n"
        "import time; t = time.monotonic()\n"
        "import torch, metaflow, boto3, pumpkin_model, pumpkin_data\n"
        "print('import', round(time.monotonic() - t, 1), torch.__version__)\n"
        "EOF\n"
        "python /app/flows/pumpkin_flow.py --help >/dev/null && echo FLOW; id -u"),
        mounts=info.mounts)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FLOW" in proc.stdout and proc.stdout.split()[-1] == "10001"
    if info.environments == "mounted":
        assert info.mounts == {"/app/.venv": info.mounts["/app/.venv"]}
        assert info.mounts_size > 1e9, "the mounted trainer environment has no torch"
        assert info.size < 1.0e9
    else:
        assert info.size > 1e9, "a baked trainer image without its environment"


def test_model_server_image_loads_the_seldon_wrapper_and_model(
        built: dict[str, images.ImageInfo]) -> None:
    info = built["model-server"]
    proc = buildah_run(info.ref, (
        "cd /tmp && python -c 'import seldon_core, torch, PumpkinModel;"
        " assert callable(PumpkinModel.PumpkinModel.predict_raw); print(\"MODEL\")' &&"
        " test -x /app/.venv-serving/bin/seldon-core-microservice && echo ENTRY;"
        " python -c 'import kopf' 2>/dev/null && echo KOPF; id -u"),
        mounts=info.mounts)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MODEL" in proc.stdout and "ENTRY" in proc.stdout
    assert "KOPF" not in proc.stdout, "the operator's packages leaked into the model server"
    assert proc.stdout.split()[-1] == "10001"


def _pause_binary(tmp_path: Path) -> Path:
    container = oci.buildah("from", "--pull=never", "--quiet", images.REFS["pause"]).strip()
    try:
        root = Path(oci.buildah("mount", container).strip())
        target = tmp_path / "pause"
        target.write_bytes((root / "pause").read_bytes())
        target.chmod(0o755)
        oci.buildah("umount", container)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
    return target


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of ``pid``'s children."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            stat = Path(f"/proc/{child}/stat").read_text()
            out.append((int(child), stat.rsplit(")", 1)[1].split()[0]))
    return out


def test_pause_reaps_orphans_and_stops_on_sigterm(built: dict[str, images.ImageInfo],
                                                  tmp_path: Path) -> None:
    """As PID 1 of its own PID namespace (as in a pod), pause adopts orphans and reaps
    them, and exits 0 on SIGTERM."""
    info = built["pause"]
    assert info.size < 5e6
    pause = _pause_binary(tmp_path)
    assert b"ld-linux" not in pause.read_bytes(), "pause is not static: the image has no libc"
    ns = subprocess.Popen(["unshare", "--pid", "--fork", str(pause)], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not _children(ns.pid):
            assert time.monotonic() < deadline, "pause did not start"
            time.sleep(0.05)
        init = _children(ns.pid)[0][0]
        # A shell in the namespace starts `sleep` and exits: sleep is re-parented to pause.
        subprocess.run(["nsenter", "-t", str(init), "-p", "--", "sh", "-c",
                        "sleep 0.3 & exit 0"], check=True, timeout=10)
        time.sleep(0.1)
        assert [state for _, state in _children(init)] == ["S"], "orphan not adopted"
        deadline = time.monotonic() + 5
        while _children(init):
            assert time.monotonic() < deadline, f"zombie left: {_children(init)}"
            time.sleep(0.05)
        os.kill(init, signal.SIGTERM)
        assert ns.wait(timeout=5) == 0
    finally:
        if ns.poll() is None:
            os.killpg(ns.pid, signal.SIGKILL)
            ns.wait()


def test_second_call_builds_and_imports_nothing(built: dict[str, images.ImageInfo],
                                                containerd: Path) -> None:
    first = images.ensure_images(containerd, ("pause", "controller"))
    assert all(info.imported for info in first.values()), "a fresh containerd had them"
    listed = oci.containerd_image_ids(containerd)
    for info in first.values():
        assert listed[info.ref] == info.image_id
        assert {"export", "import"} <= set(info.seconds)
    again = images.ensure_images(containerd, ("pause", "controller"))
    assert [(i.built, i.imported, i.seconds) for i in again.values()] == [(False, False, {})] * 2
    assert {n: i.image_id for n, i in again.items()} == {n: i.image_id for n, i in first.items()}


def test_builds_leave_no_containers_and_record_sizes(built: dict[str, images.ImageInfo]) -> None:
    with images._lock():  # no build of ours is under way while we look
        left = subprocess.run(["buildah", "containers", "--quiet"], capture_output=True,
                              text=True, check=True).stdout.split()
        assert left == [], f"build containers left behind: {left}"
    latest = images.ensure_images(None, tuple(built))
    recorded = json.loads((baseimage.cache_dir() / "images.json").read_text())
    for name, info in latest.items():
        assert recorded[name]["image_id"] == info.image_id
        assert recorded[name]["size"] == info.size > 0
