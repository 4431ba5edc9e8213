"""Side by side: two runs of bench/throughput.py (JSON), before and after a change, per n and dtype.

    python bench/compare.py bench/results/throughput-cpu-BEFORE.json bench/results/throughput-cpu-AFTER.json

For each (n, dtype): the fastest uncertified peer of the "after" run (numpy, Warp, JAX, the compiled closed form),
and for neuinv's rows (batched_inverse on the default backend, the bare operator, the warm start) the speed as a
multiple of torch.linalg.inv in the same run and the fraction of the copy roofline, before -> after; the last
column is batched_inverse after as a fraction of the best peer. Ratios are taken within a run, so runs on the
same machine at different times compare.
"""
from __future__ import annotations

import argparse
import json

PEERS = ("numpy.linalg.inv", "warp", "jax", "closed form")
NEUINV = (("batched_inverse", "neuinv auto (exact path)"), ("operator", "operator neuinv::invert (exact path)"),
          ("warm start 1e-3", "neuinv cpp, warm start 1e-3"))


def timed(path: str) -> tuple[dict, dict]:
    with open(path) as handle:
        run = json.load(handle)
    rows = {(r["n"], r["dtype"], r["method"]): r for r in run["rows"] if "seconds" in r}
    return run, rows


def ratio_and_roofline(rows: dict, n: int, dtype: str, method: str) -> tuple[float, float] | None:
    row, base = rows.get((n, dtype, method)), rows.get((n, dtype, "torch.linalg.inv"))
    if row is None or base is None:
        return None
    return base["seconds"] / row["seconds"], row["roofline_fraction"]


def cell(value: tuple[float, float] | None) -> str:
    return "—" if value is None else f"{value[0]:.2f}× ({100 * value[1]:.0f} %)"


def table(before_path: str, after_path: str) -> str:
    before_run, before = timed(before_path)
    after_run, after = timed(after_path)
    cases = sorted({(n, dtype) for n, dtype, _ in after}, key=lambda case: (case[1], case[0]))
    header = "| n | dtype | best peer (after run) | " + " | ".join(f"{label}: before → after" for label, _ in NEUINV)
    lines = [header + " | batched_inverse / best peer |", "|---:|---|---|" + "---|" * len(NEUINV) + "---:|"]
    for n, dtype in cases:
        peers = [(ratio_and_roofline(after, n, dtype, method), method) for (m, d, method) in after
                 if (m, d) == (n, dtype) and any(p in method for p in PEERS)]
        peers = [(value, method) for value, method in peers if value is not None]
        best = max(peers, default=None)
        cells = [f"{cell(ratio_and_roofline(before, n, dtype, method))} → {cell(ratio_and_roofline(after, n, dtype, method))}"
                 for _, method in NEUINV]
        ours = ratio_and_roofline(after, n, dtype, NEUINV[0][1])
        share = "—" if best is None or ours is None else f"{ours[0] / best[0][0]:.2f}"
        peer = "—" if best is None else f"{best[1]} {cell(best[0])}"
        lines.append(f"| {n} | {dtype} | {peer} | " + " | ".join(cells) + f" | {share} |")
    lines.append("")
    lines.append(f"Before: {before_run.get('commit', 'commit not recorded')}, {before_run['date']}; after: "
                 f"{after_run.get('commit', 'commit not recorded')}, {after_run['date']}; {after_run['device']}, "
                 f"torch {after_run['torch']}. Cells: speed as a multiple of torch.linalg.inv in the same run "
                 f"(roofline fraction: bytes of A read and X written at the copy bandwidth measured in that run).")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    args = parser.parse_args(argv)
    print(table(args.before, args.after))


if __name__ == "__main__":
    main()
