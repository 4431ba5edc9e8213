#!/usr/bin/env bash
# One-shot GPU check, run from the repository root on a CUDA machine with torch, triton, nvcc and ninja
# installed (nothing is fetched). In one go (about 6 minutes on an H200):
#   - compiles the C++/CUDA extension (`neuinv build-ext`),
#   - runs the operator, conformance, kernel and bad-input tests on the GPU (the sync-free test among them), and
#     the Triton pipeline's tests compiled for the GPU,
#   - checks the certificate on CUDA tensors for every GPU backend and method,
#   - a compute-sanitizer memcheck of every CUDA operator (invert, and solve for n <= 8),
#   - the throughput table (neuinv beside torch.linalg.inv and the optional baselines), batched_inverse end
#     to end against its bare operator and against the Triton backend, and batched_solve against torch's.
# Results go to $OUT (default bench/out); the tables print last. The steps run most important first, each with
# its own timeout, so that a run cut short by the device tool's limit still leaves the first results:
#   OUT=$OUT THROUGHPUT_DTYPES=float32 timeout 560 bash bench/gpu_check.sh   (run's timeout_s 570)
# TRAIN=1 also trains the paper's 16x16 Table 1 networks (2-FC and 3-FC, 3 runs each, full length) in the
# background on the authors' A0 when .gpu-carry/base_matrix.npy is there (a copy of ../shared/paper/matrix_16/;
# about 8 minutes on an H100: run it with THROUGHPUT_DTYPES="" and the device tool's longest timeout);
# THROUGHPUT_DTYPES (default "float32 float64") picks the throughput table's dtypes, "" skips it.
set -uo pipefail
TRAIN=${TRAIN:-0}
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

timeout 150 python3 -m pytest -q -rf --tb=short -p no:cacheprovider tests/test_operator.py tests/test_conformance.py \
  tests/test_cpp_extension.py tests/test_bad_input.py tests/test_solve_operator.py::test_cuda_operator_agrees_with_the_cpu_operator \
  tests/test_solve_operator.py::test_cuda_threads_striding_over_a_large_batch \
  tests/test_solve_operator.py::test_cuda_solve_above_its_kernels_size_runs_the_reference > "$OUT/pytest-cuda.txt" 2>&1
stamp "pytest exit $?: $(tail -1 "$OUT/pytest-cuda.txt")"
grep -E "^FAILED|^E  |Fatal|line [0-9]+ in test_" "$OUT/pytest-cuda.txt" | head -30

timeout 90 python3 - > "$OUT/certificate-cuda.txt" 2>&1 <<'PY'
# The certificate on CUDA tensors, every GPU backend and method: singular matrices never certified, bounds sound.
import torch, neuinv
from neuinv.testing import conditioned_matrices, warm_start
singular = torch.tensor([[[2.0, 4, 6], [2, 0, 2], [6, 8, 14]]], dtype=torch.float64).cuda()
for backend in ("auto", "cuda", "triton", "torch"):
    if backend != "auto" and not neuinv.available_backends()[backend].available:
        print(backend, "not available"); continue
    for dtype in (torch.float32, torch.float64):
        for method in ("exact", "newton_schulz"):
            X, info = neuinv.batched_inverse_ex(singular.to(dtype), method=method, backend=backend)
            assert not info.certified.any() and torch.isnan(X).all(), (backend, dtype, info)
        for cond in (1e2, 1e6):
            A = conditioned_matrices(1000, 8, cond, dtype, seed=1).cuda()
            A[17] = 0.0
            for label, options in (("exact", {}), ("scaled transpose", dict(method="newton_schulz")),
                                   ("warm", dict(init=warm_start(A, 1e-3)))):
                X, info = neuinv.batched_inverse_ex(A, backend=backend, **options)
                truth = torch.linalg.inv_ex(A.double())[0]  # A[17] is singular
                error = torch.linalg.matrix_norm(X.double() - truth) / torch.linalg.matrix_norm(truth)
                ok = info.certified
                assert (error[ok] <= info.error_bound[ok]).all() and not ok[17], (backend, dtype, cond, label)
                print(backend, dtype, cond, label, f"certified {ok.float().mean():.3f}, "
                      f"median bound {info.error_bound[ok].median():.2e}, median error {error[ok].median():.2e}")
print("certificate check done")
PY
stamp "certificate exit $?: $(tail -1 "$OUT/certificate-cuda.txt")"

