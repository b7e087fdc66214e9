"""Where the repository's own data lives at run time (CRDs, flows, example specs).

The CRDs in ``crds/`` are the one source of truth for the schema; an installed
image sets ``TRELLIS_HOME`` to the directory that holds them.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("TRELLIS_HOME") or Path(__file__).resolve().parents[1])
CRDS_DIR = ROOT / "crds"
FLOWS_DIR = ROOT / "flows"
EXAMPLES_DIR = ROOT / "examples" / "specs"
SERVING_DIR = ROOT / "serving"
