"""What each install carries, checked in a fresh interpreter with the rest blocked.

The base install (``pip install trellis-mlops``: what a pull request's CI installs for
``trellis validate``/``plan``) has none of the `operator` extra's packages; the operator
and the controller image (`operator`) have no torch (``train``) or matplotlib (``demo``),
so neither carries CUDA. The test venv has every extra, so these checks block packages
in a fresh interpreter and import what each entry point imports.
``tests/e2e/test_install_weight.py`` installs the wheel itself.
"""

from __future__ import annotations

import subprocess
import sys

from controller.paths import ROOT

TRAINER = ("torch", "matplotlib")
# The `operator` extra's top-level modules (and the Kubernetes client's own imports).
OPERATOR = ("kopf", "kubernetes", "metaflow", "boto3", "botocore", "numpy", "scipy",
            "aiohttp", "prometheus_client", "cryptography", "urllib3")
ENTRY_POINTS = ("controller.__main__", "controller.cli", "controller.operator",
                "controller.handlers", "controller.validate", "controller.gitops.plan_cli",
                "controller.devcluster.cluster", "controller.devcluster.images")
CLI_ENTRY_POINTS = ("controller.cli", "controller.validate", "controller.gitops.plan_cli",
                    "controller.gitops.repochecks", "controller.gitops.live")


def _run(code: str, blocked: tuple[str, ...] = TRAINER) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_operator_and_cli_import_without_torch_or_matplotlib() -> None:
    code = "".join(f"import {m}\n" for m in ENTRY_POINTS)
    code += f"assert not any(sys.modules.get(m) for m in {TRAINER!r})\n"
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_validate_runs_without_torch_or_matplotlib() -> None:
    proc = _run("from controller.cli import main\n"
                "sys.exit(main(['validate', 'examples/specs']))\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "valid" in proc.stdout


def test_validate_and_plan_import_nothing_of_the_operator_extra() -> None:
    blocked = TRAINER + OPERATOR
    code = "".join(f"import {m}\n" for m in CLI_ENTRY_POINTS)
    code += ("from controller.cli import main\n"
             "assert main(['validate', 'examples/specs']) == 0\n")
    proc = _run(code, blocked)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "valid" in proc.stdout


def test_a_command_without_its_extra_names_the_extra() -> None:
    proc = _run("from controller.cli import main\nsys.exit(main(['operator']))\n",
                TRAINER + OPERATOR)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith("trellis: `trellis operator` needs ")
    assert proc.stderr.rstrip().endswith("pip install 'trellis-mlops[operator]'")


def test_the_blocking_itself_works() -> None:
    """Guards the check: a blocked import must fail, or the tests above prove nothing."""
    proc = _run("import matplotlib\n")
    assert proc.returncode != 0 and "matplotlib" in proc.stderr
