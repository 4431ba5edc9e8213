"""Pure-torch reference implementations of neuinv's building blocks.

Every fast path (Triton, C++/CUDA) is an override of one of these functions and
is tested against it. They work on flat batches ``(b, n, n)`` of any floating or
complex dtype on any device.

Notation: ``A`` the matrices, ``X`` approximate inverses, ``R = I - A X`` the
residual, ``r = ||R||_F`` its Frobenius norm. The certificate built on it, with the rounding of its
own evaluation accounted for, is in :mod:`neuinv.certificate`.
"""
from __future__ import annotations

import math

import torch

from . import certificate
from .rules import NewtonSchulzRules, certified, cholesky_pivot_accepted, converged


def scaled_transpose_guess(A: torch.Tensor) -> torch.Tensor:
    """Classical initial guess X0 = A^H / ||A||_1 / ||A||_inf (two divisions: the product of the norms
    could overflow).

    For every non-singular A the eigenvalues of A X0 lie in (0, 1], so Newton–Schulz
    converges from it (Pan & Schreiber, SIAM J. Sci. Stat. Comput. 12 (1991) 1109),
    but slowly: about 2 log2(cond(A)) iterations before the quadratic phase.
    """
    norm_1 = torch.linalg.matrix_norm(A, ord=1)
    norm_inf = torch.linalg.matrix_norm(A, ord=float("inf"))
    tiny = torch.finfo(norm_1.dtype).tiny
    return A.mH / norm_1.clamp_min(tiny)[:, None, None].to(A.dtype) / norm_inf.clamp_min(tiny)[:, None, None].to(A.dtype)


