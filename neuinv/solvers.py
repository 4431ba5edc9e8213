"""Krylov solvers in torch, batched over right-hand sides, CPU or CUDA: preconditioned conjugate
gradients (Hestenes & Stiefel 1952) and restarted, right-preconditioned GMRES (Saad & Schultz 1986).

Each column of B is an independent system sharing A and the preconditioner; a column stops being
updated once its relative residual ||b - A x|| / ||b|| is at most ``rtol``.
"""
from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import scipy.sparse
import torch


class SolveResult(NamedTuple):
    """x: the solution, b's shape. converged, iterations: per right-hand side. history: relative
    residuals, (steps + 1, k). message: a one-line report, naming the columns that did not converge."""

    x: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    history: torch.Tensor
    message: str


def scipy_to_torch_csr(A) -> torch.Tensor:
    """A scipy.sparse matrix as a torch sparse CSR tensor (CPU; move it with .to(device))."""
    csr = scipy.sparse.csr_matrix(A)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(torch.as_tensor(csr.indptr, dtype=torch.int64),
                                       torch.as_tensor(csr.indices, dtype=torch.int64),
                                       torch.as_tensor(csr.data), size=csr.shape, check_invariants=True)


def _as_operator(A, like: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(A) and not isinstance(A, torch.Tensor):
        return A
    if scipy.sparse.issparse(A):
        A = scipy_to_torch_csr(A)
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise TypeError("A must be a square torch tensor (dense or sparse), a scipy.sparse matrix or a callable")
    A = A.to(device=like.device, dtype=like.dtype)
    return lambda V: A @ V


def _prepare(A, b, M, x0):
    if not isinstance(b, torch.Tensor) or b.dim() not in (1, 2):
        raise ValueError("b must be a torch tensor of shape (N,) or (N, k)")
    B = b.reshape(b.shape[0], -1)
    if not B.dtype.is_floating_point:
        B = B.double()
    matvec = _as_operator(A, B)
    precondition = M if M is not None else (lambda R: R)
    X = torch.zeros_like(B) if x0 is None else x0.reshape(B.shape).to(B).clone()
    b_norm = torch.linalg.vector_norm(B, dim=0)
    b_norm = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    return B, matvec, precondition, X, b_norm


def _report(name, converged, relres, rtol, steps):
    if bool(converged.all()):
        return f"{name}: all {converged.numel()} right-hand sides reached rtol {rtol:g}"
    failed = (~converged).nonzero().squeeze(1).tolist()
    return (f"{name}: right-hand side(s) {failed} did not reach rtol {rtol:g} in {steps} iterations "
            f"(worst relative residual {relres.max().item():.3g})")


def cg(A, b: torch.Tensor, M=None, *, rtol: float = 1e-8, max_iter: int | None = None, x0=None) -> SolveResult:
    """Preconditioned conjugate gradients for symmetric positive definite A and M^-1 (callables
    M(R) = M^-1 R on (N, k) blocks, e.g. a :class:`neuinv.precond.BlockJacobi`)."""
    B, matvec, precondition, X, b_norm = _prepare(A, b, M, x0)
    max_iter = max_iter or 10 * B.shape[0]
    R = B - matvec(X)
    Z = precondition(R)
    P = Z.clone()
    rz = (R * Z).sum(0)
    relres = torch.linalg.vector_norm(R, dim=0) / b_norm
    history = [relres]
    iterations = torch.zeros(B.shape[1], dtype=torch.int64, device=B.device)
    step = 0
    for step in range(1, max_iter + 1):
        active = relres > rtol
        if not bool(active.any()):
            step -= 1
            break
        AP = matvec(P)
        curvature = (P * AP).sum(0)
        alpha = torch.where(active, rz / torch.where(curvature != 0, curvature, torch.ones_like(curvature)), 0.0)
        X += alpha * P
        R -= alpha * AP
        relres = torch.linalg.vector_norm(R, dim=0) / b_norm
        history.append(relres)
        iterations += active.to(iterations.dtype)
        Z = precondition(R)
        rz_new = (R * Z).sum(0)
        beta = torch.where(active, rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)), 0.0)
        P = Z + beta * P
        rz = torch.where(active, rz_new, rz)
    converged = relres <= rtol
    return SolveResult(X.reshape(b.shape), converged, iterations, torch.stack(history),
                       _report("cg", converged, relres, rtol, step))


