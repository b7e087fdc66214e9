"""``preflight.head_commit``: HEAD's commit read from git's files, as ``git rev-parse
HEAD`` answers it, on a branch, detached, with packed refs, and outside a repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

from controller.training import flowinspect
from controller.training.preflight import head_commit

ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@x", "PATH": "/usr/bin:/bin"}


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True, env=ENV).stdout.strip()


def commit(root: Path, text: str) -> str:
    (root / "f.txt").write_text(text)
    git(root, "add", "f.txt")
    git(root, "commit", "-qm", text)
    return git(root, "rev-parse", "HEAD")


def test_head_commit_agrees_with_git_as_the_checkout_moves(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "-b", "main")
    first = commit(tmp_path, "one")
    assert head_commit(tmp_path) == first  # on a branch: the loose ref
    second = commit(tmp_path, "two")
    assert head_commit(tmp_path) == second  # the branch moved
    git(tmp_path, "checkout", "-q", "--detach", first)
    assert head_commit(tmp_path) == first  # detached: HEAD holds the commit
    git(tmp_path, "checkout", "-q", "main")
    git(tmp_path, "pack-refs", "--all")  # no loose ref left: git answers
    assert not (tmp_path / ".git" / "refs" / "heads" / "main").exists()
    assert head_commit(tmp_path) == second
    sub = tmp_path / "flows"
    sub.mkdir()
    assert head_commit(sub) == second  # a subdirectory of the checkout


def test_no_repository_no_commit(tmp_path: Path) -> None:
    assert head_commit(tmp_path) is None


def test_a_flow_file_is_parsed_once_per_content() -> None:
    source = "from metaflow import FlowSpec, step\n\nclass F(FlowSpec):\n    @step\n" \
             "    def start(self):\n        self.next(self.end)\n"
    flowinspect._flows.cache_clear()
    assert flowinspect.find_flow(source, "F").steps == ["start"]
    assert flowinspect.find_flow(source, "F").name == "F"
    assert flowinspect._flows.cache_info().hits == 1
    assert flowinspect.find_flow(source + "\n# edited\n", "F") is not None
    assert flowinspect._flows.cache_info().misses == 2  # changed content: parsed again
