"""Reading spec files: YAML documents with the line of every field, and clear errors.

Users fix what ``path:line: message`` points at, so every document keeps a map from
field path to source line; unreadable input (binary, empty, broken YAML) becomes one
error line, never a traceback.

Plain scalars are read the way kubectl reads them (go-yaml v2 through sigs.k8s.io/yaml,
then JSON), not the way PyYAML does, so a file means one thing to ``trellis validate``,
to the SpecRepository sync and to ``kubectl apply``: ``y``/``n`` are booleans, ``1e3``
and ``1.0e3`` floats, ``0o17`` an integer, ``1:30`` and ``2024-01-01`` strings, and a
float with an integral value (``100.0``) the integer JSON carries.

A mapping key written twice is an error naming the key and both lines: YAML forbids it,
but PyYAML, kubectl and the API server all silently keep the last value, so a second
``gpu:`` further down quietly wins. ``trellis validate`` and the SpecRepository sync
read files through this module alike, so both refuse such a file.
"""

from __future__ import annotations

import decimal
import math
import re
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


# ------------------------------------------------------------- scalars, as kubectl reads
# go-yaml v2's resolve() (go.yaml.in/yaml/v2 resolve.go, which kubectl 1.34 reads YAML
# with), then Go's JSON encoding of the result (sigs.k8s.io/yaml's YAMLToJSON).
GO_BOOL = {**dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On",
                            "ON"), True),
           **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off",
                            "Off", "OFF"), False)}
GO_NULL = frozenset(("", "~", "null", "Null", "NULL"))
GO_SPECIAL_FLOAT = {**dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
                    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"),
                                    math.inf),
                    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf)}
YAML_STYLE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
# Go's ParseFloat takes underscores between digits (.5_0 is 0.5), as Python's float does.
DOT_FLOAT = re.compile(r"\.[0-9]+(_[0-9]+)*([eE][-+]?[0-9]+(_[0-9]+)*)?")
GO_DIGITS = {16: "0123456789abcdefABCDEF", 8: "01234567", 2: "01", 10: "0123456789"}
GO_INT_TAG = "tag:trellis.dev,2026:go-int"
GO_FLOAT_TAG = "tag:trellis.dev,2026:go-float"
GO_BOOL_TAG = "tag:trellis.dev,2026:go-bool"
STR_TAG, NULL_TAG, MERGE_TAG = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:null",
                                "tag:yaml.org,2002:merge")


def _go_parse_int(text: str, signed: bool = True) -> int | None:
    """Go's ``strconv.ParseInt(text, 0, 64)`` (``ParseUint`` when not ``signed``)."""
    sign, digits = 1, text
    if signed and digits[:1] in ("+", "-"):
        sign, digits = (-1 if digits[0] == "-" else 1), digits[1:]
    base = 10
    if digits[:2] in ("0x", "0X"):
        base, digits = 16, digits[2:]
    elif digits[:2] in ("0o", "0O"):
        base, digits = 8, digits[2:]
    elif digits[:2] in ("0b", "0B"):
        base, digits = 2, digits[2:]
    elif digits[:1] == "0" and len(digits) > 1:
        base, digits = 8, digits[1:]
    if not digits or any(c not in GO_DIGITS[base] for c in digits):
        return None
    value = sign * int(digits, base)
    if signed:
        return value if -(2**63) <= value < 2**63 else None
    return value if value < 2**64 else None


def _go_float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None  # out of range: Go's ErrRange


def go_scalar(text: str) -> tuple[str, Any]:
    """(tag, value) of a plain scalar as kubectl reads it (go-yaml v2's ``resolve``)."""
    if text in GO_BOOL:
        return GO_BOOL_TAG, GO_BOOL[text]
    if text in GO_NULL:
        return NULL_TAG, None
    if text in GO_SPECIAL_FLOAT:
        return GO_FLOAT_TAG, GO_SPECIAL_FLOAT[text]
    if text == "<<":
        return MERGE_TAG, text
    hint = text[0]
    if hint == "." and DOT_FLOAT.fullmatch(text):
        value = _go_float(text)
        if value is not None:
            return GO_FLOAT_TAG, value
    elif hint in "+-0123456789":
        # A timestamp (2024-01-01) resolves as such, but go-yaml v2 hands it to kubectl
        # as the string it was written as; it never parses as a number either.
        plain = text.replace("_", "")
        for signed in (True, False):
            number = _go_parse_int(plain, signed)
            if number is not None:
                return GO_INT_TAG, number
        if YAML_STYLE_FLOAT.fullmatch(plain):
            value = _go_float(plain)
            if value is not None:
                return GO_FLOAT_TAG, value
    return STR_TAG, text


def _as_json_number(value: float) -> float | int:
    """Go's JSON writes a float with an integral value below 1e21 as an integer (``100``
    for 100.0), and the API server reads that back as an integer (an int64 if it fits).

    The digits are the shortest that round-trip (Go's ``'f', -1``, Python's ``repr``), not
    the exact value: -2**63 as a float is written -9223372036854776000, past int64, so a
    float to the server, where ``int(value)`` would be an in-range integer.
    """
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e21:
        return int(decimal.Decimal(repr(value)))
    return value


class SpecLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader reading plain scalars as kubectl does (``go_scalar``), and
    noting every mapping key written twice (key, first line, line)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int, int]] = []

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return go_scalar(value)[0]
        return super().resolve(kind, value, implicit)

    def construct_go_scalar(self, node: yaml.ScalarNode) -> Any:
        tag, value = go_scalar(node.value)
        return _as_json_number(value) if tag == GO_FLOAT_TAG else value

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, Any], int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE_TAG:
                    continue  # merge keys (<<) may override; complex keys fail on their own
                key = self.construct_object(key_node)
                # 1 and true and "1" are different YAML keys (though 1 == True in Python)
                ident = (type(key).__name__, key)
                try:
                    first = seen.get(ident)
                except TypeError:
                    continue
                line = key_node.start_mark.line + 1
                if first is None:
                    seen[ident] = line
                else:
                    self.duplicates.append((key_node.value, first, line))
        return super().construct_mapping(node, deep=deep)


for _tag in (GO_INT_TAG, GO_FLOAT_TAG, GO_BOOL_TAG):
    SpecLoader.add_constructor(_tag, SpecLoader.construct_go_scalar)


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
    duplicates: list[FileError] = []
    try:
        loader = SpecLoader(text)
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
            duplicates = [
                FileError(path, line, f'duplicate key "{key}" ('
                          + (f"lines {first} and {line}" if first != line
                             else f"twice on line {line}")
                          + "): YAML allows a key once; kubectl and the API server would "
                          f"silently keep the last value (line {line})")
                for key, first, line in loader.duplicates]
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
    return docs, duplicates


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
