"""Figures for the README and the documentation, drawn from the benchmark JSON in bench/results/.

    python bench/plots.py                           # the figures the README and docs show, into docs/img/
    python bench/plots.py bench/results/*.json      # every figure these files can give
    python bench/plots.py FILE.json --out DIR

Each JSON file is recognised by its rows:
- throughput (bench/throughput.py --json: rows with method, n, dtype, seconds, roofline_fraction): speed relative
  to torch.linalg.inv against n, one panel per dtype (FILE-speed.png), and the roofline fraction
  (FILE-roofline.png);
- certificate (bench/certificate.py: rows with cond, median_bound, median_error): the median certified bound and
  the median true error against the condition number (FILE-bound.png);
- tightness (bench/tightness.py: rows with family, median_ratio, worst_ratio): bound / true error per matrix
  family and dtype (FILE-tightness.png);
- solve (bench/solve.py: rows with group, method, n, dtype, seconds): speed relative to torch.linalg.solve against
  n, one panel per dtype and number of right-hand sides, and the SPD solve relative to torch.cholesky_solve
  (FILE-solve.png);
- per call (bench/per_call.py: rows with group, method, n, dtype, us_per_call): the time of one call on one small
  matrix, neuinv's split into its operator and the Python around it, beside torch's (FILE-per-call.png).

Every caption names the machine, the date, the torch version and the commit as the JSON records them; where the
JSON does not record one, the caption says so and names the commit that last changed the file instead. Nothing is
drawn that is not in the JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_OUT = ROOT / "docs" / "img"
DEFAULT_FILES = [RESULTS / name for name in (
    "throughput-cpu-2026-12-06-compact-layout.json",     # README and benchmarks: speed and roofline on the CPU
    "throughput-cuda-h100-float32.json",               # benchmarks: the H100
    "certificate-cpu.json",                            # certificate: bound against true error
    "tightness-cpu-2026-12-07d.json",                  # certificate: how tight, per family
    "solve-cpu-2026-12-06c.json",                      # benchmarks: the solve and the SPD solve
    "per-call-cpu-2026-12-07.json",                    # benchmarks: one call on one small matrix, layer by layer
)]

BASELINE = "torch.linalg.inv"
STYLE = {  # method (as bench/throughput.py names it) -> (label, colour, marker, line style); whether a run's neuinv
    # results carried the certificate depends on its date (bench/RESULTS.md), so the labels do not say
    "neuinv auto (exact path)": ("neuinv (default)", "C0", "o", "-"),
    "neuinv cpp, warm start 1e-3": ("neuinv warm start 1e-3", "C0", "s", "--"),
    "neuinv cuda, warm start 1e-3": ("neuinv cuda, warm start 1e-3", "C0", "s", "--"),
    "neuinv triton, warm start 1e-3": ("neuinv triton, warm start 1e-3", "C9", "s", ":"),
    "neuinv torch, warm start 1e-3": ("neuinv torch, warm start 1e-3", "C7", "s", ":"),
    "operator neuinv::invert (exact path)": ("neuinv::invert operator alone", "C0", ".", ":"),
    "kernel neuinv::exact_inverse": ("kernel neuinv::exact_inverse alone", "C4", "^", ":"),
    "kernel neuinv::newton_schulz, warm 1e-3": ("kernel neuinv::newton_schulz alone", "C4", "v", ":"),
    "torch.linalg.solve(A, I)": ("torch.linalg.solve(A, I)", "C5", "x", "-"),
    "numpy.linalg.inv": ("numpy.linalg.inv", "C1", "D", "-"),
    "jax.numpy.linalg.inv, jit": ("JAX jit jnp.linalg.inv", "C2", "P", "-"),
    "warp wp.inverse (cpu)": ("Warp wp.inverse (n ≤ 4)", "C3", "X", "-"),
    "torch.compile closed form (adjugate)": ("torch.compile closed form (n ≤ 4)", "C6", "*", "-"),
}
SKIP_IN_SPEED = {"operator neuinv::invert (exact path)"}  # the same work as auto, drawn only on the roofline


def git_commit_of(path: Path) -> str | None:
    """The short hash of the last commit that changed `path`, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%h", "--", str(path)], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out or None


