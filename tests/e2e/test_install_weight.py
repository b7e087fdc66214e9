"""``pip install trellis-mlops`` as a pull request's CI runs it, on every supported Python.

The wheel is built once (sdist, then the wheel from it); for each of Python 3.11, 3.12
and 3.13 a fresh venv gets the base install alone, which must carry none of the
operator's or the trainer's stack (torch, CUDA, scipy, matplotlib, kopf, ...) and must
validate and plan real specs in a real git repository with the CRDs the wheel carries.
On the newest Python the ``operator`` extra goes on top and the operator's modules import
(3.11, the images' Python, runs the whole suite in .venv). Each install's package count
and size are printed (``-s`` shows them; ``bench/install_bench.py`` records them).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from controller.paths import ROOT
from tests.support import wheelinstall as wi
from tests.support.gitrepo import FLOW, GitRepo, deployment, experiment

pytestmark = pytest.mark.install

# Never in the base install: the operator's stack, the trainer's, the demo's.
NOT_IN_BASE = ("torch", "nvidia-*", "triton", "matplotlib", "scipy", "numpy", "kopf",
               "kubernetes", "metaflow", "boto3", "aiohttp", "cryptography")
# Never with the operator extra either: the trainer's and the demo's.
NOT_IN_OPERATOR = ("torch", "nvidia-*", "triton", "matplotlib")
# The base install weighs 19 packages, 11 MB (the operator extra: 52, 283 MB); this
# leaves room for a dependency's own growth, not for a new heavy one (numpy alone is more).
BASE_MAX_PACKAGES, BASE_MAX_BYTES = 25, 25e6


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel and the lock's versions as constraints."""
    work = tmp_path_factory.mktemp("wheel")
    return wi.build_wheel(work), wi.lock_constraints(work / "constraints.txt")


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    """A spec repository with a pull request's branch: main, then ``feature`` lowering lr."""
    repo = GitRepo(tmp_path_factory.mktemp("farm"))
    repo.write("flows/pumpkin_flow.py", FLOW)
    repo.write("specs/experiment.yaml", experiment())
    repo.write("specs/deployment.yaml", deployment())
    repo.commit("the farm's specs")
    repo.git("checkout", "--quiet", "-b", "feature")
    repo.write("specs/experiment.yaml", experiment(lr=0.001))
    repo.commit("lower the learning rate")
    repo.git("checkout", "--quiet", "main")
    return repo


def trellis(install: wi.Install, *args: str | Path,
            cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed entry point, away from the repository (its cwd, env and sys.path)."""
    return subprocess.run([str(install.bin("trellis")), *map(str, args)], cwd=cwd,
                          env=wi.uv_env(), capture_output=True, text=True, timeout=120)


def weight(install: wi.Install) -> str:
    return f"{len(install.packages)} packages, {install.size / 1e6:.1f} MB"


def _base_install(version: str, built: tuple[Path, Path], tmp_path: Path
                  ) -> tuple[Path, wi.Install]:
    """A fresh venv on that Python with the wheel alone (skipped where it is missing)."""
    python = wi.find_python(version)
    if python is None:
        pytest.skip(f"no python{version} on PATH or under pyenv")
    wheel, constraints = built
    venv = wi.fresh_venv(python, tmp_path / "venv")
    return venv, wi.install(venv, str(wheel), constraints)


@pytest.mark.parametrize("version", wi.PYTHONS)
def test_base_install_validates_and_plans_without_the_operator_or_trainer_stack(
        version: str, built: tuple[Path, Path], farm: GitRepo, tmp_path: Path) -> None:
    venv, base = _base_install(version, built, tmp_path)
    assert base.packages.get("trellis-mlops") == "0.1.0"
    assert wi.present(base.packages, NOT_IN_BASE) == []
    assert len(base.packages) <= BASE_MAX_PACKAGES and base.size <= BASE_MAX_BYTES, \
        f"base install grew: {weight(base)}: {sorted(base.packages)}"

    # The installed package, with the CRDs inside it (no checkout, no TRELLIS_HOME).
    proc = subprocess.run([str(base.python), "-c", "import sys; from controller import paths; "
                           "print('%d.%d' % sys.version_info[:2]); print(paths.CRDS_DIR)"],
                          cwd=tmp_path, env=wi.uv_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen_version, crds = proc.stdout.splitlines()
    assert seen_version == version
    assert Path(crds).is_relative_to(venv) and Path(crds, "experiments.yaml").is_file()

    # validate: the schema and its CEL rules, as the API server would judge.
    ok = trellis(base, "validate", ROOT / "examples" / "specs", cwd=tmp_path)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "ok: 2 document(s) valid\n", "")
    bad = tmp_path / "bad.yaml"
    bad.write_text(experiment(flow="flows/pumpkin_flow.txt").replace(
        "    gpu: 1", '    gpu: 1\n    cpu: "1000"'))
    proc = trellis(base, "validate", bad, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "flow.file must be a Python file (*.py)" in proc.stderr
    assert "cpu must be from 1m to 256 cores" in proc.stderr
    proc = trellis(base, "validate", "--repo", farm.work, "--ref", "feature",
                   farm.work / "specs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    # plan: both sides read from git, offline.
    proc = trellis(base, "plan", "--repo", farm.work, "--base", "main", "--head", "feature",
                   "--path", "specs", "--format", "text", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout.splitlines() == [
        "Experiment pumpkins/classifier: parameters.lr 0.01 → 0.001 ⇒ new training run (1 GPU)"]

    # What needs an extra says so, without a traceback.
    for args in (["operator"], ["plan", "--repo", farm.work, "--cluster", "--path", "specs"]):
        proc = trellis(base, *args, cwd=tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "pip install 'trellis-mlops[operator]'" in proc.stderr, proc.stderr

    print(f"\npython {version}: base {weight(base)} ({base.seconds:.1f} s)")


def test_operator_extra_on_the_newest_python(built: tuple[Path, Path], tmp_path: Path) -> None:
    """The operator's stack installs and its modules import on 3.13 (3.11 runs the whole
    suite in .venv); the trainer's and the demo's stay out."""
    version = wi.PYTHONS[-1]
    venv, base = _base_install(version, built, tmp_path)
    wheel, constraints = built
    full = wi.install(venv, f"{wheel}[operator]", constraints)
    assert wi.present(full.packages, NOT_IN_OPERATOR) == []
    assert {"kopf", "kubernetes", "metaflow", "scipy", "boto3"} <= set(full.packages)
    proc = subprocess.run([str(full.python), "-c",
                           "import controller.handlers, controller.operator, controller.drift, "
                           "controller.objectstore, controller.training.launcher, "
                           "scipy.stats, metaflow"],
                          cwd=tmp_path, env=wi.uv_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"\npython {version}: base {weight(base)}; with [operator] {weight(full)} "
          f"({full.seconds:.1f} s)")
