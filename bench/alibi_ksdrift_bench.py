"""Time alibi-detect's ``KSDrift.predict`` on arrays saved by ``bench/drift_bench.py``.

Runs in the side environment (``bench/requirements-alibi.txt``: alibi-detect without the
TensorFlow/PyTorch extras; KSDrift needs only numpy and scipy), which is why it imports
nothing from Trellis. Usage: ``PYTHON alibi_ksdrift_bench.py DIR [--repeats N]`` with
``DIR/ref.npy`` (n, F) and ``DIR/win.npy`` (m, F); prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import alibi_detect
import numpy as np
from alibi_detect.cd import KSDrift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    ref = np.load(args.dir / "ref.npy")
    win = np.load(args.dir / "win.npy")
    detector = KSDrift(ref, p_val=0.05, correction="bonferroni")
    result = detector.predict(win)  # warm-up, and the verdict to compare
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        detector.predict(win)
        times.append(time.perf_counter() - start)
    data = result["data"]
    print(json.dumps({
        "name": f"alibi-detect {alibi_detect.__version__} KSDrift.predict "
                f"{win.shape[0]}x{win.shape[1]} (ref {ref.shape[0]})",
        "value": min(times),
        "is_drift": bool(data["is_drift"]),
        "p_values": [float(p) for p in data["p_val"]],
        "threshold": float(data["threshold"]),
        "notes": f"fastest of {args.repeats} (median {statistics.median(times):.4f} s); "
                 f"bonferroni, p_val 0.05; numpy {np.__version__}",
    }))


if __name__ == "__main__":
    main()
