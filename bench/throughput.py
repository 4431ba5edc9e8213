"""Throughput of neuinv against torch.linalg.inv, torch.linalg.solve, numpy.linalg.inv and, where
installed, NVIDIA Warp's wp.inverse (n <= 4), JAX's jitted jnp.linalg.inv, CuPy's cuBLAS batched
inverse (CUDA tensors only) and a torch.compile'd closed-form (adjugate / determinant) inverse (n <= 4).

Every method runs in the same process on the same matrices (cond 100). For each one the table
gives the median wall time, matrices per second, the roofline fraction (the time needed just to
move the bytes the method must read and write: A, the warm start where used, and X, at the copy
bandwidth measured in this run, divided by the measured time) and the largest relative error
||X - A^-1||_F / ||A^-1||_F over the batch, against A^-1 from float64 LU. A method whose error is
above 10 cond n eps(dtype) is marked inaccurate in the table and on stderr. An optional baseline
whose package is missing gets a row saying "not installed"; one that fails gets a row saying why.

    python bench/throughput.py --quick --device cpu
    python bench/throughput.py --device cuda --json bench/out/throughput-cuda.json
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

import neuinv
from neuinv.testing import conditioned_matrices, warm_start

SIZES = [2, 3, 4, 8, 16, 32, 64]
MAX_ELEMENTS = 2**26  # per input tensor: 512 MiB in float64
MAX_ELEMENTS_QUICK = 2**20
COND = 100.0
ACCURACY_FACTOR = 10  # inaccurate: max relative error > ACCURACY_FACTOR * COND * n * eps(dtype)
SMALL = 4  # Warp's wp.inverse and the closed form: n <= SMALL

NOTES = {
    "warp": "warp: one wp.launch (one thread per matrix, wp.inverse on wp.mat22 / mat33 / mat44, mat22d ... in "
            "float64) plus wp.synchronize_device; input and output are torch tensors wrapped once by wp.from_torch "
            "(zero copy), outside the timing; the kernel's compilation is in the untimed warm-up",
    "jax": "jax: the jax.jit'ed jnp.linalg.inv call plus block_until_ready, on an array made once from A by DLPack "
           "(outside the timing); tracing and compilation are in the untimed warm-up; float64 with jax_enable_x64",
    "torch.compile": "torch.compile closed form: the adjugate over the determinant (n = 4 from 2x2 minors, the "
                     "Laplace expansion complement), compiled once per shape (dynamic=False) in the untimed warm-up",
    "cupy": "cupy: cupy.linalg.inv (cuBLAS getrfBatched + getriBatched) on a CuPy array sharing A's memory "
            "(DLPack, outside the timing), plus the device synchronisation",
}


@functools.lru_cache(maxsize=None)
def optional_module(name: str):
    """warp (initialised quietly), jax (float64 enabled, no GPU memory preallocation) or cupy; None if missing."""
    try:
        if name == "warp":
            import warp as wp
            wp.config.quiet = True  # older warp; newer: log_level
            wp.config.log_level = getattr(wp, "LOG_WARNING", 30)
            wp.init()
            return wp
        if name == "jax":
            os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch
            import jax
            jax.config.update("jax_enable_x64", True)
            return jax
        if name == "cupy":
            import cupy
            return cupy
    except ImportError:
        return None
    raise ValueError(name)


def not_installed(package: str) -> str:
    return f"not installed (pip install '{package}')"


def set_up_on_first_call(setup):
    """A callable that runs setup() on its first call (the untimed accuracy check), then what setup returned."""
    prepared = []

    def fn():
        if not prepared:
            prepared.append(setup())
        return prepared[0]()
    return fn


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn, device: str, repeats: int, warm_up: bool = True) -> tuple[float, float, float]:
    """Median, 20th and 80th percentile wall time of fn() after one warm-up call (none if warm_up is False)."""
    if warm_up:
        fn()
        synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times), times[len(times) // 5], times[(4 * len(times)) // 5]


def copy_bandwidth(device: str, repeats: int) -> float:
    """Bytes per second of a large device copy, counting bytes read plus bytes written."""
    src = torch.empty(2**26 if device.startswith("cuda") else 2**24, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds, _, _ = median_seconds(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * src.element_size() / seconds


def closed_form_inverse_2(A: torch.Tensor) -> torch.Tensor:
    a, b, c, d = A[..., 0, 0], A[..., 0, 1], A[..., 1, 0], A[..., 1, 1]
    r = 1 / (a * d - b * c)
    return torch.stack([d * r, -b * r, -c * r, a * r], -1).unflatten(-1, (2, 2))


def closed_form_inverse_3(A: torch.Tensor) -> torch.Tensor:
    a = [[A[..., i, j] for j in range(3)] for i in range(3)]
    cof = [[a[(i + 1) % 3][(j + 1) % 3] * a[(i + 2) % 3][(j + 2) % 3]
            - a[(i + 1) % 3][(j + 2) % 3] * a[(i + 2) % 3][(j + 1) % 3] for j in range(3)] for i in range(3)]
    r = 1 / (a[0][0] * cof[0][0] + a[0][1] * cof[0][1] + a[0][2] * cof[0][2])
    return torch.stack([cof[j][i] * r for i in range(3) for j in range(3)], -1).unflatten(-1, (3, 3))


def closed_form_inverse_4(A: torch.Tensor) -> torch.Tensor:
    """Adjugate over determinant from the 2x2 minors of rows 0-1 (s) and rows 2-3 (c): the Laplace
    expansion of det along the first two rows pairs each s with its complementary c."""
    a = [[A[..., i, j] for j in range(4)] for i in range(4)]
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    s = [a[0][j] * a[1][k] - a[1][j] * a[0][k] for j, k in pairs]
    c = [a[2][j] * a[3][k] - a[3][j] * a[2][k] for j, k in pairs]
    r = 1 / (s[0] * c[5] - s[1] * c[4] + s[2] * c[3] + s[3] * c[2] - s[4] * c[1] + s[5] * c[0])
    X = [
        a[1][1] * c[5] - a[1][2] * c[4] + a[1][3] * c[3], -a[0][1] * c[5] + a[0][2] * c[4] - a[0][3] * c[3],
        a[3][1] * s[5] - a[3][2] * s[4] + a[3][3] * s[3], -a[2][1] * s[5] + a[2][2] * s[4] - a[2][3] * s[3],
        -a[1][0] * c[5] + a[1][2] * c[2] - a[1][3] * c[1], a[0][0] * c[5] - a[0][2] * c[2] + a[0][3] * c[1],
        -a[3][0] * s[5] + a[3][2] * s[2] - a[3][3] * s[1], a[2][0] * s[5] - a[2][2] * s[2] + a[2][3] * s[1],
        a[1][0] * c[4] - a[1][1] * c[2] + a[1][3] * c[0], -a[0][0] * c[4] + a[0][1] * c[2] - a[0][3] * c[0],
        a[3][0] * s[4] - a[3][1] * s[2] + a[3][3] * s[0], -a[2][0] * s[4] + a[2][1] * s[2] - a[2][3] * s[0],
        -a[1][0] * c[3] + a[1][1] * c[1] - a[1][2] * c[0], a[0][0] * c[3] - a[0][1] * c[1] + a[0][2] * c[0],
        -a[3][0] * s[3] + a[3][1] * s[1] - a[3][2] * s[0], a[2][0] * s[3] - a[2][1] * s[1] + a[2][2] * s[0],
    ]
    return torch.stack([x * r for x in X], -1).unflatten(-1, (4, 4))


CLOSED_FORMS = {2: closed_form_inverse_2, 3: closed_form_inverse_3, 4: closed_form_inverse_4}


def warp_inverse(A: torch.Tensor):
    """wp.inverse on Warp's device for A's device, one thread per matrix; the input and the (preallocated)
    output are A and X wrapped by wp.from_torch. A string instead of a callable when Warp cannot run."""
    wp = optional_module("warp")
    if wp is None:
        return not_installed("warp-lang")
    n = A.shape[-1]
    mat = {torch.float32: (wp.mat22, wp.mat33, wp.mat44),
           torch.float64: (wp.mat22d, wp.mat33d, wp.mat44d)}[A.dtype][n - 2]

    def invert(a, x):
        i = wp.tid()
        x[i] = wp.inverse(a[i])
    invert.__annotations__ = dict(a=wp.array(dtype=mat), x=wp.array(dtype=mat))  # objects, not strings
    invert = wp.kernel(invert, enable_backward=False, module="unique")

    def setup():
        device = wp.device_from_torch(A.device)
        X = torch.empty_like(A)
        a, x = wp.from_torch(A.contiguous(), dtype=mat), wp.from_torch(X, dtype=mat)

        def launch():
            wp.launch(invert, dim=A.shape[0], inputs=[a], outputs=[x], device=device)
            wp.synchronize_device(device)
            return X
        return launch
    return set_up_on_first_call(setup)


def jax_inverse(A: torch.Tensor):
    """The jitted jnp.linalg.inv on the JAX device of A's kind, its input made once from A (DLPack)."""
    jax = optional_module("jax")
    if jax is None:
        return not_installed("jax[cpu]" if A.device.type == "cpu" else "jax[cuda13]")
    platform_name = "gpu" if A.device.type == "cuda" else "cpu"
    try:
        jax_device = jax.devices(platform_name)[0]
    except RuntimeError:
        return f"no JAX {platform_name} backend (pip install 'jax[cuda13]')"
    invert = jax.jit(jax.numpy.linalg.inv)

    def setup():
        a = jax.device_put(jax.dlpack.from_dlpack(A.contiguous()), jax_device)
        return lambda: invert(a).block_until_ready()
    return set_up_on_first_call(setup)


