"""Baseline: the flow's training work in plain PyTorch, without Metaflow.

Same data (``flows/pumpkin_data.py``), same model and training loop
(``flows/pumpkin_model.py``), same defaults as ``PumpkinFlow``, so the difference to a
flow run is Metaflow's overhead (process per step, artifact persistence), not the model.

    python bench/baseline_train.py --device cpu
    python bench/baseline_train.py --device cuda --n-samples 20000

Prints one JSON object: total wall time (imports included), the time of data generation
and of training, samples per second (training samples times epochs over the training
seconds) and held-out accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

FLOWS = Path(__file__).resolve().parents[1] / "flows"


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--n-samples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--variety", default="orange", choices=["orange", "white", "mixed"])
    parser.add_argument("--watermelon-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    wall_start = time.perf_counter()

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the flow's train step does
    sys.path.insert(0, str(FLOWS))
    import numpy as np
    import pumpkin_data
    import pumpkin_model
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pumpkin_model.pick_device(args.device)

    t0 = time.perf_counter()
    batch = pumpkin_data.generate(args.n_samples, seed=args.seed, variety=args.variety,
                                  watermelon_fraction=args.watermelon_fraction)
    generate_s = time.perf_counter() - t0
    # The flow's verify step: drop watermelons and invalid photos.
    keep = ~pumpkin_data.detect_watermelons(batch.x) & ~pumpkin_data.find_invalid(batch.x)
    keep &= batch.y >= 0
    x, y = pumpkin_data.to_uint8(batch.x[keep]), batch.y[keep]
    order = np.random.default_rng(args.seed).permutation(len(x))
    n_held = max(1, int(0.15 * len(x)))
    test, val, train = np.split(order, [n_held, 2 * n_held])

    if device.type == "cuda":
        torch.cuda.synchronize()
    result = pumpkin_model.train_model(
        x[train], y[train], x[val], y[val], epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, seed=args.seed, device=device,
    )
    pred = pumpkin_model.predict(result.model, x[test])
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "n_train": len(train),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "wall_seconds": round(time.perf_counter() - wall_start, 3),
        "generate_seconds": round(generate_s, 3),
        "train_seconds": round(result.seconds, 3),
        "samples_per_second": round(result.samples_per_second, 1),
        "test_accuracy": round(float((pred == y[test]).mean()), 4),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
