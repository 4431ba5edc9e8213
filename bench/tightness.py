"""How tight the certificate is (issue #23): error_bound against the exact error, on four families of matrices.

For float64, float32, complex128 and complex64 and n in {2, 3, 4, 8, 16}, a seeded set of matrices from four
families:

(a) ``random``: Q1 diag(sigma) Q2, Q unitary, sigma log-spaced, cond log-uniform in 10^1..10^14
    (float32/complex64: 10^1..10^6);
(b) ``graded``: D C D, C = Q1 diag(sigma) Q2 with cond(C) = 10, D = diag(10^U(-12, 12));
(c) ``scaled``: D1 P C D2, C as in (b), P a random permutation, D1, D2 = diag(10^U(-6, 6));
(d) ``triangular``: lower triangular, N(0, 1) below the diagonal, diagonal +-(1 + U(0, 0.5)) (unit-ish).

Each matrix is built in float64/complex128 and rounded to the dtype; the truths belong to that stored A:
A^-1 (and A^-1 B) in mpmath at 50 digits, and the exact error of each returned X computed in mpmath from the
exact values of X's entries. For ``batched_inverse_ex`` and ``batched_solve_ex`` (k = 1 and k = 8 right-hand
sides), on the default backend ("auto": the compiled CPU kernels for real input, torch for complex) and on
backend="torch", it reports: count, median and worst of error_bound / max(true error, eps(dtype)) over the
certified matrices, the refusals, the refusals with cond * eps <= 1e-2 (cond = ||A||_2 ||A^-1||_2 from the
mpmath inverse), the certified matrices refused when the same matrix is asked again with max_error = 10 max(true
error, eps) (a loose bound refusing an accurate result) and the violations (a certified bound below the exact error; there must be none: each is
printed with its matrix and the run exits 1).

    python bench/tightness.py --json bench/results/tightness-cpu-<date>.json
    python bench/tightness.py --speed            # the exact path, this checkout against --old (default /tmp/old)
    python bench/tightness.py --certificate-speed --old /tmp/old --rounds 15   # the torch certificate alone
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mpmath
import torch

import neuinv

DTYPES = {"float64": torch.float64, "float32": torch.float32, "complex128": torch.complex128,
          "complex64": torch.complex64}
FAMILIES = ("random", "graded", "scaled", "triangular")
SIZES = (2, 3, 4, 8, 16)
OPERATIONS = ("inverse", "solve k=1", "solve k=8")
BACKENDS = ("auto", "torch")
DPS = 50


def eps_of(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def unitary(g: torch.Generator, m: int, n: int, complex_: bool) -> torch.Tensor:
    Z = torch.randn(m, n, n, generator=g, dtype=torch.float64)
    if complex_:
        Z = torch.complex(Z, torch.randn(m, n, n, generator=g, dtype=torch.float64))
    Q, R = torch.linalg.qr(Z)
    d = torch.diagonal(R, dim1=-2, dim2=-1)
    return Q * (d / d.abs()).unsqueeze(-2)


def with_condition(g: torch.Generator, m: int, n: int, log10_cond: torch.Tensor, complex_: bool) -> torch.Tensor:
    """Q1 diag(sigma) Q2, sigma log-spaced from 1 to 10^-log10_cond (per matrix)."""
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    sigma = 10.0 ** (-log10_cond.unsqueeze(-1) * t)
    if complex_:
        sigma = sigma.to(torch.complex128)
    return unitary(g, m, n, complex_) @ (sigma.unsqueeze(-1) * unitary(g, m, n, complex_))


def family_matrices(family: str, m: int, n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """m matrices of one family, built in float64/complex128 and rounded to dtype."""
    g = torch.Generator().manual_seed(seed)
    complex_ = dtype.is_complex
    wide = dtype in (torch.float64, torch.complex128)
    if family == "random":
        top = 14.0 if wide else 6.0
        A = with_condition(g, m, n, 1.0 + (top - 1.0) * torch.rand(m, generator=g, dtype=torch.float64), complex_)
    elif family == "graded":
        C = with_condition(g, m, n, torch.ones(m, dtype=torch.float64), complex_)
        D = 10.0 ** (24.0 * torch.rand(m, n, generator=g, dtype=torch.float64) - 12.0)
        A = D.unsqueeze(-1) * C * D.unsqueeze(-2)
    elif family == "scaled":
        C = with_condition(g, m, n, torch.ones(m, dtype=torch.float64), complex_)
        perm = torch.stack([torch.randperm(n, generator=g) for _ in range(m)])
        C = torch.gather(C, 1, perm.unsqueeze(-1).expand(m, n, n))
        D1 = 10.0 ** (12.0 * torch.rand(m, n, generator=g, dtype=torch.float64) - 6.0)
        D2 = 10.0 ** (12.0 * torch.rand(m, n, generator=g, dtype=torch.float64) - 6.0)
        A = D1.unsqueeze(-1) * C * D2.unsqueeze(-2)
    elif family == "triangular":
        L = torch.randn(m, n, n, generator=g, dtype=torch.float64)
        if complex_:
            L = torch.complex(L, torch.randn(m, n, n, generator=g, dtype=torch.float64)) / math.sqrt(2)
        L = torch.tril(L, -1)
        sign = torch.where(torch.rand(m, n, generator=g) < 0.5, -1.0, 1.0).double()
        diag = sign * (1.0 + 0.5 * torch.rand(m, n, generator=g, dtype=torch.float64))
        A = L + torch.diag_embed(diag.to(L.dtype))
    else:
        raise ValueError(family)
    return A.to(dtype)


def right_hand_sides(m: int, n: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(m, n, k, generator=g, dtype=torch.float64)
    if dtype.is_complex:
        B = torch.complex(B, torch.randn(m, n, k, generator=g, dtype=torch.float64))
    return B.to(dtype)


def to_mp(M: torch.Tensor) -> mpmath.matrix:
    """The exact value of a stored matrix (float32/complex64 widen exactly)."""
    wide = torch.complex128 if M.is_complex() else torch.float64
    return mpmath.matrix(M.to(wide).tolist())


def mp_frobenius(M: mpmath.matrix) -> mpmath.mpf:
    return mpmath.sqrt(mpmath.fsum(abs(x) ** 2 for x in M))


def exact_error(X: torch.Tensor, truth: mpmath.matrix, truth_norm: mpmath.mpf) -> float:
    """||X - truth||_F / ||truth||_F in mpmath from the exact entries of X; inf for a non-finite X."""
    if not bool(torch.isfinite(X).all()):
        return math.inf
    difference = to_mp(X) - truth
    return float(mp_frobenius(difference) / truth_norm)


def truths(A: torch.Tensor, Bs: dict) -> list[dict]:
    """Per matrix: the mpmath inverse of the stored A, A^-1 B per k, their Frobenius norms, cond_2."""
    mpmath.mp.dps = DPS
    out = []
    for i in range(A.shape[0]):
        a = to_mp(A[i])
        inv = mpmath.inverse(a)
        wide = torch.complex128 if A.is_complex() else torch.float64
        convert = complex if A.is_complex() else float
        inv64 = torch.tensor([[convert(x) for x in row] for row in inv.tolist()], dtype=wide)
        cond = float(torch.linalg.matrix_norm(A[i].to(wide), 2) * torch.linalg.matrix_norm(inv64, 2))
        entry = {"inv": inv, "inv_norm": mp_frobenius(inv), "cond": cond}
        for k, B in Bs.items():
            x = inv * to_mp(B[i])
            entry[k] = (x, mp_frobenius(x))
        out.append(entry)
    return out


def demanded(A: torch.Tensor, B: torch.Tensor | None, backend: str, max_error: float):
    """The inverse (B None) or the solution of one matrix, with max_error demanded."""
    if B is None:
        return neuinv.batched_inverse_ex(A, backend=backend, max_error=min(max_error, 1.0))
    return neuinv.batched_solve_ex(A, B, backend=backend, max_error=min(max_error, 1.0))


def summarise(rows: list[dict], dtype: torch.dtype) -> dict:
    eps = eps_of(dtype)
    certified = [r for r in rows if r["certified"]]
    ratios = sorted(r["bound"] / max(r["error"], eps) for r in certified)
    return dict(count=len(rows), certified=len(certified),
                median_ratio=statistics.median(ratios) if ratios else None,
                worst_ratio=max(ratios) if ratios else None,
                within_100=sum(1 for x in ratios if x <= 100),
                refusals=len(rows) - len(certified),
                refusals_well_conditioned=sum(1 for r in rows if not r["certified"] and r["cond"] * eps <= 1e-2),
                refused_at_10x=sum(1 for r in certified if r["refused_at_10x"]),
                violations=sum(1 for r in certified if r["bound"] < r["error"]))


def run(counts: dict, dtypes: list[str], families: list[str], sizes: list[int], backends: list[str]):
    """Every (dtype, family, operation, backend) row, plus the list of violations found."""
    groups: dict = {}
    violations = []
    for dname in dtypes:
        dtype = DTYPES[dname]
        for fi, family in enumerate(families):
            for n in sizes:
                m = counts[n]
                seed = 1000 * (list(DTYPES).index(dname) + 1) + 100 * fi + n
                A = family_matrices(family, m, n, dtype, seed)
                Bs = {1: right_hand_sides(m, n, 1, dtype, seed + 7), 8: right_hand_sides(m, n, 8, dtype, seed + 8)}
                truth = truths(A, Bs)
                for backend in backends:
                    results = {"inverse": neuinv.batched_inverse_ex(A, backend=backend)}
                    for k, B in Bs.items():
                        results[f"solve k={k}"] = neuinv.batched_solve_ex(A, B, backend=backend)
                    for op, (X, info) in results.items():
                        key = (dname, family, op, backend)
                        for i in range(m):
                            certified = bool(info.certified[i])
                            bound = float(info.error_bound[i])
                            if op == "inverse":
                                t, t_norm = truth[i]["inv"], truth[i]["inv_norm"]
                            else:
                                t, t_norm = truth[i][int(op[-1])]
                            error = exact_error(X[i], t, t_norm) if certified else math.nan
                            row = dict(n=n, certified=certified, bound=bound, error=error, cond=truth[i]["cond"])
                            checks = [(bound, error)] if certified else []
                            if certified:  # the same matrix asked for ten times its true error
                                B_i = None if op == "inverse" else Bs[int(op[-1])][i:i + 1]
                                X_d, info_d = demanded(A[i:i + 1], B_i, backend, 10 * max(error, eps_of(dtype)))
                                row["refused_at_10x"] = not bool(info_d.certified[0])
                                if not row["refused_at_10x"]:
                                    same = torch.equal(X_d[0], X[i])
                                    checks.append((float(info_d.error_bound[0]),
                                                   error if same else exact_error(X_d[0], t, t_norm)))
                            groups.setdefault(key, []).append(row)
                            for checked_bound, checked_error in checks:
                                if checked_bound < checked_error:
                                    violations.append(dict(dtype=dname, family=family, operation=op,
                                                           backend=backend, n=n, bound=checked_bound,
                                                           error=checked_error, cond=truth[i]["cond"],
                                                           A=A[i].tolist() if not A.is_complex() else
                                                           [[repr(complex(x)) for x in r] for r in A[i].tolist()]))
                print(f"  {dname} {family} n={n}: {m} matrices", file=sys.stderr, flush=True)
    table = []
    for (dname, family, op, backend), rows in groups.items():
        table.append(dict(dtype=dname, family=family, operation=op, backend=backend,
                          **summarise(rows, DTYPES[dname])))
    return table, violations


def fmt(x) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}" if x < 1e4 else f"{x:.2e}"


def markdown(table: list[dict]) -> str:
    lines = ["| dtype | family | operation | backend | count | median bound/true | worst bound/true | refused | "
             "certified within 100× | refused, cond·eps ≤ 1e-2 | refused at max_error = 10× true | violations |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['dtype']} | {r['family']} | {r['operation']} | {r['backend']} | {r['count']} | "
                     f"{fmt(r['median_ratio'])} | {fmt(r['worst_ratio'])} | {r['refusals']} | "
                     f"{r['within_100']}/{r['certified']} | "
                     f"{r['refusals_well_conditioned']} | {r.get('refused_at_10x', '–')} | {r['violations']} |")
    return "\n".join(lines)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except OSError:
        return "unknown"


# ---------------------------------------------------------------- speed of the exact path, old against new

SPEED_CASES = [  # (n, batch, cond, dtypes, backend, operation)
    (4, 200_000, 10.0, ("float32", "float64"), "auto", "inverse"),
    (8, 50_000, 10.0, ("float32", "float64"), "auto", "inverse"),
    (32, 2_000, 10.0, ("float32", "float64"), "auto", "inverse"),
    (4, 200_000, 1e4, ("float64",), "auto", "inverse"),  # above TIGHT_THRESHOLD: the split residual, the product form
    (8, 20_000, 1e10, ("float64",), "auto", "inverse"),
    (16, 4_000, 1e4, ("float64",), "auto", "inverse"),
    (4, 200_000, 10.0, ("float64",), "auto", "solve k=1"),
    (4, 200_000, 1e4, ("float64",), "auto", "solve k=1"),  # above TIGHT_THRESHOLD: Dot2 for the solution's residual
    (16, 4_000, 1e4, ("float64",), "auto", "solve k=1"),
    (8, 20_000, 1e3, ("float32", "complex64"), "torch", "inverse"),  # the torch path's product form, single precision
    (8, 20_000, 10.0, ("float64", "complex128"), "torch", "inverse"),  # the torch path, residuals not re-evaluated
    (8, 20_000, 1e8, ("float64", "complex128"), "torch", "inverse"),  # the torch path's re-evaluated residuals
    (32, 1_000, 1e8, ("float64", "complex128"), "torch", "inverse"),
]


def speed_key(n: int, dname: str, cond: float, backend: str, operation: str) -> str:
    return f"{n}/{dname}/{cond:g}/{backend}/{operation}"


def speed_worker(repeats: int) -> None:
    """One process: print {case: best-of-repeats seconds} of batched_inverse_ex(A) or batched_solve(A, b), one torch
    thread."""
    torch.set_num_threads(1)
    from neuinv.testing import conditioned_matrices
    out = {"file": neuinv.__file__, "compiled": bool(neuinv.available_backends()["cpp"].available)}
    for n, batch, cond, dnames, backend, operation in SPEED_CASES:
        for dname in dnames:
            A = conditioned_matrices(batch, n, cond, DTYPES[dname], seed=n)
            b = right_hand_sides(batch, n, 1, DTYPES[dname], seed=n)[..., 0]
            if operation == "inverse":
                def call():
                    neuinv.batched_inverse_ex(A, backend=backend)
            else:
                def call():
                    neuinv.batched_solve(A, b, backend=backend)
            call()  # warm up (and load the compiled kernels)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            out[speed_key(n, dname, cond, backend, operation)] = min(times)
    print(json.dumps(out))


def speed(old: str, rounds: int, repeats: int) -> dict:
    """Median over interleaved rounds of each version's time, each version in its own process per round."""
    new = str(Path(__file__).resolve().parents[1])
    samples = {"old": [], "new": []}
    for r in range(rounds):
        for version, root in (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old)):
            env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--speed-worker", str(repeats)],
                                  capture_output=True, text=True, env=env, cwd=root)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            expected = os.path.join(root, "neuinv", "__init__.py")
            if os.path.realpath(result["file"]) != os.path.realpath(expected):
                raise RuntimeError(f"{version}: neuinv from {result['file']}, not {expected}")
            if not result["compiled"]:
                raise RuntimeError(f"{version}: the compiled CPU kernels did not load")
            samples[version].append(result)
            print(f"  round {r + 1} {version}", file=sys.stderr, flush=True)
    rows = []
    for n, batch, cond, dnames, backend, operation in SPEED_CASES:
        for dname in dnames:
            key = speed_key(n, dname, cond, backend, operation)
            o = statistics.median(s[key] for s in samples["old"])
            w = statistics.median(s[key] for s in samples["new"])
            rows.append(dict(operation=operation, n=n, dtype=dname, batch=batch, cond=cond, backend=backend,
                             old_ms=1e3 * o, new_ms=1e3 * w, new_over_old=w / o))
    return dict(rounds=rounds, repeats_per_round=repeats, old=old, rows=rows)