def cupy_inverse(A: torch.Tensor):
    """cupy.linalg.inv on a batch (cuBLAS getrfBatched / getriBatched), the array sharing A's memory."""
    cupy = optional_module("cupy")
    if cupy is None:
        return not_installed("cupy-cuda13x")

    def setup():
        a = cupy.from_dlpack(A.contiguous())
        return lambda: cupy.linalg.inv(a)
    return set_up_on_first_call(setup)


def as_torch(X, like: torch.Tensor) -> torch.Tensor:
    """A method's result (a tensor, a tuple whose first item is X, a numpy, JAX or CuPy array) as a torch tensor."""
    if isinstance(X, (tuple, list)):
        X = X[0]
    if not isinstance(X, torch.Tensor):
        X = torch.from_dlpack(X) if like.device.type == "cuda" else torch.from_numpy(np.array(X))
    return X


def max_relative_error(X: torch.Tensor, truth: torch.Tensor) -> float:
    """max over the batch of ||X - truth||_F / ||truth||_F in float64; inf if any entry is not finite."""
    X = X.to(device=truth.device, dtype=torch.float64)
    error = torch.linalg.matrix_norm(X - truth) / torch.linalg.matrix_norm(truth)
    return torch.nan_to_num(error, nan=float("inf")).max().item()


