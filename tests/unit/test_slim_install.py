"""The operator and the pull-request CLI run from the base install, without the extras.

torch (``train``) and matplotlib (``demo``) are extras, so the controller image and a
``pip install trellis-mlops`` for ``trellis validate``/``plan`` in CI carry no CUDA. These
checks block both packages in a fresh interpreter (the test venv has every extra) and
import what the operator and those commands import.
"""

from __future__ import annotations

import subprocess
import sys

from controller.paths import ROOT

BLOCKED = ("torch", "matplotlib")
ENTRY_POINTS = ("controller.__main__", "controller.cli", "controller.operator",
                "controller.handlers", "controller.validate", "controller.gitops.plan_cli",
                "controller.devcluster.cluster", "controller.devcluster.images")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED)
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_operator_and_cli_import_without_torch_or_matplotlib() -> None:
    code = "".join(f"import {m}\n" for m in ENTRY_POINTS)
    code += f"assert not any(sys.modules.get(m) for m in {BLOCKED!r})\n"
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_validate_runs_without_torch_or_matplotlib() -> None:
    proc = _run("from controller.cli import main\n"
                "sys.exit(main(['validate', 'examples/specs']))\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "valid" in proc.stdout


def test_the_blocking_itself_works() -> None:
    """Guards the check: a blocked import must fail, or the tests above prove nothing."""
    proc = _run("import matplotlib\n")
    assert proc.returncode != 0 and "matplotlib" in proc.stderr