def before_after_markdown(result: dict, columns: tuple[str, ...]) -> str:
    """The rows of a --speed or --certificate-speed result as a table: `columns` (keys of each row, left to right),
    then the times before and after and their ratio."""
    text = {"call", "operation", "dtype", "backend"}
    lines = ["| " + " | ".join(columns) + " | before, ms | after, ms | after / before |",
             "|" + "|".join("---" if c in text else "---:" for c in columns) + "|---:|---:|---:|"]
    for r in result["rows"]:
        cells = [f"{r[c]:g}" if c == "cond" else str(r[c]) for c in columns]
        times = f"{r['old_ms']:.2f} | {r['new_ms']:.2f} | {r['new_over_old']:.2f}×"
        lines.append("| " + " | ".join(cells) + f" | {times} |")
    return "\n".join(lines)


CERTIFICATE_CASES = [(4, 50_000), (8, 20_000), (32, 1_000)]  # (n, batch), each in float64 and complex128


def certificate_speed(old: str, rounds: int) -> dict:
    """The torch path's certificate alone, this checkout's neuinv/certificate.py against --old's, both loaded in this
    process (the module imports torch and math only) and timed alternately: median over rounds of
    certificate.error_bound(A, X) and solve_error_bound(A, B, X_B, X, bound) (k = 1), one torch thread. Within one
    process the machine's drift cancels, which separate processes (--speed) do not manage on a shared machine."""
    import importlib.util

    def load(root: str, name: str):
        spec = importlib.util.spec_from_file_location(name, os.path.join(root, "neuinv", "certificate.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    from neuinv.testing import conditioned_matrices
    torch.set_num_threads(1)
    versions = {"old": load(old, "certificate_old"), "new": load(str(Path(__file__).resolve().parents[1]),
                                                                 "certificate_new")}
    rows = []
    for n, batch in CERTIFICATE_CASES:
        for dname in ("float64", "complex128"):
            for cond in (10.0, 1e8):
                A = conditioned_matrices(batch, n, cond, DTYPES[dname], seed=n)
                X = torch.linalg.inv(A)
                B = torch.randn(batch, n, 1, dtype=A.dtype, generator=torch.Generator().manual_seed(n))
                X_B = torch.linalg.solve(A, B)
                bound = versions["old"].error_bound(A, X)
                calls = {"error_bound": lambda m: m.error_bound(A, X),
                         "solve_error_bound k=1": lambda m: m.solve_error_bound(A, B, X_B, X, bound)}
                for call, f in calls.items():
                    samples = {"old": [], "new": []}
                    for r in range(rounds):
                        for version in ("old", "new") if r % 2 == 0 else ("new", "old"):
                            start = time.perf_counter()
                            f(versions[version])
                            samples[version].append(time.perf_counter() - start)
                    o, w = statistics.median(samples["old"]), statistics.median(samples["new"])
                    rows.append(dict(call=call, n=n, dtype=dname, batch=batch, cond=cond, old_ms=1e3 * o,
                                     new_ms=1e3 * w, new_over_old=w / o))
    return dict(rounds=rounds, old=old, rows=rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=60, help="matrices per dtype, family and n < 16")
    parser.add_argument("--count16", type=int, default=24, help="matrices per dtype and family at n = 16")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--speed", action="store_true", help="time the exact path against the --old checkout")
    parser.add_argument("--certificate-speed", action="store_true",
                        help="time the torch path's certificate against the --old checkout's, in one process")
    parser.add_argument("--old", default="/tmp/old", help="checkout of the code to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="timings per case in each process (best kept)")
    parser.add_argument("--speed-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.speed_worker is not None:
        speed_worker(args.speed_worker)
        return 0
    meta = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
                date=datetime.date.today().isoformat(), commit=git_commit(), torch=torch.__version__)
    if args.speed or args.certificate_speed:
        if args.speed:
            result = dict(meta, **speed(args.old, args.rounds, args.repeats))
            print(before_after_markdown(result, ("operation", "n", "dtype", "batch", "cond", "backend")))
        else:
            result = dict(meta, **certificate_speed(args.old, args.rounds))
            print(before_after_markdown(result, ("call", "n", "dtype", "batch", "cond")))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=1))
        return 0
    counts = {n: (args.count16 if n >= 16 else args.count) for n in args.sizes}
    start = time.perf_counter()
    table, violations = run(counts, args.dtypes, args.families, args.sizes, args.backends)
    meta["seconds"] = time.perf_counter() - start
    print(markdown(table))
    for v in violations:
        print(f"VIOLATION: {json.dumps(v)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(meta, counts={str(k): v for k, v in counts.items()},
                                                   rows=table, violations=violations), indent=1))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
