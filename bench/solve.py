"""batched_solve and the positive-definite route against their torch baselines, side by side in one run.

For each n and dtype, on the same matrices (cond 100; SPD ones Q diag(sigma) Q^T for the SPD rows):

- solve with k = 1 and k = 8 right-hand sides: ``neuinv.batched_solve`` (certified), ``neuinv.batched_solve_ex``
  (the same with the per-system info) and with ``return_inverse=True`` (A's inverse formed first and returned),
  ``torch.linalg.solve``, ``torch.linalg.solve_ex``, ``numpy.linalg.solve``, ``jax.jit(jnp.linalg.solve)`` (where
  JAX is installed; its input made once, outside the timing) and ``neuinv.batched_inverse(A) @ B`` (the inverse
  certified, the product not);
- the SPD route: ``neuinv.batched_inverse(S, assume_a="pos")`` against the general ``neuinv.batched_inverse(S)``,
  ``torch.cholesky_inverse(torch.linalg.cholesky(S))`` and ``torch.linalg.inv(S)``; and the SPD solve with one
  right-hand side, ``neuinv.batched_solve(S, b, assume_a="pos")`` against ``torch.cholesky_solve``.

Each row: the median wall time (and 20th / 80th percentiles) of ``--repeats`` calls after an untimed warm-up (at
least 101 calls for batches under 2^14 elements, where one call takes microseconds), and the largest relative error
||X - X*||_F / ||X*||_F over the batch against float64 LU. ``--batches`` sets the batch sizes (default: the largest
under the element limit, at most ``--max-batch``); ``--batches 1 16 256`` measures the cost per call.

    python bench/solve.py --quick
    python bench/solve.py --threads 1 --json bench/results/solve-cpu.json > bench/results/solve-cpu.md
    python bench/solve.py --threads 1 --sizes 4 8 --batches 1 16 256 --groups "solve k=1"
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import numpy
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import commit, describe_device, median_seconds, optional_module, synchronize  # noqa: E402

import neuinv  # noqa: E402
from neuinv.testing import conditioned_matrices  # noqa: E402

SIZES = [3, 4, 6, 8, 16, 32]
COND = 100.0
MAX_ELEMENTS = 2**22  # of A per row: 32 MiB in float64
MAX_ELEMENTS_QUICK = 2**18
SMALL_CALL_ELEMENTS = 2**14  # of A: below, a call takes microseconds and is timed at least MANY_REPEATS times
MANY_REPEATS = 101
GROUPS = ("solve k=1", "solve k=8", "SPD inverse", "SPD solve k=1")


def solve_methods(A, B):
    A_numpy, B_numpy = A.numpy(), B.numpy()
    methods = [
        ("neuinv.batched_solve", lambda: neuinv.batched_solve(A, B)),
        ("neuinv.batched_solve_ex", lambda: neuinv.batched_solve_ex(A, B).result),
        ("neuinv.batched_solve_ex return_inverse", lambda: neuinv.batched_solve_ex(A, B, return_inverse=True).result),
        ("torch.linalg.solve", lambda: torch.linalg.solve(A, B)),
        ("torch.linalg.solve_ex", lambda: torch.linalg.solve_ex(A, B).result),
        ("numpy.linalg.solve", lambda: numpy.linalg.solve(A_numpy, B_numpy)),
        ("neuinv.batched_inverse @ B", lambda: neuinv.batched_inverse(A) @ B),
    ]
    jax = optional_module("jax")
    if jax is not None:
        solve = jax.jit(jax.numpy.linalg.solve)
        A_jax, B_jax = jax.numpy.asarray(A_numpy), jax.numpy.asarray(B_numpy)
        methods.append(("jax.jit(jnp.linalg.solve)", lambda: solve(A_jax, B_jax).block_until_ready()))
    return methods


def spd_inverse_methods(S):
    return [
        ("neuinv.batched_inverse pos", lambda: neuinv.batched_inverse(S, assume_a="pos")),
        ("neuinv.batched_inverse gen", lambda: neuinv.batched_inverse(S)),
        ("torch.cholesky_inverse(cholesky)", lambda: torch.cholesky_inverse(torch.linalg.cholesky(S))),
        ("torch.linalg.inv", lambda: torch.linalg.inv(S)),
    ]


def spd_solve_methods(S, b):
    return [
        ("neuinv.batched_solve pos", lambda: neuinv.batched_solve(S, b, assume_a="pos")),
        ("neuinv.batched_solve gen", lambda: neuinv.batched_solve(S, b)),
        ("torch.cholesky_solve(cholesky)", lambda: torch.cholesky_solve(b, torch.linalg.cholesky(S))),
        ("torch.linalg.solve", lambda: torch.linalg.solve(S, b)),
    ]


def max_relative_error(X, truth) -> float:
    return float((torch.linalg.matrix_norm(X.double() - truth) / torch.linalg.matrix_norm(truth)).max())


def run(args) -> list[dict]:
    rows = []
    device = "cpu"
    for dtype in args.dtypes:
        for n, batch in ((n, batch) for n in args.sizes for batch in args.batches or [
                min(args.max_batch, (MAX_ELEMENTS_QUICK if args.quick else MAX_ELEMENTS) // (n * n))]):
            repeats = args.repeats if batch * n * n >= SMALL_CALL_ELEMENTS else max(args.repeats, MANY_REPEATS)
            g = torch.Generator().manual_seed(n)
            A = conditioned_matrices(batch, n, COND, dtype, seed=n)
            S = conditioned_matrices(batch, n, COND, dtype, seed=n, symmetric=True)
            groups = []
            for k in (1, 8):
                B = torch.randn(batch, n, k, generator=g, dtype=torch.float64).to(dtype)
                groups.append((f"solve k={k}", solve_methods(A, B), torch.linalg.solve(A.double(), B.double())))
            groups.append(("SPD inverse", spd_inverse_methods(S), torch.linalg.inv(S.double())))
            b = torch.randn(batch, n, 1, generator=g, dtype=torch.float64).to(dtype)
            groups.append(("SPD solve k=1", spd_solve_methods(S, b), torch.linalg.solve(S.double(), b.double())))
            for group, methods, truth in groups:
                if group not in args.groups:
                    continue
                for name, fn in methods:
                    X = fn()
                    synchronize(device)
                    X = X if isinstance(X, torch.Tensor) else torch.from_numpy(numpy.asarray(X))
                    error = max_relative_error(X, truth)
                    del X
                    median, low, high = median_seconds(fn, device, repeats, warm_up=False)
                    rows.append(dict(group=group, method=name, n=n, dtype=str(dtype).replace("torch.", ""),
                                     batch=batch, seconds=median, seconds_p20=low, seconds_p80=high,
                                     max_relative_error=error))
                    print(f"  n={n:2d} {rows[-1]['dtype']} {group:14s} {name:34s} {median * 1e3:9.3f} ms "
                          f"(p20 {low * 1e3:.3f}, p80 {high * 1e3:.3f})  max rel. error {error:.1e}", file=sys.stderr)
    return rows


BASELINES = {"solve k=1": "torch.linalg.solve", "solve k=8": "torch.linalg.solve",
             "SPD inverse": "neuinv.batched_inverse gen", "SPD solve k=1": "torch.linalg.solve"}


def markdown(rows) -> str:
    lines = ["| group | n | dtype | batch | method | median ms (p20-p80) | × baseline | max rel. error |",
             "|---|---:|---|---:|---|---:|---:|---:|"]
    baseline = {(r["group"], r["n"], r["dtype"], r["batch"]): r["seconds"] for r in rows
                if r["method"] == BASELINES[r["group"]]}
    for r in rows:
        ratio = baseline[(r["group"], r["n"], r["dtype"], r["batch"])] / r["seconds"]
        lines.append(f"| {r['group']} | {r['n']} | {r['dtype']} | {r['batch']} | {r['method']} | "
                     f"{r['seconds'] * 1e3:.3f} ({r['seconds_p20'] * 1e3:.3f}-{r['seconds_p80'] * 1e3:.3f}) | "
                     f"{ratio:.2f} | {r['max_relative_error']:.1e} |")
    lines += ["", "× baseline: the baseline's median time over the method's (above 1: faster). Baselines: "
              + "; ".join(f"{group}: {method}" for group, method in BASELINES.items())
              + f". max rel. error against float64 LU; cond = {COND:g}."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="n in {3, 8}, batches up to 2^18 elements, 3 repeats")
    parser.add_argument("--json", help="write the rows and the machine description to this file")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--max-batch", type=int, default=100_000)
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default: one, the largest)")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.sizes = args.sizes or ([3, 8] if args.quick else SIZES)
    args.repeats = 3 if args.quick else args.repeats
    args.dtypes = [getattr(torch, d) for d in args.dtypes]
    backend = neuinv.backends.resolve_backend("auto", torch.empty(1, 3, 3)).name
    print(f"# neuinv {neuinv.__version__} solve benchmark on {describe_device('cpu')}, torch {torch.__version__}, "
          f"{datetime.date.today()}, commit {commit()}, {torch.get_num_threads()} torch threads; backend auto: {backend}",
          file=sys.stderr)
    rows = run(args)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(device=describe_device("cpu"), date=str(datetime.date.today()), commit=commit(),
                           neuinv=neuinv.__version__, torch=torch.__version__, threads=torch.get_num_threads(),
                           rows=rows), handle, indent=1)


if __name__ == "__main__":
    main()
