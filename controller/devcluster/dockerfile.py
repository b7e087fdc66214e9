"""What a Dockerfile target is built from, as a digest: the cache key of a local build.

A target's key covers the Dockerfile itself, every build-context file a stage in its
chain COPYs (``.dockerignore`` applied, as the builder applies it) and the caller's
extras (the base image's id, build mode). Files no stage of the target copies do not
count, so editing the Makefile or the tests rebuilds nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

SKIP_DIRS = {"__pycache__", ".git"}


@dataclass
class Stage:
    name: str
    base: str
    copies: list[tuple[str | None, list[str]]] = field(default_factory=list)  # (from, sources)


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    pending = ""
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):  # also inside a continuation
            continue
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.strip().partition(" ")
        yield keyword.upper(), rest.strip()
        pending = ""


def parse(text: str) -> dict[str, Stage]:
    """Stages by name (unnamed stages by their base image), in file order."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in _instructions(text):
        if keyword == "FROM":
            words = rest.split()
            current = Stage(words[2] if len(words) > 2 else words[0], words[0])
            stages[current.name] = current
        elif keyword in ("COPY", "ADD") and current is not None:
            parts = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            source = next((p.split("=", 1)[1] for p in parts if p.startswith("--from=")), None)
            paths = [p for p in parts if not p.startswith("--")]
            current.copies.append((source, paths[:-1]))
    return stages


def chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    """``target`` and every stage it is built FROM or copies from."""
    if target not in stages:
        raise KeyError(f"no stage {target!r} in the Dockerfile")
    seen: dict[str, Stage] = {}
    todo = [target]
    while todo:
        name = todo.pop()
        if name in seen or name not in stages:
            continue
        seen[name] = stages[name]
        todo.append(stages[name].base)
        todo += [src for src, _ in stages[name].copies if src]
    return list(seen.values())


def context_sources(stages: dict[str, Stage], target: str) -> list[str]:
    """Build-context paths the target's chain copies, sorted."""
    return sorted({p for s in chain(stages, target) for src, paths in s.copies if src is None
                   for p in paths})


# ------------------------------------------------------------------ .dockerignore
def _regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignore_rules(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    path = context / ".dockerignore"
    rules = []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _regex(line.lstrip("!").strip("/"))))
    return rules


def ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last matching pattern wins; a matched directory hides its tree."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def context_files(context: Path, sources: Iterable[str]) -> list[str]:
    """Files (relative paths) the builder would copy for ``sources``."""
    rules = ignore_rules(context)
    found: set[str] = set()
    for source in sources:
        root = context / source
        paths = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in paths:
            rel = path.relative_to(context).as_posix()
            if (path.is_file() and not SKIP_DIRS & set(rel.split("/"))
                    and not rel.endswith(".pyc") and not ignored(rel, rules)):
                found.add(rel)
    return sorted(found)


def target_digest(context: Path, target: str, extra: dict[str, str],
                  dockerfile: str = "Dockerfile") -> str:
    """sha256 over the Dockerfile, the target's copied files (names, modes, bytes), extra."""
    text = (context / dockerfile).read_text()
    digest = hashlib.sha256()
    digest.update(text.encode())
    for rel in context_files(context, context_sources(parse(text), target)):
        path = context / rel
        digest.update(f"\0{rel}\0{path.stat().st_mode & 0o111:o}\0".encode())
        digest.update(path.read_bytes())
    digest.update(json.dumps(extra, sort_keys=True).encode())
    return digest.hexdigest()
