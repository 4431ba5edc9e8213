"""Shared test helpers: matrices of chosen condition number and accuracy measures.

On a machine without CUDA the Triton kernels run in the Triton interpreter; that must be
switched on before triton is imported anywhere.
"""
import math
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def conditioned_matrices(batch, n, cond, dtype, seed=0, symmetric=False):
    """A = Q1 diag(sigma) Q2^T with sigma log-spaced from 1 to 1/cond (built in float64)."""
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=torch.float64))
    q2 = q1 if symmetric else torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=torch.float64))[0]
    sigma = torch.logspace(0, -math.log10(cond), n, dtype=torch.float64) if n > 1 else torch.ones(1, dtype=torch.float64)
    return ((q1 * sigma) @ q2.mT).to(dtype)


def true_residual(A, X):
    """||I - A X||_F per matrix, computed in float64 from the (rounded) inputs."""
    A64, X64 = A.to(torch.complex128 if A.is_complex() else torch.float64), X.to(
        torch.complex128 if X.is_complex() else torch.float64)
    eye = torch.eye(A.shape[-1], dtype=A64.dtype)
    return torch.linalg.matrix_norm(eye - A64 @ X64)


def residual_bound(A):
    """What neuinv must achieve: 4x torch.linalg.inv's worst residual on the same batch,
    with a floor of n*eps for sizes where torch happens to be exact."""
    torch_residual = true_residual(A, torch.linalg.inv(A)).max().item()
    eps = torch.finfo(A.dtype).eps
    return 4 * max(torch_residual, A.shape[-1] * eps)


def warm_start(A, residual, seed=0):
    """An approximate inverse X0 = A^-1 (I - E) with ||I - A X0||_F = ||E||_F = residual."""
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(A.shape, generator=g, dtype=torch.float64)
    E *= residual / torch.linalg.matrix_norm(E)[..., None, None]
    return (torch.linalg.inv_ex(A.double()).inverse @ (torch.eye(A.shape[-1], dtype=torch.float64) - E)).to(A.dtype)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
requires_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not present")
