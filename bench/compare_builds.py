"""Two builds of the compiled CPU kernels side by side: the same calls timed on each, in interleaved rounds.

For a change that should not alter speed (compiler flags, a compiler version, a refactoring of the kernels): each
build is given as a checkout (its neuinv package is imported, through PYTHONPATH) and the just-in-time cache folder
(NEUINV_EXT_DIR) holding its library, which the checkout must accept (this torch, its sources and flags); every round
runs one fresh process per build, alternately, on one thread. For n in --sizes and both dtypes it times
``batched_inverse``, ``batched_inverse_ex``, ``batched_solve`` (one right-hand side) and
``batched_solve(assume_a="pos")`` on the compiled backend (cond about 10; about 2^21 elements per batch) and
prints the median over rounds of each build's time per matrix and their ratio (second over first).

    git worktree add /tmp/before <commit>   # then build it: NEUINV_EXT_DIR=/tmp/ext-before PYTHONPATH=/tmp/before \
                                            #   python -c "from neuinv import extension; extension.build('cpu')"
    python bench/compare_builds.py /tmp/before /tmp/ext-before . /tmp/ext-after --json bench/results/x.json
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import median_seconds  # noqa: E402

ONE_ROUND = "one-round"


def time_one_round(sizes: list[int], repeats: int) -> dict[str, float]:
    """Nanoseconds per matrix of each call in this process's build (the median of `repeats` timed calls)."""
    import torch

    import neuinv
    from neuinv import extension
    torch.set_num_threads(1)
    if not extension.load("cpu"):
        raise SystemExit(f"no usable build in {extension.build_directory()}: {extension.status('cpu')}")
    generator = torch.Generator().manual_seed(0)
    times = {}
    for dtype in (torch.float32, torch.float64):
        for n in sizes:
            batch = max(64, min(200_000, 2**21 // (n * n)))
            A = torch.randn(batch, n, n, dtype=dtype, generator=generator) + 3 * n**0.5 * torch.eye(n, dtype=dtype)
            S = A @ A.mT + torch.eye(n, dtype=dtype)
            b = torch.randn(batch, n, 1, dtype=dtype, generator=generator)
            calls = {"batched_inverse": lambda: neuinv.batched_inverse(A, backend="cpp"),
                     "batched_inverse_ex": lambda: neuinv.batched_inverse_ex(A, backend="cpp"),
                     "batched_solve": lambda: neuinv.batched_solve(A, b, backend="cpp"),
                     "batched_solve pos": lambda: neuinv.batched_solve(S, b, assume_a="pos", backend="cpp")}
            for name, call in calls.items():
                seconds, _, _ = median_seconds(call, "cpu", repeats)
                times[f"{name}, {str(dtype).removeprefix('torch.')}, n={n}"] = seconds / batch * 1e9
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first_checkout", help="the first build's source tree")
    parser.add_argument("first_cache", help="the first build's NEUINV_EXT_DIR")
    parser.add_argument("second_checkout", help="the second build's source tree")
    parser.add_argument("second_cache", help="the second build's NEUINV_EXT_DIR")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 3, 4, 6, 8, 12, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="write every round's times here")
    args = parser.parse_args()
    builds = [(os.path.abspath(args.first_checkout), os.path.abspath(args.first_cache)),
              (os.path.abspath(args.second_checkout), os.path.abspath(args.second_cache))]
    rounds = [[], []]
    for _ in range(args.rounds):
        for (checkout, cache), times in zip(builds, rounds):
            child = subprocess.run([sys.executable, __file__, ONE_ROUND, json.dumps([args.sizes, args.repeats])],
                                   env={**os.environ, "PYTHONPATH": checkout, "NEUINV_EXT_DIR": cache,
                                        "NEUINV_AUTO_BUILD": "0"}, capture_output=True, text=True)
            if child.returncode != 0:
                raise SystemExit(f"the build in {cache} of {checkout} did not run:\n{child.stderr}")
            times.append(json.loads(child.stdout))
    first, second = rounds
    ratios = []
    print("| call | first, ns per matrix | second | second / first |\n|---|---:|---:|---:|")
    for key in first[0]:
        a, b = statistics.median(r[key] for r in first), statistics.median(r[key] for r in second)
        ratios.append(b / a)
        print(f"| {key} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    print(f"\ngeometric mean of second / first: {math.exp(statistics.fmean(map(math.log, ratios))):.3f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}); {args.rounds} rounds, one thread")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"builds": builds, "rounds": rounds}, file, indent=1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == ONE_ROUND:
        print(json.dumps(time_one_round(*json.loads(sys.argv[2]))))
    else:
        main()
