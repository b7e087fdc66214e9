"""What an install of the package weighs: the base (``pip install trellis-mlops``, the
pull request CLI) against the ``operator`` extra (the controller image's environment) and
``operator`` + ``train`` (the trainer image's), and how long the base install takes.

The wheel is built from a copy of the sources and installed with uv into fresh venvs on
Python 3.11 (the images' Python), at the versions in uv.lock (``tests/support/
wheelinstall.py``, which ``tests/e2e/test_install_weight.py`` also uses). Sizes are the
bytes under site-packages. The cold install uses an empty uv cache, so it downloads
from PyPI; the warm ones use the machine's cache (``make env`` filled it).
Prints JSON rows ``{"name","value","unit","baseline","baseline_value","ratio","notes"}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.rows import emit, row
from tests.support import wheelinstall as wi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.11")
    parser.add_argument("--no-train", action="store_true",
                        help="skip operator + train (torch with CUDA: ~6 GB of files)")
    parser.add_argument("--out", help="also write the JSON rows here")
    args = parser.parse_args(argv)
    python = wi.find_python(args.python)
    if python is None:
        parser.error(f"no python{args.python} on PATH or under pyenv")
    with tempfile.TemporaryDirectory(prefix="trellis-install-bench-") as tmp:
        root = Path(tmp)
        wheel = wi.build_wheel(root / "wheel")
        constraints = wi.lock_constraints(root / "constraints.txt")
        cold = wi.install(wi.fresh_venv(python, root / "cold"), str(wheel), constraints,
                          cache_dir=root / "empty-cache")
        base = wi.install(wi.fresh_venv(python, root / "base"), str(wheel), constraints)
        operator = wi.install(wi.fresh_venv(python, root / "operator"), f"{wheel}[operator]",
                              constraints)
        trainer = None if args.no_train else wi.install(
            wi.fresh_venv(python, root / "trainer"), f"{wheel}[operator,train]", constraints)
    mb = 1e6
    rows = [
        row("install_base_packages", len(base.packages), "packages",
            "the operator extra", len(operator.packages),
            f"pip install trellis-mlops on Python {args.python} (validate, plan): "
            + ", ".join(sorted(base.packages))),
        row("install_base_size", base.size / mb, "MB", "the operator extra",
            operator.size / mb, "site-packages of a fresh venv", digits=1),
        row("install_base_seconds_cold", cold.seconds, "s", "the same, warm uv cache",
            base.seconds, "uv pip install of the wheel, empty uv cache (downloads from PyPI)",
            digits=2),
    ]
    if trainer is not None:
        rows.append(row("install_operator_size", operator.size / mb, "MB",
                        "operator + train (the trainer image's environment)",
                        trainer.size / mb,
                        f"{len(operator.packages)} packages against {len(trainer.packages)}",
                        digits=1))
    emit(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
