"""The ``neuinv`` command: ``demo``, ``info``, ``train`` and ``reproduce``."""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import platform
import sys
import time

import torch

from . import __version__, available_backends, batched_inverse, batched_inverse_ex
from .backends import resolve_backend
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

    backend = resolve_backend("auto", A)
    print(f"backend: {backend.name} ({available_backends()[backend.name].reason})")
    print("\nworst ||I - A X||_F over the batch (float64 truth) and wall time:")
    print(f"  {'torch.linalg.inv':38s} {worst(X_torch):9.2e}  {t_torch * 1e3:9.2f} ms")
    print(f"  {'neuinv.batched_inverse (exact path)':38s} {worst(X_exact):9.2e}  {t_exact * 1e3:9.2f} ms"
          f"  ({t_torch / t_exact:.2f}x torch)")
    print(f"  {'neuinv, warm start ||I - A X0|| = 1e-3':38s} {worst(X_warm):9.2e}  {t_warm * 1e3:9.2f} ms"
          f"  ({t_torch / t_warm:.2f}x torch; Newton-Schulz steps: "
          f"max {int(info_warm.iterations.max())}, fallbacks {int(info_warm.fallback.sum())})")

    print("\nthe certificate: one matrix made singular (two equal rows), one ill-conditioned (cond 1e12),"
          " one guess spoiled:")
    A_bad, init_bad = A[:8].clone(), init[:8].clone()
    A_bad[3, 1] = A_bad[3, 0]
    A_bad[4] = conditioned_matrices(1, n, 1e12, dtype, seed=7)[0].to(device)
    init_bad[5] = 0.0
    X_bad, info = batched_inverse_ex(A_bad, init=init_bad)
    what = {3: "singular", 4: "cond 1e12", 5: "spoiled guess"}
    for i in range(8):
        status = "certified" if info.certified[i] else "NOT certified"
        path = "exact path" if info.fallback[i] else f"{int(info.iterations[i])} Newton-Schulz steps"
        print(f"  A[{i}] {what.get(i, ''):13s}: {path:24s} error bound {float(info.error_bound[i]):9.2e}  {status}")
    try:
        batched_inverse(A_bad, init=init_bad)
        print("  batched_inverse returned without error: the certificate FAILED")
        return 1
    except torch.linalg.LinAlgError as error:
        print(f"  batched_inverse raised LinAlgError: {error}")
    return _demo_learned(device)


def _demo_learned(device) -> int:
    """The shipped paper-16x16 initializer: in its box, outside it, and at a singular matrix."""
    from .learned.data import paper_sampler
    from .learned.training import load_pretrained

    model = load_pretrained("paper-16x16", map_location=device)
    A = paper_sampler("paper-16x16", seed=12345).sample(10_000).A.to(device)
    print(f"\nlearned initializer paper-16x16 ({model.depth}-FC, h={model.hidden}, {model.head} head, "
          f"{str(model.dtype).replace('torch.', '')}) on 10000 in-domain 16x16 float64 matrices (A = A0 + 0.01 U):")
    (X_model, info_model), t_model = _timed(lambda: batched_inverse_ex(A, model=model), device)
    (X_classic, info_classic), t_classic = _timed(lambda: batched_inverse_ex(A, method="newton_schulz"), device)
    _, t_torch = _timed(lambda: torch.linalg.inv(A), device)
    for name, X, info, seconds in [("learned guess + Newton-Schulz", X_model, info_model, t_model),
                                   ("scaled transpose + Newton-Schulz", X_classic, info_classic, t_classic)]:
        print(f"  {name:34s} steps mean {info.iterations.float().mean():5.2f} max {int(info.iterations.max()):2d}, "
              f"fallbacks {int(info.fallback.sum())}, worst residual {true_residual(A, X).max():.1e}, "
              f"{seconds * 1e3:8.1f} ms")
    print(f"  {'torch.linalg.inv':34s} {'':44s} {t_torch * 1e3:8.1f} ms")
    A_bad = A[:3].clone()
    A_bad[0] += 0.05  # outside the trained box
    A_bad[1, :, 0] = A_bad[1, :, 1]  # two equal columns: singular, inside the box's neighbourhood
    X, info = batched_inverse_ex(A_bad, model=model)
    for i, what in enumerate(["outside the box", "singular", "inside the box"]):
        status = "certified" if info.certified[i] else "NOT certified (batched_inverse raises)"
        path = "exact path" if info.fallback[i] else f"{int(info.iterations[i])} Newton-Schulz steps"
        print(f"  {what:16s}: {path:24s} {status}")
    return 0 if info.certified[[0, 2]].all() and not info.certified[1] else 1