def provenance(data: dict, path: Path) -> str:
    """'machine · date · torch · commit' as recorded in the JSON (said so where it is not)."""
    header = data.get("header", "")
    machine = data.get("machine") or data.get("device")
    if isinstance(machine, dict):
        machine = f"{machine.get('platform', '?')}, {machine.get('cpus', '?')} CPUs"
    if not machine and header:
        machine = header.split(",")[0]
    machine = machine or "machine not recorded in the JSON (see bench/RESULTS.md)"
    date = data.get("date") or (data["machine"].get("date") if isinstance(data.get("machine"), dict) else None)
    if not date and header:
        date = header.split(" ")[0]
    date = date or "date not recorded in the JSON"
    torch_version = data.get("torch")
    if data.get("commit"):
        commit = f"commit {data['commit']}"
    else:
        changed = git_commit_of(path)
        commit = "commit not recorded in the JSON" + (f" (file last changed in {changed})" if changed else "")
    parts = [machine, date] + ([f"torch {torch_version}"] if torch_version else []) + [commit]
    return " · ".join(parts) + f"\nsource: bench/results/{path.name}"


def kind(data: dict) -> str | None:
    rows = data.get("rows") or []
    if not rows or not isinstance(rows[0], dict):
        return None
    keys = set(rows[0])
    if {"group", "method", "n", "dtype", "us_per_call"} <= keys:
        return "per_call"
    if {"group", "method", "n", "dtype", "seconds"} <= keys:
        return "solve"
    if {"method", "n", "dtype", "seconds"} <= keys:
        return "throughput"
    if {"cond", "median_bound", "median_error"} <= keys:
        return "certificate"
    if {"family", "median_ratio", "worst_ratio"} <= keys:
        return "tightness"
    return None


