"""The positive-definite (Cholesky) exact path against the general one and torch's routes, side by side in one run.

For each n and dtype, on one batch of symmetric positive definite matrices (cond 100), the methods run in turn
(round-robin, so that another process sharing the cores slows them alike) and the table gives each one's median
wall time and median CPU time (of this process, all its threads: what other processes on the cores change
least) per matrix, and the ratio of CPU times to the general path's:

- ``neuinv pos``: the compiled operator ``neuinv::invert(..., positive_definite=True)`` (Cholesky in double,
  the certificate of every matrix);
- ``neuinv general``: the same operator with positive_definite=False (Gauss–Jordan in double, or the closed
  forms for float32 n <= 4, and the certificate);
- ``torch cholesky_inverse``: ``torch.cholesky_inverse(torch.linalg.cholesky(A))`` (no certificate);
- ``torch.linalg.inv`` (LU, no certificate).

The largest relative error ||X - A^-1||_F / ||A^-1||_F over the first 1,000 matrices (A^-1 from float64 LU) is
given beside each. The load average before and after the run is printed: other processes sharing the cores
change the times.

    python bench/spd.py --sizes 3 4 6 8 16 32 --dtypes float32 float64 --threads 1 --json bench/results/spd-cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch

import neuinv
from neuinv import extension
from neuinv.testing import conditioned_matrices

COND = 100.0


def spd_matrices(batch: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Q diag(sigma) Q^T with cond 100, symmetrised exactly, rounded to dtype."""
    A = conditioned_matrices(batch, n, COND, torch.float64, seed=n, symmetric=True)
    return ((A + A.mT) / 2).to(dtype)


def methods(A: torch.Tensor):
    tol = torch.finfo(A.dtype).eps / 2

    def operator(positive_definite):
        return lambda: torch.ops.neuinv.invert(A, None, None, False, tol, 1e-3, 64, 0.5, 1.0, positive_definite)[0]

    return {"neuinv pos": operator(True), "neuinv general": operator(False),
            "torch cholesky_inverse": lambda: torch.cholesky_inverse(torch.linalg.cholesky(A)),
            "torch.linalg.inv": lambda: torch.linalg.inv(A)}


def max_relative_error(X: torch.Tensor, A: torch.Tensor) -> float:
    A, X = A[:1000].double(), X[:1000].double()
    truth = torch.linalg.inv(A)
    return float((torch.linalg.matrix_norm(X - truth) / torch.linalg.matrix_norm(truth)).max())


def run(n: int, dtype: torch.dtype, batch: int, repeats: int) -> list[dict]:
    A = spd_matrices(batch, n, dtype)
    chosen = methods(A)
    times = {name: [] for name in chosen}
    cpu_times = {name: [] for name in chosen}
    errors = {name: max_relative_error(f(), A) for name, f in chosen.items()}  # also the warm-up
    for _ in range(repeats):
        for name, f in chosen.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            f()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    general = statistics.median(cpu_times["neuinv general"])
    return [dict(n=n, dtype=str(dtype).removeprefix("torch."), batch=batch, method=name,
                 median_s=statistics.median(times[name]), us_per_matrix=statistics.median(times[name]) / batch * 1e6,
                 cpu_us_per_matrix=statistics.median(cpu_times[name]) / batch * 1e6,
                 cpu_speedup_over_general=general / statistics.median(cpu_times[name]),
                 max_relative_error=errors[name])
            for name in chosen]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 4, 6, 8, 16, 32])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--batch", type=int, default=1_000_000, help="matrices per batch for n <= 8")
    parser.add_argument("--large-batch", type=int, default=100_000, help="matrices per batch for n > 8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not extension.load():
        raise SystemExit(f"the compiled operator is needed: {extension.status()[1]}")
    load_before = os.getloadavg()
    rows = []
    for dtype_name in args.dtypes:
        for n in args.sizes:
            batch = args.batch if n <= 8 else args.large_batch
            rows += run(n, getattr(torch, dtype_name), batch, args.repeats)
    load_after = os.getloadavg()
    header = (f"{datetime.date.today()} {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), neuinv {neuinv.__version__}, cond {COND:g}, median of "
              f"{args.repeats}; load average (1, 5, 15 min) before {load_before}, after {load_after}")
    print(header + "\n")
    print("| n | dtype | batch | method | wall µs per matrix | CPU µs per matrix | vs general (CPU) | max rel. error |")
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['n']} | {row['dtype']} | {row['batch']:,} | {row['method']} | {row['us_per_matrix']:.3f} | "
              f"{row['cpu_us_per_matrix']:.3f} | {row['cpu_speedup_over_general']:.2f}× | "
              f"{row['max_relative_error']:.1e} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(dict(header=header, rows=rows), out, indent=1)


if __name__ == "__main__":
    main()
