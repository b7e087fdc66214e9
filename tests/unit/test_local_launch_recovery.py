"""A local launch cut short by a SIGKILL of the operator is completed, not lost.

``launch`` writes the request and the launch index, starts the launcher, then records
it in ``launcher.json``. An operator killed between those steps left a workdir whose
launcher ran unrecorded (or never started); the next operator adopted the index entry
with no pid, found no process to watch and recorded the run as lost (RunLost) while it
went on training: a failed Experiment with an orphan run, and with retries a second run
of the same generation next to it. Now ``launch`` on such a workdir finds the launcher by
its command line and records it, or starts it when it never ran. A stand-in interpreter
(a shell loop) plays the launcher, so no flow runs here.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.paths import ROOT
from controller.training import local
from controller.training.launcher import read_json
from controller.training.local import LocalTrainingBackend, RunRequest

TAGS = {"trellis.uid": "u-1", "trellis.generation": "1", "trellis.attempt": "1"}


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """Stands in for the interpreter: keeps ``launcher.py <request>`` on its command line."""
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\nwhile :; do sleep 0.2; done\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def backend(tmp_path: Path, fake_python: Path) -> Iterator[LocalTrainingBackend]:
    b = LocalTrainingBackend(tmp_path / "metaflow", python=str(fake_python))
    yield b
    for wd in (tmp_path / "runs").glob("*"):
        pid = read_json(wd / "launcher.json").get("pid")
        if pid:
            asyncio.run(b.cancel(local.RunRef(None, pid, str(wd)), grace=2))


def request(tmp_path: Path) -> RunRequest:
    return RunRequest(flow_file=ROOT / "flows" / "pumpkin_flow.py", flow_name="PumpkinFlow",
                      parameters={"epochs": 1}, tags=dict(TAGS), resources=None,
                      workdir=tmp_path / "runs" / "g1-a1")


def index_entries(backend: LocalTrainingBackend) -> int:
    return len(list(backend.index_dir.glob("*.json")))


def test_a_launcher_started_but_not_recorded_is_adopted(tmp_path: Path, fake_python: Path,
                                                        backend: LocalTrainingBackend) -> None:
    req = request(tmp_path)
    workdir, adopted = backend._prepare(req)  # the killed operator got this far ...
    assert adopted is None
    orphan = subprocess.Popen([str(fake_python), str(local._LAUNCHER),  # ... and this
                               str(workdir / "request.json")], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ref = asyncio.run(backend.launch(req, wait_registered=0.5))
        assert ref.pid == orphan.pid, "a second launcher was started next to the first"
        assert read_json(workdir / "launcher.json")["pid"] == orphan.pid
        assert index_entries(backend) == 1
        assert asyncio.run(backend.observe(ref)).state == "starting"
    finally:
        orphan.kill()
        orphan.wait(timeout=10)


def test_a_launch_prepared_but_never_started_is_started_once(
        tmp_path: Path, backend: LocalTrainingBackend) -> None:
    req = request(tmp_path)
    workdir, _ = backend._prepare(req)  # killed before the launcher started
    ref = asyncio.run(backend.launch(req, wait_registered=0.5))
    assert ref.pid and local._launcher_of(workdir) == ref.pid
    assert index_entries(backend) == 1
    assert asyncio.run(backend.observe(ref)).state == "starting"
    again = asyncio.run(backend.launch(req, wait_registered=0.5))  # and adopted after
    assert again.pid == ref.pid


def test_other_tags_in_a_prepared_workdir_are_refused(tmp_path: Path,
                                                      backend: LocalTrainingBackend) -> None:
    req = request(tmp_path)
    backend._prepare(req)
    other = RunRequest(**{**req.__dict__, "tags": {**TAGS, "trellis.attempt": "2"}})
    with pytest.raises(FileExistsError):
        asyncio.run(backend.launch(other, wait_registered=0.5))


def test_no_launcher_is_found_for_a_workdir_nobody_works_in(tmp_path: Path) -> None:
    assert local._launcher_of(tmp_path) is None
    assert sys.executable  # the scan copes with this very process' command line
