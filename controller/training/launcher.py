"""The detached half of the local training backend: one launcher process per run.

``LocalTrainingBackend.launch`` starts ``python launcher.py <workdir>/request.json`` in a
session of its own, so the run outlives the operator (a SIGKILLed operator leaves it
running, a Ctrl-C on the operator's terminal does not reach it). The launcher drives
Metaflow's ``Runner.async_run`` and writes what it learns into the workdir, which is
what any later operator process reads to re-attach:

    request.json   what to run (written by ``launch``)
    launcher.json  launcher pid, its start time (pid-reuse guard), tags, started_at
    run.json       the Metaflow pathspec, as soon as Runner reports the run
    progress.json  written by the flow itself (TRELLIS_PROGRESS_FILE): step, epoch
    stdout.log / stderr.log   the flow's output; launcher.log the launcher's own
    result.json    exit code, error, finished_at (written once, when the run ends)
    tmp/           the run's TMPDIR: Runner's FIFO and log copies, the flow's temp files

Only the standard library and metaflow are used here: the launcher may run under a
training interpreter that does not have the operator's packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} when it is missing, partial or not an object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Replace ``path`` atomically, so readers never see half a document."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)


def write_result(workdir: Path, doc: dict[str, Any]) -> None:
    """Write result.json only if nobody did yet (a hard link is atomic and exclusive)."""
    tmp = workdir / f".result.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    with contextlib.suppress(FileExistsError):
        os.link(tmp, workdir / "result.json")
    tmp.unlink(missing_ok=True)


async def run(workdir: Path, req: dict[str, Any]) -> int:
    """Run the flow of ``req`` to its end, recording pathspec, logs and result."""
    from metaflow import Runner
    from metaflow.runner.click_api import extract_flow_class_from_file

    # Runner keeps its FIFO and log copies in temp dirs, the flow's runtime its task
    # configs; a run killed outright would leak them into /tmp, so they live in the
    # workdir instead (TMPDIR: for the flow's processes too).
    (workdir / "tmp").mkdir(exist_ok=True)
    tempfile.tempdir = os.environ["TMPDIR"] = str(workdir / "tmp")
    rc: int | None = None
    error = None
    try:
        found = extract_flow_class_from_file(req["flow_file"]).__name__
        if found != req["flow_name"]:
            raise ValueError(f"{req['flow_file']} defines {found}, not {req['flow_name']}")
        async with Runner(req["flow_file"], show_output=False, cwd=str(workdir),
                          pylint=False) as runner:
            running = await runner.async_run(tags=req["tags"], decospecs=req["decospecs"],
                                             **req["parameters"])
            write_json(workdir / "run.json", {"pathspec": running.run.pathspec,
                                              "flow_pid": running.command_obj.process.pid})
            done = asyncio.Event()
            copies = [asyncio.create_task(_follow(Path(src), workdir / f"{name}.log", done))
                      for name, src in running.command_obj.log_files.items()]
            await running.wait()
            done.set()
            await asyncio.gather(*copies)
            rc = running.returncode
    except Exception:
        error = traceback.format_exc()
        print(error, file=sys.stderr)
    write_result(workdir, {"returncode": rc, "error": error, "finished_at": time.time()})
    return 0 if rc == 0 else 1


async def _follow(src: Path, dst: Path, done: asyncio.Event) -> None:
    """Copy Runner's growing (temporary) log file into the workdir until the run ends.

    Runner deletes its log files when it exits; the copy is what stays for users.
    """
    with src.open("rb") as fin, dst.open("ab") as fout:
        while True:
            chunk = fin.read()
            if chunk:
                fout.write(chunk)
                fout.flush()
            elif done.is_set():
                return
            else:
                await asyncio.sleep(0.25)


def main(argv: list[str]) -> int:
    request_file = Path(argv[1]).resolve()
    req = json.loads(request_file.read_text(encoding="utf-8"))
    return asyncio.run(run(request_file.parent, req))


if __name__ == "__main__":
    # Run as a script, this directory would lead sys.path, and our kubernetes.py would
    # shadow the kubernetes package for Metaflow: take it off first.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.exit(main(sys.argv))
