"""The images the dev node runs, built here from the project's Dockerfile, no registry.

``ensure_images(socket)`` builds what is missing with buildah and imports it into the
node's containerd (namespace ``k8s.io``) under the names the manifests and settings use.
A second call costs nothing: a build is skipped when buildah's store already holds the
image with the same inputs digest (Dockerfile, lock files, every copied source file, the
base image's id) in its labels, and an import is skipped when containerd already has
that image id.

Environments. The controller image is always built whole (no torch: a few hundred MB).
The trainer and model-server images carry CUDA-sized Python environments (about 6 GB
each); baking those into layers, exporting and importing them costs minutes and ~13 GB
of containerd storage per image. So by default (``TRELLIS_IMAGE_ENVIRONMENTS=mounted``,
for tests) the same Dockerfile target is built with the environment's directory
bind-mounted from the host cache: the Dockerfile's own ``uv sync`` steps fill it there,
with the image's paths in every shebang and ``pyvenv.cfg``, and the image keeps an empty
directory where pods mount it read-only (``ImageInfo.mounts``, ``pod_volumes``).
``baked`` builds the real images (``make test-images``).

Every build shares the host's uv cache (``UV_CACHE_DIR``), so nothing ``make install``
downloaded is fetched again.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from controller.devcluster import baseimage, dockerfile, oci
from controller.devcluster.baseimage import BASE_IMAGE, INPUTS_LABEL, PAUSE_IMAGE
from controller.devcluster.oci import ImageError, Log, StoredImage
from controller.paths import ROOT

__all__ = ["NAMES", "REFS", "ImageError", "ImageInfo", "ensure_images", "pod_volumes"]

VERSION = "0.1.0"
REFS = {
    "base": BASE_IMAGE,
    "pause": PAUSE_IMAGE,
    "controller": f"ghcr.io/trellis-mlops/controller:{VERSION}",
    "trainer": f"ghcr.io/trellis-mlops/trainer:{VERSION}",
    "model-server": f"ghcr.io/trellis-mlops/model-server:{VERSION}",
}
NAMES = ("pause", "controller", "trainer", "model-server")
# Where each target's environment lives in the image (what the Dockerfile COPYs --from a
# build stage); in ``mounted`` mode these are the host-mounted paths.
ENVIRONMENTS = {"controller": ("/app/.venv",), "trainer": ("/app/.venv",),
                "model-server": ("/app/.venv-serving",)}
ALWAYS_BAKED = ("controller",)
MODES = ("mounted", "baked")
MODE_LABEL = "dev.trellis.image.environments"
UV_CACHE_IN_BUILD = "/var/cache/trellis-uv"  # where the host's uv cache appears in RUN


@dataclass(frozen=True)
class ImageInfo:
    """One image as the node sees it; sizes in bytes, ``seconds`` per step done now."""

    name: str
    ref: str
    image_id: str
    size: int
    environments: str = ""  # "baked" | "mounted" | "" (no Python environment)
    mounts: dict[str, str] = field(default_factory=dict)  # image path -> host directory
    mounts_size: int = 0
    built: bool = False
    imported: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


def default_mode() -> str:
    mode = os.environ.get("TRELLIS_IMAGE_ENVIRONMENTS", "mounted")
    if mode not in MODES:
        raise ImageError(f"TRELLIS_IMAGE_ENVIRONMENTS={mode!r}: expected one of {MODES}")
    return mode


def envs_dir() -> Path:
    return baseimage.cache_dir() / "envs"


def uv_cache() -> Path:
    return Path(os.environ.get("UV_CACHE_DIR") or Path.home() / ".cache" / "uv")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def _lock() -> Iterator[None]:
    """One build at a time per machine: buildah's store and the tags are machine-wide
    (whatever cache directory a caller uses), and the environment dirs are shared."""
    run_lock = Path("/run/lock")
    where = run_lock if os.access(run_lock, os.W_OK) else baseimage.cache_dir()
    where.mkdir(parents=True, exist_ok=True)
    with open(where / "trellis-images.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------ public
def ensure_images(containerd_socket: Path | None = None, names: Sequence[str] = NAMES, *,
                  environments: str | None = None, force: bool = False,
                  log: Log = _stderr) -> dict[str, ImageInfo]:
    """Build what is missing or stale; import into ``containerd_socket`` when given.

    ``names`` from ``REFS`` ("base" is built, never imported); ``force`` rebuilds the
    Dockerfile targets even when cached (the rootfs, the base and uv's cache are kept)."""
    unknown = set(names) - set(REFS)
    if unknown:
        raise ImageError(f"unknown image(s) {sorted(unknown)}; known: {sorted(REFS)}")
    mode = environments or default_mode()
    oci.require_tools(("buildah",) + (("ctr",) if containerd_socket else ()))
    infos: dict[str, ImageInfo] = {}
    with _lock():
        if "pause" in names:
            started = time.monotonic()
            image, built = baseimage.ensure_pause(log)
            infos["pause"] = _info("pause", image, built, {"build": started})
        if set(names) - {"pause"}:
            started = time.monotonic()
            base, built = baseimage.ensure_base(log)
            infos["base"] = _info("base", base, built, {"build": started})
            for name in names:
                if name in ENVIRONMENTS:
                    target_mode = "baked" if name in ALWAYS_BAKED else mode
                    infos[name] = _ensure_target(name, base, target_mode, force, log)
        if containerd_socket is not None:
            present = oci.containerd_image_ids(containerd_socket)
            for name in names:
                if name != "base":
                    infos[name] = _import(infos[name], containerd_socket, present, log)
    result = {name: infos[name] for name in names}
    _record(result)
    return result


def pod_volumes(info: ImageInfo) -> tuple[list[dict], list[dict]]:
    """(volumes, volumeMounts) that give a ``mounted`` image its environments, read-only."""
    volumes, mounts = [], []
    for index, (inside, host) in enumerate(sorted(info.mounts.items())):
        name = f"trellis-env-{index}"
        volumes.append({"name": name, "hostPath": {"path": host, "type": "Directory"}})
        mounts.append({"name": name, "mountPath": inside, "readOnly": True})
    return volumes, mounts


# ---------------------------------------------------------------------- building
def _info(name: str, image: StoredImage, built: bool, started: dict[str, float], *,
          environments: str = "", mounts: dict[str, str] | None = None,
          mounts_size: int = 0) -> ImageInfo:
    seconds = {k: round(time.monotonic() - v, 2) for k, v in started.items()} if built else {}
    return ImageInfo(name, REFS[name], image.image_id, image.size, environments,
                     mounts or {}, mounts_size, built=built, seconds=seconds)


def _env_key(target: str, base: StoredImage) -> str:
    """A fresh directory per interpreter and lock state; other changes (code, Dockerfile)
    reuse it, and the build's own ``uv sync``/``uv pip sync`` make it exact again."""
    stages = dockerfile.parse((ROOT / "Dockerfile").read_text())
    locks = [f for f in dockerfile.context_sources(stages, target)  # --frozen: locks decide
             if f in ("uv.lock", "serving/requirements.lock")]
    return baseimage.digest_of(target, base.image_id, [(ROOT / f).read_text() for f in locks])


def _env_dirs(target: str, base: StoredImage, mode: str) -> dict[str, Path]:
    if mode != "mounted":
        return {}
    key = _env_key(target, base)[:12]
    return {inside: envs_dir() / f"{target}-{key}{inside.replace('/', '-')}"
            for inside in ENVIRONMENTS[target]}


def _ensure_target(target: str, base: StoredImage, mode: str, force: bool,
                   log: Log) -> ImageInfo:
    ref = REFS[target]
    env_dirs = _env_dirs(target, base, mode)
    key = dockerfile.target_digest(ROOT, target, {
        "base": base.image_id, "mode": mode, "envs": {k: str(v) for k, v in env_dirs.items()}})
    found = oci.inspect(ref)
    stamps = {inside: _read_stamp(host) for inside, host in env_dirs.items()}
    fresh = (found is not None and found.labels.get(INPUTS_LABEL) == key
             and all(s.get("image_id") == found.image_id for s in stamps.values()))
    mounts = {k: str(v) for k, v in env_dirs.items()}
    if fresh and not force:
        assert found is not None
        return _info(target, found, False, {}, environments=mode, mounts=mounts,
                     mounts_size=sum(s.get("bytes", 0) for s in stamps.values()))
    started = time.monotonic()
    log(f"[trellis] building {ref} (Dockerfile target {target}, environments {mode})")
    uv_cache().mkdir(parents=True, exist_ok=True)
    volumes = [f"{uv_cache()}:{UV_CACHE_IN_BUILD}"]
    for inside, host in env_dirs.items():
        if force:  # from nothing but uv's cache, as on a fresh machine
            shutil.rmtree(host, ignore_errors=True)
        host.mkdir(parents=True, exist_ok=True)
        volumes.append(f"{host}:{inside}")
    logs = baseimage.cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    oci.buildah(
        "bud", "--layers=false", "--pull=never", "--force-rm", "--target", target,
        "--file", str(ROOT / "Dockerfile"),
        "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}",
        "--build-arg", f"UV_CACHE_DIR={UV_CACHE_IN_BUILD}",
        *[arg for v in volumes for arg in ("--volume", v)],
        "--label", f"{INPUTS_LABEL}={key}", "--label", f"{MODE_LABEL}={mode}",
        "--tag", ref, str(ROOT), log=log, output=logs / f"{target}.log")
    image = oci.inspect(ref)
    if image is None:
        raise ImageError(f"{ref} is missing right after its build")
    if found and found.image_id != image.image_id:
        oci.remove_image(found.image_id)
    sizes = 0
    for host in env_dirs.values():
        size = _du(host)
        sizes += size
        _write_stamp(host, {"image_id": image.image_id, "bytes": size})
    _prune_envs(target, env_dirs)
    return _info(target, image, True, {"build": started}, environments=mode, mounts=mounts,
                 mounts_size=sizes)


def _stamp_path(env_dir: Path) -> Path:
    return env_dir.with_name(env_dir.name + ".json")


def _read_stamp(env_dir: Path) -> dict:
    path = _stamp_path(env_dir)
    if not (env_dir / "bin").is_dir() or not path.exists():
        return {}
    return json.loads(path.read_text())


def _write_stamp(env_dir: Path, data: dict) -> None:
    _stamp_path(env_dir).write_text(json.dumps(data))


def _prune_envs(target: str, keep: dict[str, Path]) -> None:
    """Environments of this target built from older lock files."""
    kept = {p.name for p in keep.values()}
    pattern = re.compile(rf"{re.escape(target)}-[0-9a-f]{{12}}-.*")
    for path in envs_dir().glob(f"{target}-*"):
        stem = path.name.removesuffix(".json")
        if pattern.fullmatch(stem) and stem not in kept:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out else 0


# ---------------------------------------------------------------------- importing
def _import(info: ImageInfo, socket: Path, present: dict[str, str], log: Log) -> ImageInfo:
    if present.get(info.ref) == info.image_id:
        return info
    started = time.monotonic()
    archives = baseimage.cache_dir() / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=archives, suffix=".tar") as tmp:
        oci.export_archive(info.ref, Path(tmp.name), log)
        exported = time.monotonic()
        oci.import_archive(socket, Path(tmp.name), log)
    seconds = {**info.seconds, "export": round(exported - started, 2),
               "import": round(time.monotonic() - exported, 2)}
    return ImageInfo(**{**asdict(info), "imported": True, "seconds": seconds})


