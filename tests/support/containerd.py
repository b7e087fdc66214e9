"""A private containerd for image imports (tests/images, bench/images_bench.py): its own
root, state and socket under one directory, no CRI plugin (no pods, so no sandbox image,
CNI or ``restrict_oom_score_adj`` to care about), stopped with a deadline."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CONFIG = """\
version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{dir}/c.sock"
[ttrpc]
  address = "{dir}/c.sock.ttrpc"
[metrics]
  address = ""
"""


@contextmanager
def private_containerd(work: Path, start_timeout: float = 30) -> Iterator[Path]:
    """Yield the socket; on the way out SIGTERM, then SIGKILL after 10 s (containerd
    ignores TERM while an import streams), then unmount anything left under ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.toml").write_text(CONFIG.format(dir=work))
    socket = work / "c.sock"  # short: a unix socket path has at most 107 bytes
    with open(work / "containerd.log", "wb") as log:
        proc = subprocess.Popen(["containerd", "--config", str(work / "config.toml")],
                                stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while subprocess.run(["ctr", "-a", str(socket), "version"],
                             capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("containerd did not start:\n"
                                   + (work / "containerd.log").read_text()[-3000:])
            time.sleep(0.2)
        yield socket
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            point = line.split()[1]
            if point.startswith(str(work)):
                subprocess.run(["umount", point], capture_output=True)