timeout 90 compute-sanitizer --tool memcheck --print-limit 10 python3 - > "$OUT/memcheck.txt" 2>&1 <<'PY'
import torch, neuinv
from neuinv.testing import conditioned_matrices, warm_start
from neuinv import extension
assert extension.load() and extension.has_cuda_kernels()
for n in (1, 3, 5, 8, 13, 32, 33, 64):
    for dtype in (torch.float32, torch.float64):
        A = conditioned_matrices(37, n, 10.0, dtype, seed=n).cuda()
        A[5] = 0.0  # a singular member
        X0 = warm_start(A, 1e-2)
        mask = torch.arange(37, device="cuda") % 3 > 0
        for args in ((None, None, False), (None, None, True), (X0, None, True), (X0, mask, True)):
            for positive_definite in (False, True):
                torch.ops.neuinv.invert(A, *args, 1e-7, 1e-3, 10, 0.5, 1.0, positive_definite)
        if n <= 8:  # neuinv::solve on CUDA: without R, from R, one A or one B broadcast, k = 1 and 3
            for k in (1, 3):
                B = torch.randn(37, n, k, dtype=dtype, device="cuda")
                R, _, R_bound, _, _ = torch.ops.neuinv.invert(A, None, None, False, 1e-7, 1e-3, 10, 0.5, 1.0)
                for positive_definite in (False, True):
                    torch.ops.neuinv.solve(A, B, None, None, positive_definite)
                    torch.ops.neuinv.solve(A[:1], B, None, None, positive_definite)
                    torch.ops.neuinv.solve(A, B[:1], None, None, positive_definite)
                torch.ops.neuinv.solve(A, B, R, R_bound)
torch.cuda.synchronize()
print("memcheck script done")
PY
stamp "memcheck exit $?: $(grep -E 'ERROR SUMMARY|script done' "$OUT/memcheck.txt" | tr '\n' ' ')"

# batched_inverse end to end against its bare operator (one neuinv::invert call) and torch.linalg.inv.
timeout 120 python3 - > "$OUT/end-to-end-cuda.txt" 2>&1 <<'PY'
import torch, neuinv
from neuinv.testing import conditioned_matrices
from neuinv import extension
assert extension.load() and extension.has_cuda_kernels(), neuinv.available_backends()
def timed(f, repeats=10):
    f(); torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        f()
    end.record(); torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats
print("| n | dtype | batch | torch.linalg.inv ms | neuinv::invert ms | batched_inverse ms | end-to-end / operator | speed-up vs torch | GB/s (A read + X written) | triton backend ms (speed-up vs torch) |")
print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
for dtype in (torch.float32, torch.float64):
    for n in (2, 3, 4, 8, 16, 32):
        batch = min(10**6, 2**24 // (n * n))
        A = conditioned_matrices(batch, n, 100.0, dtype, seed=n).cuda()
        t_torch = timed(lambda: torch.linalg.inv(A))
        t_op = timed(lambda: torch.ops.neuinv.invert(A, None, None, False, 1e-7, 1e-3, 64, 0.5, 1.0))
        t_api = timed(lambda: neuinv.batched_inverse(A))
        t_triton = timed(lambda: neuinv.batched_inverse(A, backend="triton"))
        gbs = 2 * A.numel() * A.element_size() / (t_api * 1e-3) / 1e9
        print(f"| {n} | {str(dtype)[6:]} | {batch} | {t_torch:.3f} | {t_op:.3f} | {t_api:.3f} | {t_api / t_op:.2f} | "
              f"{t_torch / t_api:.2f} | {gbs:.0f} | {t_triton:.3f} ({t_torch / t_triton:.2f}) |", flush=True)
print()
print("| n | dtype | batch | torch.linalg.solve ms (k = 1) | batched_solve ms | speed-up vs torch |")
print("|---|---|---|---|---|---|", flush=True)
for dtype in (torch.float32, torch.float64):
    for n in (2, 4, 8):
        batch = min(10**6, 2**24 // (n * n))
        A = conditioned_matrices(batch, n, 100.0, dtype, seed=n).cuda()
        b = torch.randn(batch, n, dtype=dtype, device="cuda")
        t_torch = timed(lambda: torch.linalg.solve(A, b))
        t_api = timed(lambda: neuinv.batched_solve(A, b))
        print(f"| {n} | {str(dtype)[6:]} | {batch} | {t_torch:.3f} | {t_api:.3f} | {t_torch / t_api:.2f} |", flush=True)
PY
stamp "end-to-end exit $?"

timeout 150 python3 -m pytest -q -rf --tb=short -p no:cacheprovider tests/test_triton_invert.py \
  tests/test_triton_kernels.py > "$OUT/pytest-triton-cuda.txt" 2>&1
stamp "pytest triton exit $?: $(tail -1 "$OUT/pytest-triton-cuda.txt")"
grep -E "^FAILED|^E  |line [0-9]+ in test_" "$OUT/pytest-triton-cuda.txt" | head -30

for pid in "${TRAINING[@]}"; do wait "$pid"; stamp "training process $pid exit $?"; done
if [ -n "$THROUGHPUT_DTYPES" ]; then
  timeout 150 python3 bench/throughput.py --device cuda --sizes 2 3 4 8 16 32 --dtypes $THROUGHPUT_DTYPES \
    --max-batch 1000000 --repeats 5 --skip-slow --json "$OUT/throughput-cuda.json" \
    > "$OUT/throughput-cuda.md" 2> "$OUT/throughput-cuda.log"
  stamp "throughput exit $?"
fi
if [ "$TRAIN" = 1 ]; then
  tail -c 600 "$OUT"/reproduce-16x16-*.log
  cat "$OUT"/reproduce-16x16-*.md
fi
[ -f "$OUT/throughput-cuda.md" ] && cat "$OUT/throughput-cuda.md"
cat "$OUT/end-to-end-cuda.txt" 2>/dev/null
