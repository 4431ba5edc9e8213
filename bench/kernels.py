"""GPU kernel benchmarks, side by side with their baselines in one run (needs CUDA and Triton).

1. Fused MLP initializer against torch's unfused forward (cuBLAS GEMM + ReLU + GEMM) for the
   four paper models (2-FC; random weights: speed does not depend on their values).
2. The fused Newton–Schulz step against the memory roofline (copy bandwidth measured here)
   and against the torch reference step.
3. The whole in-domain pipeline on the paper's 16x16 family (A = A0 + 0.01 U):
   ``batched_inverse(A, model=...)`` with the first-order Taylor map and with the shipped
   paper-16x16 network, against ``torch.linalg.inv``.

    python bench/kernels.py --json bench/out/kernels.json
"""
from __future__ import annotations

import argparse
import datetime
import json

import torch
import triton.testing

import neuinv
from neuinv import reference
from neuinv.kernels.mlp import fused_mlp_initializer
from neuinv.kernels.newton_schulz import newton_schulz_step
from neuinv.learned.data import PAPER_CENTERS
from neuinv.learned.models import TaylorInitializer
from neuinv.learned.training import load_pretrained
from neuinv.testing import conditioned_matrices, true_residual, warm_start

PAPER_MODELS = [("paper-2x2-1st", 2, 32), ("paper-2x2-2nd", 2, 32), ("paper-3x3", 3, 72), ("paper-16x16", 16, 2048)]


