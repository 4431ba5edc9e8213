#!/usr/bin/env bash
# One-shot GPU check, run from the repository root on a CUDA machine with torch and triton
# installed (nothing is fetched): installs neuinv in place, runs the test suite on the GPU
# (the Triton kernels compiled, the CUDA-marked tests enabled), then the kernel benchmarks
# and the throughput table. Results go to $OUT (default bench/out); the tables print last.
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m pip install --no-deps --no-build-isolation --quiet -e . > "$OUT/install.log" 2>&1 \
  || { echo "install failed:"; tail -20 "$OUT/install.log"; exit 1; }
python3 -m neuinv.cli info
timeout 150 python3 -m pytest -q --maxfail=10 -p no:cacheprovider tests/test_triton_kernels.py tests/ \
  > "$OUT/pytest-cuda.txt" 2>&1
echo "pytest exit $?: $(tail -1 "$OUT/pytest-cuda.txt")"
timeout 200 python3 bench/kernels.py --json "$OUT/kernels.json" > "$OUT/kernels.md" 2>&1
echo "kernels exit $?"
timeout 100 python3 bench/throughput.py --device cuda --sizes 4 16 32 --max-batch 1000000 --repeats 5 \
  --skip-slow --json "$OUT/throughput-cuda.json" > "$OUT/throughput-cuda.md" 2> "$OUT/throughput-cuda.log"
echo "throughput exit $?"
grep -E "FAILED|Error" "$OUT/pytest-cuda.txt" | head -20
cat "$OUT/kernels.md" "$OUT/throughput-cuda.md"
