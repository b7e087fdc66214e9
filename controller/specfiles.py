"""Reading spec files: YAML documents with the line of every field, and clear errors.

Users fix what ``path:line: message`` points at, so every document keeps a map from
field path to source line; unreadable input (binary, empty, broken YAML) becomes one
error line, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SPEC_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass
class Document:
    """One YAML document of a file, with the source line of each field path."""

    path: Path
    index: int
    obj: Any
    start_line: int
    lines: dict[tuple, int] = field(default_factory=dict)

    def line_of(self, path: tuple) -> int:
        """The line of the deepest known prefix of ``path`` (1-based)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return self.start_line

    @property
    def kind(self) -> str | None:
        return self.obj.get("kind") if isinstance(self.obj, dict) else None

    @property
    def name(self) -> str | None:
        meta = self.obj.get("metadata") if isinstance(self.obj, dict) else None
        return meta.get("name") if isinstance(meta, dict) else None

    @property
    def namespace(self) -> str | None:
        meta = self.obj.get("metadata") if isinstance(self.obj, dict) else None
        return meta.get("namespace") if isinstance(meta, dict) else None


@dataclass(frozen=True)
class FileError:
    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.message}"


def _line_map(node: yaml.Node, prefix: tuple = ()) -> Iterator[tuple[tuple, int]]:
    yield prefix, node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                yield (*prefix, key.value), key.start_mark.line + 1
                for sub, line in _line_map(value, (*prefix, key.value)):
                    if sub != (*prefix, key.value):
                        yield sub, line
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _line_map(item, (*prefix, i))


def parse(path: Path, text: str) -> tuple[list[Document], list[FileError]]:
    """Documents of one file's text; errors instead of exceptions."""
    if not text.strip():
        return [], [FileError(path, 1, "empty file: no YAML documents")]
    docs: list[Document] = []
    try:
        loader = yaml.SafeLoader(text)
        try:
            index = 0
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                obj = loader.construct_document(node)
                docs.append(Document(path, index, obj, node.start_mark.line + 1,
                                     dict(_line_map(node))))
                index += 1
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = exc.problem or exc.context or "invalid YAML"
        return [], [FileError(path, line, f"YAML syntax error: {what}")]
    except yaml.YAMLError as exc:
        return [], [FileError(path, None, f"YAML error: {exc}")]
    docs = [d for d in docs if d.obj is not None]
    if not docs:
        return [], [FileError(path, 1, "empty file: no YAML documents")]
    return docs, []


def read(path: Path) -> tuple[list[Document], list[FileError]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [], [FileError(path, None, f"cannot read: {exc.strerror or exc}")]
    return parse_bytes(path, raw)


def parse_bytes(path: Path, raw: bytes) -> tuple[list[Document], list[FileError]]:
    """A spec file's documents from its bytes (a disk file or a git blob alike)."""
    if len(raw) > MAX_FILE_BYTES:
        return [], [FileError(path, None, f"file too large ({len(raw)} bytes) for a spec file")]
    if b"\x00" in raw[:8192]:
        return [], [FileError(path, None, "not a text file (binary content): not a YAML spec")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [FileError(path, None, f"not UTF-8 text (byte {exc.start}): not a YAML spec")]
    return parse(path, text)


def expand(paths: Iterable[Path]) -> tuple[list[Path], list[FileError]]:
    """Files to check: given files as they are, directories searched for *.yaml / *.yml."""
    files: list[Path] = []
    errors: list[FileError] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SPEC_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            errors.append(FileError(p, None, "no such file or directory"))
    return files, errors
