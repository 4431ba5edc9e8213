"""Block-Jacobi preconditioning with neuinv against the usual preconditioners, side by side.

1. The SuiteSparse problems in ../shared/matrices: iterations and time (setup and solve apart) to
   a relative residual of 1e-8 with scipy's cg (SPD) or gmres(50) (others) and: no preconditioner,
   point Jacobi, exact block-Jacobi from per-block numpy.linalg.inv, neuinv BlockJacobi (scipy
   solver through as_linear_operator, and neuinv's own torch solver), scipy spilu, and pyamg
   smoothed aggregation. A plot of residual histories.
2. Setup alone for 10^5 blocks of size 3 and 6: per-block numpy loop, numpy's stacked inverse,
   neuinv.
3. A drifting sequence: 2-D diffusion, -div(k_t grad u), 5-point stencil on a 200x200 grid, k_t
   changing over 20 steps; full re-inversion of the blocks against warm-started ``update``.

    python bench/precond.py --json bench/out/precond.json --plot bench/out/precond_residuals.png
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.sparse.linalg as sla
import torch

import neuinv
from neuinv.sparse import solvers
from neuinv.sparse.io import read_matrix_market
from neuinv.sparse.precond import BlockJacobi

MATRICES = Path(__file__).resolve().parents[2] / "shared" / "matrices"
# Block sizes: the natural degrees of freedom per node where known (structural problems: 6 or 3,
# nos4: 2, lund_a: 3), 3 or 4 otherwise.
BLOCK_SIZES = {"bcsstk01": 6, "bcsstk04": 6, "bcsstk08": 6, "bcsstk14": 6, "nos3": 4, "nos4": 2, "lund_a": 3,
               "fs_541_1": 4, "fs_760_3": 4, "orsirr_1": 4, "steam1": 3, "jpwh_991": 4, "pores_1": 2}
RTOL = 1e-8
MAX_ITER = 5000


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def per_block_numpy(A, block_size):
    """Exact block-Jacobi as one would write it by hand: a numpy inverse per block, block_diag."""
    dense_blocks = []
    N = A.shape[0]
    A = A.tocsr()
    for start in range(0, N, block_size):
        stop = min(start + block_size, N)
        dense_blocks.append(np.linalg.inv(A[start:stop, start:stop].toarray()))
    M = scipy.sparse.block_diag(dense_blocks, format="csr")
    return sla.aslinearoperator(M)


def preconditioners(A, block_size):
    """(name, setup callable returning a scipy LinearOperator or None)."""
    diagonal = A.diagonal()

    def ilu():
        factor = sla.spilu(A.tocsc(), drop_tol=1e-4, fill_factor=10)
        return sla.LinearOperator(A.shape, matvec=factor.solve)

    def amg():
        import pyamg

        return pyamg.smoothed_aggregation_solver(A.tocsr()).aspreconditioner()

    return [
        ("none", lambda: None),
        ("point Jacobi", lambda: sla.aslinearoperator(scipy.sparse.diags(1.0 / diagonal))),
        ("block-Jacobi, per-block numpy", lambda: per_block_numpy(A, block_size)),
        ("block-Jacobi, neuinv", lambda: BlockJacobi(A, block_size=block_size).as_linear_operator()),
        ("scipy spilu", ilu),
        ("pyamg smoothed aggregation", amg),
    ]


def scipy_solve(A, b, M, symmetric):
    history = []
    b_norm = np.linalg.norm(b)
    if symmetric:
        def callback(xk):
            history.append(np.linalg.norm(b - A @ xk) / b_norm)
        _, info = sla.cg(A, b, M=M, rtol=RTOL, maxiter=MAX_ITER, callback=callback)
    else:
        def callback(pr_norm):
            history.append(pr_norm)
        _, info = sla.gmres(A, b, M=M, rtol=RTOL, restart=50, maxiter=MAX_ITER // 50, callback=callback,
                            callback_type="pr_norm")
    return info == 0, len(history), history


def bench_matrix(path: Path, rows: list, histories: dict):
    name = path.stem
    A = read_matrix_market(path)
    symmetric = abs(A - A.T).max() == 0
    block_size = BLOCK_SIZES.get(name, 3)
    b = A @ np.ones(A.shape[0])
    for method, setup in preconditioners(A, block_size):
        try:
            M, setup_s = timed(setup)
        except Exception as error:  # a preconditioner that cannot be built for this matrix is reported
            rows.append(dict(matrix=name, method=method, error=f"{type(error).__name__}: {error}"[:80]))
            continue
        (converged, iterations, history), solve_s = timed(lambda: scipy_solve(A, b, M, symmetric))
        rows.append(dict(matrix=name, n=A.shape[0], nnz=A.nnz, block=block_size, spd=bool(symmetric), method=method,
                         solver="scipy cg" if symmetric else "scipy gmres(50)", converged=converged,
                         iterations=iterations, setup_s=setup_s, solve_s=solve_s))
        histories[f"{name}: {method}"] = (history, bool(symmetric))
    M, setup_s = timed(lambda: BlockJacobi(A, block_size=block_size))
    solve = solvers.cg if symmetric else solvers.gmres
    kwargs = {} if symmetric else {"restart": 50}
    result, solve_s = timed(lambda: solve(A, torch.as_tensor(b), M, rtol=RTOL, max_iter=MAX_ITER, **kwargs))
    rows.append(dict(matrix=name, n=A.shape[0], nnz=A.nnz, block=block_size, spd=bool(symmetric),
                     method="block-Jacobi, neuinv", solver="neuinv cg" if symmetric else "neuinv gmres(50)",
                     converged=bool(result.converged.all()), iterations=int(result.iterations.max()),
                     setup_s=setup_s, solve_s=solve_s))


def random_block_matrix(blocks, block_size, seed=0):
    """Block-diagonally dominant sparse matrix with `blocks` dense diagonal blocks plus coupling."""
    rng = np.random.default_rng(seed)
    N = blocks * block_size
    diag_blocks = rng.standard_normal((blocks, block_size, block_size)) + 2 * block_size * np.eye(block_size)
    D = scipy.sparse.block_diag(list(diag_blocks), format="csr")
    coupling = scipy.sparse.random(N, N, density=2.0 / N, random_state=rng)
    return (D + coupling).tocsr()


def bench_setup(rows: list, blocks: int):
    for block_size in (3, 6):
        A = random_block_matrix(blocks, block_size)
        _, loop_s = timed(lambda: per_block_numpy(A, block_size))

        def stacked():
            dense = np.stack([A[i:i + block_size, i:i + block_size].toarray()
                              for i in range(0, A.shape[0], block_size)])
            return np.linalg.inv(dense)

        _, stacked_s = timed(stacked)
        BlockJacobi(A, block_size=block_size)  # warm-up
        _, neuinv_s = timed(lambda: BlockJacobi(A, block_size=block_size))
        rows.append(dict(blocks=blocks, block=block_size, per_block_numpy_s=loop_s, stacked_numpy_s=stacked_s,
                         neuinv_s=neuinv_s, speedup_vs_per_block=loop_s / neuinv_s))


def diffusion_matrix(grid: int, step: int):
    """5-point finite differences of -div(k grad u) on the unit square, Dirichlet boundary,
    k(x, y) = 1 + 0.9 sin(2 pi (x + 0.002 step)) cos(2 pi y): the coefficient drifts with step."""
    h = 1.0 / (grid + 1)
    x = (np.arange(grid) + 1) * h
    X, Y = np.meshgrid(x, x, indexing="ij")

    def k(xx, yy):
        return 1.0 + 0.9 * np.sin(2 * np.pi * (xx + 0.002 * step)) * np.cos(2 * np.pi * yy)

    east, west = k(X + h / 2, Y), k(X - h / 2, Y)
    north, south = k(X, Y + h / 2), k(X, Y - h / 2)
    index = np.arange(grid * grid).reshape(grid, grid)
    rows, cols, vals = [index.ravel()], [index.ravel()], [(east + west + north + south).ravel()]
    for coeff, di, dj in [(east, 1, 0), (west, -1, 0), (north, 0, 1), (south, 0, -1)]:
        i, j = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        ok = (0 <= i + di) & (i + di < grid) & (0 <= j + dj) & (j + dj < grid)
        rows.append(index[ok])
        cols.append(index[(i + di)[ok], (j + dj)[ok]])
        vals.append(-coeff[ok])
    return scipy.sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                   shape=(grid * grid,) * 2) / h**2


def bench_drift(rows: list, grid: int, steps: int, block_size: int = 4):
    M = BlockJacobi(diffusion_matrix(grid, 0), block_size=block_size)
    for step in range(1, steps + 1):
        A = diffusion_matrix(grid, step)
        b = A @ np.ones(A.shape[0])
        fresh, full_s = timed(lambda: BlockJacobi(A, block_size=block_size))
        report, update_s = timed(lambda: M.update(A))
        result = solvers.cg(A, torch.as_tensor(b), M, rtol=RTOL, max_iter=MAX_ITER)
        fresh_result = solvers.cg(A, torch.as_tensor(b), fresh, rtol=RTOL, max_iter=MAX_ITER)
        rows.append(dict(step=step, n=A.shape[0], blocks=M.num_blocks, full_inversion_s=full_s, update_s=update_s,
                         ns_max_iterations=report.max_iterations, ns_mean_iterations=report.mean_iterations,
                         fallbacks=report.fallbacks, cg_iterations_update=int(result.iterations[0]),
                         cg_iterations_fresh=int(fresh_result.iterations[0])))


def markdown(matrix_rows, setup_rows, drift_rows) -> str:
    out = ["| matrix | n | block | method | solver | iterations | setup ms | solve ms |",
           "|---|---:|---:|---|---|---:|---:|---:|"]
    for r in matrix_rows:
        if "error" in r:
            out.append(f"| {r['matrix']} | | | {r['method']} | | {r['error']} | | |")
            continue
        its = str(r["iterations"]) + ("" if r["converged"] else " (not converged)")
        out.append(f"| {r['matrix']} | {r['n']} | {r['block']} | {r['method']} | {r['solver']} | {its} | "
                   f"{r['setup_s'] * 1e3:.1f} | {r['solve_s'] * 1e3:.1f} |")
    out += ["", "| blocks | block size | per-block numpy s | stacked numpy s | neuinv s | neuinv vs per-block |",
            "|---:|---:|---:|---:|---:|---:|"]
    for r in setup_rows:
        out.append(f"| {r['blocks']} | {r['block']} | {r['per_block_numpy_s']:.3f} | {r['stacked_numpy_s']:.3f} | "
                   f"{r['neuinv_s']:.4f} | {r['speedup_vs_per_block']:.1f}x |")
    out += ["", "| step | blocks | full re-inversion ms | warm update ms | NS steps max/mean | fallbacks | "
            "CG its (update / fresh) |", "|---:|---:|---:|---:|---|---:|---|"]
    for r in drift_rows:
        out.append(f"| {r['step']} | {r['blocks']} | {r['full_inversion_s'] * 1e3:.1f} | {r['update_s'] * 1e3:.1f} | "
                   f"{r['ns_max_iterations']} / {r['ns_mean_iterations']:.2f} | {r['fallbacks']} | "
                   f"{r['cg_iterations_update']} / {r['cg_iterations_fresh']} |")
    return "\n".join(out)


def plot(histories: dict, path: str, names: list[str]):
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("the plot needs matplotlib: pip install -e '.[bench]'") from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        symmetric = True
        for label, (history, spd) in histories.items():
            if label.startswith(name + ":") and history:
                method = label.split(": ", 1)[1]
                ax.loglog(np.arange(1, len(history) + 1), history, label=method,
                          linestyle="--" if "neuinv" in method else "-")
                symmetric = spd
        ax.axhline(RTOL, color="grey", linestyle=":")
        what = "relative residual (scipy cg)" if symmetric else "preconditioned residual (scipy gmres pr_norm)"
        ax.set(title=name, xlabel="iteration", ylabel=what)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    parser.add_argument("--plot", help="PNG of residual histories for two of the matrices")
    parser.add_argument("--quick", action="store_true", help="three matrices, 10^4 blocks, 5 drift steps on 60x60")
    args = parser.parse_args(argv)
    paths = sorted(MATRICES.glob("*.mtx")) if MATRICES.is_dir() else []
    if args.quick:
        paths = [p for p in paths if p.stem in ("bcsstk01", "nos4", "pores_1")]
    matrix_rows, setup_rows, drift_rows, histories = [], [], [], {}
    for path in paths:
        bench_matrix(path, matrix_rows, histories)
    bench_setup(setup_rows, 10**4 if args.quick else 10**5)
    bench_drift(drift_rows, 60 if args.quick else 200, 5 if args.quick else 20)
    print(f"# neuinv {neuinv.__version__} block-Jacobi benchmark, {platform.machine()} CPU "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {datetime.date.today()}; rtol {RTOL:g}")
    print(markdown(matrix_rows, setup_rows, drift_rows))
    if args.plot and histories:
        names = [n for n in ("bcsstk14", "pores_1") if any(k.startswith(n + ":") for k in histories)]
        plot(histories, args.plot, names or [next(iter(histories)).split(":")[0]])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(date=str(datetime.date.today()), machine=platform.machine(), matrices=matrix_rows,
                           setup=setup_rows, drift=drift_rows), handle, indent=1)


if __name__ == "__main__":
    main()
