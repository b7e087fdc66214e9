"""Local-mode work found by the paths it references, stopped by state dir and by cluster."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from controller import localwork
from controller.devcluster.cluster import DevCluster
from controller.processes import pid_alive
from tests.support import leftovers

T = TypeVar("T")
SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]
# a session leader whose child (same session, like a gunicorn worker) also sleeps
FAMILY = [sys.executable, "-c",
          "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
          "'import time; time.sleep(120)']); time.sleep(120)"]


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def spawn(procs: list, argv: list[str], *, log: Path | None = None, cwd: Path | None = None,
          env: dict[str, str] | None = None, session: bool = True) -> subprocess.Popen[bytes]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - the child's
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                            start_new_session=session)
    if log:
        out.close()
    procs.append(proc)
    return proc


def until(fn: Callable[[], T]) -> T:
    """The first truthy value of ``fn`` (processes take a moment to start on a busy box)."""
    deadline = time.monotonic() + 30
    while not (value := fn()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value, "timed out"
    return value


def pids(found: list[localwork.Process]) -> set[int]:
    return {p.pid for p in found}


def test_records_one_state_dir_each_latest_cluster_wins(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("a CA")
    one, two = localwork.cluster_id(ca, "https://127.0.0.1:1"), localwork.cluster_id(None, "x")
    assert one.startswith("ca-sha256:") and two == "url:x"
    registry, state = tmp_path / "registry", tmp_path / "state"
    localwork.record(registry, state, one)
    localwork.record(registry, tmp_path / "other", two)
    assert [s for _, s in localwork.recorded(registry, one)] == [state.resolve()]
    localwork.record(registry, state, two)  # an operator restarted against another cluster
    assert localwork.recorded(registry, one) == []
    assert len(localwork.recorded(registry, two)) == 2
    assert localwork.recorded(tmp_path / "none", one) == []


def test_found_by_command_line_cwd_open_file_or_environment(tmp_path: Path, started: list
                                                             ) -> None:
    root, near = tmp_path / "run-1", tmp_path / "run-12"  # a prefix is not a parent
    for d in (root, near):
        d.mkdir()
    by_arg = spawn(started, [*SLEEP, f"--data-dir={root}/etcd"])
    by_cwd = spawn(started, SLEEP, cwd=root)
    by_log = spawn(started, SLEEP, log=root / "server.log")
    by_env = spawn(started, SLEEP, env={"KUBECONFIG": f"{root}/kubeconfig"})
    spawn(started, [*SLEEP, str(near)], cwd=near, log=near / "x.log",
          env={"X": f"{near}:{near}/y"})
    until(lambda: len(localwork.find([root], environ=True)) == 4)
    assert pids(localwork.find([root])) == {by_arg.pid, by_cwd.pid, by_log.pid}
    assert pids(localwork.find([root], environ=True)) == {by_arg.pid, by_cwd.pid, by_log.pid,
                                                          by_env.pid}


def test_stop_takes_sessions_working_in_the_state_dir_not_an_operator(
        tmp_path: Path, started: list) -> None:
    state = tmp_path / "state"
    logs = state / "serving" / "ns" / "mdep" / "logs"
    logs.mkdir(parents=True)
    server = spawn(started, FAMILY, log=logs / "server.log")  # leader and worker log here
    operator = spawn(started, SLEEP, log=state / "feedback.jsonl", session=False)
    found = until(lambda: len(f := localwork.find([state])) == 3 and f)
    assert operator.pid in pids(found)
    stopped = localwork.stop(state, grace_s=5)
    assert pids(stopped) == pids(found) - {operator.pid}
    assert not any(pid_alive(p.pid) for p in stopped)
    assert server.wait(timeout=5) is not None
    assert operator.poll() is None  # in its caller's session: never hit


def test_stop_for_cluster_stops_recorded_state_dirs_and_forgets_them(
        tmp_path: Path, started: list) -> None:
    registry, state = tmp_path / "registry", tmp_path / "state"
    (state / "training").mkdir(parents=True)
    run = spawn(started, SLEEP, cwd=state / "training")
    localwork.record(registry, state, "url:a")
    until(lambda: localwork.find([state]))
    assert localwork.stop_for_cluster(registry, "url:b") == 0 and run.poll() is None
    assert localwork.stop_for_cluster(registry, "url:a", grace_s=5) == 1
    assert run.wait(timeout=5) is not None
    assert list(registry.iterdir()) == []


def test_dev_cluster_down_stops_the_work_recorded_against_it(
        tmp_path: Path, started: list, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = tmp_path / "registry"
    monkeypatch.setenv("TRELLIS_REGISTRY_DIR", str(registry))
    dev = DevCluster(tmp_path / "cluster")  # never started: its CA is all that counts
    (dev.dir / "pki").mkdir(parents=True)
    (dev.dir / "pki" / "ca.crt").write_text("this cluster's CA")
    (tmp_path / "other-ca.crt").write_text("another cluster's CA")
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for state, ca in ((ours, dev.dir / "pki" / "ca.crt"), (theirs, tmp_path / "other-ca.crt")):
        (state / "serving").mkdir(parents=True)
        localwork.record(registry, state, localwork.cluster_id(ca, "https://127.0.0.1:6443"))
    server = spawn(started, SLEEP, cwd=ours / "serving")
    other = spawn(started, SLEEP, cwd=theirs / "serving")
    until(lambda: localwork.find([ours]) and localwork.find([theirs]))
    assert dev.down() is True
    assert server.wait(timeout=15) is not None and other.poll() is None
    assert [s for _, s in localwork.recorded(registry, "x")] == []
    assert len(list(registry.iterdir())) == 1  # theirs stays recorded


def test_leftover_report_names_process_port_and_temp_files(tmp_path: Path, started: list
                                                            ) -> None:
    listener = [sys.executable, "-c", "import socket, time; s = socket.socket(); "
                "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); "
                "time.sleep(120)"]
    proc = spawn(started, listener, log=tmp_path / "port")
    run_tmp = tmp_path / "tmp"
    (run_tmp / "pytest-of-me").mkdir(parents=True)
    (run_tmp / "stray").mkdir()
    port = until(lambda: (tmp_path / "port").read_text().strip())
    found = leftovers.check([tmp_path], tmp_dir=run_tmp)
    assert pids(found.processes) == {proc.pid}
    assert found.ports[proc.pid] == [f"127.0.0.1:{port}"]
    assert found.paths == [str(run_tmp / "stray")]
    text = "\n".join(found.lines())
    assert f"pid {proc.pid}" in text and f"127.0.0.1:{port}" in text and "stray" in text