def info(args) -> int:
    """Versions, devices, the compiled kernels (which build, from where, for which torch) and the backends usable
    here, in a form to paste into a bug report."""
    from . import extension

    try:
        distribution = importlib.metadata.version("neuinv")  # with a wheel's label naming its torch: 0.1.0+pt2130cpu
    except importlib.metadata.PackageNotFoundError:
        distribution = f"{__version__} (not installed)"
    print(f"neuinv {distribution}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"Python {platform.python_version()}, {platform.machine()} {platform.system()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i}: {torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})")
    else:
        print(f"no CUDA device; CPU threads: {torch.get_num_threads()}; "
              f"torch's CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    for line in extension.describe():
        print(line)
    print("backends:")
    for name, status in available_backends().items():
        print(f"  {name:7s} {'available' if status.available else 'unavailable':12s} {status.reason}")
    return 0


def train(args) -> int:
    """Train a learned initializer on one of the paper's datasets and save the checkpoint."""
    from .learned.data import paper_sampler
    from .learned.training import fit

    sampler = paper_sampler(args.dataset, seed=args.seed, base_matrix=args.base_matrix)
    test = paper_sampler(args.dataset, seed=args.seed + 10_000, base_matrix=args.base_matrix).sample(10_000)
    validation = paper_sampler(args.dataset, seed=args.seed + 20_000, base_matrix=args.base_matrix).sample(10_000)
    model, history = fit(sampler, hidden=args.hidden, depth=args.depth, head=args.head, steps=args.steps,
                         epochs=args.epochs, train_size=args.train_size, seed=args.seed, device=args.device,
                         dtype=getattr(torch, args.dtype), test=test, validation=validation)
    model.metadata["dataset"] = args.dataset
    model.save(args.out, **model.metadata)
    print(f"kept the network of epoch {history.best_epoch + 1} of {len(history.validation_errors)} (best on 10000 "
          f"fresh validation matrices); average absolute test error {history.test_error:.3g} on 10000 other "
          f"fresh matrices; saved {args.out}")
    return 0


def reproduce(args) -> int:
    """Train and evaluate the paper's models; print our errors beside Table 1 and Table 2."""
    from .learned.paper import markdown, reproduce as run

    if args.quick:
        print("QUICK run: one run per entry, 20000 training steps (300 for 16x16) instead of the paper's "
              "schedule; expect larger errors than the paper's. Drop --quick for the full-length runs.")
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    rows = run(table=args.table, runs=runs, quick=args.quick, device=args.device, datasets=args.dataset,
               models=args.model, base_matrix=args.base_matrix)
    print(markdown(rows))
    return 0


def regions(args) -> int:
    """Train the paper's small 2-FC (h=8) on 2x2 (1st) and list its linear regions (paper §5.3)."""
    from .learned.analysis import activation_regions, markdown
    from .learned.data import paper_sampler
    from .learned.training import fit

    if args.quick:
        print("QUICK run: 20000 training steps instead of the paper's 20 epochs of 10^6 matrices.")
    length = dict(steps=20_000, train_size=100_000) if args.quick else dict(epochs=20, train_size=1_000_000)
    model, history = fit(paper_sampler("paper-2x2-1st", seed=args.seed), hidden=8, seed=args.seed, **length,
                         test=paper_sampler("paper-2x2-1st", seed=10_000).sample(10_000))
    U = 2 * torch.rand(args.samples, 2, 2, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64) - 1
    print(f"2-FC small (h=8), test error {history.test_error:.3g}; {args.samples} inputs U in [-1, 1]^(2x2):")
    print(markdown(activation_regions(model, U)))
    print("paper (§5.3): two patterns cover 55.7% and 41.7%; distance to the Taylor map under 0.06")
    return 0


def why_cant(args) -> int:
    """Pictures of the near-singular set and the growing-error experiment (paper §3, Figs. 1-2)."""
    from .learned.whycant import box_experiment, markdown, near_singular_figures

    if importlib.util.find_spec("matplotlib") is None:
        print("neuinv why-cant draws figures with matplotlib, which is not installed: pip install 'neuinv[plot]'",
              file=sys.stderr)
        return 2
    for path in near_singular_figures(args.out):
        print(f"wrote {path}")
    if args.quick:
        print("QUICK run: 1000 training steps per box (the trend, not converged networks).")
    results = box_experiment(steps=1000 if args.quick else 20_000, test_size=5000 if args.quick else 50_000)
    print(markdown(results))
    return 0


def build_ext(args) -> int:
    """Compile the C++ CPU kernels, and the CUDA kernels where torch is a CUDA build and a CUDA toolkit is found,
    into neuinv's cache folder (what the first call that needs them otherwise does by itself)."""
    from . import extension

    parts = ["cpu"] if args.cpu_only else ["cpu", "cuda"]
    for part in parts:
        problem = extension.build_problem(part)
        if problem is not None:
            print(f"the {part.upper()} kernels cannot be built here: {problem}")
            if part == "cpu":
                return 1
            continue
        print(f"the {part.upper()} kernels are built and loaded: {extension.build(part, verbose=args.verbose)}")
    return 0


DATASETS = ("paper-2x2-1st", "paper-2x2-2nd", "paper-3x3", "paper-16x16")


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
    train_parser.add_argument("--dataset", default="paper-3x3", choices=list(DATASETS))
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
    reproduce_parser.add_argument("--quick", action="store_true",
                                  help="one run, 20000 steps per network (300 for 16x16): minutes on a CPU")
    reproduce_parser.add_argument("--table", choices=["1", "2", "all"], default="all")
    reproduce_parser.add_argument("--runs", type=int, help="training runs per entry (default 3; 1 with --quick)")
    reproduce_parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    reproduce_parser.add_argument("--dataset", action="append", choices=list(DATASETS),
                                  help="only this dataset (repeatable; default: all four)")
    reproduce_parser.add_argument("--model", action="append", choices=["2-FC", "3-FC"],
                                  help="only this Table 1 network (repeatable; default: both)")
    reproduce_parser.add_argument("--base-matrix", help=".npy file replacing the 16x16 centre A0 (e.g. the authors')")
    reproduce_parser.set_defaults(run=reproduce)
    regions_parser = commands.add_parser("regions", help=regions.__doc__)
    regions_parser.add_argument("--quick", action="store_true")
    regions_parser.add_argument("--samples", type=int, default=1_000_000)
    regions_parser.add_argument("--seed", type=int, default=0)
    regions_parser.set_defaults(run=regions)
    why_parser = commands.add_parser("why-cant", help=why_cant.__doc__)
    why_parser.add_argument("--quick", action="store_true")
    why_parser.add_argument("--out", default="why-cant", help="folder for the PNG figures")
    why_parser.set_defaults(run=why_cant)
    build_parser = commands.add_parser("build-ext", help=build_ext.__doc__)
    build_parser.add_argument("--verbose", action="store_true", help="show the compiler's commands and output")
    build_parser.add_argument("--cpu-only", action="store_true", help="build the CPU kernels only")
    build_parser.set_defaults(run=build_ext)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
