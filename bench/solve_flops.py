"""The arithmetic a certified solve needs against an unverified one, and how fast each method does it (issue #25).

Flops per system of n x n with k right-hand sides (a multiply-add counts 2; lower-order terms dropped):

- LU solve (``torch.linalg.solve``, ``solve_ex``, numpy, JAX: LAPACK getrf + getrs): 2n^3/3 + 2n^2 k.
- neuinv's one pass (``batched_solve``; ``kernels::solve_with_exact_inverse``, csrc/kernels/solve.h), in double for
  both dtypes: Gauss-Jordan on [A | I], 2n^3; the inverse's residual I - A R for its certificate, 2n^3; X_w = R B,
  the residual B - A X_w and the correction R r, 6n^2 k; the solution's certificate (R r once more), 2n^2 k: at
  least 4n^3 + 8n^2 k, the count used below (so the rates are lower bounds). A float64 inverse whose residual lies
  above eps ||A|| ||R|| is polished and certified by the split residual (``kernels::certify_double``): 16n^3 more
  (the split residual twice, the Newton-Schulz product, the product form).

Every rigorous bound on a general system's error needs a bound on ||A^-1|| (Rump, Acta Numerica 19 (2010) §10): an
approximate inverse (LU and getri, 2n^3) and the check of ||I - R A|| (2n^3) cost 4n^3 whatever factorisation comes
first, 6x the LU solve's n^3 term; for symmetric positive definite A a Cholesky of A - sigma I bounds lambda_min
(Rump, BIT 46 (2006)) for n^3/3, twice Cholesky's own.

Reads a ``bench/solve.py`` JSON, measures the compute roof of this machine with the same torch threads (the rate of
``torch.mm`` on 1024 x 1024 matrices, float32 and float64) and prints, per solve row: the model's flops per system,
the rate achieved (flops per system x systems / median time) and its share of the roof (for neuinv, which computes
in double, the float64 roof).

    python bench/solve_flops.py bench/results/solve-cpu-2026-12-07.json > bench/results/solve-flops-cpu-2026-12-07.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

LU_METHODS = ("torch.linalg.solve", "torch.linalg.solve_ex", "numpy.linalg.solve", "jax.jit(jnp.linalg.solve)")
NEUINV_ONE_PASS = ("neuinv.batched_solve", "neuinv.batched_solve_ex")


def lu_flops(n: int, k: int) -> float:
    return 2 * n ** 3 / 3 + 2 * n ** 2 * k


def one_pass_flops(n: int, k: int) -> float:
    return 4 * n ** 3 + 8 * n ** 2 * k


def compute_roof(dtype: torch.dtype, repeats: int = 7) -> float:
    """Flops per second of one torch.mm of 1024 x 1024 matrices (median of ``repeats``)."""
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * 1024 ** 3 / statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="a bench/solve.py --json file")
    args = parser.parse_args(argv)
    data = json.load(open(args.json))
    if data.get("threads"):
        torch.set_num_threads(data["threads"])
    roof = {name: compute_roof(getattr(torch, name)) for name in ("float32", "float64")}
    print(f"Rows of {args.json} ({data['date']}, {data['device']}, commit {data['commit']}); compute roof measured "
          f"now with {torch.get_num_threads()} torch thread(s): torch.mm 1024 x 1024 at "
          f"{roof['float32'] / 1e9:.1f} GFLOP/s (float32), {roof['float64'] / 1e9:.1f} GFLOP/s (float64).\n")
    print("| k | n | dtype | method | flops per system (neuinv: at least) | × LU's flops | GFLOP/s | % of the roof |")
    print("|---:|---:|---|---|---:|---:|---:|---:|")
    for r in data["rows"]:
        if not r["group"].startswith("solve k=") or r["method"] not in LU_METHODS + NEUINV_ONE_PASS:
            continue
        n, k = r["n"], int(r["group"][len("solve k="):])
        flops = one_pass_flops(n, k) if r["method"] in NEUINV_ONE_PASS else lu_flops(n, k)
        rate = flops * r["batch"] / r["seconds"]
        computed_in = "float64" if r["method"] in NEUINV_ONE_PASS else r["dtype"]
        print(f"| {k} | {n} | {r['dtype']} | {r['method']} | {flops:.0f} | {flops / lu_flops(n, k):.1f} | "
              f"{rate / 1e9:.3g} | {100 * rate / roof[computed_in]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
