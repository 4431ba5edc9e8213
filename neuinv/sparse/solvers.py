"""Krylov solvers in torch, batched over right-hand sides, CPU or CUDA: preconditioned conjugate
gradients (Hestenes & Stiefel 1952) and restarted, right-preconditioned GMRES (Saad & Schultz 1986).

Each column of B is an independent system sharing A and the preconditioner; a column stops being
updated once its true relative residual ||b - A x|| / ||b||, recomputed from x, is at most ``rtol``.
The residual the iteration updates drifts from b - A x in floating point (the residual gap: Greenbaum,
SIAM J. Matrix Anal. Appl. 18, 1997; van der Vorst & Ye, SIAM J. Sci. Comput. 22, 2000) and can fall far
below what x attains, so it only proposes a stop: where it reaches rtol, b - A x is computed, and where
that misses rtol the solver restarts from it (CG: r = b - A x, p = M^-1 r; GMRES: a new cycle) while
``max_iter`` allows. ``converged`` and the message come from true residuals only.

True residuals are computed in float64 (complex128 for complex systems): b and x are converted to it, and
a tensor or scipy.sparse A is applied with its own values in that precision (a float64 copy of a float32
A is kept for this). A callable A is applied to x in the working dtype, as in the iteration, and its
result is taken in float64 (complex128) without rounding to the working dtype: the product is as exact as
the callable makes it.

Dtypes: the solvers work in b's dtype (integer b: float64), made complex of the same precision
(float32 -> complex64, float64 -> complex128) when A, x0 or M (by its ``dtype`` attribute, as a
:class:`neuinv.sparse.precond.BlockJacobi` has) is complex, so a real b with a complex A is solved as the
complex system it is; A, x0 and what M returns are converted to that dtype. Complex systems use
conjugated inner products x^H y and complex Givens rotations. An imaginary part is never dropped: a
callable A or M that returns complex values for a real working dtype raises ``TypeError``.
"""
from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import numpy as np
import scipy.sparse
import torch


class SolveResult(NamedTuple):
    """x: the solution, b's shape, in the working dtype (see the module docstring). converged: per
    right-hand side, (k,), whether the true ||b - A x|| / ||b|| of the returned x is at most rtol.
    iterations: per right-hand side, (k,). history: relative residuals, float64, (steps + 1, k), row i
    after step i: the iteration's own residual (CG: ||r_i|| / ||b|| of the updated r; GMRES: the
    least-squares residual |g_i| / ||b||), except the true ||b - A x_i|| / ||b|| in row 0, where a column
    was checked (CG) or a cycle ended (GMRES), and in the last row; a column that stopped keeps its
    last value. message: a one-line report naming the columns that did not converge and their true
    relative residuals."""

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


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of a real dtype's precision (float64 -> complex128, float32 and narrower ->
    complex64); a complex dtype is returned as it is."""
    return dtype if dtype.is_complex else torch.promote_types(dtype, torch.complex64)


def _is_complex(obj) -> bool:
    """Whether a tensor, scipy.sparse matrix or any object with a torch or numpy ``dtype`` is complex."""
    dtype = getattr(obj, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype.is_complex
    return isinstance(dtype, np.dtype) and dtype.kind == "c"


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype true residuals are computed in: complex128 for complex dtypes, float64 for real ones."""
    return torch.complex128 if dtype.is_complex else torch.float64


