"""The rules of a verified inversion, in one place: the readable specification that every backend follows.

The compiled kernels carry the same rules in ``csrc/neuinv_rules.h`` (``__host__ __device__`` functions
shared by the CPU and CUDA code, one ``NewtonSchulzRules`` struct); the Triton kernels take these constants.
``tests/test_conformance.py`` runs one scenario table through every backend against them.

Per matrix A, with an initial guess X0 (a warm start, a learned guess or the scaled transpose):

1. Newton–Schulz (Hotelling 1943; Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §14.5):
   X <- X + X (I - A X), so that R = I - A X is squared each step. At each step k = 0, 1, ... the residual
   r = ||fl(I - A X)||_F of the current X decides (:meth:`NewtonSchulzRules.stop`):

   - done: r <= min(tol ||A||_F ||X||_F, accept) (:func:`converged`, a backward-error test;
     ``torch.linalg.inv`` lands at about eps ||A||_F ||X||_F), or at the rounding floor with r <= accept;
   - the rounding floor: the quadratic phase is over (r_prev < ``FLOOR_START``) but r > r_prev ``FLOOR_RATIO``;
   - stop when done, at the floor, when r is not finite, at step 0 when the guess is guarded (it came from
     ``init`` or a model) and r >= ``GUARD_RESIDUAL``, or at ``max_iter``.

   ||A||_F ||X||_F is evaluated as ||A / m||_F ||m X||_F, m = max |a_ij| (:func:`neuinv.reference.norm_product`).
2. A matrix that stopped done gets the certificate of :mod:`neuinv.certificate`; if it is not certified
   (:func:`certified`) -- or the matrix stopped without being done, or never had a guess -- it takes the exact
   path (Gauss–Jordan or LU with partial pivoting; with ``positive_definite``, Cholesky A = L L^H and the
   inverse from the factor, :func:`cholesky_pivot_accepted`) and that result's certificate.
3. ``certified`` = error_bound <= max_error; X is NaN wherever it is not.

The exact path of the compiled per-matrix kernel (``csrc/kernels/per_matrix.h``: the ``cpp`` backend, and
``cuda`` for n <= 8) computes X_w in double precision for every input dtype (Gauss–Jordan with partial pivoting;
Cholesky with ``positive_definite``; the adjugate closed form for float32 n = 2–4, redone by Gauss–Jordan where
it is not certified to float32 accuracy), takes one Newton–Schulz step in double for float64 input whose residual
lies above eps ||A||_F ||X_w||_F and below 1/2, certifies X_w (for float64 input by the split residual where the
bound would exceed :data:`neuinv.certificate.TIGHT_THRESHOLD`) and rounds it to A's dtype, the rounding added to
the bound (:func:`neuinv.certificate.error_bound` with ``rounded_to``). The Triton kernel follows the same
contract without the closed forms (its float64 residuals re-evaluated by Dot2 above DOT2_THRESHOLD); the other exact paths are in the documentation's backends page. Each backend
certifies exactly the X it returns.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

GUARD_RESIDUAL = 0.5
"""Initial guesses (init or model) with ||I - A X0||_F >= this take the exact path: r0 < 1 guarantees
quadratic convergence (||.||_F >= ||.||_2), and 0.5 leaves a margin for the rounding of r0 itself."""

FLOOR_START = 0.5
"""The quadratic phase is under way once the previous residual is below this."""

FLOOR_RATIO = 0.5
"""In the quadratic phase a step that leaves r above r_prev * FLOOR_RATIO has reached the rounding floor."""

NEWTON_SCHULZ_ACCEPT = {torch.float32: 1e-3, torch.complex64: 1e-3,
                        torch.float64: 1e-6, torch.complex128: 1e-6}
"""Largest computed residual ||I - A X||_F at which a Newton–Schulz result is kept (and then certified);
a matrix whose iteration stalls above it takes the exact path instead, per dtype."""

MAX_ITER_FROM_GUESS = 10
"""Default max_iter with init or model: from r0 < 0.5, six steps reach 0.5**64 ~ 5e-20."""

MAX_ITER_FROM_SCALED_TRANSPOSE = 64
"""Default max_iter from the scaled transpose: enough for cond(A) up to about 1e9."""

MAX_ITERATIONS = 10000
"""Largest max_iter a call may ask for (csrc/neuinv_checks.h: kMaxIterations)."""

CERTIFIED_BELOW = 1.0
"""Without ``max_error`` a matrix is certified when its error bound is below 1 (at least one correct digit);
the bounds are below 1 or +inf (:func:`neuinv.certificate.certified_or_inf`), so max_error = 1 says the same."""


def default_tol(dtype: torch.dtype) -> float:
    """Default Newton–Schulz stopping tolerance on ||I - A X||_F / (||A||_F ||X||_F): eps(dtype) / 2.

    LU lands at about 0.2-1 eps ||A||_F ||X||_F; a matrix whose rounding floor lies above this tolerance stops by
    the floor test instead (one more step), so the result is as accurate as LU's.

    Args:
        dtype: the dtype the iteration runs in (float32, float64, complex64 or complex128).

    Returns:
        float: eps(dtype) / 2, e.g. 2**-53 for float64.

    Examples:
        >>> neuinv.default_tol(torch.float64) == 2.0 ** -53
        True
    """
    return torch.finfo(dtype).eps / 2


class NewtonSchulzRules(NamedTuple):
    """The parameters of the Newton–Schulz loop (the C++/CUDA struct of the same name has the same fields).

    tol: stopping tolerance on r / (||A||_F ||X||_F); accept: largest r a result may stop at (per dtype,
    ``NEWTON_SCHULZ_ACCEPT``); max_iter: most steps; guarded: whether step 0 applies the guard (the guess came
    from init or a model); guard: ``GUARD_RESIDUAL``."""

    tol: float
    accept: float
    max_iter: int
    guarded: bool
    guard: float = GUARD_RESIDUAL

    def stop(self, r: torch.Tensor, previous: torch.Tensor, converged: torch.Tensor,
             step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(stop, done) for the current X of each matrix at step `step`, from its residual r, the previous
        step's residual (+inf at step 0) and the tolerance test :func:`converged`."""
        at_floor = (previous < FLOOR_START) & (r > previous * FLOOR_RATIO)
        done = converged | (at_floor & (r <= self.accept))
        stop = done | at_floor | ~torch.isfinite(r)
        if step == 0 and self.guarded:
            stop = stop | (r >= self.guard)
        if step == self.max_iter:
            stop = torch.ones_like(stop)
        return stop, done