def _n_axis(ax, ns) -> None:
    """x: the measured n, on a log scale, labelled plainly."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(sorted(ns), [str(n) for n in sorted(ns)])
    ax.set_xlabel("n (matrices n × n)")


def _shared_legend(fig, axes) -> None:
    """One legend at the top of the figure with each label of its panels once."""
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles.keys()), loc="upper center", ncol=3, fontsize=8, frameon=False)


def _finish(fig, caption: str, out: Path) -> Path:
    fig.text(0.01, 0.005, caption, fontsize=7, color="0.3", va="bottom", ha="left")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def throughput_figures(data: dict, path: Path, out_dir: Path) -> list[Path]:
    rows = data["rows"]
    dtypes = sorted({r["dtype"] for r in rows}, key=lambda d: ("float32", "float64").index(d)
                    if d in ("float32", "float64") else 9)
    base = {(r["n"], r["dtype"]): r["seconds"] for r in rows if r["method"] == BASELINE}
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != BASELINE]
    caption = provenance(data, path)
    batches = defaultdict(set)
    for r in rows:
        batches[r["dtype"]].add((r["n"], r["batch"]))
    written = []

    fig, axes = plt.subplots(1, len(dtypes), figsize=(max(10.4, 5.2 * len(dtypes)), 4.4), sharey=True, squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        for method in methods:
            if method in SKIP_IN_SPEED:
                continue
            points = sorted((r["n"], base[(r["n"], dtype)] / r["seconds"]) for r in rows
                            if r["method"] == method and r["dtype"] == dtype and (r["n"], dtype) in base)
            if not points:
                continue
            label, colour, marker, line = STYLE.get(method, (method, None, "o", "-"))
            ax.plot(*zip(*points), marker=marker, linestyle=line, color=colour, label=label)
        ax.axhline(1.0, color="k", linewidth=1)
        ax.annotate(BASELINE + " = 1", (0.02, 1.0), xycoords=("axes fraction", "data"), fontsize=8,
                    va="bottom")
        _n_axis(ax, {r["n"] for r in rows})
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.set_title(f"{dtype}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(f"speed relative to {BASELINE} (higher is faster)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=8, frameon=False)
    sizes = ", ".join(f"n={n}: {b:,}" for n, b in sorted(batches[dtypes[0]]))
    fig.subplots_adjust(top=0.78, bottom=0.24, left=0.08, right=0.98, wspace=0.08)
    written.append(_finish(fig, f"{caption}\nbatch sizes {sizes}; median time per call, baseline in the same run",
                           out_dir / f"{path.stem}-speed.png"))

    fig, axes = plt.subplots(1, len(dtypes), figsize=(max(10.4, 5.2 * len(dtypes)), 4.4), sharey=True, squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        for method in [BASELINE] + methods:
            points = sorted((r["n"], 100 * r["roofline_fraction"]) for r in rows
                            if r["method"] == method and r["dtype"] == dtype and r.get("roofline_fraction"))
            if not points:
                continue
            label, colour, marker, line = STYLE.get(method, (method, "k" if method == BASELINE else None, "o", "-"))
            ax.plot(*zip(*points), marker=marker, linestyle=line, color=colour, label=label)
        _n_axis(ax, {r["n"] for r in rows})
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        ax.set_title(dtype)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("% of the copy-bandwidth roofline")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=8, frameon=False)
    bandwidth = data.get("copy_bandwidth_bytes_per_second")
    note = f"copy bandwidth {bandwidth / 1e9:.1f} GB/s measured in the same run; " if bandwidth else ""
    fig.subplots_adjust(top=0.78, bottom=0.24, left=0.08, right=0.98, wspace=0.08)
    written.append(_finish(fig, f"{caption}\n{note}bytes of A and X read and written / bandwidth / time",
                           out_dir / f"{path.stem}-roofline.png"))
    return written


def certificate_figure(data: dict, path: Path, out_dir: Path) -> list[Path]:
    rows = data["rows"]
    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(max(10.4, 5.2 * len(dtypes)), 4.4), squeeze=False)
    colours = {}
    for ax, dtype in zip(axes[0], dtypes):
        groups = dict.fromkeys((r["backend"], r["path"]) for r in rows if r["dtype"] == dtype)
        for backend, route in groups:
            sel = sorted((r for r in rows if r["dtype"] == dtype and r["backend"] == backend and r["path"] == route
                          and r["median_bound"] is not None and r["certified"] > 0), key=lambda r: r["cond"])
            if not sel:
                continue
            colour = colours.setdefault((backend, route), f"C{len(colours)}")
            cond = [r["cond"] for r in sel]
            ax.plot(cond, [r["median_bound"] for r in sel], "-o", color=colour, label=f"{backend}, {route}: bound")
            ax.plot(cond, [r["median_error"] for r in sel], ":x", color=colour, label=f"{backend}, {route}: true error")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("condition number of A")
        ax.set_title(f"{dtype}, n = {sel[0]['n'] if sel else '?'}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("median over the certified matrices")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=7, frameon=False)
    fig.subplots_adjust(top=0.76, bottom=0.22, left=0.08, right=0.98, wspace=0.2)
    caption = (provenance(data, path) + "\ncertified error_bound (solid) against the true relative error from mpmath "
               "(dotted); a bound is never below its error")
    return [_finish(fig, caption, out_dir / f"{path.stem}-bound.png")]


def tightness_figure(data: dict, path: Path, out_dir: Path, backend: str = "auto") -> list[Path]:
    rows = [r for r in data["rows"] if r["backend"] == backend]
    operations = list(dict.fromkeys(r["operation"] for r in rows))
    families = list(dict.fromkeys(r["family"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    fig, axes = plt.subplots(1, len(operations), figsize=(4.6 * len(operations), 4.4), sharey=True, squeeze=False)
    width = 0.8 / len(dtypes)
    for ax, operation in zip(axes[0], operations):
        for i, dtype in enumerate(dtypes):
            med, worst = [], []
            for family in families:
                match = [r for r in rows if r["operation"] == operation and r["dtype"] == dtype
                         and r["family"] == family]
                med.append(match[0]["median_ratio"] if match else float("nan"))
                worst.append(match[0]["worst_ratio"] if match else float("nan"))
            x = [j + (i - (len(dtypes) - 1) / 2) * width for j in range(len(families))]
            ax.bar(x, med, width, color=f"C{i}", label=f"{dtype}: median")
            ax.plot(x, worst, "_", color=f"C{i}", markersize=9, markeredgewidth=2)
        ax.axhline(1.0, color="k", linewidth=1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(families)), families, fontsize=8)
        ax.set_title(operation)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("error_bound / max(true error, eps)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=8, frameon=False)
    fig.subplots_adjust(top=0.8, bottom=0.22, left=0.08, right=0.98, wspace=0.08)
    counts = data.get("counts")
    per_n = f"matrices per n: {counts}; " if counts else ""
    caption = (provenance(data, path) + f"\nbackend {backend}; bars: median ratio, ticks: worst ratio; {per_n}"
               f"violations (bound below the true error): {len(data.get('violations', []))}")
    return [_finish(fig, caption, out_dir / f"{path.stem}-tightness.png")]


SOLVE_PANELS = (  # (group, baseline, methods drawn) per column of the solve figure
    ("solve k=1", "torch.linalg.solve", ("neuinv.batched_solve", "numpy.linalg.solve", "jax.jit(jnp.linalg.solve)",
                                         "neuinv.batched_inverse @ B")),
    ("solve k=8", "torch.linalg.solve", ("neuinv.batched_solve", "numpy.linalg.solve", "jax.jit(jnp.linalg.solve)",
                                         "neuinv.batched_inverse @ B")),
    ("SPD solve k=1", "torch.cholesky_solve(cholesky)", ("neuinv.batched_solve pos", "neuinv.batched_solve gen",
                                                         "torch.linalg.solve")),
)
SOLVE_STYLE = {
    "neuinv.batched_solve": ("neuinv batched_solve (certified)", "C0", "o", "-"),
    "neuinv.batched_solve pos": ("neuinv batched_solve, assume_a=\"pos\" (certified)", "C0", "o", "-"),
    "neuinv.batched_solve gen": ("neuinv batched_solve, general (certified)", "C9", "s", "--"),
    "neuinv.batched_inverse @ B": ("neuinv batched_inverse(A) @ B (product not certified)", "C7", ".", ":"),
    "numpy.linalg.solve": ("numpy.linalg.solve", "C1", "D", "-"),
    "jax.jit(jnp.linalg.solve)": ("JAX jit jnp.linalg.solve", "C2", "P", "-"),
    "torch.linalg.solve": ("torch.linalg.solve", "C5", "x", "-"),
}


def solve_figure(data: dict, path: Path, out_dir: Path) -> list[Path]:
    largest = {}
    for r in data["rows"]:
        largest[r["n"]] = max(largest.get(r["n"], 0), r["batch"])
    rows = [r for r in data["rows"] if r["batch"] == largest[r["n"]]]  # a run with --batches: its largest per n
    seconds = {(r["group"], r["n"], r["dtype"], r["method"]): r["seconds"] for r in rows}
    dtypes = [d for d in ("float32", "float64") if any(r["dtype"] == d for r in rows)]
    panels = [panel for panel in SOLVE_PANELS if any(r["group"] == panel[0] for r in rows)]
    fig, axes = plt.subplots(len(dtypes), len(panels), figsize=(4.6 * len(panels), 3.4 * len(dtypes) + 1.4),
                             sharey=True, squeeze=False)
    for row_axes, dtype in zip(axes, dtypes):
        for ax, (group, baseline, methods) in zip(row_axes, panels):
            for method in methods:
                points = sorted((n, seconds[(g, n, d, baseline)] / value) for (g, n, d, m), value in seconds.items()
                                if g == group and d == dtype and m == method and (g, n, d, baseline) in seconds)
                if points:
                    label, colour, marker, line = SOLVE_STYLE.get(method, (method, None, "o", "-"))
                    ax.plot(*zip(*points), marker=marker, linestyle=line, color=colour, label=label)
            ax.axhline(1.0, color="k", linewidth=1)
            ax.annotate(baseline + " = 1", (0.02, 1.0), xycoords=("axes fraction", "data"), fontsize=7,
                        va="bottom")
            _n_axis(ax, {r["n"] for r in rows if r["group"] == group})
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
            ax.set_title(f"{group}, {dtype}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        row_axes[0].set_ylabel("speed relative to the baseline")
    _shared_legend(fig, axes)
    batches = sorted({(r["n"], r["batch"]) for r in rows})
    sizes = ", ".join(f"n={n}: {b:,}" for n, b in batches)
    threads = f"{data['threads']} torch thread(s); " if data.get("threads") else ""
    fig.subplots_adjust(top=1 - 1.0 / fig.get_figheight(), bottom=0.9 / fig.get_figheight(), left=0.07, right=0.98,
                        wspace=0.08, hspace=0.35)
    caption = (f"{provenance(data, path)}\n{threads}systems per call {sizes}; median time per call, baselines in the "
               "same run")
    return [_finish(fig, caption, out_dir / f"{path.stem}-solve.png")]


PER_CALL_OPERATORS = {  # the operators each neuinv call makes, as bench/per_call.py times them alone
    "neuinv.batched_inverse": ("operator neuinv::invert",),
    "neuinv.batched_inverse_ex": ("operator neuinv::invert",),
    "neuinv.batched_solve": ("operator neuinv::solve",),
    "neuinv.batched_solve_ex": ("operator neuinv::solve",),
    "neuinv.batched_solve_ex, return_inverse": ("operator neuinv::invert", "operator neuinv::solve from R"),
}


def per_call_figure(data: dict, path: Path, out_dir: Path) -> list[Path]:
    """One horizontal bar per call, per dtype (columns) and n (rows): torch's in grey; neuinv's split into the
    operators it calls (their dispatch, outputs and kernels, timed alone in the same run) and the Python around
    them."""
    rows = data["rows"]
    dtypes = [d for d in ("float32", "float64") if any(r["dtype"] == d for r in rows)]
    ns = sorted({r["n"] for r in rows})
    fig, axes = plt.subplots(len(ns), len(dtypes), figsize=(5.8 * len(dtypes), 3.2 * len(ns) + 1.0), sharex=True,
                             squeeze=False)
    longest = max(r["us_per_call"] for r in rows)
    for row_axes, n in zip(axes, ns):
        for ax, dtype in zip(row_axes, dtypes):
            mine = [r for r in rows if r["n"] == n and r["dtype"] == dtype]
            alone = {r["method"]: r["us_per_call"] for r in mine}
            drawn = [r for r in mine if not r["method"].startswith("operator")]
            for y, r in enumerate(drawn):
                total = r["us_per_call"]
                if r["method"] in PER_CALL_OPERATORS:
                    inner = min(sum(alone[name] for name in PER_CALL_OPERATORS[r["method"]]), total)
                    ax.barh(y, inner, color="C0", label="neuinv: its operators (dispatch, outputs, kernels)")
                    ax.barh(y, total - inner, left=inner, color="C9", label="neuinv: Python around them")
                else:
                    ax.barh(y, total, color="0.6", label="torch")
                ax.annotate(f"{total:.1f} µs", (total, y), xytext=(3, 0), textcoords="offset points", va="center",
                            fontsize=7)
            ax.set_yticks(range(len(drawn)), [r["method"].replace(", return_inverse", ",\nreturn_inverse=True")
                                              for r in drawn], fontsize=8)
            ax.set_xlim(0, 1.2 * longest)  # room for the value labels
            ax.invert_yaxis()
            ax.set_title(f"one {n} × {n} matrix, {dtype}", fontsize=9)
            ax.grid(True, axis="x", alpha=0.3)
        row_axes[0].set_xlabel("µs per call")
    _shared_legend(fig, axes)
    threads = f"{data['threads']} torch thread(s); " if data.get("threads") else ""
    fig.subplots_adjust(top=1 - 0.7 / fig.get_figheight(), bottom=1.0 / fig.get_figheight(), left=0.2, right=0.97,
                        wspace=0.6, hspace=0.35)
    caption = f"{provenance(data, path)}\n{threads}median over rounds of the mean time of many calls"
    return [_finish(fig, caption, out_dir / f"{path.stem}-per-call.png")]


def figures(path: Path, out_dir: Path) -> list[Path]:
    data = json.loads(path.read_text())
    found = kind(data)
    if found == "throughput":
        return throughput_figures(data, path, out_dir)
    if found == "certificate":
        return certificate_figure(data, path, out_dir)
    if found == "tightness":
        return tightness_figure(data, path, out_dir)
    if found == "solve":
        return solve_figure(data, path, out_dir)
    if found == "per_call":
        return per_call_figure(data, path, out_dir)
    return []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="benchmark JSON (default: the figures the docs show)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNGs (default docs/img)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.files or DEFAULT_FILES:
        written = figures(path, args.out)
        for png in written:
            print(png.relative_to(ROOT) if png.is_relative_to(ROOT) else png)
        if not written:
            print(f"{path}: no figure (not a throughput, certificate, tightness, solve or per-call result)",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
