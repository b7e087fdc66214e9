"""The Dockerfile, checked without a container engine.

Parsed here: every COPY source exists and survives .dockerignore, base images are pinned,
final stages run as a non-root user with no build tools, the environments come from the
lock files ``make test`` installs, and each image's entry point imports in the
environment that image would have (the repository's .venv / .venv-serving standing in
for the image's, with only the files the Dockerfile copies laid out as in the image).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.devcluster.dockerfile import ignore_rules, ignored
from controller.paths import ROOT

TARGETS = ("controller", "trainer", "model-server")
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|cc|make|cmake|build-essential|[\w.+-]+-dev)\b")
PINNED = re.compile(r"(@sha256:[0-9a-f]{64}$)|(:\d+\.\d+\.\d+[\w.-]*$)")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: dict[str, Stage]

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first."""
        out = [self.stages[name]]
        while out[-1].base in self.stages:
            out.append(self.stages[out[-1].base])
        return out

    def env(self, name: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for stage in reversed(self.chain(name)):
            for args in stage.all("ENV"):
                found.update(dict(tok.split("=", 1) for tok in shlex.split(args)))
        return found

    def workdir_at(self, stage: Stage, index: int) -> str:
        workdir = "/"
        for kw, args in stage.instructions[:index]:
            if kw == "WORKDIR":
                workdir = str(Path(workdir, args))
        return workdir


def parse(path: Path = ROOT / "Dockerfile") -> Dockerfile:
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        lines.append(pending)
        pending = ""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in lines:
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            current = Stage(words[2] if len(words) > 2 else base, base)
            stages[current.name] = current
        elif current is None:
            if keyword == "ARG" and "=" in rest:
                key, value = rest.split("=", 1)
                args[key] = value
        else:
            current.instructions.append((keyword, rest))
    return Dockerfile(args, stages)


def words(args: str) -> list[str]:
    """Arguments of a COPY/ENTRYPOINT/CMD in exec (JSON) or shell form, flags dropped."""
    parts = json.loads(args) if args.startswith("[") else shlex.split(args)
    return [p for p in parts if not p.startswith("--")]


def repo_files(rel: str) -> list[str]:
    """Files git would put in a commit under ``rel`` (tracked or new, not gitignored)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                          "--", rel], cwd=ROOT, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


# ------------------------------------------------------------------------ tests
DOCKERFILE = parse()


def copies(stage: Stage) -> list[tuple[int, list[str], str]]:
    """(instruction index, sources, destination) of each COPY from the build context."""
    out = []
    for i, (kw, args) in enumerate(stage.instructions):
        if kw == "COPY" and "--from=" not in args:
            parts = words(args)
            out.append((i, parts[:-1], parts[-1]))
    return out


def test_the_three_targets_exist() -> None:
    assert set(TARGETS) <= set(DOCKERFILE.stages)


def test_base_images_are_pinned() -> None:
    external = {s.base for s in DOCKERFILE.stages.values() if s.base not in DOCKERFILE.stages}
    assert external, "no base image found"
    for image in external:
        assert PINNED.search(image), f"{image} is not pinned to an exact tag or a digest"
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image)


def test_copy_sources_exist_and_are_not_dockerignored() -> None:
    rules = ignore_rules(ROOT)
    for stage in DOCKERFILE.stages.values():
        for _, sources, _dest in copies(stage):
            for src in sources:
                assert (ROOT / src).exists(), f"{stage.name}: COPY {src}: no such path"
                assert not ignored(src, rules), f"{stage.name}: COPY {src} is dockerignored"
                files = repo_files(src)
                assert files, f"{stage.name}: COPY {src} copies nothing"
                lost = [f for f in files if ignored(f, rules) and "__pycache__" not in f]
                assert not lost, f"{stage.name}: COPY {src} loses {lost[:5]} to .dockerignore"


def test_dockerignore_keeps_the_context_small() -> None:
    rules = ignore_rules(ROOT)
    for heavy in (".git/HEAD", ".venv/bin/python", ".venv-serving/bin/python", "tests/conftest.py",
                  "controller/__pycache__/api.cpython-311.pyc"):
        assert ignored(heavy, rules), heavy


@pytest.mark.parametrize("target", TARGETS)
def test_final_stages_run_as_non_root_without_build_tools(target: str) -> None:
    stage = DOCKERFILE.stages[target]
    users = stage.all("USER")
    assert users, f"{target} sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{target} runs as {user}"
    chain = [s.name for s in DOCKERFILE.chain(target)]
    assert not {"uv", "build", "build-train", "build-serving"} & set(chain), \
        f"{target} is built on {chain}"
    for s in DOCKERFILE.chain(target):
        for run in s.all("RUN"):
            installs = " ".join(re.findall(r"(?:apt-get|apt) install([^&;]*)", run))
            assert not BUILD_TOOLS.search(installs), f"{s.name} installs build tools: {run}"


def test_environments_come_from_the_lock_files_make_test_uses() -> None:
    runs = " ".join(DOCKERFILE.stages["build"].all("RUN")
                    + DOCKERFILE.stages["build-serving"].all("RUN"))
    assert "uv sync --frozen --no-dev" in runs
    assert "uv pip sync serving/requirements.lock" in runs
    make_uv = re.search(r"^UV_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert make_uv and DOCKERFILE.args["UV_VERSION"] == make_uv.group(1)
    copied = {src for s in ("build", "build-serving")
              for _, srcs, _ in copies(DOCKERFILE.stages[s]) for src in srcs}
    assert {"uv.lock", "pyproject.toml", "serving/requirements.lock"} <= copied


def _copied_env(target: str) -> str:
    """The stage whose /app/.venv* the target copies."""
    froms = [re.search(r"--from=(\S+)", args) for args in DOCKERFILE.stages[target].all("COPY")]
    found = [m.group(1) for m in froms if m]
    assert len(found) == 1, f"{target} copies from {found}"
    return found[0]


def test_only_the_trainer_gets_torch() -> None:
    """The controller image carries no torch, matplotlib or CUDA: its venv is synced with
    the `operator` extra alone; the trainer's adds `train` (torch) and nothing else."""
    assert _copied_env("controller") == "build"
    assert _copied_env("trainer") == "build-train"
    assert _copied_env("model-server") == "build-serving"
    assert DOCKERFILE.stages["build-train"].base == "build"
    syncs = DOCKERFILE.stages["build"].all("RUN")
    assert syncs and all(re.findall(r"--extra[ =](\S+)", run) == ["operator"] for run in syncs)
    assert "--all-extras" not in " ".join(syncs)
    train = " ".join(DOCKERFILE.stages["build-train"].all("RUN"))
    assert re.findall(r"--extra[ =](\S+)", train) == ["operator", "train"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert not any(re.match(r"(torch|matplotlib)\b", d) for d in project["dependencies"])
    assert not any(re.match(r"(torch|matplotlib)\b", d) for d in extras["operator"])
    assert any(d.startswith("torch") for d in extras["train"])


def test_serving_environment_is_synced_into_its_own_venv() -> None:
    """`uv pip sync` targets UV_PYTHON when set, and the build stage sets it to the base
    interpreter: the serving sync must name /app/.venv-serving or it fills /usr/local."""
    run = " ".join(DOCKERFILE.stages["build-serving"].all("RUN"))
    assert "UV_PYTHON" in DOCKERFILE.env("build-serving")
    assert re.search(r"UV_PYTHON=/app/\.venv-serving/bin/python uv pip sync\b"
                     r"|uv pip sync --python[ =]/app/\.venv-serving", run), run


# ----------------------------------------------------------- entry points import
def lay_out(target: str, root: Path) -> Path:
    """The files the Dockerfile copies into ``target``, placed under ``root`` as in the
    image (``/app/crds`` → ``root/app/crds``), .dockerignore applied."""
    rules = ignore_rules(ROOT)
    for stage in reversed(DOCKERFILE.chain(target)):
        for index, sources, dest in copies(stage):
            base = Path(DOCKERFILE.workdir_at(stage, index), dest)
            for src in sources:
                for rel in repo_files(src):
                    if ignored(rel, rules):
                        continue
                    inside = Path(rel).relative_to(src) if (ROOT / src).is_dir() else None
                    target_path = root / str(base / inside if inside else base).lstrip("/")
                    target_path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / rel, target_path)
    return root


def image_path(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def check_python(python: Path, code: str, env: dict[str, str], cwd: Path) -> None:
    assert python.exists(), f"{python} missing: run `make install`"
    proc = subprocess.run([str(python), "-c", code],
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), **env},
                          cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_controller_entrypoint_imports_with_trellis_home(tmp_path: Path) -> None:
    root = lay_out("controller", tmp_path)
    env = DOCKERFILE.env("controller")
    entry = json.loads(DOCKERFILE.stages["controller"].all("ENTRYPOINT")[-1])
    assert entry == ["/app/.venv/bin/trellis"]
    assert 'trellis = "controller.cli:main"' in (ROOT / "pyproject.toml").read_text()
    home = image_path(root, env["TRELLIS_HOME"])
    assert sorted(p.name for p in (home / "crds").glob("*.yaml")) == sorted(
        p.name for p in (ROOT / "crds").glob("*.yaml"))
    check_python(ROOT / ".venv" / "bin" / "python", (
        "import controller.handlers, controller.cli\n"
        "from controller import paths, schema\n"
        f"assert paths.CRDS_DIR == __import__('pathlib').Path({str(home / 'crds')!r})\n"
        "assert {'Experiment', 'ModelDeployment', 'SpecRepository'} <= set(schema.load_crds())\n"
    ), {"TRELLIS_HOME": str(home)}, cwd=home)


def test_model_server_entrypoint_imports_in_the_serving_env(tmp_path: Path) -> None:
    root = lay_out("model-server", tmp_path)
    env = DOCKERFILE.env("model-server")
    entry = json.loads(DOCKERFILE.stages["model-server"].all("ENTRYPOINT")[-1])
    assert entry == ["/app/.venv-serving/bin/seldon-core-microservice", "PumpkinModel",
                     "--service-type", "MODEL"]
    assert env["MODEL_URI"] == "/mnt/models"
    assert (ROOT / ".venv-serving" / "bin" / "seldon-core-microservice").exists()
    served = image_path(root, env["PYTHONPATH"])
    check_python(ROOT / ".venv-serving" / "bin" / "python",
                 "import PumpkinModel\nassert callable(PumpkinModel.PumpkinModel.predict_raw)\n",
                 {"PYTHONPATH": str(served)}, cwd=tmp_path)


def test_trainer_runs_what_the_training_job_asks_for(tmp_path: Path) -> None:
    from controller.settings import Settings
    from controller.training.decide import RunKey
    from controller.training.kubernetes import render_job

    root = lay_out("trainer", tmp_path)
    exp = {"apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "Experiment",
           "metadata": {"name": "classifier", "namespace": "pumpkins", "uid": "u"},
           "spec": {"flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"}}}
    job = render_job(exp, RunKey(1), 1, Settings(), parameters={}, tags={}, commit=None,
                     source_url=None)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "controller.training.podrun"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    request = json.loads(env["TRELLIS_RUN_REQUEST"])
    flow = image_path(root, request["flow_file"])
    assert flow.is_file(), f"{request['flow_file']} is not in the trainer image"
    # The run's scratch is the pod's emptyDir, never the image's read-only root.
    assert container["workingDir"] == env["HOME"] == "/work"
    assert {"name": "work", "mountPath": "/work"} in container["volumeMounts"]
    assert "/app/.venv/bin" in DOCKERFILE.env("trainer")["PATH"].split(":")[0]
    # The Job's initContainer clones the spec's commit with this image's git (and ssh).
    installs = DOCKERFILE.stages["trainer"].all("RUN")
    assert any(re.search(r"install[^&;]*\bgit\b", r) for r in installs)
    assert any(re.search(r"install[^&;]*\bopenssh-client\b", r) for r in installs)
    check_python(ROOT / ".venv" / "bin" / "python", (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(flow.parent)!r})\n"
        f"spec = importlib.util.spec_from_file_location('pumpkin_flow', {str(flow)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "from metaflow import FlowSpec\n"
        "assert issubclass(mod.PumpkinFlow, FlowSpec)\n"
        "import controller.training.podrun\n"
        "import pumpkin_data, pumpkin_model, torch, boto3\n"
    ), {}, cwd=tmp_path)


def test_parser_sees_every_stage() -> None:
    """Guards the parser itself: a FROM it missed would hide a stage from every check."""
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == len(DOCKERFILE.stages)
