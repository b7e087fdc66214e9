"""``make bench``: every benchmark, one results file.

Writes ``bench/results.json`` as ``{"benchmarks": [{"name", "value", "unit", "baseline",
"baseline_value", "ratio", "notes"}]}``; rows measured over repeats (the serving load
rows, ``bench/loadgen.py``) also carry ``repeats`` and ``spread`` (min and max of value,
baseline and ratio; the row holds their medians). Each suite runs as its own process
(they start their own dev clusters and servers), in sequence so they do not share the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALIBI = ROOT / ".venv-alibi" / "bin" / "python"


def suites(quick: bool) -> list[tuple[str, list[str]]]:
    drift = [str(ROOT / "bench" / "drift_bench.py"), "--pumpkin"]
    if quick:
        drift += ["--trials", "200", "--power-trials", "100", "--repeats", "5"]
    if ALIBI.exists():
        drift += ["--alibi-python", str(ALIBI)]
    scale = [str(ROOT / "bench" / "scale_bench.py")]
    if quick:
        scale += ["--sizes", "100", "--window", "10"]
    fuzz = [str(ROOT / "bench" / "fuzz_bench.py")]
    if quick:
        fuzz += ["--spec-cases", "300", "--endpoint-cases", "1000"]
    chaos = [str(ROOT / "bench" / "chaos_bench.py")] + (["--quick"] if quick else [])
    return [
        ("platform", [str(ROOT / "bench" / "platform_bench.py")]),
        ("drift", drift),
        ("gitops", [str(ROOT / "bench" / "gitops_bench.py")]),
        ("fuzz", fuzz),
        ("images", [str(ROOT / "bench" / "images_bench.py")]),
        ("install", [str(ROOT / "bench" / "install_bench.py")]),
        ("scale", scale),
        ("node", [str(ROOT / "bench" / "node_bench.py")]),
        ("cluster-training", [str(ROOT / "bench" / "cluster_train_bench.py")]),
        ("chaos", chaos),
        # the last recorded fresh-machine `make test` (`--run` repeats it: most of an hour)
        ("fresh", [str(ROOT / "bench" / "fresh_test_bench.py")]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument("--quick", action="store_true", help="fewer trials (smoke run)")
    parser.add_argument("--only", action="append", help="run only this suite (repeatable)")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    failed = []
    for name, cmd in suites(args.quick):
        if args.only and name not in args.only:
            continue
        started = time.monotonic()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            failed.append(name)
            print(proc.stderr[-3000:], file=sys.stderr)
            continue
        out = proc.stdout
        start = out.index("[")
        rows += json.loads(out[start:])
        print(f"[bench] {name}: {time.monotonic() - started:.0f}s", file=sys.stderr)
    result = {"machine": {"python": platform.python_version(), "cpu": platform.processor()
                          or platform.machine(), "cores": __import__("os").cpu_count()},
              "benchmarks": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        ratio = f"  ratio {r['ratio']}" if r.get("ratio") is not None else ""
        print(f"{r['name']:<70} {r['value']:>10} {r['unit']}{ratio}")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
