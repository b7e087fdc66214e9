"""A fresh machine's ``make test``: how long, and where the time goes.

CI runs ``.ci/run`` on a clean checkout within a hard 90 minutes; a run past it lands
nothing. ``--run`` clones HEAD into a temporary directory and runs ``.ci/run`` there with
every cache empty (``XDG_CACHE_HOME``, ``UV_CACHE_DIR``, ``GOPATH``, ``GOCACHE`` pointing
into a new directory): the Python environments download (torch included), the Go
binaries and the images build, as on a new machine. Debian packages
(``scripts/install-*.sh``) stay installed: they come once per machine from the mirror.
Each output line is stamped with the seconds since the start, and the phases are read
from the stamps.

The run takes most of an hour, too long to repeat in every ``make bench``: it writes
``bench/fresh-make-test.json``, and without ``--run`` this prints the rows of the run
recorded there. ``--log FILE`` reads a stamped log written earlier instead.

Prints JSON rows ``{"name","value","unit","baseline","baseline_value","ratio","notes"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.rows import row

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "bench" / "fresh-make-test.json"
CI_LIMIT_MIN = 90.0
STAMP = re.compile(r"^\s*(\d+\.\d)\s(.*)$")
TEST_LINE = re.compile(r"^tests/(\w+)/\S+\.py\b")
PROGRESS = re.compile(r"\[\s*\d+%\]\s*$")
# The first line of each phase of `make test` (Makefile order: install, cluster-binaries,
# node-deps, lint, pytest).
PHASES = [
    ("python environments (uv, torch included)", re.compile(r"venv|uv ")),
    ("Kubernetes binaries (Go builds)", re.compile(r"binaries\.ensure_all")),
    ("Debian packages check + lint", re.compile(r"install-node-deps|install-chromium")),
    ("pytest", re.compile(r"test session starts")),
]


def stamped(lines: list[str]) -> list[tuple[float, str]]:
    out = []
    for line in lines:
        m = STAMP.match(line)
        if m:
            out.append((float(m.group(1)), m.group(2)))
    return out


def breakdown(lines: list[tuple[float, str]]) -> dict[str, Any]:
    """Phases and per-directory test time of one stamped ``.ci/run`` log (pure)."""
    starts: dict[str, float] = {}
    for name, pattern in PHASES:
        hit = next((t for t, text in lines if pattern.search(text)), None)
        if hit is not None:
            starts[name] = hit
    end = lines[-1][0] if lines else 0.0
    names = [n for n, _ in PHASES if n in starts]
    phases = {n: (starts[names[i + 1]] if i + 1 < len(names) else end) - starts[n]
              for i, n in enumerate(names)}
    if names:
        phases[names[0]] += starts[names[0]]  # from the very start
    dirs: dict[str, float] = {}
    current, last = None, starts.get("pytest")
    for t, text in lines:
        if last is None or t < last:
            continue
        m = TEST_LINE.match(text)
        if m:
            current = m.group(1)
        if current and PROGRESS.search(text):
            dirs[current] = dirs.get(current, 0.0) + t - last
            last = t
    summary = next((text for _, text in reversed(lines)
                    if re.search(r"\d+ (passed|failed)", text)), "")
    rc = next((text for _, text in reversed(lines) if text.startswith("rc=")), "")
    return {"total_s": end, "phases_s": phases, "test_dirs_s": dirs,
            "summary": summary.strip("= "), "rc": rc.removeprefix("rc=")}


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    when = result.get("recorded", "")
    note = f"{result.get('commit', '')} {when}; {result['summary']}".strip()
    total = result["total_s"] / 60
    out = [row("fresh machine: make test (.ci/run), nothing cached", total, "min",
                "CI's hard limit", CI_LIMIT_MIN, note)]
    for name, seconds in result["phases_s"].items():
        out.append(row(f"fresh machine: make test phase: {name}", seconds / 60, "min"))
    for name, seconds in sorted(result["test_dirs_s"].items(), key=lambda kv: -kv[1]):
        out.append(row(f"fresh machine: make test, tests/{name}", seconds / 60, "min",
                        notes="fixtures included (dev clusters, node, image builds)"))
    return out



def run_fresh(log_path: Path) -> None:
    """``.ci/run`` in a clone of HEAD with empty caches, each line stamped into ``log_path``."""
    with tempfile.TemporaryDirectory(prefix="trellis-fresh-") as tmp:
        checkout, caches = Path(tmp) / "checkout", Path(tmp) / "caches"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(checkout)], check=True)
        env = {**os.environ, "CI": "true", "XDG_CACHE_HOME": str(caches),
               "UV_CACHE_DIR": str(caches / "uv"), "GOPATH": str(caches / "go"),
               "GOCACHE": str(caches / "go-build")}
        started = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(["bash", ".ci/run"], cwd=checkout, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(f"{time.monotonic() - started:8.1f} {line}")
                log.flush()
            log.write(f"{time.monotonic() - started:8.1f} rc={proc.wait()}\n")
        subprocess.run(["chmod", "-R", "u+w", str(caches)], check=False)  # Go's read-only


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run it now (most of an hour)")
    parser.add_argument("--log", help="a stamped log of an earlier run to read instead")
    args = parser.parse_args(argv)
    if args.run or args.log:
        log = Path(args.log) if args.log else Path(tempfile.mkstemp(suffix=".log")[1])
        if args.run:
            run_fresh(log)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip()
        result = breakdown(stamped(log.read_text().splitlines()))
        result |= {"commit": commit, "recorded": time.strftime("%Y-%m-%d"),
                   "machine": f"{os.cpu_count()} cores"}
        RECORD.write_text(json.dumps(result, indent=2) + "\n")
    if not RECORD.exists():
        print("[]")
        print("no fresh-machine run recorded: bench/fresh_test_bench.py --run",
              file=sys.stderr)
        return 0
    print(json.dumps(rows(json.loads(RECORD.read_text())), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
