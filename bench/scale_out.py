"""What scaling out costs: neuinv.distributed's collective per call, and Dask's scheduler per batch.

1. ``collective``: on each of 2 and 4 gloo ranks (processes of this machine, one torch thread each), per call
   and per rank-local batch size: the local ``neuinv.batched_inverse_ex``, ``neuinv.distributed.batched_inverse_ex``
   and ``neuinv.distributed.batched_inverse`` on the same shard, and the bare all-gather of 10 int64 they make.
   Interleaved rounds, the ranks started together by a barrier before each timed block; per call: a block's time
   / its calls; the median over rounds, then the slowest rank.
2. ``dask``: 10^6 and 10^7 float32 matrices (n = 4, 8; diagonally dominant) in memory: one
   ``neuinv.batched_inverse`` call on the whole batch, a Python loop over chunks writing into a preallocated
   output, and ``neuinv.dask.batched_inverse`` stored into that output with Dask's synchronous and threaded
   (2 workers) schedulers, chunks of 10^5 and 10^6; the same from and to numpy memmaps (.npy files, read-only
   source). Median of the repeats, all methods interleaved in each repeat.

    python bench/scale_out.py collective --json bench/out/collective.json
    python bench/scale_out.py dask --json bench/out/dask.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import neuinv

COLLECTIVE_CALLS = {1: 400, 1000: 100, 100_000: 4}
"""Calls per timed block, by rank-local batch size (blocks of 20-100 ms)."""


def _rank(rank, world_size, store, out, batches, rounds):
    import torch.distributed as dist

    import neuinv.distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    row = torch.zeros(10, dtype=torch.int64)
    gathered = [torch.empty_like(row) for _ in range(world_size)]
    results = []
    for batch in batches:
        A = torch.eye(4) + 0.1 * torch.randn(batch, 4, 4, generator=torch.Generator().manual_seed(rank))
        methods = {"local batched_inverse_ex": lambda: neuinv.batched_inverse_ex(A),
                   "distributed batched_inverse_ex": lambda: neuinv.distributed.batched_inverse_ex(A),
                   "distributed batched_inverse": lambda: neuinv.distributed.batched_inverse(A),
                   "all_gather of 10 int64 alone": lambda: dist.all_gather(gathered, row)}
        calls = COLLECTIVE_CALLS[batch]
        times = {name: [] for name in methods}
        for round_ in range(rounds + 1):  # round 0 warms up
            for name, method in methods.items():
                dist.barrier()
                start = time.perf_counter()
                for _ in range(calls):
                    method()
                if round_:
                    times[name].append((time.perf_counter() - start) / calls)
        medians = {name: statistics.median(values) for name, values in times.items()}
        everyone = [None] * world_size
        dist.all_gather_object(everyone, medians)
        results.append(dict(world_size=world_size, batch_per_rank=batch, calls=calls, rounds=rounds,
                            us_per_call={name: 1e6 * max(m[name] for m in everyone) for name in methods}))
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def collective(args) -> list[dict]:
    rows = []
    for world_size in args.world_sizes:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "out.json"
            torch.multiprocessing.start_processes(_rank, args=(world_size, f"{folder}/store", str(out), args.batches,
                                                               args.rounds), nprocs=world_size,
                                                  start_method="spawn")
            rows += json.loads(out.read_text())
    return rows


def collective_table(rows) -> str:
    lines = ["| ranks | matrices per rank | local call µs | distributed `_ex` µs (overhead) "
             "| distributed raising µs (overhead) | all-gather alone µs |", "|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        t = row["us_per_call"]
        local = t["local batched_inverse_ex"]
        lines.append(f"| {row['world_size']} | {row['batch_per_rank']:,} | {local:.1f} | "
                     f"{t['distributed batched_inverse_ex']:.1f} (+{t['distributed batched_inverse_ex'] - local:.1f}) "
                     f"| {t['distributed batched_inverse']:.1f} (+{t['distributed batched_inverse'] - local:.1f}) | "
                     f"{t['all_gather of 10 int64 alone']:.1f} |")
    return "\n".join(lines)


def diagonally_dominant(batch: int, n: int, seed: int = 0) -> np.ndarray:
    """I + 0.3/sqrt(n) G, G standard normal, float32, made in chunks of 10^6 (no float64 temporaries of the whole
    batch)."""
    A = np.empty((batch, n, n), dtype=np.float32)
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, batch, 10**6):
        part = torch.randn(min(10**6, batch - start), n, n, generator=generator) * (0.3 / n**0.5)
        part += torch.eye(n)
        A[start:start + len(part)] = part.numpy()
    return A


def dask_rows(args) -> list[dict]:
    import dask.array as da

    import neuinv.dask

    warm_up = da.from_array(diagonally_dominant(1000, 4), chunks=(100, 4, 4))  # imports, thread pool
    neuinv.dask.batched_inverse(warm_up).compute(scheduler="threads")
    rows = []
    for n in args.n:
        for batch in args.batches_dask:
            A = diagonally_dominant(batch, n)
            out = np.empty_like(A)
            with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
                np.save(f"{folder}/A.npy", A)
                source = np.load(f"{folder}/A.npy", mmap_mode="r")
                target = np.lib.format.open_memmap(f"{folder}/X.npy", mode="w+", dtype=A.dtype, shape=A.shape)

                def loop(chunk):
                    for start in range(0, batch, chunk):
                        out[start:start + chunk] = neuinv.batched_inverse(torch.from_numpy(A[start:start + chunk]))

                def with_dask(source, target, chunk, scheduler):
                    lazy = neuinv.dask.batched_inverse(da.from_array(source, chunks=(chunk, n, n)))
                    workers = {"num_workers": 2} if scheduler == "threads" else {}
                    da.store(lazy, target, scheduler=scheduler, **workers)

                methods = {"one call": lambda: neuinv.batched_inverse(torch.from_numpy(A))}
                for chunk in args.chunks:
                    if chunk < batch:
                        methods[f"loop, chunks {chunk:.0e}"] = lambda chunk=chunk: loop(chunk)
                        for scheduler in ("synchronous", "threads"):
                            methods[f"dask {scheduler}, chunks {chunk:.0e}"] = (
                                lambda chunk=chunk, scheduler=scheduler: with_dask(A, out, chunk, scheduler))
                        methods[f"dask threads, memmap to memmap, chunks {chunk:.0e}"] = (
                            lambda chunk=chunk: with_dask(source, target, chunk, "threads"))
                times = {name: [] for name in methods}
                for repeat in range(args.repeats):
                    for name, method in methods.items():
                        start = time.perf_counter()
                        method()
                        times[name].append(time.perf_counter() - start)
                reference = neuinv.batched_inverse(torch.from_numpy(A)).numpy()
                assert np.array_equal(out, reference) and np.array_equal(np.asarray(target), reference)
                del source, target
            for name, values in times.items():
                median = statistics.median(values)
                rows.append(dict(n=n, batch=batch, method=name, median_s=median, times_s=values,
                                 matrices_per_s=batch / median))
            print(dask_table(rows[-len(methods):]), flush=True)
    return rows


def dask_table(rows) -> str:
    lines = ["| n | matrices | method | median s | 10^6 matrices/s | vs one call |", "|---:|---:|---|---:|---:|---:|"]
    one_call = {(r["n"], r["batch"]): r["median_s"] for r in rows if r["method"] == "one call"}
    for r in rows:
        lines.append(f"| {r['n']} | {r['batch']:.0e} | {r['method']} | {r['median_s']:.3f} | "
                     f"{r['matrices_per_s'] / 1e6:.2f} | {one_call[r['n'], r['batch']] / r['median_s']:.2f}× |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["collective", "dask"])
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 1000, 100_000],
                        help="collective: matrices per rank")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--batches-dask", type=int, nargs="+", default=[10**6, 10**7])
    parser.add_argument("--chunks", type=int, nargs="+", default=[10**5, 10**6])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmp", default=None, help="dask: folder for the memmap files (default: the system's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine = dict(date=datetime.date.today().isoformat(), platform=platform.platform(), cpus=os.cpu_count(),
                   torch=torch.__version__, torch_threads=torch.get_num_threads(), neuinv=neuinv.__version__,
                   load_average_before=os.getloadavg())
    rows = collective(args) if args.part == "collective" else dask_rows(args)
    machine["load_average_after"] = os.getloadavg()
    print(json.dumps(machine))
    print(collective_table(rows) if args.part == "collective" else dask_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(machine=machine, rows=rows), indent=1))


if __name__ == "__main__":
    main()
