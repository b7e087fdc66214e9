"""Local training backend: runs a flow on this machine with Metaflow's Runner API.

Metaflow's ``Runner`` starts the flow as a child of the calling process, imports the
flow file into it (cached by path, so a flow edited by a git sync would be judged by
its stale parameters), keeps the logs in a temp dir it deletes on exit, always uses
``sys.executable`` and, created inside a running event loop, takes over that loop's
SIGINT handler. None of that suits a long-lived operator that must survive restarts, so
each run gets a small detached launcher process (``launcher.py``, in a session of its
own) that drives ``Runner.async_run`` and records everything in the run's workdir.

An operator killed with SIGKILL leaves the launcher and the flow running; a new backend
re-attaches from the ``RunRef`` (pathspec, pid, workdir) kept on the resource status,
or by tags through ``find`` (an index under the datastore root, written before the
launch, plus Metaflow's own run tags). Metaflow client calls touch disk and global
client state, so they run in a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from controller import quantities
from controller.training.launcher import read_json, write_json, write_result

State = Literal["starting", "running", "succeeded", "failed", "lost"]
ERROR_LINES = 15
ARTIFACTS = ("metrics", "epoch_metrics", "model_uri", "reference_uri", "commit",
             "dataset_fingerprint")
_CLIENT_LOCK = threading.Lock()  # the Metaflow client keeps its metadata/namespace globally
_LAUNCHER = Path(__file__).resolve().with_name("launcher.py")


@dataclass
class RunRequest:
    """What to run; ``tags`` are full Metaflow tag keys, e.g. ``{"trellis.uid": "..."}``."""

    flow_file: Path
    flow_name: str
    parameters: dict[str, object]
    tags: dict[str, str]
    resources: dict[str, int | str] | None  # spec.resources: integers or quantities
    workdir: Path  # one per attempt: progress, logs and the launcher's records go here
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class RunRef:
    """How to find a run again; small and JSON-friendly, for the resource's status."""

    pathspec: str | None
    pid: int | None
    workdir: str

    def to_dict(self) -> dict[str, Any]:
        return {"pathspec": self.pathspec, "pid": self.pid, "workdir": self.workdir}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRef:
        pid = data.get("pid")
        return cls(data.get("pathspec") or None, int(pid) if pid else None,
                   str(data.get("workdir") or ""))


@dataclass
class RunObservation:
    state: State
    pathspec: str | None = None
    step: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    epoch_metrics: list[dict[str, Any]] = field(default_factory=list)
    model_uri: str | None = None
    reference_uri: str | None = None
    commit: str | None = None
    dataset_fingerprint: str | None = None
    error: str | None = None  # last lines of the failing step's stderr


