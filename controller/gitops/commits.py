"""A fetched commit's specs, read and validated as one unit (blocking: run in a thread).

The operator applies a commit only when all of it is valid: the schema and CEL rules,
unique names, and the repository checks (flows, parameters, references, coherence),
exactly what ``trellis validate --repo --ref`` says in CI. Documents without a
namespace get the SpecRepository's before any check, so uniqueness is judged where
the objects will live.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import git

from controller import api, validate
from controller.gitops import repochecks, trees
from controller.specfiles import Document, FileError


def _open(mirror: Path, sha: str) -> tuple[git.Repo, trees.CommitTree]:
    repo = git.Repo(mirror)
    return repo, trees.CommitTree(repo.commit(sha))


# (path, blob sha) -> parsed file: a new commit re-reads only the files it changed.
_PARSED: dict[tuple[str, str], tuple[list[Document], list[FileError]]] = {}
_PARSED_MAX = 20000


def _parsed_files(tree: trees.CommitTree, files: list[str]
                  ) -> tuple[list[Document], list[FileError]]:
    ids = tree.blob_ids(files)
    missing = [f for f in files if (f, ids.get(f, "")) not in _PARSED]
    for rel, raw in tree.read_many(missing).items():
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[(rel, ids[rel])] = trees.parse_file(rel, raw)
    docs: list[Document] = []
    errors: list[FileError] = []
    for rel in files:
        file_docs, file_errors = _PARSED.get((rel, ids.get(rel, "")), ([], []))
        # Fresh objects: callers add namespaces (the line maps are shared, read-only).
        docs += [Document(d.path, d.index, copy.deepcopy(d.obj), d.start_line, d.lines)
                 for d in file_docs]
        errors += file_errors
    return docs, errors


def load_commit(mirror: Path, sha: str, spec_path: str,
                namespace: str) -> tuple[list[Document], list[FileError]]:
    """The documents under ``spec_path`` at ``sha``, namespaced, and unreadable files."""
    repo, tree = _open(mirror, sha)
    try:
        if spec_path not in (".", "") and not tree.files_under(spec_path):
            return [], [FileError(Path(spec_path), None,
                                  f"no spec files under {spec_path!r} at {tree.label}")]
        docs, errors = _parsed_files(tree, trees.spec_files(tree, spec_path))
    finally:
        repo.close()
    for doc in docs:
        meta = doc.obj.get("metadata") if isinstance(doc.obj, dict) else None
        if isinstance(meta, dict) and not meta.get("namespace"):
            meta["namespace"] = namespace
    return docs, errors


def referenced_namespaces(docs: list[Document]) -> set[str]:
    """Namespaces whose Experiments a ModelDeployment may need from the cluster."""
    local = {(d.namespace, d.name) for d in docs if d.kind == api.EXPERIMENT.kind}
    out = set()
    for d in docs:
        if d.kind != api.MODEL_DEPLOYMENT.kind or not isinstance(d.obj.get("spec"), dict):
            continue
        model = d.obj["spec"].get("model") or {}
        if (d.namespace, model.get("experiment")) not in local and d.namespace:
            out.add(d.namespace)
    return out


def validate_commit(mirror: Path, sha: str, docs: list[Document], file_errors: list[FileError],
                    namespace: str,
                    live_experiments: Mapping[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Every problem of the commit as ``path:line: message`` (empty: apply it)."""
    repo, tree = _open(mirror, sha)
    try:
        ctx = repochecks.RepoContext(
            tree, default_namespace=namespace, scan_repository=False,
            external=lambda ns, name: live_experiments.get((ns, name)))
        errors = list(file_errors) + validate.check_documents(docs, repochecks.checks_for(ctx))
    finally:
        repo.close()
    errors.sort(key=lambda e: (str(e.path), e.line or 0))
    return [str(e) for e in errors]


def flow_revisions(mirror: Path, sha: str, docs: list[Document]) -> dict[str, str]:
    """flow file -> ``trees.flow_revision`` for every Experiment's flow at ``sha``."""
    files = {d.obj["spec"]["flow"]["file"] for d in docs if d.kind == api.EXPERIMENT.kind}
    if not files:
        return {}
    repo, tree = _open(mirror, sha)
    try:
        return {f: trees.flow_revision(trees.flow_code(tree, f)) for f in sorted(files)}
    finally:
        repo.close()
