"""What a test run leaves behind: processes (with the ports they listen on), mounts and
temporary files, attributed to the run by the paths they reference.

A test session's processes all reference its temporary directory: in their command line
(``--data-dir=``, ``--config``), working directory, open files (a model server's log) or
environment (``KUBECONFIG``, ``TRELLIS_*``, ``TMPDIR`` in CI). Matching on that, rather
than on process names, never hits the CI runner, another session's tests or anything
else on the machine.

Used by the session-finish check in ``tests/conftest.py`` and, after pytest, by
``.ci/run`` (whose checkout is its own, so its ``.venv`` paths are the run's too)::

    python -m tests.support.leftovers --tmp-dir TMP --venv .venv --stop TMP
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller import localwork


@dataclass
class Leftovers:
    processes: list[localwork.Process] = field(default_factory=list)
    owned: set[int] = field(default_factory=set)  # pids that reference the run's roots
    ports: dict[int, list[str]] = field(default_factory=dict)  # pid -> listening addresses
    mounts: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.processes or self.mounts or self.paths)

    def lines(self) -> list[str]:
        out = []
        for p in self.processes:
            ports = self.ports.get(p.pid)
            out.append(f"process {p}" + (f" (listening on {', '.join(ports)})" if ports else ""))
        out += [f"mount {m}" for m in self.mounts]
        out += [f"left in the temp dir: {p}" for p in self.paths]
        return out


def check(roots: Sequence[Path], venvs: Sequence[Path] = (),
          tmp_dir: Path | None = None) -> Leftovers:
    """Processes and mounts referencing ``roots``, processes running from ``venvs`` (by
    command line: an environment variable naming a venv proves nothing); with
    ``tmp_dir`` (a temp dir private to the run), also what is left in it besides pytest's
    own base directories."""
    procs = {p.pid: p for p in localwork.find(roots, environ=True)}
    owned = set(procs)
    procs.update((p.pid, p) for p in localwork.find(venvs) if p.pid not in procs)
    found = Leftovers(sorted(procs.values(), key=lambda p: p.pid), owned)
    listening = _listening()
    for p in found.processes:
        ports = sorted({listening[i] for i in _socket_inodes(p.pid) if i in listening})
        if ports:
            found.ports[p.pid] = ports
    found.mounts = _mounts(roots)
    if tmp_dir is not None and tmp_dir.is_dir():
        found.paths = sorted(str(p) for p in tmp_dir.iterdir()
                             if not p.name.startswith("pytest-of-"))
    return found


def _mounts(roots: Sequence[Path]) -> list[str]:
    needles = [str(Path(r).resolve()) for r in roots]
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[4].encode().decode("unicode_escape") for line in lines]
    return [m for m in points if any(m == n or m.startswith(n + "/") for n in needles)]


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def _listening() -> dict[str, str]:
    """Socket inode -> ``address:port`` of every listening TCP socket on this host."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A":  # LISTEN
                addr, port = cols[1].rsplit(":", 1)
                host = "127.0.0.1" if addr == "0100007F" else ("*" if set(addr) == {"0"}
                                                               else addr)
                out[cols[9]] = f"{host}:{int(port, 16)}"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.leftovers",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path,
                        help="paths whose mention makes a process the run's")
    parser.add_argument("--venv", action="append", type=Path, default=[],
                        help="a virtual environment only this run uses (repeatable)")
    parser.add_argument("--tmp-dir", type=Path,
                        help="the run's private TMPDIR: anything left in it is reported")
    parser.add_argument("--stop", action="store_true",
                        help="then stop the processes that reference ROOTS (those found "
                             "by --venv alone are only named)")
    args = parser.parse_args(argv)
    found = check(args.roots, args.venv, args.tmp_dir)
    if not found:
        print(f"leftovers: none ({', '.join(map(str, args.roots))})")
        return 0
    print("leftovers of the test run:", *found.lines(), sep="\n  ", file=sys.stderr)
    if args.stop:
        localwork.terminate(p for p in found.processes if p.pid in found.owned)
    return 1


if __name__ == "__main__":
    sys.exit(main())
