"""pyproject.toml's package list: every package of the code, and the CRDs in the wheel.

The list is explicit because ``controller.crds`` is mapped from ``crds/`` (the schema's
one source of truth stays at the top); a subpackage missing from it would be missing
from the wheel. ``tests/e2e/test_install_weight.py`` builds and installs the wheel.
"""

from __future__ import annotations

import tomllib

from controller.paths import ROOT


def test_every_package_is_in_the_wheel_and_the_crds_with_them() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "controller").rglob("__init__.py")}
    assert set(setuptools["packages"]) == on_disk | {"controller.crds"}
    assert setuptools["package-dir"] == {"controller.crds": "crds"}
    assert setuptools["package-data"]["controller.crds"] == ["*.yaml"]
    assert {p.name for p in (ROOT / "crds").glob("*.yaml")} >= {
        "experiments.yaml", "modeldeployments.yaml", "specrepositories.yaml"}
    assert not (ROOT / "controller" / "crds").exists()  # paths.py: only a wheel has it
