"""The dev node's images: build (cold and cached), import into containerd, size, and how
long each image's Python takes to import what its entry point needs.

1. Base image cold: ``debootstrap`` + assembly under a throw-away cache and name (the
   real cache is left alone).
2. Each Dockerfile target rebuilt with ``force`` (environments re-made from uv's cache,
   as on a fresh CI machine after ``make install``), then the cached call (a no-op).
3. Import of each image into a fresh private containerd, then the cached check.
4. Sizes: image layers, and (``mounted`` mode) the host environments pods mount.
5. Python import time inside each image (``buildah run``): what its entry point loads.

``--baked`` measures the real CUDA-sized trainer/model-server images instead (minutes
each, ~13 GB of containerd storage per image); ``make bench`` runs the default mode.
Everything cold happens under a throw-away cache (``XDG_CACHE_HOME``), so the machine's
environments, which running pods may mount, are never removed; at the end the images
are synced back to the real cache.
Prints JSON rows ``{"name","value","unit","baseline","baseline_value","ratio","notes"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rows import row  # noqa: E402
from controller.devcluster import images, oci  # noqa: E402
from tests.images.conftest import buildah_run  # noqa: E402
from tests.support.containerd import private_containerd  # noqa: E402

TARGETS = ("controller", "trainer", "model-server")
# What each image's entry point imports first (the model server's wrapper, the flow's
# training stack, the operator's handlers).
IMPORTS = {
    "controller": ("/tmp", "controller.handlers, controller.cli"),
    "trainer": ("/app/flows", "torch, metaflow, pumpkin_model"),
    "model-server": ("/tmp", "seldon_core.microservice, PumpkinModel"),
}
TIMED_IMPORT = ("cd {cwd} && python -c 'import time; t = time.perf_counter(); import {modules};"
                " print(\"SECONDS\", time.perf_counter() - t)'")



def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def base_cold(work: Path) -> float:
    """debootstrap + base assembly in a child with its own cache dir and image name."""
    code = ("import time; from controller.devcluster import baseimage as b\n"
            "b.BASE_IMAGE = 'localhost/trellis/python:bench'\n"
            "t = time.monotonic(); b.ensure_base(print); print('SECONDS', time.monotonic() - t)\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    finally:
        subprocess.run(["buildah", "rmi", "localhost/trellis/python:bench"], capture_output=True)
    return float(out.rsplit("SECONDS", 1)[1])


def python_import_seconds(info: images.ImageInfo) -> float:
    """Measured inside the container's Python; the best of two (the second sees a warm
    page cache, as a restarted pod does)."""
    cwd, modules = IMPORTS[info.name]
    best = float("inf")
    for _ in range(2):
        proc = buildah_run(info.ref, TIMED_IMPORT.format(cwd=cwd, modules=modules),
                           mounts=info.mounts)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        best = min(best, float(proc.stdout.rsplit("SECONDS", 1)[1]))
    return best


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baked", action="store_true", help="real CUDA-sized images")
    parser.add_argument("--skip-base", action="store_true", help="no cold debootstrap row")
    parser.add_argument("names", nargs="*", default=["pause", *TARGETS])
    args = parser.parse_args()
    mode = "baked" if args.baked else "mounted"
    real_env = dict(os.environ)
    try:
        with tempfile.TemporaryDirectory(prefix="images-bench-") as tmp:
            os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "xdg")
            rows = measure(Path(tmp), mode, not args.skip_base, args.names)
    finally:  # the refs point at the bench's environments now: back to the real cache
        os.environ.clear()
        os.environ.update(real_env)
        subprocess.run([sys.executable, "-m", "controller.devcluster.images"], cwd=ROOT,
                       stdout=sys.stderr)
    print(json.dumps(rows, indent=2))
    return 0


def measure(work: Path, mode: str, base: bool, names: list[str]) -> list[dict[str, Any]]:
    """One image at a time, each into its own containerd removed afterwards: a baked
    image needs ~6 GB in buildah's store, ~6 GB of archive and ~12 GB in containerd."""
    rows: list[dict[str, Any]] = []
    if base:
        rows.append(row("images: base image cold (debootstrap minbase + python venv)",
                        base_cold(work), "s", notes="Debian mirror over the network"))
    for name in names:
        cold = images.ensure_images(None, (name,), environments=mode, force=True, log=_log)
        # Twice: the first call catches up with any source edited meanwhile; the second
        # is the steady state that a test session's start sees.
        images.ensure_images(None, (name,), environments=mode, log=_log)
        started = time.monotonic()
        info = images.ensure_images(None, (name,), environments=mode, log=_log)[name]
        warm = time.monotonic() - started
        with private_containerd(work / f"ctrd-{name}") as socket:
            imported = images.ensure_images(socket, (name,), environments=mode)[name]
            started = time.monotonic()
            images.ensure_images(socket, (name,), environments=mode)
            check = time.monotonic() - started
        shutil.rmtree(work / f"ctrd-{name}")
        env = info.environments or "no"
        if name != "pause":
            build = cold[name].seconds["build"]
            rows.append(row(f"images: {name} build, cold ({env} environments)", build, "s",
                            notes="uv cache warm (after make install), base image cached"))
            rows.append(row(f"images: {name} build, cached", warm, "s", "cold build", build,
                            notes="inputs digest checked, nothing built"))
        moved = imported.seconds.get("export", 0) + imported.seconds.get("import", 0)
        rows.append(row(f"images: {name} export + import into containerd", moved, "s",
                        notes=f"export {imported.seconds.get('export')} s, import+unpack "
                              f"{imported.seconds.get('import')} s"))
        rows.append(row(f"images: {name} import, cached", check, "s", "first import", moved,
                        notes="containerd already has the image id"))
        rows.append(row(f"images: {name} image size", info.size / 1e6, "MB",
                        notes=f"{env} environments"))
        if info.mounts:
            rows.append(row(f"images: {name} mounted environment size",
                            info.mounts_size / 1e6, "MB",
                            notes="host directory mounted read-only at "
                                  + ", ".join(info.mounts)))
        if name != "pause":
            rows.append(row(f"images: {name} python import of its entry point",
                            python_import_seconds(info), "s",
                            notes=f"import {IMPORTS[name][1]}"))
        if info.environments == "baked" and name != "controller":
            oci.remove_image(info.image_id)  # 6 GB; the final sync rebuilds it mounted
    return rows


if __name__ == "__main__":
    sys.exit(main())