def gmres(A, b: torch.Tensor, M=None, *, rtol: float = 1e-8, restart: int = 30, max_iter: int | None = None,
          x0=None) -> SolveResult:
    """Restarted GMRES(restart) with right preconditioning: solves A M^-1 u = b, x = M^-1 u, so the
    residual it minimises is the true residual b - A x. ``max_iter`` counts inner (Arnoldi) steps."""
    B, matvec, precondition, X, b_norm = _prepare(A, b, M, x0)
    N, k = B.shape
    max_iter = max_iter or 10 * N
    m = max(1, min(restart, N))
    relres = torch.linalg.vector_norm(B - matvec(X), dim=0) / b_norm
    history = [relres]
    iterations = torch.zeros(k, dtype=torch.int64, device=B.device)
    total = 0
    tiny = torch.finfo(B.dtype).tiny
    while total < max_iter and bool((relres > rtol).any()):
        R = B - matvec(X)
        beta = torch.linalg.vector_norm(R, dim=0)
        V = torch.zeros(m + 1, N, k, dtype=B.dtype, device=B.device)
        V[0] = R / torch.clamp(beta, min=tiny)
        H = torch.zeros(k, m + 1, m, dtype=B.dtype, device=B.device)
        cs = torch.zeros(k, m, dtype=B.dtype, device=B.device)
        sn = torch.zeros_like(cs)
        g = torch.zeros(k, m + 1, dtype=B.dtype, device=B.device)
        g[:, 0] = beta
        steps = 0
        for j in range(m):
            active = relres > rtol
            W = matvec(precondition(V[j]))
            for i in range(j + 1):  # modified Gram-Schmidt
                H[:, i, j] = (W * V[i]).sum(0)
                W = W - H[:, i, j] * V[i]
            h_next = torch.linalg.vector_norm(W, dim=0)
            H[:, j + 1, j] = h_next
            V[j + 1] = W / torch.clamp(h_next, min=tiny)
            for i in range(j):  # earlier Givens rotations
                upper = cs[:, i] * H[:, i, j] + sn[:, i] * H[:, i + 1, j]
                H[:, i + 1, j] = -sn[:, i] * H[:, i, j] + cs[:, i] * H[:, i + 1, j]
                H[:, i, j] = upper
            radius = torch.clamp(torch.hypot(H[:, j, j], H[:, j + 1, j]), min=tiny)
            cs[:, j], sn[:, j] = H[:, j, j] / radius, H[:, j + 1, j] / radius
            H[:, j, j], H[:, j + 1, j] = radius, 0.0
            g[:, j + 1] = -sn[:, j] * g[:, j]
            g[:, j] = cs[:, j] * g[:, j]
            relres = torch.where(active, g[:, j + 1].abs() / b_norm, relres)
            history.append(relres)
            iterations += active.to(iterations.dtype)
            steps, total = j + 1, total + 1
            if not bool((relres > rtol).any()) or total >= max_iter:
                break
        y = torch.linalg.solve_triangular(H[:, :steps, :steps], g[:, :steps, None], upper=True)[..., 0]
        update = torch.einsum("jnk,kj->nk", V[:steps], y)
        X += precondition(update)
        relres = torch.linalg.vector_norm(B - matvec(X), dim=0) / b_norm
    converged = relres <= rtol
    return SolveResult(X.reshape(b.shape), converged, iterations, torch.stack(history),
                       _report("gmres", converged, relres, rtol, total))
