"""Matrices with a chosen condition number, accuracy measures and refined truths, for tests, benchmarks and the demo."""
from __future__ import annotations

import math

import torch

from . import certificate


def conditioned_matrices(batch: int, n: int, cond: float, dtype=torch.float64, seed: int = 0,
                         symmetric: bool = False) -> torch.Tensor:
    """A = Q1 diag(sigma) Q2^T, Q random orthogonal, sigma log-spaced from 1 to 1/cond
    (built in float64, then rounded to dtype), so cond_2(A) = cond exactly before rounding."""
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=torch.float64))
    q2 = q1 if symmetric else torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=torch.float64))[0]
    if n > 1:
        sigma = torch.logspace(0, -math.log10(cond), n, dtype=torch.float64)
    else:
        sigma = torch.ones(1, dtype=torch.float64)
    return ((q1 * sigma) @ q2.mT).to(dtype)


def warm_start(A: torch.Tensor, residual: float, seed: int = 0) -> torch.Tensor:
    """An approximate inverse X0 = A^-1 (I - E) with ||I - A X0||_F = ||E||_F = residual
    (A^-1 from float64 or complex128 LU; singular members give non-finite guesses)."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.complex128 if A.is_complex() else torch.float64
    A64 = A.detach().cpu().to(wide)
    E = torch.randn(A64.shape, generator=g, dtype=wide)
    E *= residual / torch.linalg.matrix_norm(E)[..., None, None]
    X0 = torch.linalg.inv_ex(A64).inverse @ (torch.eye(A.shape[-1], dtype=wide) - E)
    return X0.to(dtype=A.dtype, device=A.device)


def true_residual(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """||I - A X||_F per matrix of the stored A and X, each entry evaluated in twice the float64 precision
    (Dot2, :func:`neuinv.certificate.compensated_residual_norm`): relative error about 1e-16 even where
    the plain float64 residual cancels to 0. (b,) or A's batch shape, float64 on the CPU."""
    batch_shape, n = A.shape[:-2], A.shape[-1]
    A, X = A.detach().cpu().reshape(-1, n, n), X.detach().cpu().reshape(-1, n, n)
    return certificate.compensated_residual_norm(A, X).reshape(batch_shape)


TRUTH_SLACK = 4 * torch.finfo(torch.float64).eps
"""What a float64 truth from accurate_inverse / accurate_solve may itself be off by (relative): its own rounding, about
u per entry, plus the rounding of the refinement steps. float64 bounds reach below it where X is exact or nearly."""


def accurate_inverse(A: torch.Tensor) -> torch.Tensor:
    """A^-1 to about eps64 relative (cond up to ~1e12), as (b, n, n) float64 (complex128 for complex A) for A
    (..., n, n) of any floating dtype: torch.linalg.inv refined by three Newton steps X + X (I - A X), each residual
    evaluated almost exactly (certificate.split_residual, checked against exact rationals in the tests). The truth
    for float64 bounds that lie at the error itself, below torch.linalg.inv's own error."""
    wide = torch.complex128 if A.is_complex() else torch.float64
    A = A.to(wide).reshape(-1, A.shape[-2], A.shape[-1])
    n = A.shape[-1]
    g = certificate.gamma(n + 1, certificate.unit_roundoff(torch.float64)) * (2 if A.is_complex() else 1)
    eye = torch.eye(n, dtype=wide, device=A.device).expand_as(A).contiguous()
    X = torch.linalg.inv(A)
    for _ in range(3):
        residual, _ = certificate.split_residual(A, X, eye, g)
        X = X + X @ residual
    return X


def accurate_solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A^-1 B in float64 to about eps64 relative (cond up to ~1e12) for real A (b, n, n) and B (b, n, k) or (b, n):
    torch.linalg.solve refined by three steps X + A^-1 (B - A X), each residual evaluated almost exactly
    (certificate.split_residual)."""
    A, B = A.double(), B.double()
    vector = B.dim() == A.dim() - 1
    B = B.unsqueeze(-1) if vector else B
    g = certificate.gamma(A.shape[-1] + 1, certificate.unit_roundoff(torch.float64))
    X = torch.linalg.solve(A, B)
    for _ in range(3):
        residual, _ = certificate.split_residual(A, X, B, g)
        X = X + torch.linalg.solve(A, residual)
    return X.squeeze(-1) if vector else X