class LocalTrainingBackend:
    """Launch, observe, find and cancel local Metaflow runs under one datastore root."""

    def __init__(self, datastore_root: Path, python: str = sys.executable) -> None:
        self.datastore_root = Path(datastore_root).resolve()
        self.python = python
        self._final: dict[str, RunObservation] = {}  # workdir -> outcome (never changes)
        self._children: dict[int, asyncio.subprocess.Process] = {}

    @property
    def index_dir(self) -> Path:
        return self.datastore_root / ".trellis" / "launches"

    async def launch(self, req: RunRequest, wait_registered: float = 30.0) -> RunRef:
        """Start the run detached; wait (up to ``wait_registered`` s) for its pathspec.

        Idempotent per workdir: a workdir that already holds a launch with the same tags
        is adopted instead of launched twice.
        """
        workdir, adopted = await asyncio.to_thread(self._prepare, req)
        if adopted is not None:
            return adopted
        log = await asyncio.to_thread(open, workdir / "launcher.log", "ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python, str(_LAUNCHER), str(workdir / "request.json"),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                cwd=workdir, env=self._env(req, workdir), start_new_session=True,
            )
        except OSError:
            await asyncio.to_thread(self._drop_index, workdir)
            raise
        finally:
            log.close()
        self._children = {p: c for p, c in self._children.items() if c.returncode is None}
        self._children[proc.pid] = proc  # keeps asyncio reaping it while we live
        await asyncio.to_thread(write_json, workdir / "launcher.json", {
            "pid": proc.pid, "starttime": _proc_stat(proc.pid)[2], "started_at": time.time(),
            "tags": req.tags, "flow_name": req.flow_name,
        })
        ref = RunRef(None, proc.pid, str(workdir))
        deadline = time.monotonic() + wait_registered
        while time.monotonic() < deadline and proc.returncode is None:
            info = await asyncio.to_thread(read_json, workdir / "run.json")
            if info.get("pathspec"):
                ref.pathspec = info["pathspec"]
                break
            await asyncio.sleep(0.2)
        return ref

    async def observe(self, ref: RunRef) -> RunObservation:
        """Where the run is now; cheap (a few small files, the client only at the end)."""
        return await asyncio.to_thread(self._observe, ref)

    async def find(self, tags: dict[str, str]) -> list[RunRef]:
        """Runs carrying all these tags, oldest first, whether or not they still run."""
        return await asyncio.to_thread(self._find, tags)

    async def cancel(self, ref: RunRef, grace: float = 10.0) -> None:
        """SIGTERM the run's process group, SIGKILL after ``grace`` s; record it as cancelled."""
        if not ref.workdir:
            raise ValueError(f"cannot cancel {ref.pathspec}: it has no workdir (not launched here)")
        await asyncio.to_thread(self._cancel, ref, grace)

    def _cancel(self, ref: RunRef, grace: float) -> None:
        workdir = Path(ref.workdir)
        launcher = read_json(workdir / "launcher.json")
        pid, start = ref.pid or launcher.get("pid"), launcher.get("starttime")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not pid or not _group_alive(pid, start):
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(pid, start):
                time.sleep(0.2)
        write_result(workdir, {"returncode": None, "cancelled": True, "finished_at": time.time(),
                               "error": "cancelled: the run was stopped by the operator"})

    # ---------------------------------------------------------------- launch
    def _prepare(self, req: RunRequest) -> tuple[Path, RunRef | None]:
        workdir = Path(req.workdir).resolve()
        existing = read_json(workdir / "launcher.json")
        if existing:
            if existing.get("tags") != req.tags:
                raise FileExistsError(f"{workdir} already holds a launch with tags "
                                      f"{existing.get('tags')}; use one workdir per attempt")
            return workdir, RunRef(read_json(workdir / "run.json").get("pathspec"),
                                   existing.get("pid"), str(workdir))
        prepared = read_json(workdir / "request.json")
        if prepared:
            # A launch cut short (the operator killed between writing the request and
            # recording its launcher): the launcher may run unrecorded, or never started.
            if sorted(prepared.get("tags") or []) != sorted(
                    f"{k}:{v}" for k, v in req.tags.items()):
                raise FileExistsError(f"{workdir} already holds a launch request with tags "
                                      f"{prepared.get('tags')}; use one workdir per attempt")
            pid = _launcher_of(workdir)
            if pid is not None:  # record it now, as launch would have
                write_json(workdir / "launcher.json", {
                    "pid": pid, "starttime": _proc_stat(pid)[2], "started_at": time.time(),
                    "tags": req.tags, "flow_name": req.flow_name, "recovered": True})
                return workdir, RunRef(read_json(workdir / "run.json").get("pathspec"),
                                       pid, str(workdir))
            if (workdir / "result.json").exists() or (workdir / "run.json").exists():
                # it ran unrecorded and is over: observe reads what it left
                return workdir, RunRef(read_json(workdir / "run.json").get("pathspec"),
                                       None, str(workdir))
            return workdir, None  # never started (its index entry is written): start it
        if not Path(req.flow_file).is_file():
            raise FileNotFoundError(f"flow file {req.flow_file} not found")
        workdir.mkdir(parents=True, exist_ok=True)
        # @resources: cpu in cores, memory in MB, rounded up (controller.quantities)
        resources = quantities.metaflow_resources(req.resources)
        write_json(workdir / "request.json", {
            "flow_file": str(Path(req.flow_file).resolve()),
            "flow_name": req.flow_name,
            "parameters": _cli_values(Path(req.flow_file), req.flow_name, req.parameters),
            "tags": [f"{k}:{v}" for k, v in sorted(req.tags.items())],
            "decospecs": ["resources:" + ",".join(f"{k}={v}" for k, v in
                                                  sorted(resources.items()))]
            if resources else [],
        })
        self.index_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.index_dir / f"{uuid.uuid4().hex}.json",
                    {"workdir": str(workdir), "tags": req.tags, "created_at": time.time()})
        return workdir, None

    def _drop_index(self, workdir: Path) -> None:
        for entry in self.index_dir.glob("*.json"):
            if read_json(entry).get("workdir") == str(workdir):
                entry.unlink(missing_ok=True)

    def _env(self, req: RunRequest, workdir: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("METAFLOW_USER", "trellis")
        env.update({
            "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(self.datastore_root),
            "METAFLOW_DEFAULT_METADATA": "local",
            "METAFLOW_DEFAULT_DATASTORE": "local",
            "TRELLIS_PROGRESS_FILE": str(workdir / "progress.json"),
            "PYTHONUNBUFFERED": "1",
        })
        cpu = (req.resources or {}).get("cpu")
        if cpu:  # locally @resources is not enforced; at least size the thread pools
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(quantities.threads(cpu))
        env.update(req.env)
        return env

    # --------------------------------------------------------------- observe
    def _observe(self, ref: RunRef) -> RunObservation:
        if ref.workdir in self._final:
            return self._final[ref.workdir]
        wd = Path(ref.workdir) if ref.workdir else None
        launcher = read_json(wd / "launcher.json") if wd else {}
        result = read_json(wd / "result.json") if wd else {}
        progress = read_json(wd / "progress.json") if wd else {}
        pathspec = ref.pathspec or (read_json(wd / "run.json").get("pathspec") if wd else None)
        if not pathspec and progress.get("run_id"):
            pathspec = f"{progress['flow']}/{progress['run_id']}"
        obs = RunObservation(
            state="running", pathspec=pathspec, step=progress.get("step"),
            epoch=progress.get("epoch"), epochs=progress.get("epochs"),
            metrics=_numbers(progress.get("metrics")),
            epoch_metrics=list(progress.get("epoch_metrics") or []),
        )
        pid = ref.pid or launcher.get("pid")
        if not result and wd is not None and pid and _group_alive(pid, launcher.get("starttime")):
            obs.state = "running" if pathspec else "starting"
            return obs
        view = self._client_view(pathspec) if pathspec else {}
        if view.get("successful"):
            obs.state = "succeeded"
            arts = view["artifacts"]
            obs.metrics = _numbers(arts.get("metrics"))
            obs.epoch_metrics = list(arts.get("epoch_metrics") or obs.epoch_metrics)
            for name in ("model_uri", "reference_uri", "commit", "dataset_fingerprint"):
                setattr(obs, name, arts.get(name))
        elif result or view.get("failed_stderr"):
            obs.state = "failed"
            obs.error = (_tail(view.get("failed_stderr")) or _tail(result.get("error"))
                         or (wd and (_tail(_read_text(wd / "stderr.log"))
                                     or _tail(_read_text(wd / "launcher.log"))))
                         or f"the flow exited with code {result.get('returncode')}")
        elif wd is None:
            return obs  # found by tags only: no process to watch, assume it still runs
        elif read_json(wd / "result.json"):
            return self._observe(ref)  # the launcher finished between our two looks
        else:
            obs.state = "lost"
            obs.error = (f"the run's processes (group {pid}) are gone and it never finished; "
                         "was the machine restarted or the process killed?")
        if wd is not None:
            self._final[ref.workdir] = obs
        return obs

    def _client_view(self, pathspec: str) -> dict[str, Any]:
        """What Metaflow recorded: success and artifacts, or the failed task's stderr."""
        if not (self.datastore_root / ".metaflow").is_dir():
            return {}
        with _CLIENT_LOCK:
            from metaflow import Run, metadata, namespace
            from metaflow.exception import MetaflowNotFound

            metadata(f"local@{self.datastore_root}")
            namespace(None)
            try:
                run = Run(pathspec, _namespace_check=False)
                if run.successful:
                    task = run["end"].task
                    arts = {}
                    for name in ARTIFACTS:
                        with contextlib.suppress(KeyError):
                            arts[name] = task[name].data
                    return {"successful": True, "artifacts": arts}
                for step in run:
                    for task in step:
                        if task.metadata_dict.get("attempt_ok") == "False":
                            return {"failed_stderr": task.stderr or f"step {step.id} failed"}
            except MetaflowNotFound:
                return {}
        return {}

    # ------------------------------------------------------------------ find
    def _find(self, tags: dict[str, str]) -> list[RunRef]:
        found: list[tuple[float, RunRef]] = []
        seen: set[str] = set()
        if self.index_dir.is_dir():
            for entry in self.index_dir.glob("*.json"):
                doc = read_json(entry)
                if not doc or not tags.items() <= (doc.get("tags") or {}).items():
                    continue
                wd = Path(doc["workdir"])
                launcher, run = read_json(wd / "launcher.json"), read_json(wd / "run.json")
                ref = RunRef(run.get("pathspec"), launcher.get("pid"), str(wd))
                found.append((float(doc.get("created_at") or 0.0), ref))
                if ref.pathspec:
                    seen.add(ref.pathspec)
        for created, pathspec in self._tagged_runs(tags):
            if pathspec not in seen:
                found.append((created, RunRef(pathspec, None, "")))
        return [ref for _, ref in sorted(found, key=lambda item: item[0])]

    def _tagged_runs(self, tags: dict[str, str]) -> list[tuple[float, str]]:
        if not (self.datastore_root / ".metaflow").is_dir():
            return []
        wanted = [f"{k}:{v}" for k, v in tags.items()]
        with _CLIENT_LOCK:
            from metaflow import Metaflow, metadata, namespace

            metadata(f"local@{self.datastore_root}")
            namespace(None)
            return [(run.created_at.timestamp(), run.pathspec)
                    for flow in Metaflow() for run in flow.runs(*wanted)]


# -------------------------------------------------------------------- helpers
def _cli_values(flow_file: Path, flow_name: str, params: dict[str, object]) -> dict[str, object]:
    """Values as Runner expects them: JSON parameters parsed, numbers for float ones."""
    from controller.training import flowinspect

    flow = flowinspect.find_flow(flow_file.read_text(), flow_name)
    if flow is None:
        raise ValueError(f"{flow_file} defines no FlowSpec named {flow_name!r}")
    types = {p.name: p.type for p in flow.parameters}
    out: dict[str, object] = {}
    for name, value in params.items():
        if types.get(name) == "json" and isinstance(value, str):
            value = json.loads(value)
        elif types.get(name) == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[name] = value
    return out


def _numbers(data: Any) -> dict[str, float]:
    items = (data or {}).items() if isinstance(data, dict) else ()
    return {k: float(v) for k, v in items if isinstance(v, int | float) and not isinstance(v, bool)}


def _tail(text: str | None, lines: int = ERROR_LINES) -> str | None:
    """The last lines that say something (Metaflow's closing "Task failed." does not)."""
    kept = [line for line in (text or "").splitlines() if line.strip()]
    while kept and kept[-1].strip() == "Task failed.":
        kept.pop()
    return "\n".join(kept[-lines:]) or None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, int, int | None]:
    """(state, process group, start time in clock ticks) from /proc; ("", -1, None) if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "", -1, None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2]), int(fields[19])


def _launcher_of(workdir: Path) -> int | None:
    """The pid of a live launcher process working on ``workdir``'s request, if any.

    Found by its command line (``python launcher.py <workdir>/request.json``): the one
    record of a launcher the operator started but was killed before noting.
    """
    request = str(workdir / "request.json").encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if request in argv and any(a.endswith(b"launcher.py") for a in argv):
            state, group, _ = _proc_stat(int(entry.name))
            if state not in ("Z", "X", "") and group == int(entry.name):
                return int(entry.name)
    return None


def _group_alive(pgid: int, starttime: int | None) -> bool:
    """Does any live (non-zombie) process remain in the run's process group?

    The launcher leads its own group, so the flow and its tasks are members. A pid is
    not reused while its group exists; a recorded start time guards the leader.
    """
    if not Path("/proc/self/stat").exists():  # not Linux: signal 0 is the best we have
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, _, start = _proc_stat(pgid)
    if state and starttime is not None and start != starttime:
        return False  # the pid now belongs to an unrelated process
    if state and state not in ("Z", "X"):
        return True  # the launcher leads the group and outlives its flow: no scan needed
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            state, group, _ = _proc_stat(int(entry.name))
            if group == pgid and state not in ("Z", "X", ""):
                return True
    return False