_rules_cache: dict = {}


def newton_schulz_rules(dtype: torch.dtype, tol, max_iter, has_guess: bool) -> NewtonSchulzRules:
    """The Newton–Schulz parameters for a call (defaults filled in), built once per distinct set of arguments."""
    key = (dtype, tol, max_iter, has_guess)
    rules = _rules_cache.get(key)
    if rules is None:
        rules = _rules_cache[key] = NewtonSchulzRules(
            tol=default_tol(dtype) if tol is None else float(tol),
            accept=NEWTON_SCHULZ_ACCEPT[dtype],
            max_iter=max_iter if max_iter is not None else (
                MAX_ITER_FROM_GUESS if has_guess else MAX_ITER_FROM_SCALED_TRANSPOSE),
            guarded=has_guess,
            guard=GUARD_RESIDUAL,
        )
    return rules


def converged(r: torch.Tensor, norm_product: torch.Tensor, tol: float, accept: float) -> torch.Tensor:
    """The tolerance test r <= min(tol ||A||_F ||X||_F, accept), given ||A||_F ||X||_F."""
    return r <= torch.clamp(tol * norm_product, max=accept)


def certified(error_bound: torch.Tensor, max_error: float | None) -> torch.Tensor:
    """The rule for ``info.certified``: error_bound <= max_error (``CERTIFIED_BELOW`` when None)."""
    return error_bound <= (CERTIFIED_BELOW if max_error is None else max_error)


def cholesky_pivot_accepted(pivot: torch.Tensor) -> torch.Tensor:
    """The rule of the positive-definite exact path: Cholesky A = L L^H (LAPACK potrf, Golub & Van Loan,
    *Matrix Computations*, 4th ed., Alg. 4.2.1) goes on only while each pivot d_k = a_kk - sum_j |l_kj|^2 is
    positive and finite (l_kk = sqrt(d_k)). A matrix that meets any other pivot is not certified: error_bound
    +inf, X NaN, no general-path fallback. The certificate of a factor that passes is taken of the full A, so a
    non-symmetric A passed as positive definite (whose upper triangle the factorisation never reads) is
    certified only where X truly inverts it."""
    return (pivot > 0) & torch.isfinite(pivot)


POSITIVE_DEFINITE_SOLVE_WITHOUT_INVERSE_ABOVE = 8
"""Positive-definite solves without R take the route without an inverse (:func:`neuinv.reference.positive_definite_solve`)
for n above this; at n <= 8 the compiled kernels solve from the Cholesky inverse in SIMD packs of systems, where the
inverse's 2n^3 flops cost about what the route without it costs, and keeping one route there keeps the kernels'
compile time."""

POSITIVE_DEFINITE_SHIFTS = (0.75, 0.25, 2.0 ** -5)
"""The shifts sigma = s mu tried in turn, s from this tuple, by the certificate of a positive-definite solve without
an inverse (:func:`neuinv.certificate.positive_definite_solve_error_bound`): mu estimates A's smallest eigenvalue
from above (two steps of inverse iteration with A's Cholesky factor), and the first Cholesky of S - sigma I that
succeeds with a margin proves lambda_min(S) >= sigma minus that margin. A shift above lambda_min fails and the next,
smaller one is tried; a system that no shift certifies is solved from the Cholesky inverse instead."""


SCALED_SECOND_STAGE_ABOVE = {torch.float32: 2.0 ** -12, torch.complex64: 2.0 ** -12,
                             torch.float64: 2.0 ** -20, torch.complex128: 2.0 ** -20}