def newton_schulz_step(A: torch.Tensor, X: torch.Tensor, tol: float,
                       accept: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Newton–Schulz (Hotelling) step with its stopping test, per matrix.

    R = I - A X,  r = ||R||_F,  done = r <= min(tol ||A||_F ||X||_F, accept),
    X' = X where done, else X + X R (so that R' = R^2: quadratic convergence).
    ||A||_F ||X||_F is evaluated by :func:`norm_product`, so that the test does not depend on A's scale.

    Returns (X', r, done); r and done describe the input X, not X'.
    """
    R = _residual_matrix(A, X)
    r = torch.linalg.matrix_norm(R)
    done = converged(r, norm_product(A, X), tol, accept)
    X_next = torch.where(done[:, None, None], X, torch.baddbmm(X, X, R))
    return X_next, r, done


def norm_product(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """||A||_F ||X||_F evaluated as ||A / m||_F ||m X||_F, m = max |a_ij| (1 for a zero matrix): no overflow
    for any representable A and X ~ A^-1, and exactly the same rounding for A and 2^k A, X and 2^-k X."""
    m = A.abs().amax(dim=(-2, -1))
    m = torch.where(m > 0, m, torch.ones_like(m))[:, None, None]
    return torch.linalg.matrix_norm(A / m) * torch.linalg.matrix_norm(X * m)


def residual_norm(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """r = ||I - A X||_F per matrix."""
    return torch.linalg.matrix_norm(_residual_matrix(A, X))


def _residual_matrix(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """R = I - A X, one batched product."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
    return torch.baddbmm(eye, A, X, alpha=-1)


def exact_inverse(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LU with partial pivoting (LAPACK getrf/getri, or cuBLAS/cuSOLVER on CUDA).

    Returns (X, pivot_info): pivot_info[i] > 0 is the 1-based column of the first
    zero pivot of A[i] (exactly singular), 0 otherwise.
    """
    return torch.linalg.inv_ex(A)


def mlp_initializer(a: torch.Tensor, center: torch.Tensor, inv_radius: float, weights: list[torch.Tensor],
                    biases: list[torch.Tensor], skip: torch.Tensor | None = None) -> torch.Tensor:
    """The learned initializer's forward pass on flattened matrices a (b, n*n).

    u = (a - vec(A0)) / radius, the paper's normalised perturbation (Ji, Wu & Xi 2025);
    h = ReLU(W_i h + b_i) for every layer but the last; out = W_last h + b_last (+ skip u).
    A skip matrix S = -radius (B kron B^T) with vec(B) in b_last gives the "Taylor + correction"
    head: out = B - B (A - A0) B + MLP(u), B = A0^-1.
    """
    u = (a - center) * inv_radius
    h = u
    for weight, bias in zip(weights[:-1], biases[:-1]):
        h = torch.relu(torch.addmm(bias, h, weight.T))
    out = torch.addmm(biases[-1], h, weights[-1].T)
    if skip is not None:
        out = torch.addmm(out, u, skip.T)
    return out


def newton_schulz_refine(A: torch.Tensor, X0: torch.Tensor, rules: NewtonSchulzRules):
    """Refine X0 by Newton–Schulz steps (:func:`newton_schulz_step`) until each matrix stops by
    :meth:`neuinv.rules.NewtonSchulzRules.stop`; matrices that stop are set aside
    and the rest go on. Returns (X, r, done, steps) with r the residual of the returned X."""
    b = A.shape[0]
    X = torch.empty_like(A)
    residual = torch.empty(b, dtype=A.real.dtype if A.is_complex() else A.dtype, device=A.device)
    done_mask = torch.zeros(b, dtype=torch.bool, device=A.device)
    steps = torch.zeros(b, dtype=torch.int32, device=A.device)

    active = torch.arange(b, device=A.device)
    A_act, X_act = A, X0
    previous = torch.full_like(residual, float("inf"))
    for k in range(rules.max_iter + 1):
        X_next, r, by_tol = newton_schulz_step(A_act, X_act, rules.tol, rules.accept)
        stop, done = rules.stop(r, previous, by_tol, k)
        if bool(stop.any()):
            finished = active[stop]
            X[finished] = X_act[stop]
            residual[finished] = r[stop]
            done_mask[finished] = done[stop]
            steps[finished] = k
            keep = ~stop
            active, A_act, X_act, previous = active[keep], A_act[keep], X_next[keep], r[keep]
        else:
            X_act, previous = X_next, r
        if active.numel() == 0:
            break
    return X, residual, done_mask, steps


def cholesky_inverse(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A^-1 = L^-H L^-1 from the Cholesky factor A = L L^H (LAPACK potrf/potri; Higham, *Accuracy and
    Stability*, §10.1 and §14.2), reading only A's lower triangle (A symmetric, or Hermitian for complex).

    Returns (X, accepted): accepted[i] is False where the factorisation of A[i] met a pivot that is not positive
    and finite (:func:`neuinv.rules.cholesky_pivot_accepted`; X[i] is then meaningless).
    """
    L, info = torch.linalg.cholesky_ex(A)
    accepted = (info == 0) & cholesky_pivot_accepted(torch.diagonal(L, dim1=-2, dim2=-1).real).all(dim=-1)
    L = torch.where(accepted[:, None, None], L, torch.eye(A.shape[-1], dtype=A.dtype, device=A.device))
    return torch.cholesky_inverse(L), accepted


def inverse_and_error_bound(A: torch.Tensor, positive_definite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact path: (X, error_bound) by :func:`exact_inverse` (or :func:`cholesky_inverse` when
    ``positive_definite``) and :func:`neuinv.certificate.error_bound` of the full A, the bound +inf where A has a
    zero pivot (a Cholesky pivot that is not positive and finite)."""
    if positive_definite:
        X, accepted = cholesky_inverse(A)
    else:
        X, pivot_info = exact_inverse(A)
        accepted = pivot_info == 0
    bound = certificate.error_bound(A, X)
    return X, torch.where(accepted, bound, torch.full_like(bound, float("inf")))


def invert(A: torch.Tensor, X0: torch.Tensor | None, use_guess: torch.Tensor | None, refine: bool,
           rules: NewtonSchulzRules, max_error: float, positive_definite: bool = False):
    """The whole verified inversion of a flat batch (b, n, n), the specification of the operator
    ``neuinv::invert`` (every backend implements this; see :mod:`neuinv.rules`).

    positive_definite: the exact path is Cholesky (:func:`cholesky_inverse`, A's lower triangle) instead of LU; a
    matrix whose factorisation fails is not certified (no LU fallback). Newton–Schulz, the certificate (of the full
    A) and the verdict are the same.

    refine False: every matrix takes the exact path (:func:`inverse_and_error_bound`). refine True: Newton–Schulz
    from X0 where ``use_guess`` (None: everywhere) with the guard, or from :func:`scaled_transpose_guess` without
    it when X0 is None; a result that stops done is certified (:func:`neuinv.certificate.error_bound`) and kept if
    that is <= max_error; every other matrix takes the exact path. X is NaN wherever the bound exceeds max_error.

    Returns (X, certified, error_bound, iterations, fallback): bool, float64, int32 and bool of length b.
    """
    b = A.shape[0]
    iterations = torch.zeros(b, dtype=torch.int32, device=A.device)
    fallback = torch.zeros(b, dtype=torch.bool, device=A.device)
    X = torch.empty_like(A)
    bound = torch.full((b,), float("inf"), dtype=torch.float64, device=A.device)
    exact_path = torch.ones(b, dtype=torch.bool, device=A.device)
    if refine and b:
        refined = (torch.ones_like(exact_path) if use_guess is None else use_guess).nonzero().squeeze(1)
        A_r = A[refined]
        if X0 is None:
            X0_r, ns_rules = scaled_transpose_guess(A_r), rules._replace(guarded=False)
        else:
            X0_r, ns_rules = X0[refined], rules._replace(guarded=True)
        X_r, _r, done, steps = newton_schulz_refine(A_r, X0_r, ns_rules)
        bound_r = torch.full_like(bound[refined], float("inf"))
        if bool(done.any()):
            bound_r[done] = certificate.error_bound(A_r[done], X_r[done])
        X[refined] = X_r
        bound[refined] = bound_r
        iterations[refined] = steps
        exact_path[refined] = ~certified(bound_r, max_error)
    exact_idx = exact_path.nonzero().squeeze(1)
    if exact_idx.numel():
        X[exact_idx], bound[exact_idx] = inverse_and_error_bound(A[exact_idx], positive_definite)
        fallback[exact_idx] = True
    verdict = certified(bound, max_error)
    X[~verdict] = float("nan")
    return X, verdict, bound, iterations, fallback


def solve(A: torch.Tensor, B: torch.Tensor, R: torch.Tensor | None = None, inverse_bound: torch.Tensor | None = None,
          positive_definite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The solution of A X = B from a certified approximate inverse R, and its certificate (the operator
    ``neuinv::solve``): X_w = R B, then one step of iterative refinement X_w + R (B - A X_w), in float64
    (complex128), rounded to B's dtype (Higham, *Accuracy and Stability*, 2nd ed., §12.1); the bound
    :func:`neuinv.certificate.solve_error_bound` of the X returned. Without R: R and its bound are the exact path's
    (:func:`inverse_and_error_bound`, LU or, with ``positive_definite``, Cholesky), NaN where not certified, as
    :func:`invert` without refinement gives them.

    Args:
        A: (b, n, n); B: (b, n, k) (either may have 1 in place of b: broadcast to every system); R like A with
        ||R - A^-1||_F <= inverse_bound ||A^-1||_F; any floating or complex dtype (B's is X's). inverse_bound:
        (A's b,) float64, +inf where R is not certified. R and inverse_bound are given together or not at all.
    Returns:
        X (b, n, k) in B's dtype (Inf where the solution overflows it) and its error bound (b,) float64, +inf where
        nothing is certified.
    """
    if R is None and A.shape[-1] == 0:  # the empty matrix: its inverse is exact
        R, inverse_bound = A, torch.zeros(A.shape[0], dtype=torch.float64, device=A.device)
    elif R is None:
        R, inverse_bound = inverse_and_error_bound(A, positive_definite)
        R = torch.where(certified(inverse_bound, None)[:, None, None], R, torch.full_like(R, math.nan))
    b = B.shape[0] if A.shape[0] == 1 else A.shape[0]
    A, R, B = A.expand(b, *A.shape[1:]), R.expand(b, *R.shape[1:]), B.expand(b, *B.shape[1:])
    inverse_bound = inverse_bound.expand(b)
    wide = torch.complex128 if A.is_complex() else torch.float64
    A_w, B_w, R_w = A.to(wide), B.to(wide), R.to(wide)
    X_w = torch.bmm(R_w, B_w)
    X = (X_w + torch.bmm(R_w, torch.baddbmm(B_w, A_w, X_w, alpha=-1))).to(B.dtype)
    if not X.numel():  # nothing to certify but A's non-singularity, which R's bound carries
        usable = (inverse_bound >= 0) & (inverse_bound < 1)
        return X, torch.where(usable, 0.0, math.inf).to(torch.float64)
    return X, certificate.solve_error_bound(A, B, X, R, inverse_bound)


def positive_definite_solve(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The solution of A X = B for real symmetric positive-definite A without an inverse (``batched_solve`` with
    ``assume_a="pos"``, the specification of the compiled solve's route without R): A = L L^T from A's lower
    triangle in float64, W = L^-T L^-1 B refined once with the full A, W + L^-T L^-1 (B - A W) (Higham, *Accuracy
    and Stability*, 2nd ed., §12.1), X = W rounded to B's dtype, certified by
    :func:`neuinv.certificate.positive_definite_solve_error_bound` with mu from :func:`smallest_eigenvalue_estimate`.

    Args:
        A: (b, n, n), B: (b, n, k), either with 1 in place of b (broadcast); float16, bfloat16, float32 or float64.
    Returns:
        X (b, n, k) in B's dtype and its error bound (b,) float64, +inf where not certified (the factorisation
        failed, or no shift proved A non-singular: :func:`solve` from the Cholesky inverse may still certify it).
    """
    b = B.shape[0] if A.shape[0] == 1 else A.shape[0]
    A, B = A.expand(b, *A.shape[1:]), B.expand(b, *B.shape[1:])
    A_w, B_w = A.to(torch.float64), B.to(torch.float64)
    L, info = torch.linalg.cholesky_ex(A_w)
    accepted = (info == 0) & cholesky_pivot_accepted(torch.diagonal(L, dim1=-2, dim2=-1)).all(dim=-1)
    L = torch.where(accepted[:, None, None], L, torch.eye(A.shape[-1], dtype=L.dtype, device=L.device))
    W = torch.cholesky_solve(B_w, L)
    W = W + torch.cholesky_solve(torch.baddbmm(B_w, A_w, W, alpha=-1), L)
    X = W.to(B.dtype)
    bound = certificate.positive_definite_solve_error_bound(A, B, X, W, smallest_eigenvalue_estimate(L))
    return X, torch.where(accepted, bound, torch.full_like(bound, math.inf))


def smallest_eigenvalue_estimate(L: torch.Tensor) -> torch.Tensor:
    """mu (b,) float64 >= lambda_min(L L^T) (an estimate, close where inverse iteration converges): two steps of
    inverse iteration, w = (L L^T)^-1 v with the factor L (b, n, n), mu = 1 / ||w||_2 after the second (Golub & Van
    Loan, *Matrix Computations*, 4th ed., §8.2.2), from v_i = 2 + ((7919 i mod 13) - 6) / 6 normalised: mostly
    smooth, with a part that no structured matrix's eigenvector is orthogonal to ((1, ..., 1) alone is an
    eigenvector of equicorrelation matrices (1 - rho) I + rho 1 1^T, whose smallest eigenvalue it never finds)."""
    n = L.shape[-1]
    v = 2 + ((torch.arange(n, dtype=torch.float64, device=L.device) * 7919) % 13 - 6) / 6
    v = (v / torch.linalg.vector_norm(v)).expand(L.shape[0], n)[:, :, None].to(L.dtype)
    w = torch.cholesky_solve(v, L)
    w = torch.cholesky_solve(w / _length(w)[:, None, None], L)
    return 1 / _length(w)


def _length(w: torch.Tensor) -> torch.Tensor:
    """||w||_2 of each (n, 1) vector of float64 w, taken of w / p, p = 2^floor(log2 max |w_i|) (1 where that is 0
    or subnormal): no square underflows or overflows, and w 2^k gives exactly 2^k times the length."""
    largest = w.abs().amax(dim=(-2, -1))
    p = torch.where(largest >= torch.finfo(w.dtype).smallest_normal,
                    torch.ldexp(torch.ones_like(largest), torch.frexp(largest).exponent - 1), torch.ones_like(largest))
    return p * torch.linalg.vector_norm(w / p[:, None, None], dim=(-2, -1))


def equilibrated_inverse(A: torch.Tensor, positive_definite: bool = False):
    """(A', R', p, q, accepted) for (b, n, n) A: A' = 2^p A 2^q exactly in float64 (complex128), the power-of-two
    scaling of :func:`neuinv.certificate.equilibration_exponents` (symmetric where ``positive_definite``), and
    R' = A'^-1 by LU with partial pivoting (Cholesky where ``positive_definite``); accepted (b,) is False where the
    factorisation failed. A^-1 = 2^q R' 2^p, which may overflow where R' does not."""
    wide = torch.complex128 if A.is_complex() else torch.float64
    p, q = certificate.equilibration_exponents(A, symmetric=positive_definite)
    A_s, _ = certificate.exactly_scaled(A, p[:, :, None] + q[:, None, :])
    A_s = A_s.to(wide)
    if positive_definite:
        R_s, accepted = cholesky_inverse(A_s)
    else:
        R_s, pivot_info = torch.linalg.inv_ex(A_s)
        accepted = pivot_info == 0
    return A_s, R_s, p, q, accepted


def scaled_right_hand_sides(B: torch.Tensor, p: torch.Tensor, wide: torch.dtype):
    """(B', f, exact) for (b, n, k) B and the row exponents p of :func:`equilibrated_inverse`: B' = 2^p B 2^-f in
    ``wide``, f (b,) the exponent of the largest entry of 2^p B, so that B' lies in [1/2, 1) at most; exact (b,)
    False where the scaling was not exact (an entry of 2^p B underflowed: B' is then not B's image)."""
    f = certificate.frexp_exponent(certificate.power_of_two_scaled(B.abs().to(torch.float64), p[:, :, None])
                                   .amax(dim=(-2, -1)))
    B_s, exact = certificate.exactly_scaled(B, p[:, :, None] - f[:, None, None])
    return B_s.to(wide), f, exact


def scaled_exact_inverse(A: torch.Tensor, positive_definite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The second stage's exact path: (X, error_bound) for (b, n, n) A, X = 2^q A'^-1 2^p in A's dtype from
    :func:`equilibrated_inverse` of diag(A, I) (:func:`neuinv.certificate.padded_with_identity`: the same rounding
    wherever a matrix sits in the batch), certified by :func:`neuinv.certificate.scaled_error_bound` or, where smaller,
    :func:`neuinv.certificate.error_bound` (the product form, tight for a single-precision X) (+inf where the
    factorisation fails or X overflows A's dtype)."""
    n = A.shape[-1]
    _, X_s, p, q, accepted = equilibrated_inverse(certificate.padded_with_identity(A), positive_definite)
    X = certificate.power_of_two_scaled(X_s, q[:, :, None] + p[:, None, :])[:, :n, :n].to(A.dtype)
    bound, product = certificate.scaled_error_bound(A, X), certificate.error_bound(A, X)
    bound = torch.where(product < bound, product, bound)
    return X, torch.where(accepted, bound, torch.full_like(bound, float("inf")))


def scaled_solve(A: torch.Tensor, B: torch.Tensor, positive_definite: bool = False):
    """The second stage of a solve: (X, error_bound) for A (b, n, n) and B (b, n, k): A', R' = A'^-1
    (:func:`equilibrated_inverse`) and B' = 2^p B 2^-f (:func:`scaled_right_hand_sides`), X' = R' B' refined once,
    X' <- X' + R' (B' - A' X'), and X = 2^q X' 2^f in A's dtype, certified by
    :func:`neuinv.certificate.scaled_solve_error_bound`. R' never overflows where only A^-1 would. It all runs on
    diag(A, I) and B padded with zero rows (:func:`neuinv.certificate.padded_with_identity`), whose solution is X with
    zero rows exactly: the same rounding wherever a system sits in the batch; the certificate is taken of the A blocks."""
    n = A.shape[-1]
    A_p = certificate.padded_with_identity(A)
    B_p = torch.nn.functional.pad(B, (0, 0, 0, A_p.shape[-1] - n))
    A_s, R_s, p, q, accepted = equilibrated_inverse(A_p, positive_definite)
    B_s, f, exact_B = scaled_right_hand_sides(B_p, p, A_s.dtype)
    X_s = torch.bmm(R_s, B_s)
    X_s = X_s + torch.bmm(R_s, torch.baddbmm(B_s, A_s, X_s, alpha=-1))
    # the A blocks (diag(A, I)'s factorisation never mixes the blocks: A_s, R_s and p, q there are those of A alone)
    A_s, R_s, B_s, X_s, q = A_s[:, :n, :n], R_s[:, :n, :n], B_s[:, :n], X_s[:, :n], q[:, :n]
    X = certificate.power_of_two_scaled(X_s, q[:, :, None] + f[:, None, None]).to(A.dtype)
    bound = certificate.scaled_solve_error_bound(A_s, B_s, X, R_s, q, f)
    read_exactly = ~certificate.has_subnormal(A) & ~certificate.has_subnormal(B)  # a DAZ thread may read them as 0
    return X, torch.where(accepted & read_exactly & exact_B, bound, torch.full_like(bound, float("inf")))
