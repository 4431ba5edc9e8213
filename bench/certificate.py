"""What the certificate certifies: error bound against the true error, per backend, dtype and condition number.

For matrices of chosen condition number (neuinv.testing.conditioned_matrices, n = 8) each backend's
``error_bound`` is set beside the true relative error ||X - A^-1||_F / ||A^-1||_F of the X it returned
(A^-1 of the stored A from mpmath at 50 digits) and beside cond * eps(dtype): the median and largest ratio
bound / true error, the share of matrices certified, and any matrix whose bound is below its true error
(there must be none).

    python bench/certificate.py --json bench/out/certificate.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform

import mpmath
import torch

import neuinv
from neuinv.testing import conditioned_matrices, warm_start

CONDITIONS = [1e2, 1e4, 1e6, 1e8, 1e12, 1e15]


def true_relative_error(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """||X - A^-1||_F / ||A^-1||_F with A^-1 of the stored A in mpmath (50 digits); NaN for a singular A."""
    mpmath.mp.dps = 50
    errors = []
    for a, x in zip(A.double().tolist(), X.double().tolist()):
        try:
            inverse = mpmath.inverse(mpmath.matrix(a))
        except ZeroDivisionError:
            errors.append(float("nan"))
            continue
        difference = mpmath.matrix(x) - inverse
        errors.append(float(mpmath.mnorm(difference, "f") / mpmath.mnorm(inverse, "f")))
    return torch.tensor(errors, dtype=torch.float64)


def run(batch: int, n: int, backends: list[str]) -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.float64):
        eps = torch.finfo(dtype).eps
        for cond in CONDITIONS:
            A = conditioned_matrices(batch, n, cond, dtype, seed=int(cond) % 1000)
            for backend, path in [(b, p) for b in backends for p in ("exact", "warm start")]:
                if path == "exact" and backend != "auto":
                    continue  # a named backend runs Newton-Schulz from the scaled transpose; auto is the exact path
                kwargs = {} if path == "exact" else {"init": warm_start(A, 1e-3, seed=1)}
                X, info = neuinv.batched_inverse_ex(A, backend=backend, **kwargs)
                error = true_relative_error(A, X)
                certified = info.certified
                ratio = (info.error_bound[certified] / error[certified]).sort().values
                unsound = int((info.error_bound < error).sum())
                rows.append(dict(backend=backend, path=path, dtype=str(dtype).replace("torch.", ""), n=n,
                                 cond=cond, cond_eps=cond * eps, certified=float(certified.double().mean()),
                                 median_bound=float(info.error_bound[certified].median()) if certified.any() else None,
                                 median_error=float(error[certified].median()) if certified.any() else None,
                                 median_ratio=float(ratio.median()) if ratio.numel() else None,
                                 max_ratio=float(ratio.max()) if ratio.numel() else None, unsound=unsound))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| backend | path | dtype | cond | cond·eps | certified | median bound | median true error | "
             "bound / error (median, max) | bound < error |", "|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        def number(v):
            return "—" if v is None else f"{v:.2g}"
        lines.append(f"| {r['backend']} | {r['path']} | {r['dtype']} | {r['cond']:.0e} | {r['cond_eps']:.1e} | "
                     f"{100 * r['certified']:.0f}% | {number(r['median_bound'])} | {number(r['median_error'])} | "
                     f"{number(r['median_ratio'])}, {number(r['max_ratio'])} | {r['unsound']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    backends = ["auto"] + [name for name in ("torch", "cpp") if neuinv.available_backends()[name].available]
    rows = run(args.batch, args.n, backends)
    print(f"# neuinv {neuinv.__version__} certificate on {platform.machine()} CPU, torch {torch.__version__}, "
          f"{datetime.date.today()}")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(date=str(datetime.date.today()), torch=torch.__version__, rows=rows), handle, indent=1)


if __name__ == "__main__":
    main()
