"""What decides whether a local image is rebuilt, and what the local base is made from:
pure functions, no builder needed (tests/images builds the images)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from controller.devcluster import baseimage, dockerfile, images, oci
from controller.paths import ROOT
from controller.settings import Settings

DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE=python:3.11.13-slim-bookworm
FROM ${BASE} AS base
RUN true
FROM base AS build
COPY pyproject.toml lock ./
# a comment inside the stage
COPY --chown=1:1 pkg ./pkg
RUN make \\
    # a comment inside a continuation
    things
FROM build AS build-extra
RUN more
FROM base AS app
COPY --from=build-extra /app/.venv /app/.venv
COPY ["data", "/app/data"]
FROM base AS other
COPY docs ./docs
"""


@pytest.fixture()
def context(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    (tmp_path / ".dockerignore").write_text("**/__pycache__\n*.log\npkg/secret*\n!pkg/secret.ok\n")
    for rel, text in {"pyproject.toml": "p", "lock": "l", "pkg/a.py": "a", "pkg/sub/b.py": "b",
                      "pkg/__pycache__/a.cpython-311.pyc": "x", "pkg/secret.key": "s",
                      "pkg/secret.ok": "ok", "data/d.txt": "d", "docs/x.md": "x",
                      "build.log": "log", "Makefile": "m"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_parse_finds_stages_bases_and_copies() -> None:
    stages = dockerfile.parse(DOCKERFILE)
    assert list(stages) == ["base", "build", "build-extra", "app", "other"]
    assert stages["base"].base == "${BASE}"
    assert stages["build"].copies == [(None, ["pyproject.toml", "lock"]), (None, ["pkg"])]
    assert stages["app"].copies == [("build-extra", ["/app/.venv"]), (None, ["data"])]


@pytest.mark.parametrize(("target", "chain", "sources"), [
    ("app", {"app", "base", "build-extra", "build"}, ["data", "lock", "pkg", "pyproject.toml"]),
    ("other", {"other", "base"}, ["docs"]),
    ("build", {"build", "base"}, ["lock", "pkg", "pyproject.toml"]),
])
def test_a_target_depends_on_what_its_chain_copies(target: str, chain: set[str],
                                                   sources: list[str]) -> None:
    stages = dockerfile.parse(DOCKERFILE)
    assert {s.name for s in dockerfile.chain(stages, target)} == chain
    assert dockerfile.context_sources(stages, target) == sources


def test_context_files_apply_dockerignore(context: Path) -> None:
    files = dockerfile.context_files(context, ["pkg", "lock", "data"])
    assert files == ["data/d.txt", "lock", "pkg/a.py", "pkg/secret.ok", "pkg/sub/b.py"]


def test_the_digest_moves_with_copied_files_only(context: Path) -> None:
    def digest(**extra: str) -> str:
        return dockerfile.target_digest(context, "app", dict(extra))

    first = digest()
    assert digest() == first
    (context / "Makefile").write_text("changed")  # copied by no stage
    (context / "docs" / "x.md").write_text("changed")  # copied by another target only
    (context / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_text("changed")
    assert digest() == first
    assert digest(base="another-base-id") != first
    (context / "pkg" / "sub" / "b.py").write_text("changed")
    second = digest()
    assert second != first
    (context / "pkg" / "sub" / "b.py").chmod(0o755)  # the mode is copied too
    assert digest() != second


def test_the_project_dockerfile_targets_copy_what_they_need() -> None:
    stages = dockerfile.parse((ROOT / "Dockerfile").read_text())
    assert "crds" in dockerfile.context_sources(stages, "controller")
    assert "serving/requirements.lock" in dockerfile.context_sources(stages, "model-server")
    assert "serving/requirements.lock" not in dockerfile.context_sources(stages, "trainer")
    for target in ("controller", "trainer"):
        assert {"uv.lock", "pyproject.toml"} <= set(dockerfile.context_sources(stages, target))
    # The model server shares no code with the operator: editing it rebuilds nothing there.
    assert dockerfile.context_sources(stages, "model-server") == [
        "serving/PumpkinModel.py", "serving/pumpkin_inputs.py", "serving/requirements.lock"]


def test_mounted_environments_are_the_paths_the_dockerfile_copies() -> None:
    """In mounted mode the host directory replaces exactly what the final stage copies
    from its build stage; a renamed path would leave the image without an environment."""
    stages = dockerfile.parse((ROOT / "Dockerfile").read_text())
    for target, paths in images.ENVIRONMENTS.items():
        copied = [p for src, ps in stages[target].copies if src for p in ps[:1]]
        assert copied == list(paths), target


def test_image_names_are_the_ones_manifests_and_settings_use() -> None:
    settings = Settings()
    assert images.REFS["trainer"] == settings.trainer_image
    assert images.REFS["model-server"] == settings.model_server_image
    operator = yaml.safe_load_all((ROOT / "manifests" / "operator.yaml").read_text())
    used = {c["image"] for doc in operator if doc and doc.get("kind") == "Deployment"
            for c in doc["spec"]["template"]["spec"]["containers"]}
    assert images.REFS["controller"] in used
    header = re.findall(r"-t (\S+) \.", (ROOT / "Dockerfile").read_text())
    assert set(header) == {images.REFS[n] for n in ("controller", "trainer", "model-server")}


def test_pod_volumes_mount_each_environment_read_only() -> None:
    info = images.ImageInfo("trainer", "r", "id", 1, "mounted",
                            {"/app/.venv": "/cache/envs/trainer-x"})
    volumes, mounts = images.pod_volumes(info)
    assert volumes == [{"name": "trellis-env-0",
                        "hostPath": {"path": "/cache/envs/trainer-x", "type": "Directory"}}]
    assert mounts == [{"name": "trellis-env-0", "mountPath": "/app/.venv", "readOnly": True}]
    assert images.pod_volumes(images.ImageInfo("controller", "r", "id", 1)) == ([], [])


# --------------------------------------------------------------------- apt sources
def test_host_apt_sources_from_deb822_and_one_line_files(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://ignored/ bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n"
        "deb-src http://mirror.example/debian bookworm main\n"
        "deb http://other.example/ubuntu jammy main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\n# a comment\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://off.example/\nSuites: bookworm\nComponents: main\n"
        "Enabled: no\n")
    (tmp_path / "sources.list.d" / "node.sources").write_text(
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n"
        "Components: main\n")
    found = baseimage.host_apt_sources(tmp_path)
    assert found == [
        baseimage.AptSource("http://mirror.example/debian", ("bookworm",), ("main",)),
        baseimage.AptSource("http://mirror.example/debian", ("bookworm-updates",), ("main",)),
        baseimage.AptSource("http://security.example/debian-security", ("bookworm-security",),
                            ("main",)),
    ]
    text = baseimage.deb822(found)
    assert text.count("Types: deb\n") == 3
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in text


def test_mirror_override_and_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRELLIS_DEBIAN_MIRROR", "http://local.example/debian")
    mirror, sources = baseimage.image_apt_sources()
    assert mirror == "http://local.example/debian"
    assert sources == [baseimage.AptSource(mirror, ("bookworm", "bookworm-updates"), ("main",))]
    monkeypatch.delenv("TRELLIS_DEBIAN_MIRROR")
    monkeypatch.setattr(baseimage, "host_apt_sources", lambda suite: [])
    assert baseimage.image_apt_sources()[0] == baseimage.DEFAULT_MIRROR


def test_environment_mode_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRELLIS_IMAGE_ENVIRONMENTS", "baked")
    assert images.default_mode() == "baked"
    monkeypatch.setenv("TRELLIS_IMAGE_ENVIRONMENTS", "layered")
    with pytest.raises(images.ImageError, match="mounted"):
        images.default_mode()


def test_a_tool_leaves_no_process_behind(tmp_path: Path) -> None:
    """A build's RUN steps share the tool's session; whatever is left of it when the tool
    returns is killed (a RUN step's daemon would otherwise outlive the build)."""
    pid_file = tmp_path / "pid"
    oci.run(["sh", "-c", f"sleep 60 >/dev/null 2>&1 & echo $! > {pid_file}"])
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists():
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":  # killed, waiting for its new parent to reap it
            break
        assert time.monotonic() < deadline, "a process outlived the tool that started it"
        time.sleep(0.05)
    with pytest.raises(oci.ImageError, match="exit 3"):
        oci.run(["sh", "-c", "echo boom; exit 3"])
