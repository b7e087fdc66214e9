"""Drift detector benchmark: speed against scipy (and alibi-detect), false alarms, power.

(a) ``ks_test`` on a window of 10,000 rows (and the CRD's default 500) x F features,
    against ``scipy.stats.ks_2samp(method="asymp")`` applied feature by feature (what
    alibi-detect's ``KSDrift`` runs inside); F = 8, 10 (the pumpkin model's feature count)
    and 32. Fastest of interleaved runs; one feature shifted by 0.3 sd as in the power
    test (its small p-value costs scipy's exact ``smirnov`` sum on both sides).
(b) False-alarm rate over many windows of no-drift data (nominal: the p-value, 0.05;
    Bonferroni over independent features gives 1 - (1 - 0.05/F)^F, just under it), and
    power (share of drifted windows detected) for windows of 50..500 rows when one of the
    F features is shifted by 0.3 sd. Gaussian features; a fresh reference every 50
    windows, so the rate averages over references as an operator's lifetime would.
    PSI (threshold 0.2) is reported from the same windows for comparison.
(c) ``--alibi-python PATH``: runs ``bench/alibi_ksdrift_bench.py`` with that interpreter
    (a side environment with alibi-detect, ``bench/requirements-alibi.txt``) on the same
    arrays and adds its timing and agreement as rows.
``--pumpkin``: the same false-alarm / power study on real pumpkin photo features
(orange crop as reference and no-drift windows; drift: 10% of the crop is the white
variety), drawn from finite pools of rendered photos, so indicative only.

Prints a JSON list of rows ``{"name","value","unit","baseline","baseline_value",
"ratio","notes"}`` (``ratio`` = value / baseline_value); ``--out FILE`` writes it too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import ks_2samp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import rows
from bench.rows import emit
from controller.drift import Reference, ks_test

row = partial(rows.row, digits=6)

N_REF = 2000  # reference.json holds at most 2000 rows (docs/contracts.md)
PUMPKIN_F = 10  # len(flows.pumpkin_model.FEATURE_NAMES)
SHIFT = 0.3



def paired_seconds(a: Callable[[], object], b: Callable[[], object],
                   repeats: int) -> tuple[float, float]:
    """Fastest of ``repeats`` runs of each, interleaved so that load from other processes
    on a shared machine hits both sides alike; the minimum is the least disturbed run."""
    a(), b()  # warm caches and lazy imports
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(ta), min(tb)


def gaussian(rng: np.random.Generator, n: int, f: int, shift: float = 0.0) -> np.ndarray:
    x = rng.normal(size=(n, f))
    x[:, 0] += shift
    return x


def speed_rows(seed: int, repeats: int, alibi_python: str | None) -> list[dict[str, Any]]:
    rows = []
    for f, m in ((8, 10_000), (PUMPKIN_F, 10_000), (32, 10_000), (PUMPKIN_F, 500)):
        rng = np.random.default_rng(seed)
        ref_x, win = gaussian(rng, N_REF, f), gaussian(rng, m, f, SHIFT)
        build, _ = paired_seconds(
            lambda x=ref_x, f=f: Reference.from_samples([f"f{i}" for i in range(f)], x),
            lambda: None, repeats)
        ref = Reference.from_samples([f"f{i}" for i in range(f)], ref_x)
        ours, base = paired_seconds(
            lambda r=ref, w=win: ks_test(r, w),
            lambda a=ref_x, b=win, f=f: [ks_2samp(a[:, i], b[:, i], method="asymp")
                                         for i in range(f)],
            repeats)
        result = ks_test(ref, win)
        rows.append(row(
            f"ks_test {m}x{f} (ref {N_REF})", ours, "s", "scipy ks_2samp asymp per feature",
            base, f"{base / ours:.1f}x faster; includes PSI; one-off Reference build "
            f"{build * 1e3:.2f} ms; detected={result.detected}; fastest of {repeats}"))
        if alibi_python and m == 10_000 and f == PUMPKIN_F:
            rows.extend(alibi_rows(alibi_python, ref_x, win, ours, result.features, repeats))
    return rows


def alibi_rows(python: str, ref_x: np.ndarray, win: np.ndarray, ours: float,
               features: tuple[Any, ...], repeats: int) -> list[dict[str, Any]]:
    script = Path(__file__).with_name("alibi_ksdrift_bench.py")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "ref.npy", ref_x.astype(np.float32))
        np.save(Path(tmp) / "win.npy", win.astype(np.float32))
        out = subprocess.run([python, str(script), tmp, "--repeats", str(repeats)],
                             check=True, capture_output=True, text=True, timeout=900)
    alibi = json.loads(out.stdout)
    ours_p = {ft.name: ft.p_value for ft in features}
    diff = max(abs(ours_p[f"f{i}"] - p) for i, p in enumerate(alibi["p_values"]))
    m, f = win.shape
    return [
        row(alibi["name"], alibi["value"], "s", None, None, alibi["notes"]),
        row(f"ks_test {m}x{f} vs alibi-detect", ours, "s", "alibi-detect KSDrift.predict",
            alibi["value"], f"{alibi['value'] / ours:.1f}x faster; same is_drift="
            f"{alibi['is_drift']}; max |p ours - p alibi| {diff:.1e} (alibi keeps float32)"),
    ]


def rates(windows: Callable[[np.random.Generator, int], tuple[np.ndarray, list[np.ndarray]]],
          sizes: tuple[int, ...], trials: int, seed: int, p_value: float,
          names: list[str]) -> dict[int, tuple[float, float]]:
    """Share of windows flagged by KS (Bonferroni) and by PSI > 0.2, per window size."""
    out = {}
    for m in sizes:
        rng = np.random.default_rng([seed, m])
        ks_hits = psi_hits = 0
        for start in range(0, trials, 50):
            ref_x, wins = windows(rng, m)  # one reference, up to 50 windows
            ref = Reference.from_samples(names, ref_x)
            for win in wins[: trials - start]:
                result = ks_test(ref, win, p_value=p_value)
                ks_hits += result.detected
                psi_hits += max(ft.psi for ft in result.features) > 0.2
        out[m] = (ks_hits / trials, psi_hits / trials)
    return out


def accuracy_rows(label: str, null: Callable[..., Any], drift: Callable[..., Any],
                  sizes: tuple[int, ...], trials: int, power_trials: int, seed: int,
                  names: list[str]) -> list[dict[str, Any]]:
    p = 0.05
    f = len(names)
    far = rates(null, sizes, trials, seed, p, names)
    power = rates(drift, sizes, power_trials, seed + 1, p, names)
    nominal = 1 - (1 - p / f) ** f
    rows = []
    for m in sizes:
        se = (far[m][0] * (1 - far[m][0]) / trials) ** 0.5
        rows.append(row(f"false-alarm rate KS {label} window {m}", far[m][0], "fraction",
                        "nominal p-value", p, f"{trials} no-drift windows, ±{se:.3f} (1 s.e.); "
                        f"Bonferroni bound for {f} independent features {nominal:.4f}; "
                        f"PSI>0.2 on the same windows: {far[m][1]:.3f}"))
    for m in sizes:
        rows.append(row(f"power KS {label} window {m}", power[m][0], "fraction", None, None,
                        f"{power_trials} drifted windows; PSI>0.2: {power[m][1]:.3f}"))
    return rows


def gaussian_windows(shift: float, f: int) -> Callable[..., Any]:
    def make(rng: np.random.Generator, m: int) -> tuple[np.ndarray, list[np.ndarray]]:
        return gaussian(rng, N_REF, f), [gaussian(rng, m, f, shift) for _ in range(50)]
    return make


def pumpkin_windows(white_fraction: float = 0.1) -> tuple[Callable[..., Any], ...]:
    """Real photo features: reference and no-drift windows from the orange crop; drifted
    windows from a crop where ``white_fraction`` of the pumpkins are the new white variety.
    Photos are rendered once into pools (1,000 at a time, ~1 s each) and windows drawn
    from them without replacement, so this stays a minute-scale optional run."""
    import torch

    from flows.pumpkin_data import generate
    from flows.pumpkin_model import summary_features

    def feats(n: int, seed: int, **kw: Any) -> np.ndarray:
        parts = [summary_features(torch.from_numpy(generate(1000, seed=seed + i, **kw).x))
                 for i in range(n // 1000)]
        return torch.cat(parts).numpy().astype(np.float64)

    ref_pool = feats(6000, 10_000, variety="orange")
    null_pool = feats(6000, 30_000, variety="orange")
    drift_pool = feats(6000, 20_000, variety="mixed", white_fraction=white_fraction)

    def maker(pool: np.ndarray) -> Callable[..., Any]:
        def make(rng: np.random.Generator, m: int) -> tuple[np.ndarray, list[np.ndarray]]:
            ref = ref_pool[rng.choice(len(ref_pool), N_REF, replace=False)]
            return ref, [pool[rng.choice(len(pool), m, replace=False)] for _ in range(50)]
        return make

    return maker(null_pool), maker(drift_pool)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per measurement")
    parser.add_argument("--trials", type=int, default=1000, help="no-drift windows per size")
    parser.add_argument("--power-trials", type=int, default=300, help="drifted windows per size")
    parser.add_argument("--alibi-python", help="python of a side env with alibi-detect")
    parser.add_argument("--pumpkin", action="store_true", help="also on real pumpkin features")
    parser.add_argument("--out", help="also write the JSON rows here")
    args = parser.parse_args(argv)
    if args.trials < 200:
        parser.error("--trials must be >= 200 for a meaningful false-alarm rate")
    sizes = (50, 100, 200, 500)
    rows = speed_rows(args.seed, args.repeats, args.alibi_python)
    names = [f"f{i}" for i in range(PUMPKIN_F)]
    rows += accuracy_rows(f"gaussian F={PUMPKIN_F} shift {SHIFT}sd",
                          gaussian_windows(0.0, PUMPKIN_F), gaussian_windows(SHIFT, PUMPKIN_F),
                          sizes, args.trials, args.power_trials, args.seed, names)
    if args.pumpkin:
        from flows.pumpkin_model import FEATURE_NAMES

        null, drift = pumpkin_windows()
        rows += accuracy_rows("pumpkin orange->10% white", null, drift, sizes, 200, 100,
                              args.seed, list(FEATURE_NAMES))
    emit(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