def _record(infos: dict[str, ImageInfo]) -> None:
    """Sizes and timings of the last build/import of each image (``make bench`` reads)."""
    path = baseimage.cache_dir() / "images.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    for name, info in infos.items():
        entry = data.setdefault(name, {})
        entry.update({"ref": info.ref, "image_id": info.image_id, "size": info.size,
                      "environments": info.environments, "mounts_size": info.mounts_size})
        if info.built:
            entry["build_seconds"] = info.seconds.get("build")
        if info.imported:
            entry["import_seconds"] = info.seconds.get("import")
    path.write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- CLI
def table(infos: dict[str, ImageInfo]) -> str:
    rows = [f"{'image':<14} {'ref':<44} {'size':>9} {'env':>9}  done"]
    for info in infos.values():
        done = ", ".join(f"{k} {v:.1f}s" for k, v in info.seconds.items()) or "cached"
        env = f"{info.mounts_size / 1e9:.1f} GB" if info.mounts else ""
        rows.append(f"{info.name:<14} {info.ref:<44} {info.size / 1e6:>6.0f} MB {env:>9}  {done}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the dev node's images (buildah) and "
                                     "import them into containerd.")
    parser.add_argument("names", nargs="*", help=f"of {', '.join(REFS)}; default: "
                        f"{' '.join(NAMES)}")
    parser.add_argument("--containerd-socket", type=Path, help="import into this containerd")
    parser.add_argument("--environments", choices=MODES, help="default: "
                        "$TRELLIS_IMAGE_ENVIRONMENTS or mounted")
    parser.add_argument("--force", action="store_true", help="rebuild the Dockerfile targets")
    args = parser.parse_args(argv)
    try:
        infos = ensure_images(args.containerd_socket, args.names or NAMES,
                              environments=args.environments, force=args.force)
    except ImageError as exc:
        print(f"trellis: {exc}", file=sys.stderr)
        return 1
    print(table(infos))
    return 0


if __name__ == "__main__":
    sys.exit(main())