def accuracy_tolerance(n: int, dtype: torch.dtype) -> float:
    return ACCURACY_FACTOR * COND * n * torch.finfo(dtype).eps


def methods(A: torch.Tensor, init: torch.Tensor, device: str):
    """(name, callable, tensors read and written in units of the batch size b*n*n) per method; for an optional
    baseline that cannot run here (its package missing), a string saying why instead of the callable."""
    n = A.shape[-1]
    eye = torch.eye(n, dtype=A.dtype, device=device).expand_as(A)
    yield "torch.linalg.inv", lambda: torch.linalg.inv(A), 2
    yield "torch.linalg.solve(A, I)", lambda: torch.linalg.solve(A, eye), 2
    if device == "cpu":
        A_np = A.numpy()
        yield "numpy.linalg.inv", lambda: np.linalg.inv(A_np), 2
    if n <= SMALL:
        yield f"warp wp.inverse ({'cuda' if device.startswith('cuda') else 'cpu'})", warp_inverse(A), 2
    yield "jax.numpy.linalg.inv, jit", jax_inverse(A), 2
    if device.startswith("cuda"):
        yield "cupy.linalg.inv (cuBLAS batched)", cupy_inverse(A), 2
    if n <= SMALL:
        yield "torch.compile closed form (adjugate)", \
            functools.partial(torch.compile(CLOSED_FORMS[n], dynamic=False), A), 2
    yield "neuinv auto (exact path)", lambda: neuinv.batched_inverse(A), 2
    # out= into a tensor of the caller's, reused from call to call (a simulation loop): no fresh output to touch.
    X_torch, X_neuinv = torch.empty_like(A), torch.empty_like(A)
    yield "torch.linalg.inv, out=", lambda: torch.linalg.inv(A, out=X_torch), 2
    yield "neuinv auto (exact path), out=", lambda: neuinv.batched_inverse(A, out=X_neuinv), 2
    yield "neuinv torch (exact path)", lambda: neuinv.batched_inverse(A, backend="torch"), 2
    available = neuinv.available_backends()
    device_backends = ("cuda", "triton") if device.startswith("cuda") else ("cpp",)
    compiled_backends = [name for name in device_backends if available[name].available]
    for backend in ["torch"] + compiled_backends:
        yield (f"neuinv {backend}, scaled transpose",
               lambda b=backend: neuinv.batched_inverse(A, method="newton_schulz", backend=b), 2)
        yield f"neuinv {backend}, warm start 1e-3", lambda b=backend: neuinv.batched_inverse(A, init=init, backend=b), 3
    if compiled_backends and compiled_backends[0] in ("cuda", "cpp"):
        # The operator alone, without the Python dispatch around it: the exact path (reads A, writes X and the
        # per-matrix info) and the warm-started Newton-Schulz loop (reads A and X0).
        tol = torch.finfo(A.dtype).eps / 2
        yield "operator neuinv::invert (exact path)", \
            lambda: torch.ops.neuinv.invert(A, None, None, False, tol, 1e-3, 64, 0.5, 1.0), 2
        yield "operator neuinv::invert, warm 1e-3", \
            lambda: torch.ops.neuinv.invert(A, init, None, True, tol, 1e-3, 10, 0.5, 1.0), 3


