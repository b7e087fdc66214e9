"""The one shape of a ``bench/results.json`` row, shared by every bench script."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def row(name: str, value: float, unit: str, baseline: str | None = None,
        baseline_value: float | None = None, notes: str = "", *,
        digits: int = 3) -> dict[str, Any]:
    """A measured ``value`` next to what it is compared with; ``ratio`` is value/baseline."""
    ratio = round(value / baseline_value, 4) if baseline_value else None
    return {"name": name, "value": round(value, digits), "unit": unit, "baseline": baseline,
            "baseline_value": None if baseline_value is None else round(baseline_value, digits),
            "ratio": ratio, "notes": notes}


def emit(rows: list[dict[str, Any]], out: str | None = None) -> None:
    """Print the rows as JSON (what ``bench/run.py`` reads) and keep them in ``out``."""
    text = json.dumps(rows, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
