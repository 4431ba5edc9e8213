"""Which initial guess pays off: Newton–Schulz steps to float32 and float64 accuracy per initializer
on the paper's datasets, and the time per matrix including the initializer's own cost.

An MLP with hidden width h costs about 4 n^2 h flops per matrix (O(n^4) for h ~ 2 n^2, the paper's
§4.3 point), one Newton–Schulz step 4 n^3, LU about 2 n^3.

    python bench/initializers.py --batch 10000 --json bench/out/initializers.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform

import torch
from throughput import median_seconds  # bench/throughput.py, beside this script

import neuinv
from neuinv.learned.data import PAPER_EPS, paper_sampler
from neuinv.learned.models import TaylorInitializer
from neuinv.learned.training import load_pretrained


class WarmStart:
    """The inverse of the same matrix one small time step earlier: A_prev = A - 1e-3 |A| V, V in [-1, 1]."""

    def __init__(self, A: torch.Tensor):
        g = torch.Generator().manual_seed(1)
        drift = 1e-3 * A.abs() * (2 * torch.rand(A.shape, generator=g, dtype=A.dtype) - 1)
        self.guess = torch.linalg.inv(A - drift)


def flops_per_matrix(n: int, initializer: str, hidden: int) -> int:
    if initializer.startswith("2-FC") or initializer.startswith("Taylor + correction"):
        return 4 * n * n * hidden + (2 * n**4 if initializer.startswith("Taylor") else 0)
    if initializer == "first-order Taylor":
        return 4 * n**3
    return 0


def run(batch: int, repeats: int):
    rows = []
    for dataset in ("paper-2x2-1st", "paper-2x2-2nd", "paper-3x3", "paper-16x16"):
        sampler = paper_sampler(dataset, seed=2026)
        A64 = sampler.sample(batch).A
        pretrained = load_pretrained(dataset)
        label = "Taylor + correction 2-FC (shipped)" if pretrained.head == "taylor" else "2-FC (shipped)"
        taylor = TaylorInitializer(sampler.center, PAPER_EPS)
        n = sampler.n
        for dtype in (torch.float32, torch.float64):
            A = A64.to(dtype)
            warm = WarmStart(A)
            cases = [("scaled transpose", dict(method="newton_schulz")),
                     ("first-order Taylor", dict(model=taylor)),
                     (label, dict(model=pretrained)),
                     ("warm start (previous step's inverse)", dict(init=warm.guess)),
                     ("exact path + verification", dict())]
            inv_seconds = median_seconds(lambda: torch.linalg.inv(A), "cpu", repeats)[0]
            for name, kwargs in cases:
                X, info = neuinv.batched_inverse_ex(A, **kwargs)
                seconds = median_seconds(lambda: neuinv.batched_inverse_ex(A, **kwargs), "cpu", repeats)[0]
                rows.append(dict(dataset=dataset, n=n, dtype=str(dtype)[6:], initializer=name,
                                 mean_steps=float(info.iterations.float().mean()),
                                 max_steps=int(info.iterations.max()), fallbacks=int(info.fallback.sum()),
                                 converged=bool(info.certified.all()),
                                 initializer_flops=flops_per_matrix(n, name, pretrained.hidden),
                                 step_flops=4 * n**3, microseconds_per_matrix=seconds / batch * 1e6,
                                 torch_inv_microseconds_per_matrix=inv_seconds / batch * 1e6))
    return rows


def markdown(rows) -> str:
    out = ["| dataset | dtype | initializer | NS steps mean / max | fallbacks | initializer flops | NS step flops | "
           "µs per matrix | torch.linalg.inv µs |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['dataset']} | {r['dtype']} | {r['initializer']} | {r['mean_steps']:.2f} / {r['max_steps']} | "
                   f"{r['fallbacks']} | {r['initializer_flops']} | {r['step_flops']} | "
                   f"{r['microseconds_per_matrix']:.3f} | {r['torch_inv_microseconds_per_matrix']:.3f} |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = run(args.batch, args.repeats)
    print(f"# neuinv {neuinv.__version__}, {platform.machine()} CPU, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {datetime.date.today()}, batch {args.batch}")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(date=str(datetime.date.today()), rows=rows), handle, indent=1)


if __name__ == "__main__":
    main()
