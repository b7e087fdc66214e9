"""One way to read a spec repository: at a commit (CI, the operator) or in the work tree.

A pull request is validated at its commit, the operator syncs a fetched commit and a
developer validates the files in front of them; all three read through ``SourceTree``
so a file means the same thing everywhere and errors name the same repo-relative
paths. Reading a commit never touches a work tree, so it works in bare repositories.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol

import git

from controller import api, specfiles
from controller.specfiles import Document, FileError

_SYMLINK_MODE = 0o120000


class GitRefError(ValueError):
    """A ref that does not name a commit of the repository (the user's message)."""


class SourceTree(Protocol):
    """Files of a repository, by repo-relative POSIX path."""

    label: str

    def read_bytes(self, path: str) -> bytes | None:
        """The file's content, or None when it is not a regular file of the tree."""

    def files_under(self, path: str) -> list[str]:
        """Regular files below ``path`` (recursive, sorted), hidden names skipped."""

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        """The contents of those of ``paths`` that are regular files."""


def normalise(path: str) -> str:
    """``./specs/`` → ``specs``; ``.`` → ``""`` (the root)."""
    parts = [p for p in PurePosixPath(path).parts if p not in (".", "/")]
    return "/".join(parts)


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(rel).parts)


class WorkTree:
    """The checked-out files (what ``trellis validate`` without ``--ref`` reads)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.label = "the work tree"

    def read_bytes(self, path: str) -> bytes | None:
        target = (self.root / normalise(path)).resolve()
        if not target.is_relative_to(self.root) or not target.is_file():
            return None
        try:
            return target.read_bytes()
        except OSError:
            return None

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        found = {p: self.read_bytes(p) for p in paths}
        return {p: raw for p, raw in found.items() if raw is not None}

    def files_under(self, path: str) -> list[str]:
        base = self.root / normalise(path)
        if not base.is_dir():
            return []
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune .git, .venv
            for f in filenames:
                full = Path(dirpath) / f
                if not f.startswith(".") and full.is_file() and not full.is_symlink():
                    found.append(full.relative_to(self.root).as_posix())
        return sorted(found)


class CommitTree:
    """The tree of one commit, read from the object database (no checkout).

    The tree is indexed once (path → blob): GitPython re-parses a tree on every
    ``tree / path`` lookup, which is quadratic over a repository of many specs.
    """

    def __init__(self, commit: git.Commit) -> None:
        self.commit = commit
        self.sha = commit.hexsha
        self.label = f"commit {self.sha[:12]}"
        self._blobs: dict[str, git.Blob] | None = None

    def _index(self) -> dict[str, git.Blob]:
        if self._blobs is None:
            self._blobs = {item.path: item for item in self.commit.tree.traverse()
                           if isinstance(item, git.Blob) and item.mode != _SYMLINK_MODE}
        return self._blobs

    def read_bytes(self, path: str) -> bytes | None:
        blob = self._index().get(normalise(path))
        return None if blob is None else blob.data_stream.read()

    def blob_ids(self, paths: list[str]) -> dict[str, str]:
        """Content ids (git blob shas) of those of ``paths`` that are files."""
        index = self._index()
        return {p: index[normalise(p)].hexsha for p in paths if normalise(p) in index}

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        """Many files in one ``git cat-file --batch`` (one round trip, not one per file)."""
        blobs = {p: self._index()[normalise(p)] for p in paths if normalise(p) in self._index()}
        if not blobs:
            return {}
        request = "".join(f"{b.hexsha}\n" for b in blobs.values()).encode()
        out = subprocess.run(["git", "--git-dir", str(self.commit.repo.git_dir), "cat-file",
                              "--batch"], input=request, capture_output=True, check=True,
                             timeout=120).stdout
        contents: dict[str, bytes] = {}
        pos = 0
        for path in blobs:  # answers come in request order: "<sha> blob <size>\n<data>\n"
            header_end = out.index(b"\n", pos)
            size = int(out[pos:header_end].split()[2])
            contents[path] = out[header_end + 1:header_end + 1 + size]
            pos = header_end + 1 + size + 1
        return contents

    def files_under(self, path: str) -> list[str]:
        rel = normalise(path)
        prefix = f"{rel}/" if rel else ""
        return sorted(p for p in self._index()
                      if p.startswith(prefix) and not _hidden(p[len(prefix):]))


def spec_files(tree: SourceTree, spec_path: str) -> list[str]:
    return [f for f in tree.files_under(spec_path)
            if PurePosixPath(f).suffix in specfiles.SPEC_SUFFIXES]


def load_documents(tree: SourceTree, spec_path: str) -> tuple[list[Document], list[FileError]]:
    """Every YAML document under ``spec_path``; paths in them are repo-relative."""
    docs: list[Document] = []
    errors: list[FileError] = []
    files = spec_files(tree, spec_path)
    contents = tree.read_many(files)
    for rel in files:
        raw = contents.get(rel)
        if raw is None:
            continue
        parsed, file_errors = parse_file(rel, raw)
        docs.extend(parsed)
        errors.extend(file_errors)
    return docs, errors


def parse_file(rel: str, raw: bytes) -> tuple[list[Document], list[FileError]]:
    """One spec file's documents (paths repo-relative), or why it cannot be read."""
    return specfiles.parse_bytes(Path(rel), raw)


