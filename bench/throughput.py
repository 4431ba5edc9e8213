"""Throughput of neuinv against torch.linalg.inv, torch.linalg.solve and numpy.linalg.inv.

Every method runs in the same process on the same matrices (cond 100). For each one the table
gives the median wall time, matrices per second, and the roofline fraction: the time needed
just to move the bytes the method must read and write (A, the warm start where used, and X)
at the copy bandwidth measured in this run, divided by the measured time.

    python bench/throughput.py --quick --device cpu
    python bench/throughput.py --device cuda --json bench/out/throughput-cuda.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch

import neuinv
from neuinv.testing import conditioned_matrices, warm_start

SIZES = [2, 3, 4, 8, 16, 32, 64]
MAX_ELEMENTS = 2**26  # per input tensor: 512 MiB in float64
MAX_ELEMENTS_QUICK = 2**20


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn, device: str, repeats: int) -> tuple[float, float, float]:
    """Median, 20th and 80th percentile wall time of fn() after one warm-up call."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times), times[len(times) // 5], times[(4 * len(times)) // 5]


def copy_bandwidth(device: str, repeats: int) -> float:
    """Bytes per second of a large device copy, counting bytes read plus bytes written."""
    src = torch.empty(2**26 if device.startswith("cuda") else 2**24, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds, _, _ = median_seconds(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * src.element_size() / seconds


def methods(A: torch.Tensor, init: torch.Tensor, device: str):
    """(name, callable, tensors read and written in units of the batch size b*n*n) per method."""
    n = A.shape[-1]
    eye = torch.eye(n, dtype=A.dtype, device=device).expand_as(A)
    yield "torch.linalg.inv", lambda: torch.linalg.inv(A), 2
    yield "torch.linalg.solve(A, I)", lambda: torch.linalg.solve(A, eye), 2
    if device == "cpu":
        A_np = A.numpy()
        yield "numpy.linalg.inv", lambda: np.linalg.inv(A_np), 2
    yield "neuinv auto (exact path)", lambda: neuinv.batched_inverse(A), 2
    available = neuinv.available_backends()
    device_backends = ("cuda", "triton") if device.startswith("cuda") else ("cpp",)
    compiled_backends = [name for name in device_backends if available[name].available]
    for backend in ["torch"] + compiled_backends:
        yield (f"neuinv {backend}, scaled transpose",
               lambda b=backend: neuinv.batched_inverse(A, method="newton_schulz", backend=b), 2)
        yield f"neuinv {backend}, warm start 1e-3", lambda b=backend: neuinv.batched_inverse(A, init=init, backend=b), 3
    if compiled_backends and compiled_backends[0] in ("cuda", "cpp"):
        # The compiled kernels alone, without dispatch and verification: exact inverse (reads A, writes X)
        # and the whole warm-started Newton-Schulz loop (reads A and X0, writes X).
        tol = torch.finfo(A.dtype).eps / 2
        yield "operator neuinv::invert (exact path)", \
            lambda: torch.ops.neuinv.invert(A, None, None, False, tol, 1e-3, 64, 0.5, 1.0), 2
        yield "kernel neuinv::exact_inverse", lambda: torch.ops.neuinv.exact_inverse(A), 2
        yield "kernel neuinv::newton_schulz, warm 1e-3", \
            lambda: torch.ops.neuinv.newton_schulz(A, init, tol, 1e-3, 10, True, 0.5), 3


def run(args) -> list[dict]:
    device = args.device
    repeats = 3 if args.quick else args.repeats
    bandwidth = copy_bandwidth(device, repeats)
    print(f"# neuinv {neuinv.__version__} throughput on {describe_device(device)}, torch {torch.__version__}, "
          f"{datetime.date.today()}", file=sys.stderr)
    print(f"# measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write)", file=sys.stderr)
    rows = []
    for dtype in args.dtypes:
        for n in args.sizes:
            batch = min(args.max_batch, max(1, (MAX_ELEMENTS_QUICK if args.quick else MAX_ELEMENTS) // (n * n)))
            A = conditioned_matrices(batch, n, 100.0, dtype, seed=n).to(device)
            init = warm_start(A, 1e-3, seed=n)
            for name, fn, tensors_moved in methods(A, init, device):
                if args.methods and name != "torch.linalg.inv" and not any(part in name for part in args.methods):
                    continue
                if args.skip_slow and name.endswith("scaled transpose") and batch * n * n > 2**22:
                    continue
                median, low, high = median_seconds(fn, device, repeats)
                bytes_moved = tensors_moved * A.numel() * A.element_size()
                rows.append(dict(method=name, n=n, dtype=str(dtype).replace("torch.", ""), batch=batch,
                                 seconds=median, seconds_p20=low, seconds_p80=high,
                                 matrices_per_second=batch / median,
                                 roofline_fraction=bytes_moved / bandwidth / median))
                print(f"  n={n:2d} {rows[-1]['dtype']} {name:38s} {median * 1e3:10.3f} ms", file=sys.stderr)
    return rows, bandwidth


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def markdown(rows: list[dict]) -> str:
    lines = ["| n | dtype | batch | method | median ms | matrices/s | × torch.linalg.inv | roofline |",
             "|---:|---|---:|---|---:|---:|---:|---:|"]
    baseline = {(r["n"], r["dtype"]): r["seconds"] for r in rows if r["method"] == "torch.linalg.inv"}
    for r in rows:
        speedup = baseline[(r["n"], r["dtype"])] / r["seconds"]
        lines.append(f"| {r['n']} | {r['dtype']} | {r['batch']} | {r['method']} | {r['seconds'] * 1e3:.3f} | "
                     f"{r['matrices_per_second']:.3g} | {speedup:.2f} | {100 * r['roofline_fraction']:.1f}% |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="n in {2, 4, 16, 64}, batches up to 10^4 (and 2^20 elements), 3 repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the rows and the machine description to this file")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--max-batch", type=int, default=None, help="default 10^6 (10^4 with --quick)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--methods", nargs="+", default=None,
                        help="run only the methods whose name contains one of these strings (torch.linalg.inv, "
                             "the baseline of the table, always runs)")
    parser.add_argument("--skip-slow", action="store_true",
                        help="skip the scaled-transpose runs on large batches (tens of iterations each)")
    args = parser.parse_args(argv)
    args.sizes = args.sizes or ([2, 4, 16, 64] if args.quick else SIZES)
    args.max_batch = args.max_batch or (10**4 if args.quick else 10**6)
    args.dtypes = [getattr(torch, d) for d in args.dtypes]
    rows, bandwidth = run(args)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(device=describe_device(args.device), date=str(datetime.date.today()),
                           neuinv=neuinv.__version__, torch=torch.__version__,
                           copy_bandwidth_bytes_per_second=bandwidth, rows=rows), handle, indent=1)


if __name__ == "__main__":
    main()
