#!/usr/bin/env bash
# One-shot GPU check, run from the repository root on a CUDA machine with torch, triton, nvcc and ninja
# installed (nothing is fetched). In one go:
#   - trains the paper's 16x16 Table 1 networks (2-FC and 3-FC, 3 runs each, full length) in the background
#     on the authors' A0 when .gpu-carry/base_matrix.npy is there (a copy of ../shared/paper/matrix_16/),
#   - compiles the C++/CUDA extension (`neuinv build-ext`), runs the kernel tests on the GPU and a
#     compute-sanitizer memcheck of the CUDA kernels,
#   - once training is done (so nothing shares the GPU), the throughput table with the CUDA kernels.
# Results go to $OUT (default bench/out); the tables print last.
# TRAIN=0 skips the training (about 8 minutes for both networks side by side on an H100: run it with
# THROUGHPUT_DTYPES="" and the device tool's longest timeout, carrying .gpu-carry);
# THROUGHPUT_DTYPES (default "float32 float64") picks the throughput table's dtypes, "" skips it.
set -uo pipefail
TRAIN=${TRAIN:-1}
THROUGHPUT_DTYPES=${THROUGHPUT_DTYPES-float32 float64}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=16
START=$SECONDS
stamp() { echo "[$((SECONDS - START)) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m pip install --no-deps --no-build-isolation --quiet -e . > "$OUT/install.log" 2>&1 \
  || { echo "install failed:"; tail -20 "$OUT/install.log"; exit 1; }

BASE=""
[ -f .gpu-carry/base_matrix.npy ] && BASE="--base-matrix .gpu-carry/base_matrix.npy"
TRAINING=()
[ "$TRAIN" = 1 ] && for model in 2-FC 3-FC; do
  timeout 560 python3 -m neuinv.cli reproduce --table 1 --dataset paper-16x16 --model "$model" --runs 3 \
    --device cuda $BASE > "$OUT/reproduce-16x16-$model.md" 2> "$OUT/reproduce-16x16-$model.log" &
  TRAINING+=($!)
done
stamp "training processes started: ${#TRAINING[@]}"

( time python3 -m neuinv.cli build-ext ) > "$OUT/build.log" 2>&1
stamp "build-ext exit $?: $(grep -E '^real|built and' "$OUT/build.log" | tr '\n' ' ')"
python3 -m neuinv.cli info

timeout 150 python3 -m pytest -q -rf --tb=short -p no:cacheprovider tests/test_cpp_extension.py \
  tests/test_accuracy.py tests/test_bad_input.py > "$OUT/pytest-cuda.txt" 2>&1
stamp "pytest exit $?: $(tail -1 "$OUT/pytest-cuda.txt")"
grep -E "^FAILED|^E  |Fatal|line [0-9]+ in test_" "$OUT/pytest-cuda.txt" | head -30

timeout 120 python3 - > "$OUT/certificate-cuda.txt" 2>&1 <<'PY'
# The certificate on CUDA tensors, every GPU backend: singular matrices never certified, bounds sound.
import torch, neuinv
from neuinv.testing import conditioned_matrices, warm_start
singular = torch.tensor([[[2.0, 4, 6], [2, 0, 2], [6, 8, 14]]], dtype=torch.float64).cuda()
for backend in ("auto", "cuda", "triton", "torch"):
    if backend != "auto" and not neuinv.available_backends()[backend].available:
        print(backend, "not available"); continue
    for dtype in (torch.float32, torch.float64):
        X, info = neuinv.batched_inverse_ex(singular.to(dtype), backend=backend)
        assert not info.certified.any() and torch.isnan(X).all(), (backend, dtype, info)
        for cond in (1e2, 1e6):
            A = conditioned_matrices(1000, 8, cond, dtype, seed=1).cuda()
            for init in (None, warm_start(A, 1e-3)):
                X, info = neuinv.batched_inverse_ex(A, init=init, backend=backend)
                truth = torch.linalg.inv(A.double())
                error = torch.linalg.matrix_norm(X.double() - truth) / torch.linalg.matrix_norm(truth)
                assert (error[info.certified] <= info.error_bound[info.certified]).all(), (backend, dtype, cond)
                print(backend, dtype, cond, "warm" if init is not None else "cold",
                      f"certified {info.certified.float().mean():.3f}, median bound {info.error_bound.median():.2e}")
print("certificate check done")
PY
stamp "certificate exit $?: $(tail -1 "$OUT/certificate-cuda.txt")"

timeout 120 compute-sanitizer --tool memcheck --print-limit 10 python3 - > "$OUT/memcheck.txt" 2>&1 <<'PY'
import torch, neuinv
from neuinv.testing import conditioned_matrices, warm_start
from neuinv import extension
assert extension.load() and extension.has_cuda_kernels()
for n in (1, 3, 5, 8, 13, 32, 33, 64):
    for dtype in (torch.float32, torch.float64):
        A = conditioned_matrices(37, n, 10.0, dtype, seed=n).cuda()
        A[5] = 0.0  # a singular member
        X, info = torch.ops.neuinv.exact_inverse(A)
        r = torch.ops.neuinv.residual_norm(A, X)
        X2, r2, done, steps = torch.ops.neuinv.newton_schulz(A, warm_start(A, 1e-2), 1e-7, 1e-3, 10, True, 0.5)
torch.cuda.synchronize()
print("memcheck script done")
PY
stamp "memcheck exit $?: $(grep -E 'ERROR SUMMARY|script done' "$OUT/memcheck.txt" | tr '\n' ' ')"

for pid in "${TRAINING[@]}"; do wait "$pid"; stamp "training process $pid exit $?"; done
if [ -n "$THROUGHPUT_DTYPES" ]; then
  timeout 150 python3 bench/throughput.py --device cuda --sizes 4 8 16 32 --dtypes $THROUGHPUT_DTYPES \
    --max-batch 1000000 --repeats 5 --skip-slow --json "$OUT/throughput-cuda.json" \
    > "$OUT/throughput-cuda.md" 2> "$OUT/throughput-cuda.log"
  stamp "throughput exit $?"
  # Where the auto path's time goes beyond the kernels (on the H100 it took 10x the exact kernel at n = 4).
  timeout 60 python3 - > "$OUT/profile-auto-cuda.txt" 2>&1 <<'PY'
import torch, neuinv
from torch.profiler import ProfilerActivity, profile
from neuinv.testing import conditioned_matrices
for n, batch in ((4, 10**6), (16, 262144)):
    A = conditioned_matrices(batch, n, 100.0, torch.float32, seed=n).cuda()
    for _ in range(3):
        neuinv.batched_inverse(A)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            neuinv.batched_inverse(A)
        torch.cuda.synchronize()
    print(f"## batched_inverse, n = {n}, float32, batch {batch}, 5 calls")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=8))
PY
  stamp "profile exit $?"
fi
if [ "$TRAIN" = 1 ]; then
  tail -c 600 "$OUT"/reproduce-16x16-*.log
  cat "$OUT"/reproduce-16x16-*.md
fi
[ -f "$OUT/throughput-cuda.md" ] && cat "$OUT/throughput-cuda.md"
[ -f "$OUT/profile-auto-cuda.txt" ] && head -c 6000 "$OUT/profile-auto-cuda.txt"
