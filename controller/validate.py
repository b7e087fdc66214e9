"""``trellis validate``: spec files checked against the CRDs plus what a schema cannot say.

The schema part is ``controller.schema`` (the CRDs are the one source of truth); this
module adds the checks across documents (unique names per kind and namespace) and,
with a repository, the checks that need it (flows, parameters, references).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from controller import api, schema, specfiles
from controller.specfiles import Document, FileError

# A repository-aware check: (all valid documents, one document) -> problems with paths.
RepoCheck = Callable[[list[Document], Document], list[schema.Problem]]


@dataclass
class Report:
    errors: list[FileError]
    documents: list[Document]

    @property
    def ok(self) -> bool:
        return not self.errors

    def text(self) -> str:
        return "\n".join(str(e) for e in self.errors)

    def json(self) -> str:
        return json.dumps(
            {
                "ok": self.ok,
                "documents": len(self.documents),
                "errors": [
                    {"path": str(e.path), "line": e.line, "message": e.message}
                    for e in self.errors
                ],
            },
            indent=2,
        )


PARAMETER_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def semantic_problems(doc: Document) -> list[schema.Problem]:
    """What the schema cannot say (CEL cannot type untyped values): parameter shapes."""
    problems: list[schema.Problem] = []
    if doc.kind == api.EXPERIMENT.kind:
        params = (doc.obj.get("spec") or {}).get("parameters") or {}
        for name, value in params.items():
            path = ("spec", "parameters", name)
            if not PARAMETER_NAME.fullmatch(str(name)):  # "lr\n" is no identifier
                problems.append(schema.Problem(
                    path, "Invalid value: parameter names must be lower-case identifiers "
                    "(Metaflow Parameter names)"))
            if isinstance(value, dict | list) or value is None:
                problems.append(schema.Problem(
                    path, "Invalid value: parameter values must be scalars "
                    "(string, number or boolean)"))
    return problems


def duplicate_names(valid: list[Document]) -> list[FileError]:
    """A name may appear once per kind and namespace; later ones point at the first."""
    errors: list[FileError] = []
    seen: dict[tuple[str, str, str], Document] = {}
    for doc in valid:
        key = (doc.kind or "", doc.namespace or "default", doc.name or "")
        if key in seen:
            first = seen[key]
            errors.append(FileError(
                doc.path, doc.line_of(("metadata", "name")),
                f'duplicate {doc.kind} "{doc.name}" in namespace "{key[1]}" '
                f"(first defined at {first.path}:{first.line_of(('metadata', 'name'))})",
            ))
        else:
            seen[key] = doc
    return errors


_PROBLEMS: dict[tuple[str, str], list[schema.Problem]] = {}
_PROBLEMS_MAX = 20000


def object_problems(doc: Document) -> list[schema.Problem]:
    """Schema, CEL and semantic problems of one document, remembered by content.

    CEL evaluation costs milliseconds per document; the operator re-checks every commit,
    and a commit that changes one file of 500 re-evaluates one document, not 500.
    """
    obj = doc.obj
    try:
        key: tuple[str, str] | None = (str(obj.get("kind")) if isinstance(obj, dict) else "",
                                       json.dumps(obj, sort_keys=True, default=str))
    except (TypeError, ValueError):  # keys of mixed types (YAML allows 1: and a:) do not sort
        key = None
    found = _PROBLEMS.get(key) if key else None
    if found is None:
        found = schema.validate_object(obj)
        if not found:
            found = semantic_problems(doc)
        if len(_PROBLEMS) >= _PROBLEMS_MAX:
            _PROBLEMS.clear()
        if key:
            _PROBLEMS[key] = found
    return list(found)


def check_documents(docs: list[Document], extra: Iterable[RepoCheck] = ()) -> list[FileError]:
    """Schema, CEL and cross-document checks for parsed documents (the CLI's and the
    operator's: both say the same thing about the same commit)."""
    errors: list[FileError] = []
    valid: list[Document] = []
    for doc in docs:
        problems = object_problems(doc)
        for p in problems:
            errors.append(FileError(doc.path, doc.line_of(p.path), str(p)))
        if not problems:
            valid.append(doc)
    errors += duplicate_names(valid)
    for check in extra:
        for doc in valid:
            for p in check(valid, doc):
                errors.append(FileError(doc.path, doc.line_of(p.path), str(p)))
    return errors


def validate_paths(paths: Iterable[Path], extra: Iterable[RepoCheck] = ()) -> Report:
    files, errors = specfiles.expand(paths)
    docs: list[Document] = []
    for f in files:
        parsed, file_errors = specfiles.read(f)
        docs.extend(parsed)
        errors.extend(file_errors)
    errors.extend(check_documents(docs, extra))
    errors.sort(key=lambda e: (str(e.path), e.line or 0))
    return Report(errors, docs)
