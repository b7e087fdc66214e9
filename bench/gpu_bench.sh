#!/usr/bin/env bash
# One prepared GPU check (under 5 minutes on an H100/H200): the training flow through
# Metaflow and the plain PyTorch baseline, same data and epochs, both on CUDA; records
# samples/s for each into ${OUT:-bench}/gpu_bench.json. Never needed by the tests.
#   usage (device machine, repo root, after `make install`): bash bench/gpu_bench.sh
set -euo pipefail
OUT=${OUT:-bench}
N=${N_SAMPLES:-20000}
EPOCHS=${EPOCHS:-4}
export METAFLOW_USER=${METAFLOW_USER:-trellis} OMP_WAIT_POLICY=PASSIVE
export METAFLOW_DATASTORE_SYSROOT_LOCAL=$(mktemp -d)
PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY bench/baseline_train.py --device cuda --n-samples "$N" --epochs "$EPOCHS" > "$OUT/gpu_baseline.json"
start=$(date +%s.%N)
$PY flows/pumpkin_flow.py --no-pylint run --n_samples "$N" --epochs "$EPOCHS" --with resources:gpu=1 \
  --run-id-file "$OUT/gpu_run_id"
end=$(date +%s.%N)
$PY - "$OUT" "$start" "$end" <<'PY'
import json, sys
from metaflow import Run, namespace
out, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
namespace(None)
run = Run("PumpkinFlow/" + open(f"{out}/gpu_run_id").read().strip())
base = json.load(open(f"{out}/gpu_baseline.json"))
rows = [
    {"name": "training throughput on GPU: PumpkinFlow (Metaflow)",
     "value": run.data.samples_per_second, "unit": "samples/s",
     "baseline": "plain PyTorch on GPU, same data and epochs",
     "baseline_value": base["samples_per_second"],
     "ratio": round(run.data.samples_per_second / base["samples_per_second"], 3),
     "notes": f"device {run.data.device}; flow wall {end - start:.1f}s vs baseline "
              f"{base['wall_seconds']}s; accuracy {run.data.metrics['accuracy']:.3f}"},
]
json.dump(rows, open(f"{out}/gpu_bench.json", "w"), indent=2)
print(json.dumps(rows, indent=2))
PY
