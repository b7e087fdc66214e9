"""``trellis demo`` end to end, unattended, as ``make demo`` runs it; and Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.localwork import find
from controller.paths import ROOT

pytestmark = [pytest.mark.e2e]
PHASES = ["Control plane and operator", "GitOps: the farm's spec repository",
          "Level 0 — train, serve, predict", "Level 1 — a pull request tunes the model",
          "Level 2 — genetically modified pumpkins"]


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env.pop("KUBECONFIG", None)  # the demo's own dev cluster, not a test's
    return env


def test_demo_tells_the_whole_story(tmp_path: Path) -> None:
    work, report = tmp_path / "work", tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "demo", "--workdir",
                           str(work), "--report", str(report)], capture_output=True,
                          text=True, timeout=1200, env=demo_env(), cwd=ROOT)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-3000:]
    for phase in PHASES:
        assert re.search(rf"{re.escape(phase)}\s+\d+s ok", out), phase
    assert "⇒ new training run" in out  # trellis plan spoke on the pull request
    assert out.count("$ kubectl get mlops -n pumpkins") == 3
    final = out[out.rindex("$ kubectl get mlops"):]
    assert re.search(r"modeldeployment\S+/classifier\s+v3\s+none\s+Serving", final), final
    page = (report / "index.html").read_text()
    for section in ("training", "canary", "drift", "lineage"):
        assert f'id="{section}"' in page
    for src in re.findall(r'<img[^>]+src="([^"]+)"', page):
        assert (report / src).stat().st_size > 10_000, src
    assert find([work / "state"], environ=True) == []  # nothing left running


def test_ctrl_c_leaves_nothing_running(tmp_path: Path) -> None:
    work = tmp_path / "work"
    # As from a terminal: a run started in the background by a non-interactive shell
    # (a CI runner's `cmd &`) inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt for it.
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "demo", "--workdir",
                             str(work), "--report", str(tmp_path / "report")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=demo_env(), cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    seen = ""
    while "Level 0" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    time.sleep(5)  # the first training run is under way
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "interrupted" in rest
    assert find([work / "state"], environ=True) == []
    cluster_state = work / "cluster" / "state.json"
    assert not cluster_state.exists()