def milliseconds(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def copy_bandwidth() -> float:
    src = torch.ones(2**28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (milliseconds(lambda: dst.copy_(src)) * 1e-3)


def bench_mlp(batch: int, rows: list, bandwidth: float) -> None:
    for name, n, hidden in PAPER_MODELS:
        K = n * n
        g = torch.Generator(device="cuda").manual_seed(0)
        for dtype, tf32 in [(torch.float32, False), (torch.float32, True), (torch.float64, False)]:
            weights = [torch.randn(hidden, K, device="cuda", dtype=dtype, generator=g) / K**0.5,
                       torch.randn(K, hidden, device="cuda", dtype=dtype, generator=g) / hidden**0.5]
            biases = [torch.randn(hidden, device="cuda", dtype=dtype, generator=g),
                      torch.randn(K, device="cuda", dtype=dtype, generator=g)]
            center = torch.randn(K, device="cuda", dtype=dtype, generator=g)
            a = center + 0.01 * (2 * torch.rand(batch, K, device="cuda", dtype=dtype, generator=g) - 1)
            torch.backends.cuda.matmul.allow_tf32 = tf32
            unfused = milliseconds(lambda: reference.mlp_initializer(a, center, 100.0, weights, biases))
            fused = milliseconds(lambda: fused_mlp_initializer(a, center, 100.0, weights, biases, allow_tf32=tf32))
            expected = reference.mlp_initializer(a[:4096], center, 100.0, weights, biases)
            error = (fused_mlp_initializer(a[:4096], center, 100.0, weights, biases, allow_tf32=tf32)
                     - expected).abs().max().item()
            flops = 2 * batch * 2 * K * hidden
            bytes_moved = 2 * batch * K * a.element_size()
            label = f"{str(dtype)[6:]}{'+tf32' if tf32 else ''}"
            rows.append(dict(bench="mlp", model=name, dtype=label, batch=batch, torch_ms=unfused, fused_ms=fused,
                             speedup=unfused / fused, fused_tflops=flops / fused * 1e-9,
                             roofline=bytes_moved / bandwidth / (fused * 1e-3), max_abs_diff=error))
    torch.backends.cuda.matmul.allow_tf32 = False


def bench_newton_schulz(batch: int, rows: list, bandwidth: float) -> None:
    for dtype in (torch.float32, torch.float64):
        for n in (2, 3, 4, 8, 16, 32):
            b = min(batch, 2**28 // (n * n * 8))
            A = conditioned_matrices(b, n, 100.0, dtype, seed=n).cuda()
            X = warm_start(A, 1e-3)
            eps = torch.finfo(dtype).eps
            kernel = milliseconds(lambda: newton_schulz_step(A, X, eps, 1e-3))
            ref = milliseconds(lambda: reference.newton_schulz_step(A, X, eps, 1e-3))
            bytes_moved = 3 * A.numel() * A.element_size() + b * (2 * A.element_size() + 1)
            rows.append(dict(bench="ns_step", n=n, dtype=str(dtype)[6:], batch=b, torch_ms=ref, fused_ms=kernel,
                             speedup=ref / kernel, roofline=bytes_moved / bandwidth / (kernel * 1e-3)))


def bench_pipeline(batch: int, rows: list, bandwidth: float) -> None:
    center = PAPER_CENTERS["paper-16x16"]()
    shipped = load_pretrained("paper-16x16", map_location="cuda")
    for dtype in (torch.float32, torch.float64):
        A = center.to(dtype).cuda() + 0.01 * (2 * torch.rand(batch, 16, 16, device="cuda", dtype=dtype) - 1)
        inv_ms = milliseconds(lambda: torch.linalg.inv(A))
        exact_ms = milliseconds(lambda: neuinv.batched_inverse(A))
        for name, model in [("first-order Taylor", TaylorInitializer(center.to(dtype), radius=0.01).cuda()),
                            ("paper-16x16 (shipped 2-FC)", shipped)]:
            pipeline_ms = milliseconds(lambda: neuinv.batched_inverse(A, model=model))
            X, info = neuinv.batched_inverse_ex(A, model=model)
            sample = slice(0, 20000)
            rows.append(dict(bench="pipeline", model=name, n=16, dtype=str(dtype)[6:], batch=batch, torch_ms=inv_ms,
                             fused_ms=pipeline_ms, exact_path_ms=exact_ms, speedup=inv_ms / pipeline_ms,
                             max_iterations=int(info.iterations.max()), fallbacks=int(info.fallback.sum()),
                             worst_residual=true_residual(A[sample], X[sample]).max().item(),
                             torch_worst_residual=true_residual(A[sample], torch.linalg.inv(A[sample])).max().item(),
                             roofline=2 * A.numel() * A.element_size() / bandwidth / (pipeline_ms * 1e-3)))


def table(rows: list) -> str:
    lines = ["| bench | case | dtype | batch | baseline ms | neuinv ms | speedup | roofline | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        case = r.get("model") or f"n={r['n']}"
        note = ""
        if r["bench"] == "mlp":
            note = f"{r['fused_tflops']:.1f} TFLOP/s, max diff {r['max_abs_diff']:.1e}"
        if r["bench"] == "pipeline":
            note = (f"exact path {r['exact_path_ms']:.2f} ms; NS steps <= {r['max_iterations']}, "
                    f"fallbacks {r['fallbacks']}; residual {r['worst_residual']:.1e} (torch {r['torch_worst_residual']:.1e})")
        lines.append(f"| {r['bench']} | {case} | {r['dtype']} | {r['batch']} | {r['torch_ms']:.3f} | "
                     f"{r['fused_ms']:.3f} | {r['speedup']:.2f} | {100 * r['roofline']:.0f}% | {note} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=10**6)
    parser.add_argument("--json")
    parser.add_argument("--only", choices=["mlp", "ns_step", "pipeline"], nargs="+",
                        default=["mlp", "ns_step", "pipeline"])
    args = parser.parse_args(argv)
    bandwidth = copy_bandwidth()
    rows: list = []
    benches = {"mlp": bench_mlp, "ns_step": bench_newton_schulz, "pipeline": bench_pipeline}
    for name in args.only:
        benches[name](args.batch, rows, bandwidth)
        print(f"[{name} done]", flush=True)
    header = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
              f"{datetime.date.today()}; copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write)")
    print(header)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(device=torch.cuda.get_device_name(), header=header, copy_bandwidth=bandwidth, rows=rows),
                      handle, indent=1)


if __name__ == "__main__":
    main()