def run(args) -> list[dict]:
    device = args.device
    repeats = 3 if args.quick else args.repeats
    bandwidth = copy_bandwidth(device, repeats)
    print(f"# neuinv {neuinv.__version__} throughput on {describe_device(device)}, torch {torch.__version__}, "
          f"{datetime.date.today()}", file=sys.stderr)
    print(f"# measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write)", file=sys.stderr)
    rows = []
    for dtype in args.dtypes:
        for n in args.sizes:
            batch = min(args.max_batch, max(1, (MAX_ELEMENTS_QUICK if args.quick else MAX_ELEMENTS) // (n * n)))
            A = conditioned_matrices(batch, n, COND, dtype, seed=n).to(device)
            init = warm_start(A, 1e-3, seed=n)
            truth = torch.linalg.inv(A.double())
            tolerance = accuracy_tolerance(n, dtype)
            for name, fn, tensors_moved in methods(A, init, device):
                if args.methods and name != "torch.linalg.inv" and not any(part in name for part in args.methods):
                    continue
                if args.skip_slow and name.endswith("scaled transpose") and batch * n * n > 2**22:
                    continue
                row = dict(method=name, n=n, dtype=str(dtype).replace("torch.", ""), batch=batch)
                if isinstance(fn, str):
                    rows.append(dict(row, note=fn))
                    print(f"  n={n:2d} {row['dtype']} {name:38s} {fn}", file=sys.stderr)
                    continue
                synchronize(device)
                try:  # the first call: the warm-up (compilation, set-up) and the accuracy check
                    X = as_torch(fn(), A)
                    synchronize(device)
                except Exception as error:  # a method that fails here (an optional package, say): a row saying so
                    rows.append(dict(row, note=f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"))
                    print(f"  n={n:2d} {row['dtype']} {name:38s} {rows[-1]['note']}", file=sys.stderr)
                    continue
                error = max_relative_error(X, truth)
                del X
                median, low, high = median_seconds(fn, device, repeats, warm_up=False)
                bytes_moved = tensors_moved * A.numel() * A.element_size()
                rows.append(dict(row, seconds=median, seconds_p20=low, seconds_p80=high,
                                 matrices_per_second=batch / median,
                                 roofline_fraction=bytes_moved / bandwidth / median,
                                 max_relative_error=error, accurate=error <= tolerance))
                print(f"  n={n:2d} {row['dtype']} {name:38s} {median * 1e3:10.3f} ms  max rel. error {error:.1e}"
                      + ("" if error <= tolerance else f"  INACCURATE (tolerance {tolerance:.1e})"), file=sys.stderr)
    return rows, bandwidth


def commit() -> str:
    """The checkout's commit (with "+changes" when its tracked files differ from it), or "unknown"."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def markdown(rows: list[dict]) -> str:
    lines = ["| n | dtype | batch | method | median ms | matrices/s | × torch.linalg.inv | roofline "
             "| max rel. error |",
             "|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    baseline = {(r["n"], r["dtype"]): r["seconds"] for r in rows if r["method"] == "torch.linalg.inv"}
    for r in rows:
        if "seconds" not in r:
            lines.append(f"| {r['n']} | {r['dtype']} | {r['batch']} | {r['method']} | {r['note']} | | | | |")
            continue
        speedup = baseline[(r["n"], r["dtype"])] / r["seconds"]
        error = f"{r['max_relative_error']:.1e}" + ("" if r["accurate"] else " **inaccurate**")
        lines.append(f"| {r['n']} | {r['dtype']} | {r['batch']} | {r['method']} | {r['seconds'] * 1e3:.3f} | "
                     f"{r['matrices_per_second']:.3g} | {speedup:.2f} | {100 * r['roofline_fraction']:.1f}% "
                     f"| {error} |")
    lines += ["", f"max rel. error: max over the batch of ||X - A^-1||_F / ||A^-1||_F, A^-1 from float64 LU; "
                  f"inaccurate above {ACCURACY_FACTOR} cond n eps(dtype), cond = {COND:g}."]
    lines += [f"{note}." for key, note in NOTES.items() if any(key in r["method"] and "seconds" in r for r in rows)]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="n in {2, 4, 16, 64}, batches up to 10^4 (and 2^20 elements), 3 repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the rows and the machine description to this file")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--max-batch", type=int, default=None, help="default 10^6 (10^4 with --quick)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--methods", nargs="+", default=None,
                        help="run only the methods whose name contains one of these strings (torch.linalg.inv, "
                             "the baseline of the table, always runs)")
    parser.add_argument("--skip-slow", action="store_true",
                        help="skip the scaled-transpose runs on large batches (tens of iterations each)")
    args = parser.parse_args(argv)
    args.sizes = args.sizes or ([2, 4, 16, 64] if args.quick else SIZES)
    args.max_batch = args.max_batch or (10**4 if args.quick else 10**6)
    args.dtypes = [getattr(torch, d) for d in args.dtypes]
    rows, bandwidth = run(args)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(device=describe_device(args.device), date=str(datetime.date.today()), commit=commit(),
                           neuinv=neuinv.__version__, torch=torch.__version__,
                           copy_bandwidth_bytes_per_second=bandwidth, rows=rows), handle, indent=1)


if __name__ == "__main__":
    main()
