"""The fused Triton Newton–Schulz step, one launch per step (benchmarked by bench/kernels.py; the triton
backend runs the whole loop in one launch instead: kernels/invert.py).

One launch reads A and X once, forms R = I - A X on chip, computes r = ||R||_F and the
stopping test of :func:`neuinv.reference.newton_schulz_step`, and writes
X' = X + X R (or X unchanged where the test passed). For n <= 8 each program holds several
matrices and multiplies by broadcast-and-sum (no padding to a 16-wide MMA tile); for larger
n each program holds one matrix padded to a power of two and multiplies with ``tl.dot``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

SMALL_N = 8
"""Largest padded size multiplied by broadcast-and-sum instead of tl.dot."""


@triton.jit
def _batched_matmul(a, b, USE_DOT: tl.constexpr):
    """(M, N, N) @ (M, N, N) on chip; IEEE precision (no TF32)."""
    if USE_DOT:
        return tl.dot(a, b, input_precision="ieee")
    return tl.sum(a[:, :, :, None] * b[:, None, :, :], axis=2)


@triton.jit
def _newton_schulz_step_kernel(
    # pointers
    a_ptr, x_ptr, x_next_ptr, r_ptr, done_ptr,
    # sizes
    batch, n,
    # stopping test
    tol, accept,
    # meta-parameters
    BLOCK_N: tl.constexpr, MATRICES: tl.constexpr, USE_DOT: tl.constexpr,
):
    """R = I - A X, r = ||R||_F, done = r <= min(tol ||A||_F ||X||_F, accept) (norms scaled as in
    reference.norm_product); X' = X where done else X + X R (Newton–Schulz / Hotelling)."""
    pid = tl.program_id(0)
    mats = pid * MATRICES + tl.arange(0, MATRICES)
    idx = tl.arange(0, BLOCK_N)
    mat_mask = mats < batch
    elem_mask = mat_mask[:, None, None] & (idx[None, :, None] < n) & (idx[None, None, :] < n)
    offsets = mats.to(tl.int64)[:, None, None] * n * n + idx[None, :, None] * n + idx[None, None, :]

    a = tl.load(a_ptr + offsets, mask=elem_mask, other=0.0)
    x = tl.load(x_ptr + offsets, mask=elem_mask, other=0.0)
    eye = ((idx[:, None] == idx[None, :]) & (idx[:, None] < n)).to(a.dtype)
    residual = eye[None, :, :] - _batched_matmul(a, x, USE_DOT)

    r = tl.sqrt(tl.sum(tl.sum(residual * residual, axis=2), axis=1))
    tl.store(r_ptr + mats, r, mask=mat_mask)
    # ||A||_F ||X||_F as ||A / m||_F ||m X||_F, m = max |a_ij| (reference.norm_product: no overflow).
    largest = tl.max(tl.max(tl.abs(a), axis=2), axis=1)
    m = tl.where(largest > 0, largest, 1.0)[:, None, None]
    a_scaled = a / m
    x_scaled = x * m
    x_norm = tl.sqrt(tl.sum(tl.sum(x_scaled * x_scaled, axis=2), axis=1))
    a_norm = tl.sqrt(tl.sum(tl.sum(a_scaled * a_scaled, axis=2), axis=1))
    done = r <= tl.minimum(tol * a_norm * x_norm, accept)
    x_next = tl.where(done[:, None, None], x, x + _batched_matmul(x, residual, USE_DOT))
    tl.store(x_next_ptr + offsets, x_next, mask=elem_mask)
    tl.store(done_ptr + mats, done.to(tl.int8), mask=mat_mask)


def newton_schulz_step(A: torch.Tensor, X: torch.Tensor, tol: float, accept: float):
    """Fused override of :func:`neuinv.reference.newton_schulz_step`: returns (X', r, done)."""
    if A.dim() != 3 or A.shape != X.shape or A.shape[1] != A.shape[2]:
        raise ValueError(f"A and X must both have shape (b, n, n); got {tuple(A.shape)} and {tuple(X.shape)}")
    if A.dtype not in (torch.float32, torch.float64) or X.dtype != A.dtype:
        raise TypeError(f"the Triton kernels take float32 or float64; got {A.dtype} and {X.dtype}")
    A, X = A.contiguous(), X.contiguous()
    batch, n = A.shape[0], A.shape[1]
    r = torch.empty(batch, dtype=A.dtype, device=A.device)
    X_next = torch.empty_like(X)
    done = torch.empty(batch, dtype=torch.int8, device=A.device)
    if batch == 0:
        return X_next, r, done.bool()
    block_n = max(2, triton.next_power_of_2(n))
    use_dot = block_n > SMALL_N
    if use_dot:
        block_n = max(block_n, 16)
    matrices = 1 if use_dot else max(1, 256 // (block_n * block_n))
    grid = (triton.cdiv(batch, matrices),)
    _newton_schulz_step_kernel[grid](
        A, X, X_next, r, done, batch, n, float(tol), float(accept),
        BLOCK_N=block_n, MATRICES=matrices, USE_DOT=use_dot,
        num_warps=4 if block_n <= 32 else 8,
    )
    return X_next, r, done.bool()