# ------------------------------------------------------------------------ git refs
def open_repo(path: Path) -> git.Repo:
    try:
        return git.Repo(path, search_parent_directories=False)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise GitRefError(f"{path} is not a git repository") from exc


def resolve(repo: git.Repo, ref: str) -> git.Commit:
    """The commit ``ref`` names (branch, tag, sha, ``origin/main``, ``HEAD~1``...)."""
    try:
        obj = repo.rev_parse(ref)
    except (git.BadName, ValueError, git.BadObject) as exc:
        raise GitRefError(f'"{ref}" does not name a commit of {repo.git_dir}') from exc
    if isinstance(obj, git.TagObject):
        obj = obj.object
    if not isinstance(obj, git.Commit):
        raise GitRefError(f'"{ref}" names a {obj.type}, not a commit')
    return obj


def default_branch_base(repo: git.Repo, head: git.Commit) -> git.Commit:
    """The merge-base of ``head`` and the default branch (what a PR is compared with)."""
    candidates = []
    with contextlib.suppress(TypeError, ValueError, git.GitCommandError):
        remote_head = repo.git.symbolic_ref("refs/remotes/origin/HEAD")
        candidates.append(remote_head.removeprefix("refs/remotes/"))
    candidates += ["origin/main", "origin/master", "main", "master"]
    for name in candidates:
        try:
            other = resolve(repo, name)
        except GitRefError:
            continue
        bases = repo.merge_base(head, other)
        if bases and isinstance(bases[0], git.Commit):
            return bases[0]
    raise GitRefError("no default branch (origin/HEAD, main or master) to compare with: "
                      "pass --base")


def iter_trellis_documents(tree: SourceTree, root: str = "") -> Iterator[Document]:
    """Trellis documents anywhere under ``root`` that parse (for reference look-ups)."""
    docs, _ = load_documents(tree, root)
    for doc in docs:
        if isinstance(doc.obj, dict) and doc.obj.get("apiVersion") == api.API_VERSION:
            yield doc


# ------------------------------------------------------------------------ flow code
def flow_code(tree: SourceTree, flow_file: str) -> dict[str, str]:
    """What a flow's training depends on, as {path: content digest}.

    The Python files next to the flow file (its directory, recursively; only the flow
    file itself when it sits at the repository root), so a change to a helper module
    the flow imports counts as a change of the flow's code. A missing file maps to {}.
    """
    flow_file = normalise(flow_file)
    folder = str(PurePosixPath(flow_file).parent)
    if folder in (".", ""):
        paths = [flow_file]
    else:
        paths = [p for p in tree.files_under(folder) if p.endswith(".py")]
    code = {}
    for path in paths:
        raw = tree.read_bytes(path)
        if raw is not None:
            code[path] = hashlib.sha256(raw).hexdigest()
    return code


def flow_revision(code: dict[str, str]) -> str:
    """One digest for a ``flow_code`` map (what the flow-revision annotation holds)."""
    digest = hashlib.sha256()
    for path in sorted(code):
        digest.update(f"{path}\0{code[path]}\n".encode())
    return digest.hexdigest()[:16]
