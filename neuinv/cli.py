"""The ``neuinv`` command: ``demo``, ``info``, ``train`` and ``reproduce``."""
from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from . import __version__, available_backends, batched_inverse, batched_inverse_ex
from .testing import conditioned_matrices, true_residual, warm_start


def _timed(fn, device):
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def demo(args) -> int:
    """Invert a batch, compare accuracy and speed with torch.linalg.inv, show the guard at work."""
    device, n, batch = args.device, args.n, args.batch
    dtype = getattr(torch, args.dtype)
    print(f"neuinv {__version__} demo: {batch} matrices of size {n}x{n}, {args.dtype}, cond 100, on {device}")
    A = conditioned_matrices(batch, n, 100.0, dtype, seed=0).to(device)

    X_torch, t_torch = _timed(lambda: torch.linalg.inv(A), device)
    X_exact, t_exact = _timed(lambda: batched_inverse(A), device)
    init = warm_start(A, 1e-3, seed=1)
    (X_warm, info_warm), t_warm = _timed(lambda: batched_inverse_ex(A, init=init), device)

    def worst(X):
        return true_residual(A, X).max().item()

    print("\nworst ||I - A X||_F over the batch (float64 truth) and wall time:")
    print(f"  {'torch.linalg.inv':38s} {worst(X_torch):9.2e}  {t_torch * 1e3:9.2f} ms")
    print(f"  {'neuinv.batched_inverse (exact path)':38s} {worst(X_exact):9.2e}  {t_exact * 1e3:9.2f} ms"
          f"  ({t_torch / t_exact:.2f}x torch)")
    print(f"  {'neuinv, warm start ||I - A X0|| = 1e-3':38s} {worst(X_warm):9.2e}  {t_warm * 1e3:9.2f} ms"
          f"  ({t_torch / t_warm:.2f}x torch; Newton-Schulz steps: "
          f"max {int(info_warm.iterations.max())}, fallbacks {int(info_warm.fallback.sum())})")

    print("\nthe guard: one matrix made nearly singular (cond 1e12) and one guess spoiled:")
    A_bad, init_bad = A[:8].clone(), init[:8].clone()
    A_bad[3] = conditioned_matrices(1, n, 1e12, dtype, seed=7)[0].to(device)
    init_bad[5] = 0.0
    X_bad, info = batched_inverse_ex(A_bad, init=init_bad)
    for i in range(8):
        status = "certified" if info.converged[i] else "NOT certified"
        path = "exact path" if info.fallback[i] else f"{int(info.iterations[i])} Newton-Schulz steps"
        print(f"  A[{i}]: {path:24s} residual {float(info.residual[i]):9.2e}  {status}")
    try:
        batched_inverse(A_bad, init=init_bad)
        print("  batched_inverse returned without error: the guard FAILED")
        return 1
    except torch.linalg.LinAlgError as error:
        print(f"  batched_inverse raised LinAlgError: {error}")
    return 0


def info(args) -> int:
    """Versions, devices and the backends usable here."""
    print(f"neuinv {__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()} {platform.system()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i}: {torch.cuda.get_device_name(i)}")
    else:
        print("no CUDA device; CPU threads:", torch.get_num_threads())
    print("backends:")
    for name, status in available_backends().items():
        print(f"  {name:7s} {'available' if status.available else 'unavailable':12s} {status.reason}")
    return 0


def train(args) -> int:
    """Train a learned initializer on one of the paper's datasets and save the checkpoint."""
    from .data import paper_sampler
    from .training import fit

    sampler = paper_sampler(args.dataset, seed=args.seed, base_matrix=args.base_matrix)
    test = paper_sampler(args.dataset, seed=args.seed + 10_000, base_matrix=args.base_matrix).sample(10_000)
    model, history = fit(sampler, hidden=args.hidden, depth=args.depth, head=args.head, steps=args.steps,
                         epochs=args.epochs, train_size=args.train_size, seed=args.seed, device=args.device,
                         dtype=getattr(torch, args.dtype), test=test)
    model.metadata["dataset"] = args.dataset
    model.save(args.out, **model.metadata)
    print(f"average absolute test error {history.test_error:.3g} on 10000 fresh matrices; saved {args.out}")
    return 0


def reproduce(args) -> int:
    """Train and evaluate the paper's models; print our errors beside Table 1 and Table 2."""
    from .paper import markdown, reproduce as run

    if args.quick:
        print("QUICK run: every network trains for 3000 steps instead of the paper's schedule; expect larger "
              "errors than the paper's. Drop --quick for the full-length runs.")
    rows = run(table=args.table, runs=args.runs, quick=args.quick, device=args.device)
    print(markdown(rows))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="neuinv", description="Fast, verified batched matrix inverses.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help=demo.__doc__)
    demo_parser.add_argument("--n", type=int, default=8, help="matrix size (default 8)")
    demo_parser.add_argument("--batch", type=int, default=100_000, help="number of matrices (default 100000)")
    demo_parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    demo_parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    demo_parser.set_defaults(run=demo)
    commands.add_parser("info", help=info.__doc__).set_defaults(run=info)
    train_parser = commands.add_parser("train", help=train.__doc__)
    train_parser.add_argument("--dataset", default="paper-3x3",
                              choices=["paper-2x2-1st", "paper-2x2-2nd", "paper-3x3", "paper-16x16"])
    train_parser.add_argument("--base-matrix", help=".npy file replacing the dataset's centre A0")
    train_parser.add_argument("--hidden", type=int, default=72)
    train_parser.add_argument("--depth", type=int, choices=[2, 3], default=2)
    train_parser.add_argument("--head", choices=["direct", "taylor"], default="direct")
    length = train_parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int)
    length.add_argument("--epochs", type=int)
    train_parser.add_argument("--train-size", type=int, help="fixed training set size (default: fresh batches)")
    train_parser.add_argument("--seed", type=int, default=0)
    train_parser.add_argument("--device", default="cpu")
    train_parser.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                              help="network precision (the paper trains in float64)")
    train_parser.add_argument("--out", required=True, help="checkpoint file to write")
    train_parser.set_defaults(run=train)
    reproduce_parser = commands.add_parser("reproduce", help=reproduce.__doc__)
    reproduce_parser.add_argument("--quick", action="store_true", help="3000 steps per network (minutes on a CPU)")
    reproduce_parser.add_argument("--table", choices=["1", "2", "all"], default="all")
    reproduce_parser.add_argument("--runs", type=int, default=3)
    reproduce_parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    reproduce_parser.set_defaults(run=reproduce)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
