"""How much the compiled CPU kernels gain over neuinv's pure-torch path (what runs where no C++ compiler is): the
exact path of batched_inverse on each backend, interleaved in one process, on the same matrices (cond 100), beside
torch.linalg.inv. The no-compiler warning quotes the range (neuinv/extension.py, COMPILED_SPEEDUP).

    python bench/compiled_vs_torch.py [--batch 100000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

import neuinv
from neuinv.testing import conditioned_matrices


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=100_000, help="matrices per batch at n <= 8 (fewer above)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 3, 4, 8, 16, 32, 64])
    args = parser.parse_args(argv)
    assert neuinv.batched_inverse(torch.eye(2)[None], backend="cpp") is not None  # builds the kernels if needed
    print(f"# neuinv {neuinv.__version__}, torch {torch.__version__}, {platform.machine()}, "
          f"{torch.get_num_threads()} threads; best of {args.repeats}")
    print("| n | dtype | batch | torch.linalg.inv ms | neuinv torch path ms | neuinv cpp ms | cpp / torch path |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        for dtype in (torch.float32, torch.float64):
            batch = max(1000, min(args.batch, args.batch * 64 // (n * n)))
            A = conditioned_matrices(batch, n, 100.0, dtype, seed=n)
            t_inv = best_time(lambda: torch.linalg.inv(A), args.repeats)
            t_torch = best_time(lambda: neuinv.batched_inverse(A, backend="torch"), args.repeats)
            t_cpp = best_time(lambda: neuinv.batched_inverse(A, backend="cpp"), args.repeats)
            print(f"| {n} | {str(dtype)[6:]} | {batch} | {t_inv * 1e3:.1f} | {t_torch * 1e3:.1f} | {t_cpp * 1e3:.1f} "
                  f"| {t_torch / t_cpp:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
