"""Where the repository's own data lives at run time (CRDs, flows, example specs).

The CRDs in ``crds/`` are the one source of truth for the schema; an installed
image sets ``TRELLIS_HOME`` to the directory that holds them. A wheel carries them
inside the package (``controller/crds``, mapped from ``crds/`` by pyproject.toml), so
``pip install trellis-mlops`` validates against the same schema without a checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

_HOME = os.environ.get("TRELLIS_HOME")
_PACKAGED_CRDS = Path(__file__).resolve().parent / "crds"  # only in an installed wheel

ROOT = Path(_HOME or Path(__file__).resolve().parents[1])
CRDS_DIR = ROOT / "crds" if _HOME or not _PACKAGED_CRDS.is_dir() else _PACKAGED_CRDS
FLOWS_DIR = ROOT / "flows"
EXAMPLES_DIR = ROOT / "examples" / "specs"
SERVING_DIR = ROOT / "serving"