def _in_dtype(operator, name: str, dtype: torch.dtype, result_dtype: torch.dtype | None = None
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    """operator, applied to `dtype` input, with its result converted to `result_dtype` (default `dtype`); a
    complex result for a real `dtype` raises TypeError."""
    def apply(V):
        W = operator(V)
        if W.is_complex() and not dtype.is_complex:
            raise TypeError(f"{name} returned {W.dtype} for {dtype} input; its imaginary part would be lost. "
                            f"Pass a complex b (or give {name} a complex `dtype` attribute).")
        return W.to(result_dtype or dtype)
    return apply


def _as_operators(A, like: torch.Tensor):
    """(matvec, exact): A applied in like's dtype, and A applied for true residuals (module docstring)."""
    wide = _wide(like.dtype)
    if callable(A) and not isinstance(A, torch.Tensor):
        return _in_dtype(A, "A", like.dtype), _in_dtype(A, "A", like.dtype, wide)
    if scipy.sparse.issparse(A):
        A = scipy_to_torch_csr(A)
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise TypeError("A must be a square torch tensor (dense or sparse), a scipy.sparse matrix or a callable")
    A = A.to(device=like.device)
    A_work, A_wide = A.to(like.dtype), A.to(wide)  # like is complex whenever A is (see _prepare)
    return (lambda V: A_work @ V), (lambda V: A_wide @ V.to(wide))


def _dot(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Column-wise inner products x^H y of (N, k) blocks, (k,)."""
    return (X.conj() * Y).sum(0)


def _prepare(A, b, M, x0):
    if not isinstance(b, torch.Tensor) or b.dim() not in (1, 2):
        raise ValueError("b must be a torch tensor of shape (N,) or (N, k)")
    B = b.reshape(b.shape[0], -1)
    dtype = B.dtype if B.dtype.is_floating_point or B.dtype.is_complex else torch.float64
    if any(_is_complex(operand) for operand in (A, x0, M)):
        dtype = _complex_of(dtype)
    B = B.to(dtype)
    matvec, exact = _as_operators(A, B)
    precondition = _in_dtype(M, "M", dtype) if M is not None else (lambda R: R)
    X = torch.zeros_like(B) if x0 is None else x0.reshape(B.shape).to(B).clone()
    B_wide = B.to(_wide(dtype))
    b_norm = torch.linalg.vector_norm(B_wide, dim=0)
    b_norm = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))

    def true_residual(X):
        """(b - A x in float64 or complex128, its relative norms ||b - A x|| / ||b||)."""
        R = B_wide - exact(X)
        return R, torch.linalg.vector_norm(R, dim=0) / b_norm

    return B, matvec, precondition, X, true_residual, b_norm


def _report(name, converged, relres, rtol, steps):
    """The message; relres: the true relative residuals converged was decided on."""
    if bool(converged.all()):
        return f"{name}: all {converged.numel()} right-hand sides reached rtol {rtol:g} (true residual b - A x)"
    failed = (~converged).nonzero().squeeze(1).tolist()
    residuals = ", ".join(f"{relres[j].item():.3g}" for j in failed)
    return (f"{name}: right-hand side(s) {failed} did not reach rtol {rtol:g} in {steps} iterations; their true "
            f"relative residuals ||b - A x|| / ||b||: [{residuals}]")


def cg(A, b: torch.Tensor, M=None, *, rtol: float = 1e-8, max_iter: int | None = None, x0=None) -> SolveResult:
    """Preconditioned conjugate gradients for Hermitian (real: symmetric) positive definite A and M^-1.

    Args:
        A: (N, N) torch tensor (dense or sparse), scipy.sparse matrix, or a callable A(V) on (N, k) blocks.
        b: (N,) or (N, k) tensor, real or complex; each column is solved on its own.
        M: callable M(R) = M^-1 R on (N, k) blocks, e.g. a :class:`neuinv.sparse.precond.BlockJacobi`.
        rtol: target relative residual ||b - A x|| / ||b|| per column. max_iter: default 10 N.
        x0: initial guess of b's shape.
    Dtypes follow the module docstring. Raises ``ValueError`` for a bad b, ``TypeError`` for a bad A or
    for a callable A or M that returns complex values for a real system.

    A column whose updated residual reaches rtol is checked on b - A x; where that misses rtol, CG
    restarts from it (r = b - A x, p = M^-1 r), as residual replacement does (van der Vorst & Ye 2000)."""
    B, matvec, precondition, X, true_residual, b_norm = _prepare(A, b, M, x0)
    max_iter = max_iter or 10 * B.shape[0]
    R_true, relres = true_residual(X)
    done = relres <= rtol
    R = R_true.to(B.dtype)
    Z = precondition(R)
    P = Z.clone()
    rz = _dot(R, Z)
    history = [relres]
    iterations = torch.zeros(B.shape[1], dtype=torch.int64, device=B.device)
    step = 0
    for step in range(1, max_iter + 1):
        active = ~done
        if not bool(active.any()):
            step -= 1
            break
        AP = matvec(P)
        curvature = _dot(P, AP)
        alpha = torch.where(active, rz / torch.where(curvature != 0, curvature, torch.ones_like(curvature)), 0.0)
        X += alpha * P
        R -= alpha * AP
        relres = torch.where(active, torch.linalg.vector_norm(R, dim=0) / b_norm, relres)
        iterations += active.to(iterations.dtype)
        claimed = active & (relres <= rtol)
        restart = torch.zeros_like(claimed)
        if bool(claimed.any()):
            R_true, true_relres = true_residual(X)
            relres = torch.where(claimed, true_relres, relres)
            done = done | (claimed & (true_relres <= rtol))
            restart = claimed & ~done
            R = torch.where(restart, R_true.to(R.dtype), R)
        history.append(relres)
        Z = precondition(R)
        rz_new = _dot(R, Z)
        beta = torch.where(active & ~restart, rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)), 0.0)
        P = Z + beta * P
        rz = torch.where(active, rz_new, rz)
    if not bool(done.all()):
        relres = torch.where(done, relres, true_residual(X)[1])
        history[-1] = relres
    converged = relres <= rtol
    return SolveResult(X.reshape(b.shape), converged, iterations, torch.stack(history),
                       _report("cg", converged, relres, rtol, step))


def gmres(A, b: torch.Tensor, M=None, *, rtol: float = 1e-8, restart: int = 30, max_iter: int | None = None,
          x0=None) -> SolveResult:
    """Restarted GMRES(restart) with right preconditioning: solves A M^-1 u = b, x = M^-1 u, so the
    residual it minimises is the true residual b - A x. ``max_iter`` counts inner (Arnoldi) steps
    (default 10 N). A may be any nonsingular matrix, real or complex; the other arguments and the
    dtypes are as for :func:`cg`. Each cycle starts from the true residual b - A x of the last one and
    ends with it; a cycle ends after ``restart`` steps or once every column's least-squares residual
    reaches rtol. Columns that reached rtol on b - A x keep their x in later cycles."""
    B, matvec, precondition, X, true_residual, b_norm = _prepare(A, b, M, x0)
    N, k = B.shape
    max_iter = max_iter or 10 * N
    m = max(1, min(restart, N))
    R_true, relres = true_residual(X)
    done = relres <= rtol
    history = [relres]
    iterations = torch.zeros(k, dtype=torch.int64, device=B.device)
    total = 0
    tiny = torch.finfo(B.dtype).tiny
    while total < max_iter and not bool(done.all()):
        R = R_true.to(B.dtype)
        beta = torch.linalg.vector_norm(R, dim=0)
        V = torch.zeros(m + 1, N, k, dtype=B.dtype, device=B.device)
        V[0] = R / torch.clamp(beta, min=tiny)
        H = torch.zeros(k, m + 1, m, dtype=B.dtype, device=B.device)
        cs = torch.zeros(k, m, dtype=beta.dtype, device=B.device)
        sn = torch.zeros(k, m, dtype=B.dtype, device=B.device)
        g = torch.zeros(k, m + 1, dtype=B.dtype, device=B.device)
        g[:, 0] = beta
        steps = 0
        for j in range(m):
            active = relres > rtol
            W = matvec(precondition(V[j]))
            for i in range(j + 1):  # modified Gram-Schmidt
                H[:, i, j] = _dot(V[i], W)
                W = W - H[:, i, j] * V[i]
            h_next = torch.linalg.vector_norm(W, dim=0)
            H[:, j + 1, j] = h_next
            V[j + 1] = W / torch.clamp(h_next, min=tiny)
            for i in range(j):  # earlier Givens rotations [[c, s], [-conj(s), c]], c real
                upper = cs[:, i] * H[:, i, j] + sn[:, i] * H[:, i + 1, j]
                H[:, i + 1, j] = -sn[:, i].conj() * H[:, i, j] + cs[:, i] * H[:, i + 1, j]
                H[:, i, j] = upper
            # The rotation that zeroes H[j + 1, j]: c = |a| / r, s = (a / |a|) conj(h) / r, r = hypot(|a|, |h|).
            a, a_abs, h = H[:, j, j], H[:, j, j].abs(), H[:, j + 1, j]
            radius = torch.clamp(torch.hypot(a_abs, h.abs()), min=tiny)
            phase = torch.where(a_abs > 0, a / torch.clamp(a_abs, min=tiny), 1.0)
            cs[:, j], sn[:, j] = a_abs / radius, phase * h.conj() / radius
            H[:, j, j], H[:, j + 1, j] = phase * radius, 0.0
            g[:, j + 1] = -sn[:, j].conj() * g[:, j]
            g[:, j] = cs[:, j] * g[:, j]
            relres = torch.where(active, g[:, j + 1].abs() / b_norm, relres)
            history.append(relres)
            iterations += active.to(iterations.dtype)
            steps, total = j + 1, total + 1
            if not bool((relres > rtol).any()) or total >= max_iter:
                break
        y = torch.linalg.solve_triangular(H[:, :steps, :steps], g[:, :steps, None], upper=True)[..., 0]
        update = torch.einsum("jnk,kj->nk", V[:steps], y)
        X += torch.where(done, 0.0, precondition(update))
        R_true, true_relres = true_residual(X)
        relres = torch.where(done, relres, true_relres)
        history[-1] = relres
        done = relres <= rtol
    converged = relres <= rtol
    return SolveResult(X.reshape(b.shape), converged, iterations, torch.stack(history),
                       _report("gmres", converged, relres, rtol, total))
