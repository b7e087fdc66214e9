"""The package as a user installs it: the wheel built from a copy of the sources, installed
with uv into a fresh venv per Python, and what that install weighs.

Versions come from ``uv.lock`` (as constraints: the wheel's own metadata decides which
packages come, the lock only which versions), so an install is reproducible and a warm uv
cache makes it a matter of seconds. Nothing is written into the repository: setuptools
builds in a copy of what the Dockerfile's build stage copies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.paths import ROOT

UV = ROOT / ".tools" / "bin" / "uv"
# What the wheel is built from (the Dockerfile's build stage copies the same).
SOURCES = ("pyproject.toml", "README.md", "controller", "crds")
PYTHONS = ("3.11", "3.12", "3.13")


def uv_env() -> dict[str, str]:
    """The caller's environment without what would point uv or Python at the repository's
    own venv or sources (the tests run inside .venv, with the repository importable)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "TRELLIS_HOME", "UV_PYTHON",
                        "UV_PROJECT_ENVIRONMENT", "CONDA_PREFIX")}
    env.setdefault("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv"))
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def uv(*args: str | Path, tmp: Path | None = None,
       timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``tmp``: TMPDIR for what uv leaves there (a build's lock files)."""
    if not UV.exists():
        raise FileNotFoundError(f"{UV} missing: run `make env`")
    env = uv_env() | ({"TMPDIR": str(tmp)} if tmp else {})
    proc = subprocess.run([str(UV), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"uv {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return proc


def find_python(version: str) -> Path | None:
    """An interpreter for ``version`` ("3.12"): on PATH (a pyenv shim counts only if it
    runs), else the newest such under pyenv's root."""
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    patches: dict[int, Path] = {}
    for d in pyenv.glob(f"{version}.*"):
        if m := re.fullmatch(rf"{re.escape(version)}\.(\d+)", d.name):
            patches[int(m.group(1))] = d / "bin" / f"python{version}"
    found = [shutil.which(f"python{version}"), *(patches[p] for p in sorted(patches)[::-1])]
    for candidate in filter(None, found):
        try:
            proc = subprocess.run(
                [str(candidate), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, timeout=30, env=uv_env())
        except OSError:
            continue
        if proc.returncode == 0 and proc.stdout.strip() == version:
            return Path(candidate)
    return None


def build_wheel(work: Path) -> Path:
    """sdist, then the wheel from the sdist (``uv build``'s default: what a user building
    from the sdist gets), from a copy of the sources under ``work``; the wheel's path."""
    src = work / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    (work / "tmp").mkdir()
    uv("build", "--python", sys.executable, "--out-dir", work / "dist", src,
       tmp=work / "tmp")
    (wheel,) = (work / "dist").glob("*.whl")
    return wheel


def lock_constraints(dest: Path) -> Path:
    """Every locked version (all extras, every Python the lock covers) as constraints."""
    uv("export", "--frozen", "--no-hashes", "--no-dev", "--no-emit-project", "--all-extras",
       "--project", ROOT, "--output-file", dest)
    return dest


@dataclass(frozen=True)
class Install:
    """One venv: what is installed (distribution name -> version) and what it weighs."""

    venv: Path
    packages: dict[str, str]
    size: int  # bytes under site-packages
    seconds: float

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name


def fresh_venv(python: Path, venv: Path) -> Path:
    uv("venv", "--quiet", "--python", python, venv)
    return venv


def install(venv: Path, requirement: str, constraints: Path, *,
            cache_dir: Path | None = None) -> Install:
    """``uv pip install requirement`` into ``venv`` (which exists); the venv afterwards.
    ``cache_dir``: a uv cache of its own (an empty one makes a cold install)."""
    start = time.monotonic()
    uv("pip", "install", "--quiet", "--python", venv / "bin" / "python",
       "--constraints", constraints, requirement,
       *(["--cache-dir", cache_dir] if cache_dir else []))
    seconds = time.monotonic() - start
    return Install(venv, installed(venv), site_packages_size(venv), seconds)


def installed(venv: Path) -> dict[str, str]:
    proc = uv("pip", "list", "--python", venv / "bin" / "python", "--format", "json")
    return {normalize(p["name"]): p["version"] for p in json.loads(proc.stdout)}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def site_packages_size(venv: Path) -> int:
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    return sum(p.lstat().st_size for p in site.rglob("*") if p.is_file() and not p.is_symlink())


def present(packages: dict[str, str], names: Sequence[str]) -> list[str]:
    """Which of ``names`` are installed; a name ending in ``*`` is a prefix
    (``nvidia-*``)."""
    out = []
    for name in names:
        if name.endswith("*"):
            out += sorted(p for p in packages if p.startswith(normalize(name[:-1])))
        elif normalize(name) in packages:
            out.append(normalize(name))
    return out
