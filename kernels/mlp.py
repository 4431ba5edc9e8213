"""Fused Triton kernel for the learned initializer: the whole MLP forward in one launch.

Computes :func:`neuinv.reference.mlp_initializer`: the input normalisation
u = (a - vec(A0)) / radius, then Linear -> ReLU -> Linear (2-FC) or
Linear -> ReLU -> Linear -> ReLU -> Linear (3-FC), biases included, plus an optional linear
skip term (the Taylor head). A tile of BLOCK_M matrices stays on chip; the hidden activations
are never written to global memory. The 2-FC kernel loops over hidden chunks of BLOCK_H units
and accumulates the output tile, so any hidden size fits (the paper's 16x16 model:
256 -> 2048 -> 256). The 3-FC kernel keeps the first hidden layer on chip
(hidden <= ``MAX_HIDDEN_3FC``) and loops over chunks of the second.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

MAX_HIDDEN_3FC = 512


def _configs():
    """Tile sizes to autotune over; one fixed tile under the interpreter (which would run every
    config) or with NEUINV_TRITON_AUTOTUNE=0 (no tuning runs at first use, e.g. in test suites)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1" or os.environ.get("NEUINV_TRITON_AUTOTUNE", "1") == "0":
        return [triton.Config({"BLOCK_M": 16, "BLOCK_H": 32}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_H": h}, num_warps=w, num_stages=s)
            for m, h, w, s in [(32, 64, 4, 2), (64, 64, 4, 3), (64, 128, 8, 3), (128, 64, 8, 3), (128, 32, 4, 2),
                               (32, 32, 4, 1), (64, 16, 4, 2), (16, 32, 4, 2), (16, 16, 4, 1)]]


SHARED_MEMORY_BUDGET = 200 * 1024


def _fits_shared_memory(configs, named_args, **kwargs):
    """Drop tiles whose staged weight chunks and activation tiles would overflow shared memory
    (estimate: stages x both weight chunks + the input and hidden tiles); keep the smallest if none fit."""
    args = {**named_args, **kwargs}
    element = args["a_ptr"].element_size()
    k_pad, h_pad = args["K_PAD"], args["H_PAD"] if args["DEPTH"] == 3 else 0

    def estimate(config):
        m, h = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_H"]
        inner = k_pad + h_pad
        return element * (config.num_stages * 2 * inner * h + m * (2 * k_pad + h_pad + h))

    fitting = [c for c in configs if estimate(c) <= SHARED_MEMORY_BUDGET]
    return fitting or [min(configs, key=estimate)]


@triton.autotune(configs=_configs(), key=["K", "H", "DEPTH", "HAS_SKIP", "PRECISION"],
                 prune_configs_by={"early_config_prune": _fits_shared_memory})
@triton.jit
def _fused_mlp_kernel(
    # pointers: input matrices (batch, K), centre (K), layer weights and biases, skip (K, K), output
    a_ptr, center_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, skip_ptr, out_ptr,
    # sizes
    batch, inv_radius, K, H,
    # meta-parameters
    K_PAD: tl.constexpr, H_PAD: tl.constexpr, DEPTH: tl.constexpr, HAS_SKIP: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """out = W_last relu(... relu(W1 u + b1) ...) + b_last (+ S u), u = (a - center) * inv_radius."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, K_PAD)
    row_mask = rows < batch
    col_mask = cols < K
    tile_mask = row_mask[:, None] & col_mask[None, :]

    a = tl.load(a_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], mask=tile_mask, other=0.0)
    center = tl.load(center_ptr + cols, mask=col_mask, other=0.0)
    u = tl.where(tile_mask, (a - center[None, :]) * inv_radius, 0.0)
    acc = tl.zeros([BLOCK_M, K_PAD], dtype=a.dtype)

    if DEPTH == 2:
        for h0 in range(0, H, BLOCK_H):
            hid = h0 + tl.arange(0, BLOCK_H)
            hid_mask = hid < H
            # W1 chunk as (K_PAD, BLOCK_H) = W1[hid, :]^T
            w1_t = tl.load(w1_ptr + hid[None, :] * K + cols[:, None], mask=hid_mask[None, :] & col_mask[:, None],
                           other=0.0)
            b1 = tl.load(b1_ptr + hid, mask=hid_mask, other=0.0)
            z = tl.maximum(tl.dot(u, w1_t, input_precision=PRECISION) + b1[None, :], 0.0)
            # W2 chunk as (BLOCK_H, K_PAD) = W2[:, hid]^T
            w2_t = tl.load(w2_ptr + cols[None, :] * H + hid[:, None], mask=col_mask[None, :] & hid_mask[:, None],
                           other=0.0)
            acc += tl.dot(z.to(a.dtype), w2_t, input_precision=PRECISION)
        acc += tl.load(b2_ptr + cols, mask=col_mask, other=0.0)[None, :]
    else:
        all_hid = tl.arange(0, H_PAD)
        all_hid_mask = all_hid < H
        w1_t = tl.load(w1_ptr + all_hid[None, :] * K + cols[:, None],
                       mask=all_hid_mask[None, :] & col_mask[:, None], other=0.0)
        b1 = tl.load(b1_ptr + all_hid, mask=all_hid_mask, other=0.0)
        h1 = tl.maximum(tl.dot(u, w1_t, input_precision=PRECISION) + b1[None, :], 0.0).to(a.dtype)
        for h0 in range(0, H, BLOCK_H):
            hid = h0 + tl.arange(0, BLOCK_H)
            hid_mask = hid < H
            # W2 chunk as (H_PAD, BLOCK_H) = W2[hid, :]^T
            w2_t = tl.load(w2_ptr + hid[None, :] * H + all_hid[:, None],
                           mask=hid_mask[None, :] & all_hid_mask[:, None], other=0.0)
            b2 = tl.load(b2_ptr + hid, mask=hid_mask, other=0.0)
            z = tl.maximum(tl.dot(h1, w2_t, input_precision=PRECISION) + b2[None, :], 0.0)
            w3_t = tl.load(w3_ptr + cols[None, :] * H + hid[:, None], mask=col_mask[None, :] & hid_mask[:, None],
                           other=0.0)
            acc += tl.dot(z.to(a.dtype), w3_t, input_precision=PRECISION)
        acc += tl.load(b3_ptr + cols, mask=col_mask, other=0.0)[None, :]

    if HAS_SKIP:
        # acc += u S^T over chunks of BLOCK_H input columns (u's chunk reloaded: S^T whole would not fit)
        for k0 in range(0, K, BLOCK_H):
            ks = k0 + tl.arange(0, BLOCK_H)
            k_mask = ks < K
            chunk_mask = row_mask[:, None] & k_mask[None, :]
            a_chunk = tl.load(a_ptr + rows.to(tl.int64)[:, None] * K + ks[None, :], mask=chunk_mask, other=0.0)
            center_chunk = tl.load(center_ptr + ks, mask=k_mask, other=0.0)
            u_chunk = tl.where(chunk_mask, (a_chunk - center_chunk[None, :]) * inv_radius, 0.0)
            skip_t = tl.load(skip_ptr + cols[None, :] * K + ks[:, None], mask=col_mask[None, :] & k_mask[:, None],
                             other=0.0)
            acc += tl.dot(u_chunk, skip_t, input_precision=PRECISION)

    tl.store(out_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], acc, mask=tile_mask)


def fused_mlp_initializer(a: torch.Tensor, center: torch.Tensor, inv_radius: float, weights: list[torch.Tensor],
                          biases: list[torch.Tensor], skip: torch.Tensor | None = None,
                          allow_tf32: bool = False) -> torch.Tensor:
    """Fused override of :func:`neuinv.reference.mlp_initializer` for 2 or 3 linear layers.

    a: (b, K) flattened matrices, K = n*n; weights in ``nn.Linear`` layout (out, in), all of a's
    dtype (float32 or float64) and device. allow_tf32 lets float32 products use TF32 tensor cores.
    """
    depth = len(weights)
    if depth not in (2, 3) or len(biases) != depth:
        raise ValueError(f"the fused MLP takes 2 or 3 layers with a bias each; got {depth} weights, {len(biases)} biases")
    if a.dim() != 2:
        raise ValueError(f"a must be (batch, n*n); got shape {tuple(a.shape)}")
    batch, K = a.shape
    H = weights[0].shape[0]
    expected = [(H, K), (K, H)] if depth == 2 else [(H, K), (H, H), (K, H)]
    for i, (weight, bias, shape) in enumerate(zip(weights, biases, expected)):
        if tuple(weight.shape) != shape or tuple(bias.shape) != shape[:1]:
            raise ValueError(f"layer {i + 1}: expected weight {shape} and bias {shape[:1]}, "
                             f"got {tuple(weight.shape)} and {tuple(bias.shape)}")
    if depth == 3 and H > MAX_HIDDEN_3FC:
        raise ValueError(f"the fused 3-FC kernel keeps the first hidden layer on chip: hidden <= {MAX_HIDDEN_3FC}, "
                         f"got {H}")
    if skip is not None and tuple(skip.shape) != (K, K):
        raise ValueError(f"skip must be ({K}, {K}); got {tuple(skip.shape)}")
    tensors = [a, center, *weights, *biases] + ([skip] if skip is not None else [])
    if a.dtype not in (torch.float32, torch.float64) or any(t.dtype != a.dtype for t in tensors):
        raise TypeError(f"the fused MLP takes float32 or float64 tensors of one dtype; got "
                        f"{sorted({str(t.dtype) for t in tensors})}")
    a, center = a.contiguous(), center.contiguous()
    weights = [w.contiguous() for w in weights]
    biases = [b.contiguous() for b in biases]
    out = torch.empty_like(a)
    if batch == 0:
        return out
    w3, b3 = (weights[2], biases[2]) if depth == 3 else (weights[1], biases[1])
    precision = "tf32" if (allow_tf32 and a.dtype == torch.float32) else "ieee"
    grid = lambda meta: (triton.cdiv(batch, meta["BLOCK_M"]),)  # noqa: E731
    _fused_mlp_kernel[grid](
        a, center, weights[0], biases[0], weights[1], biases[1], w3, b3,
        skip.contiguous() if skip is not None else a, out,
        batch, float(inv_radius), K, H,
        K_PAD=max(16, triton.next_power_of_2(K)), H_PAD=max(16, triton.next_power_of_2(H)), DEPTH=depth,
        HAS_SKIP=skip is not None, PRECISION=precision,
    )
    return out