"""A matrix whose exact-path certificate (a system whose certificate) is above this (a badly scaled one's on the torch
path: above BADLY_SCALED_SECOND_STAGE_ABOVE), or refused -- by +inf or by the caller's ``max_error`` --, while its
input is finite, takes the second stage
(:func:`second_stage_mask`): the exact path on the power-of-two equilibrated matrix, certified componentwise
(:func:`neuinv.reference.scaled_exact_inverse`, :func:`neuinv.reference.scaled_solve`), and
keeps whichever result has the smaller bound. Badly scaled and graded matrices, which the normwise certificate
refuses or bounds loosely, are certified there close to their true error. The stage runs in torch operations, about
ten times a matrix product's work per matrix: the threshold keeps it to bounds that say little (moderately
ill-conditioned float64 matrices, bounded near cond · eps, never pay for it), and Newton–Schulz results keep their
own honest bound (pass ``max_error`` to send them to the exact path)."""


BADLY_SCALED_SECOND_STAGE_ABOVE = {torch.float32: 2.0 ** -17, torch.complex64: 2.0 ** -17,
                                   torch.float64: 2.0 ** -40, torch.complex128: 2.0 ** -40}
"""The second stage's threshold for a badly scaled matrix (:func:`badly_scaled`) on the torch path (backend "torch";
complex input). Its normwise bound measures the scaling rather than the error (D C D with D spanning 10^+-3 and
cond(C) = 10: bounds of 1e-7 for true errors of 1e-16), so the equilibrated stage, which certifies it as C is, runs
from the bounds that the compiled float64 kernels re-evaluate (``certificate.TIGHT_THRESHOLD`` = 2^-40; 64 eps for
float32 and complex64) instead of SCALED_SECOND_STAGE_ABOVE. Deciding reads the diagonals of the matrices above it,
and the rows and columns of those whose diagonal spreads: a few percent of the torch path's own time, but 1.2-1.7x
the compiled kernels' at n = 4 (about 75 ns per matrix), which therefore keep SCALED_SECOND_STAGE_ABOVE."""

BADLY_SCALED_SPREAD = 2.0 ** 10
"""The spread of its rows' or columns' largest magnitudes over which a matrix is badly scaled (:func:`badly_scaled`);
its diagonal, which a graded D C D holds with the spread of D twice over, must spread over the square of it."""


def spreads(magnitude: torch.Tensor, factor: float) -> torch.Tensor:
    """(b,) bool of (b, m) non-negative magnitudes: max > factor * min (False where NaN)."""
    return magnitude.amax(dim=-1) > factor * magnitude.amin(dim=-1)


def badly_scaled(A: torch.Tensor) -> torch.Tensor:
    """(b,) bool of (b, n, n) A: its rows' largest magnitudes, or its columns', spread over more than
    BADLY_SCALED_SPREAD (the spread that LAPACK xGEEQUB's power-of-two equilibration removes), and the magnitudes of
    its diagonal over more than its square. The diagonal (n entries) is read for every matrix above the lower
    threshold (:func:`neuinv.pipeline.second_stage_index`), the rows and columns only where it spreads; they keep a
    tiny or zero diagonal entry of an evenly scaled matrix (saddle-point and KKT blocks) from sending it to a stage
    that cannot tighten its bound. A graded D C D passes both; a row permutation of it, whose diagonal no longer
    spreads, is not caught."""
    magnitude = A.abs()
    rows, columns = magnitude.amax(dim=-1), magnitude.amax(dim=-2)
    return (spreads(torch.diagonal(magnitude, dim1=-2, dim2=-1), BADLY_SCALED_SPREAD ** 2)
            & (spreads(rows, BADLY_SCALED_SPREAD) | spreads(columns, BADLY_SCALED_SPREAD)))


def second_stage_threshold(dtype: torch.dtype, torch_path: bool) -> float:
    """The smallest bound that can take the second stage: BADLY_SCALED_SECOND_STAGE_ABOVE on the torch path,
    SCALED_SECOND_STAGE_ABOVE on the compiled kernels."""
    return (BADLY_SCALED_SECOND_STAGE_ABOVE if torch_path else SCALED_SECOND_STAGE_ABOVE)[dtype]


def second_stage_mask(error_bound: torch.Tensor, dtype: torch.dtype, A: torch.Tensor, torch_path: bool) -> torch.Tensor:
    """Which matrices (systems) take the second stage: error_bound > SCALED_SECOND_STAGE_ABOVE[dtype], or, where the
    first stage ran on the torch path, error_bound > BADLY_SCALED_SECOND_STAGE_ABOVE[dtype] where the matrix A
    (b, n, n) is :func:`badly_scaled` (the callers keep the exact path's results and drop inputs that are not
    finite, :func:`neuinv.pipeline.second_stage_index`)."""
    mask = error_bound > SCALED_SECOND_STAGE_ABOVE[dtype]
    if not torch_path:
        return mask
    return mask | ((error_bound > BADLY_SCALED_SECOND_STAGE_ABOVE[dtype]) & badly_scaled(A))
