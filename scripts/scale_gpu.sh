#!/usr/bin/env bash
# The --scale table and the several-models figure on an accelerator machine, in one go
# (not yet run: no GPU was lent).
#   bash scripts/scale_gpu.sh [OUT_DIR]
# Needs jax with CUDA (pip install -U "jax[cuda12]") and ~25 GB of host RAM for the
# Netflix-shaped set. Targets (issue): ML-100K >= 1.5e9 entries/s on one H100-class GPU,
# a Netflix-shaped epoch under 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/scale_gpu}
mkdir -p "$OUT"
python -c "import jax; print(jax.devices())" | tee "$OUT/devices.txt"
# Several models in one compiled step: K = 1, 4, 16 vmapped vs K in turn (honest, hidden 100).
python scripts/benchmark_models.py --members 1,4,16 --repeats 5 \
    --json "$OUT/models.json" | tee "$OUT/models.txt"
[ -f "$OUT/ml-20m.npz" ] || python scripts/make_synthetic.py --shape ml-20m --out "$OUT/ml-20m.npz"
[ -f "$OUT/netflix.npz" ] || python scripts/make_synthetic.py --shape netflix --out "$OUT/netflix.npz"
python scripts/benchmark.py --precision --repeats 5 --json "$OUT/precision.json" | tee "$OUT/precision.txt"
python scripts/benchmark.py --scale --synthetic-dir "$OUT" --modes jit,sharded \
    --dtypes float32,bfloat16 --orientations item,user --repeats 5 \
    --json "$OUT/scale.json" | tee "$OUT/scale.txt"
