"""The cost of one call on one small matrix, layer by layer, beside torch's: where the time of a call goes.

For one n x n matrix (A of shape (n, n), b of shape (n,)), per dtype, in interleaved rounds:

- inverse: ``torch.linalg.inv_ex``, ``torch.linalg.inv``, the compiled operator ``neuinv::invert`` alone (called
  as the cpp backend calls it, on (1, n, n)), ``neuinv.batched_inverse_ex`` and ``neuinv.batched_inverse``;
- solve: ``torch.linalg.solve_ex``, ``torch.linalg.solve``, the operator ``neuinv::solve`` alone (on (1, n, n) and
  (1, n, 1)) without R (as ``batched_solve`` and ``batched_solve_ex`` call it) and from R (as
  ``batched_solve_ex(..., return_inverse=True)`` calls it, after ``neuinv::invert``), ``neuinv.batched_solve``,
  ``neuinv.batched_solve_ex`` and ``neuinv.batched_solve_ex(..., return_inverse=True)``.

Each row: the median over ``--rounds`` rounds of the mean time of ``--calls`` calls (after a warm-up), in
microseconds. The operator rows split a neuinv call into the operators it calls (their dispatch from Python,
their outputs' allocation and the kernels) and the Python around them (argument checks, the backend's choice, the host read that
rules out the second stage, the views); ``bench/plots.py`` draws the split.

    python bench/per_call.py --threads 1 --json bench/results/per-call-cpu.json > bench/results/per-call-cpu.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import commit, describe_device  # noqa: E402

import neuinv  # noqa: E402
import neuinv.extension  # noqa: E402
from neuinv.rules import CERTIFIED_BELOW, newton_schulz_rules  # noqa: E402
from neuinv.testing import conditioned_matrices  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def methods(A: torch.Tensor, b: torch.Tensor) -> list[tuple[str, str, object]]:
    """(group, method, call) for one matrix A (n, n) and one right-hand side b (n,)."""
    rules = newton_schulz_rules(A.dtype, None, None, False)
    invert, solve = torch.ops.neuinv.invert.default, torch.ops.neuinv.solve.default
    A_batch, b_batch = A.reshape(1, *A.shape), b.reshape(1, -1, 1)
    R, _, R_bound, _, _ = invert(A_batch, None, None, False, rules.tol, rules.accept, rules.max_iter, rules.guard,
                                 CERTIFIED_BELOW, False)
    return [
        ("inverse", "torch.linalg.inv_ex", lambda: torch.linalg.inv_ex(A)),
        ("inverse", "torch.linalg.inv", lambda: torch.linalg.inv(A)),
        ("inverse", "operator neuinv::invert", lambda: invert(A_batch, None, None, False, rules.tol, rules.accept,
                                                              rules.max_iter, rules.guard, CERTIFIED_BELOW, False)),
        ("inverse", "neuinv.batched_inverse_ex", lambda: neuinv.batched_inverse_ex(A)),
        ("inverse", "neuinv.batched_inverse", lambda: neuinv.batched_inverse(A)),
        ("solve", "torch.linalg.solve_ex", lambda: torch.linalg.solve_ex(A, b)),
        ("solve", "torch.linalg.solve", lambda: torch.linalg.solve(A, b)),
        ("solve", "operator neuinv::solve", lambda: solve(A_batch, b_batch, None, None, False)),
        ("solve", "operator neuinv::solve from R", lambda: solve(A_batch, b_batch, R, R_bound, False)),
        ("solve", "neuinv.batched_solve", lambda: neuinv.batched_solve(A, b)),
        ("solve", "neuinv.batched_solve_ex", lambda: neuinv.batched_solve_ex(A, b)),
        ("solve", "neuinv.batched_solve_ex, return_inverse",
         lambda: neuinv.batched_solve_ex(A, b, return_inverse=True)),
    ]


def run(args) -> list[dict]:
    neuinv.extension.load("cpu")
    rows = []
    for n in args.sizes:
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            A = conditioned_matrices(1, n, 100.0, dtype=dtype, seed=n)[0]
            b = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64).to(dtype)
            calls = methods(A, b)
            per_call = {method: [] for _, method, _ in calls}
            for _, _, call in calls:
                for _ in range(args.calls):
                    call()
            for round_index in range(args.rounds):
                for _, method, call in calls:
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        call()
                    per_call[method].append((time.perf_counter() - start) / args.calls)
                print(f"n={n} {dtype_name}: round {round_index + 1}/{args.rounds}", file=sys.stderr)
            for group, method, _ in calls:
                times = sorted(per_call[method])
                rows.append({"group": group, "method": method, "n": n, "dtype": dtype_name,
                             "us_per_call": 1e6 * statistics.median(times),
                             "us_spread": [1e6 * times[0], 1e6 * times[-1]]})
    return rows


def markdown(rows) -> str:
    baseline = {(r["group"], r["n"], r["dtype"]): r["us_per_call"] for r in rows
                if r["method"] in ("torch.linalg.inv_ex", "torch.linalg.solve_ex")}
    lines = ["| n | dtype | method | µs per call | range over rounds | × torch's `_ex` time |",
             "|---:|---|---|---:|---:|---:|"]
    for r in rows:
        ratio = r["us_per_call"] / baseline[(r["group"], r["n"], r["dtype"])]
        low, high = r["us_spread"]
        lines.append(f"| {r['n']} | {r['dtype']} | {r['method']} | {r['us_per_call']:.2f} | {low:.2f}–{high:.2f} "
                     f"| {ratio:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=2000, help="calls per method and round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the rows and the run's provenance to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    header = (f"{datetime.date.today()} · {describe_device('cpu')} · torch {torch.__version__} · commit {commit()}"
              f" · median of {args.rounds} rounds of {args.calls} calls")
    print(f"{header}\n\n{markdown(rows)}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"header": header, "date": str(datetime.date.today()), "machine": describe_device("cpu"),
                       "torch": torch.__version__, "commit": commit(), "threads": torch.get_num_threads(),
                       "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
