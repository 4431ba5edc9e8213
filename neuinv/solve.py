"""``batched_solve``: verified solutions of A X = B, a drop-in for ``torch.linalg.solve``.

How each system is solved
-------------------------
1. R = the certified inverse of A (:func:`neuinv.batched_inverse_ex`: same rules, backends, warm start ``init``
   and ``assume_a``), once per matrix of A's own batch, whatever B broadcasts it to.
2. X = R B, then one step of iterative refinement X <- X + R (B - A X), all in float64 (complex128) (Higham,
   *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §12.1: with a fixed approximate inverse each step
   multiplies the error by about ||I - R A||, so one step takes X to working precision wherever R's error is
   small), rounded to A's dtype. Steps 2 and 3 are :func:`neuinv.reference.solve`; the backend runs them
   (``cpp``, and ``cuda`` for n <= 8: the compiled operator ``neuinv::solve``, one pass per system, for float32
   and float64). Where R is not returned (:func:`batched_solve`, and :func:`batched_solve_ex` without
   ``return_inverse``, outside autograd, torch.func and torch.compile) and every matrix takes the exact path,
   step 1 runs in the same pass: each system's R is the exact path's inverse, without the inverse's own second
   stage.
3. The certificate of the X returned (:func:`neuinv.certificate.solve_error_bound`): with r = B - A X and
   eps = R's certified bound, ||X - A^-1 B||_F <= ||R r||_F + eps / (1 - eps) ||R||_F ||r||_F, evaluated with its
   own rounding accounted for; relative to ||A^-1 B||_F as e / (||X||_F - e). X is NaN wherever the bound is
   above ``max_error`` (default: 1 or more, i.e. not one digit certified) or R is not certified.
4. Systems whose bound is refused or loose take the scale-aware second stage (:func:`_second_stage`) and keep
   whichever solution has the smaller bound.

float16 / bfloat16 input is solved in float32 and rounded; the certificate is of the rounded X (so it includes
that rounding, and an X that overflows is not certified).

``left=False`` solves X A = B as torch does, by the transposed system A^T X^T = B^T (the Frobenius norm, and so
every certificate, is the same for a matrix and its transpose).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import reference
from .arguments import (COMPUTE_DTYPE, CallOptions, check_arguments, check_flag, check_out, refuse_out_with_transforms,
                        resolved, written)
from .errors import ArgumentDtypeError, ArgumentValueError
from .failures import raise_if_not_certified
from .backends import resolve_backend
from .pipeline import INFO_DTYPES, all_below_second_stage, flat_batch_vmap, invert, second_stage_index
from .rules import CERTIFIED_BELOW, certified
from .transforms import transformed


class SolveInfo(NamedTuple):
    """Per-system report of :func:`batched_solve_ex`.

    certified: use this X: its error_bound is at most ``max_error`` (default: below 1). X is NaN where False.
        Shape: the broadcast batch shape of A and B.
    error_bound: float64 upper bound on ||X - A^-1 B||_F / ||A^-1 B||_F (the columns of a system together),
        rigorous (:func:`neuinv.certificate.solve_error_bound`); +inf where nothing is certified. Broadcast shape.
    iterations: Newton–Schulz steps of A's inverse; A's batch shape (0 where the inverse came from the exact
        path).
    fallback: A's inverse came from the exact path; A's batch shape.
    inverse: R, the certified inverse of A used (A's shape and dtype; NaN where not certified), with
        ``return_inverse=True`` and in calls that autograd, a torch.func transform or torch.compile records (which
        keep R for the derivatives): pass it as ``init`` of the next call for a warm start. None otherwise (the
        solve then need not form it).
    """

    certified: torch.Tensor
    error_bound: torch.Tensor
    iterations: torch.Tensor
    fallback: torch.Tensor
    inverse: torch.Tensor | None


class SolveResult(NamedTuple):
    """What :func:`batched_solve_ex` returns: ``X, info = batched_solve_ex(A, B)`` unpacks it, and its fields have
    the names of ``torch.linalg.solve_ex``'s result, ``.result`` (X) and ``.info``. Unlike torch's ``info`` (an
    int32 tensor of A's batch shape, 0 where A could be factorised), ``info`` is the :class:`SolveInfo` of the
    call: torch's ``info == 0`` is ``info.certified`` (of the broadcast batch shape)."""

    result: torch.Tensor
    info: SolveInfo


def batched_solve(A: torch.Tensor, B: torch.Tensor, *, left: bool = True, init=None, tol=None, max_iter=None,
                  max_error=None, method: str = "auto", assume_a: str = "gen", backend: str = "auto",
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """X with A X = B (X A = B with ``left=False``) for each system, every one certified; a drop-in for
    ``torch.linalg.solve``.

    Without ``max_error`` a solution counts as certified when its ``error_bound`` is below 1, i.e. at least one
    correct digit; pass ``max_error`` (e.g. 1e-6) to demand more. :func:`batched_solve_ex` returns the bounds.

    Args:
        A: (*, n, n) float32, float64, complex64, complex128, float16 or bfloat16 tensor, CPU or CUDA; never
            modified.
        B: (*, n) or (*, n, k) of A's dtype and device ((*, k, n) with ``left=False``), broadcast as
            ``torch.linalg.solve`` does; never modified.
        left: True (default): solve A X = B; False: X A = B.
        init: (*, n, n) approximate inverses of A (a warm start, e.g. a previous call's ``info.inverse``).
        tol: Newton–Schulz stopping tolerance for A's inverse; default eps(dtype) / 2.
        max_iter: most Newton–Schulz steps per matrix; default 10 with init, 64 otherwise.
        max_error: largest ``error_bound`` (relative error of X, Frobenius norm) accepted; default None: below 1.
        method: "auto" (default), "exact" or "newton_schulz", as in :func:`neuinv.batched_inverse_ex`.
        assume_a: "gen" (default) or "pos" (symmetric/Hermitian positive definite: Cholesky).
        backend: "auto" (default), "torch", "triton", "cpp" or "cuda".
        out: tensor of X's shape and A's dtype and device that receives X (and is returned).

    Returns:
        torch.Tensor: X, of the broadcast batch shape with B's trailing dimensions, A's dtype and device.

    Raises:
        ValueError: a system that is not certified holds NaN or Inf in A or B; the message names the first one.
        torch.linalg.LinAlgError: otherwise, a system is not certified; the message names the first one and why:
            A not positive definite (``assume_a="pos"``), singular or numerically singular (``error_bound``
            +inf), a solution that overflows A's dtype, a solution whose entries span more than the certificate
            scales exactly, subnormal entries the path cannot certify, or an ``error_bound`` above ``max_error``.
        TypeError: an argument that is not a tensor, or ``left`` that is not a bool.
        neuinv.ArgumentDtypeError: a dtype that is not supported or does not match A's.
        neuinv.ArgumentValueError: a bad or non-broadcasting shape, a device or option value, an ``out`` that
            overlaps an input (the full list: :func:`batched_solve_ex`).

    Examples:
        >>> A = torch.randn(1000, 8, 8, dtype=torch.float64) + 8 * torch.eye(8, dtype=torch.float64)
        >>> x = neuinv.batched_solve(A, torch.ones(1000, 8, dtype=torch.float64), max_error=1e-10)
        >>> torch.allclose((A @ x[..., None])[..., 0], torch.ones(1000, 8, dtype=torch.float64))
        True
    """
    B_matrix, vector = _right_hand_sides(A, B)
    options = CallOptions(None, tol, max_iter, max_error, method, assume_a, backend)
    _check_solve_arguments(A, B, B_matrix, vector, init, options, left)
    if out is not None:
        check_out(out, "out", _solution_shape(A, B_matrix, vector), A.dtype, A.device, A, B, init)
    X, _ = _solve(A, B_matrix, vector, init, options, raise_failures=True, out=out, left=left, x_only=True)
    return X


def batched_solve_ex(A: torch.Tensor, B: torch.Tensor, *, left: bool = True, init=None, tol=None, max_iter=None,
                     max_error=None, method: str = "auto", assume_a: str = "gen", backend: str = "auto",
                     check_errors: bool = False, return_inverse: bool = False,
                     out: tuple | None = None) -> SolveResult:
    """Solutions X of A X = B (X A = B with ``left=False``) and a :class:`SolveInfo`; never raises for singular
    input (unless ``check_errors``).

    Gradients (and torch.func transforms): dX = A^-1 (dB - dA X), so grad_B = A^-H G and grad_A = -grad_B X^H
    (summed over broadcast dimensions; transposed for ``left=False``); ``info.inverse`` is differentiable too
    (d(A^-1) = -A^-1 dA A^-1).

    Args:
        A: (*, n, n) float32, float64, complex64, complex128, float16 or bfloat16; never modified. Any strides,
            and views with the conjugate or negative bit set, read as their values (so also for B and init).
        B: (*, n) or (*, n, k) of A's dtype and device ((*, k, n) with ``left=False``), never modified. As
            ``torch.linalg.solve``: B is a batch of vectors when it is 1-D or has shape A.shape[:-1] (refused with
            ``left=False``, as by torch); otherwise of matrices. The batch dimensions of A and B broadcast; A's
            inverse is computed once per matrix of A.
        left: True (default): solve A X = B; False: X A = B.
        init: (*, n, n) approximate inverses of A (a warm start, e.g. the previous call's ``info.inverse``), for
            either ``left``.
        tol: as in :func:`neuinv.batched_inverse_ex` (for A's inverse).
        max_iter: most Newton–Schulz steps per matrix of A; default 10 with init, 64 otherwise
            ([The rules][neuinv.rules]).
        method: as in :func:`neuinv.batched_inverse_ex`.
        assume_a: as in :func:`neuinv.batched_inverse_ex`.
        backend: as in :func:`neuinv.batched_inverse_ex`.
        max_error: largest ``error_bound`` of a solution that counts as certified; default None: any bound
            below 1 (at least one correct digit) is accepted. A system whose first bound exceeds it is certified
            again by the scale-aware second stage before it counts as refused.
        check_errors: as torch's: raise where a system failed (here: is not certified), the error that
            :func:`batched_solve` raises, after nothing has been written to ``out``. Default False.
        return_inverse: also return A's certified inverse R as ``info.inverse`` (for a warm start of the next
            call). Default False: ``info.inverse`` is None, and without ``init`` each system is solved in one pass
            that does not form R as a result (as :func:`batched_solve` does).
        out: (X, info): X of the solution's shape and A's dtype and device; info a :class:`SolveInfo` of tensors
            of its fields' shapes and dtypes (bool, float64, int32, bool, A's), its ``inverse`` None unless
            ``return_inverse``. None may share memory (overlapping byte ranges, whatever storage holds them) with A,
            B, init or another output; not with gradients.

    Returns:
        SolveResult: ``(result, info)``, X of shape (broadcast batch, n) or (broadcast batch, n, k)
        ((broadcast batch, k, n) with ``left=False``), A's dtype, NaN where not certified, and the
        :class:`SolveInfo`.

    Raises:
        TypeError: A, B, init or an output is not a tensor, or ``left``, ``check_errors`` or ``return_inverse``
            is not a bool.
        neuinv.ArgumentDtypeError: (a ``TypeError`` and a ``RuntimeError``, torch's class) A's dtype is not
            one of the above, or B's, init's or an output's differs from what is expected.
        neuinv.ArgumentValueError: (a ``ValueError`` and a ``RuntimeError``) A not (*, n, n) or on the meta
            device, B of a shape incompatible with A or batch dimensions that do not broadcast, B, init or an
            output on another device, an output of the wrong shape or overlapping an input or another output, an
            ``out[1].inverse`` given without ``return_inverse`` (or missing with it), an option out of range.

    Examples:
        >>> A = torch.randn(1000, 8, 8, dtype=torch.float64) + 8 * torch.eye(8, dtype=torch.float64)
        >>> X, info = neuinv.batched_solve_ex(A, torch.randn(8, 3, dtype=torch.float64), max_error=1e-10)
        >>> X.shape, bool(info.certified.all())
        (torch.Size([1000, 8, 3]), True)
    """
    B_matrix, vector = _right_hand_sides(A, B)
    options = CallOptions(None, tol, max_iter, max_error, method, assume_a, backend)
    _check_solve_arguments(A, B, B_matrix, vector, init, options, left)
    check_flag(check_errors, "check_errors")
    check_flag(return_inverse, "return_inverse")
    if out is not None:
        _check_out_pair(out, A, B, B_matrix, vector, init, return_inverse)
    return _solve(A, B_matrix, vector, init, options, raise_failures=check_errors, out=out, left=left,
                  return_inverse=return_inverse)


def _solve(A, B, vector, init, options: CallOptions, raise_failures: bool, out, left: bool,
           x_only: bool = False, return_inverse: bool = False):
    """The solve on B (*, n, k) ((*, k, n) for left=False: A^T X^T = B^T, with init^T, and info.inverse
    transposed back to A's inverse), through :class:`_BatchedSolve` where autograd or a transform needs it (it
    keeps R for the derivatives, and returns it; torch.compile always traces it); the vector case squeezed back; the
    copy into out. ``x_only``
    (batched_solve, which returns X only): the info's fields may be None. Elsewhere info.inverse is None unless
    ``return_inverse``."""
    A, B, init = resolved(A), resolved(B), resolved(init)
    if not left:
        A, B, init = A.mT, B.mT, None if init is None else init.mT
    if transformed(A, B, init):
        refuse_out_with_transforms(out)
        X, *info = _solve_function().apply(A, B, init, options, raise_failures)
    else:  # (no tensor here records a graph)
        X, *info = _solve_detached(A, B, init, options, raise_failures, x_only, with_inverse=return_inverse)
        if not return_inverse:
            info[-1] = None
    if not left and info[-1] is not None:
        info[-1] = info[-1].mT
    if not left:
        X = X.mT
    if vector:
        X = X.squeeze(-1)
    if out is None:
        return SolveResult(X, SolveInfo(*info))
    return SolveResult(*written(out, X, SolveInfo(*info), SolveInfo))


def _solve_detached(A, B, init, options: CallOptions, raise_failures: bool, x_only: bool = False,
                    with_inverse: bool = True):
    """(X, certified, error_bound, iterations, fallback, R) for A (*a, n, n) and B (*b, n, k) (see the module
    docstring). Without ``with_inverse`` (R not returned), every matrix on the exact path (no init, method not
    "newton_schulz") and k > 0, the backend's solve computes each R in the same pass (:func:`neuinv.reference.solve`
    without R), without the inverse's own second stage (the solve's second stage takes its place; with k = 0 there
    is no solution to take it, and the inverse is computed first); R is then None, iterations 0 and fallback True
    (the exact path; False for n = 0, as the inversion reports it). With ``x_only`` (only X is returned) iterations, fallback and R may be None, and the certified
    mask and the bound are None where every system is certified."""
    compute = COMPUTE_DTYPE.get(A.dtype, A.dtype)
    A_compute = A if A.dtype == compute else A.to(compute)
    batch = broadcast_batch(A.shape[:-2], B.shape[:-2])
    n, k = A.shape[-1], B.shape[-1]
    b = batch.numel()

    def flat(M, rows, columns):
        """M's systems as a flat batch: (b, rows, columns), or (1, rows, columns) for one system broadcast to all
        (the backend broadcasts it without a copy)."""
        if M.dim() == 3 and M.shape[0] == b:
            return M
        return M.reshape(1, rows, columns) if M.shape[:-2].numel() == 1 else M.expand(*batch, rows, columns).reshape(
            b, rows, columns)

    backend = resolve_backend(options.backend, A_compute)
    positive_definite = options.assume_a == "pos"
    A_f, B_f = flat(A, n, n), flat(B, n, k)
    if not with_inverse and init is None and options.method != "newton_schulz" and k > 0:
        X, bound = backend.solve(A_f if A_compute is A else flat(A_compute, n, n), B_f,
                                 positive_definite=positive_definite)
        R = None
        iterations, fallback = (None, None) if x_only else (
            torch.zeros(A.shape[:-2], dtype=torch.int32, device=A.device),
            torch.full(A.shape[:-2], n > 0, dtype=torch.bool, device=A.device))  # (as the inversion reports n = 0)
    else:
        R, inverse_info = invert(A_compute, None if init is None else init.to(compute),
                                 options._replace(max_error=None))
        eps = (inverse_info.error_bound.reshape(1) if A_f.shape[0] == 1
               else inverse_info.error_bound.expand(batch).reshape(b))
        X, bound = backend.solve(A_f, B_f, flat(R, n, n), eps)
        iterations, fallback, R = inverse_info.iterations, inverse_info.fallback, R.to(A.dtype)
    torch_path = backend.name == "torch"
    limit = CERTIFIED_BELOW if options.max_error is None else float(options.max_error)
    if all_below_second_stage(bound, compute, limit, torch_path):
        if x_only:
            return X.reshape(*batch, n, k), None, None, None, None, None
        return X.reshape(*batch, n, k), bound.new_ones(batch, dtype=torch.bool), bound.reshape(batch), iterations, \
            fallback, R
    A_b, B_b = A_f.expand(b, n, n), B_f.expand(b, n, k)
    if X.numel():
        X, bound = _second_stage(A_b, B_b, X, bound, positive_definite, torch_path, limit)
    if R is None and X.numel():
        X, bound = _from_the_inverse_where_refused(A_b, B_b, X, bound, options)
    verdict = certified(bound, options.max_error)
    X = torch.where(verdict[:, None, None], X, torch.full_like(X, math.nan))
    X, verdict, bound = X.reshape(*batch, n, k), verdict.reshape(batch), bound.reshape(batch)
    if raise_failures:
        raise_if_not_certified("batched_solve", A.expand(*batch, n, n), verdict, bound, options.max_error,
                               options.assume_a, operands=(B.expand(*batch, n, k),))
    return X, verdict, bound, iterations, fallback, R


def _from_the_inverse_where_refused(A, B, X, bound, options: CallOptions):
    """The systems (flat A (b, n, n), B, X (b, n, k)) that the one pass without R and the solve's second stage left
    uncertified, solved again as batched_solve_ex solves them (:func:`_solve_detached` with the inverse first, its
    own second stage, the solve from it and that solve's second stage); kept where its bound is smaller. So
    batched_solve certifies every system batched_solve_ex certifies. (X, bound), the inputs themselves where every
    system is certified."""
    refused = ~certified(bound, options.max_error)
    if not bool(refused.any()):
        return X, bound
    index = refused.nonzero().squeeze(1)
    X_new, _, bound_new, *_ = _solve_detached(A[index], B[index], None, options, raise_failures=False)
    return _kept_where_tighter(X, bound, index, X_new, bound_new)


def _kept_where_tighter(X, bound, index, X_new, bound_new):
    """X and bound with the systems at `index` replaced by X_new and bound_new where bound_new is the smaller."""
    better = bound_new < bound[index]
    X_i = torch.where(better[:, None, None], X_new, X[index])
    return X.index_put((index,), X_i), bound.index_put((index,), torch.minimum(bound_new, bound[index]))


def _second_stage(A, B, X, bound, positive_definite, torch_path, limit):
    """The scale-aware second stage (:func:`neuinv.pipeline.second_stage_index`) for the systems (flat A (b, n, n),
    B, X (b, n, k)) whose first certificate is refused, above the threshold or above ``limit`` (the caller's
    max_error): the equilibrated solve (:func:`neuinv.reference.scaled_solve`), kept where its bound is smaller;
    (X, bound), the inputs themselves where no system took it. Under torch.compile the operator
    ``neuinv::second_stage_solve``."""
    if torch.compiler.is_compiling():
        return torch.ops.neuinv.second_stage_solve(A, B, X, bound, positive_definite, torch_path, limit)
    index = second_stage_index(bound, COMPUTE_DTYPE.get(A.dtype, A.dtype), A, B, torch_path=torch_path, limit=limit)
    if index is None:
        return X, bound
    X_new, bound_new = reference.scaled_solve(A[index], B[index], positive_definite)
    return _kept_where_tighter(X, bound, index, X_new, bound_new)


@torch.library.custom_op("neuinv::second_stage_solve", mutates_args=())
def _second_stage_solve_op(A: torch.Tensor, B: torch.Tensor, X: torch.Tensor, bound: torch.Tensor,
                           positive_definite: bool, torch_path: bool, limit: float) -> tuple[torch.Tensor, torch.Tensor]:
    X_out, bound_out = _second_stage(A, B, X, bound, positive_definite, torch_path, limit)
    return (X_out.clone() if X_out is X else X_out), (bound_out.clone() if bound_out is bound else bound_out)


@_second_stage_solve_op.register_fake
def _(A, B, X, bound, positive_definite, torch_path, limit):
    return torch.empty_like(X), torch.empty_like(bound)


@_second_stage_solve_op.register_vmap
def _(info, in_dims, *arguments):
    return flat_batch_vmap(_second_stage_solve_op, info, in_dims, arguments)


class _BatchedSolve(torch.autograd.Function):
    """The verified solve as a differentiable function of A and B: dX = R (dB - dA X) with R = A^-1, so
    grad_B = R^H G and grad_A = -grad_B X^H; the inverse output R adds -R^H G_R R^H. Gradients are summed over
    the dimensions A and B were broadcast along. A vmapped call is one call with the vmapped dimension first.
    (torch.compile traces this class, which has no jvp: dynamo refuses a custom jvp.)"""

    @staticmethod
    def forward(A, B, init, options, raise_failures):
        return _solve_detached(A, B, init, options, raise_failures)

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, B = inputs[0], inputs[1]
        X, certified_mask, bound, iterations, fallback, R = output
        ctx.mark_non_differentiable(certified_mask, bound, iterations, fallback)
        ctx.save_for_backward(X, R)
        ctx.save_for_forward(X, R)
        ctx.shapes = A.shape, B.shape
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_X, unused_certified, unused_bound, unused_iterations, unused_fallback, grad_R):
        X, R = ctx.saved_tensors
        A_shape, B_shape = ctx.shapes
        R_h = R.mH
        grad_A = grad_B = None
        if grad_X is not None:
            grad_B = R_h @ grad_X
            grad_A = (-(grad_B @ X.mH)).sum_to_size(A_shape)
            grad_B = grad_B.sum_to_size(B_shape)
        if grad_R is not None:
            from_R = -(R_h @ grad_R @ R_h)
            grad_A = from_R if grad_A is None else grad_A + from_R
        return grad_A, grad_B, None, None, None

    @staticmethod
    def vmap(info, in_dims, A, B, init, options, raise_failures):
        A_dim, B_dim, init_dim = in_dims[:3]
        A_logical = A.shape if A_dim is None else A.shape[:A_dim] + A.shape[A_dim + 1:]
        B_logical = B.shape if B_dim is None else B.shape[:B_dim] + B.shape[B_dim + 1:]
        batch_dims = max(len(A_logical), len(B_logical)) - 2
        A_vmapped = A_dim is not None or (init is not None and init_dim is not None)
        A = _vmapped_first(A, A_dim, A_vmapped, info.batch_size, batch_dims)
        init = None if init is None else _vmapped_first(init, init_dim, A_vmapped, info.batch_size, batch_dims)
        B = _vmapped_first(B, B_dim, B_dim is not None, info.batch_size, batch_dims)
        X, certified_mask, bound, iterations, fallback, R = _solve_function().apply(A, B, init, options,
                                                                                    raise_failures)
        X_vmapped = A_vmapped or B_dim is not None
        front = A.shape[0]
        per_A = [iterations.reshape(front, *A_logical[:-2]), fallback.reshape(front, *A_logical[:-2]),
                 R.reshape(front, *A_logical)]
        if not A_vmapped:
            per_A = [field[0] for field in per_A]
        per_system = [X, certified_mask, bound] if X_vmapped else [X[0], certified_mask[0], bound[0]]
        out_dims = (0 if X_vmapped else None,) * 3 + (0 if A_vmapped else None,) * 3
        return (*per_system, *per_A), out_dims


class _BatchedSolveWithJvp(_BatchedSolve):
    """:class:`_BatchedSolve` with forward-mode derivatives: dX = R (dB - dA X), dR = -R dA R."""

    @staticmethod
    def jvp(ctx, tangent_A, tangent_B, tangent_init, *unused):
        X, R = ctx.saved_tensors
        change = None if tangent_B is None else tangent_B
        if tangent_A is not None:
            change = -(tangent_A @ X) if change is None else change - tangent_A @ X
        tangent_X = None if change is None else R @ change
        tangent_R = torch.zeros_like(R) if tangent_A is None else -(R @ tangent_A @ R)  # forward AD wants a tensor
        return tangent_X, None, None, None, None, tangent_R


def _solve_function():
    return _BatchedSolve if torch.compiler.is_compiling() else _BatchedSolveWithJvp


def _vmapped_first(tensor, dim, vmapped, size, batch_dims):
    """A (*, r, c) operand of a vmapped call as (V or 1, 1.., *, r, c) with `batch_dims` batch dimensions after the
    first: the vmapped dimension first (V = size where the operand, or for A its init, is vmapped, else 1), so
    that the logical batch dimensions of A and B broadcast as they would without vmap."""
    if dim is not None:
        tensor = tensor.movedim(dim, 0)
    elif vmapped:
        tensor = tensor.expand(size, *tensor.shape)
    else:
        tensor = tensor.unsqueeze(0)
    missing = batch_dims - (tensor.dim() - 3)
    return tensor.reshape(tensor.shape[0], *([1] * missing), *tensor.shape[1:])


def broadcast_batch(a: torch.Size, b: torch.Size) -> torch.Size:
    """torch.broadcast_shapes of two batch shapes (the same rule, without the cost of its general implementation on
    every call); ValueError where they do not broadcast."""
    if a == b:
        return a
    size = max(len(a), len(b))
    a, b = (1,) * (size - len(a)) + tuple(a), (1,) * (size - len(b)) + tuple(b)
    if any(x != y and x != 1 and y != 1 for x, y in zip(a, b)):
        raise ValueError(f"batch shapes {a} and {b} do not broadcast")
    return torch.Size(y if x == 1 else x for x, y in zip(a, b))


def _right_hand_sides(A, B):
    """(B as (*, n, k), whether B was a batch of vectors) by torch.linalg.solve's rule: vectors when B is 1-D or
    B.shape == A.shape[:-1]."""
    if not isinstance(B, torch.Tensor):
        raise TypeError(f"B must be a torch.Tensor, got {type(B).__name__}")
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"A must be a torch.Tensor, got {type(A).__name__}")
    vector = B.dim() == 1 or (B.dim() == A.dim() - 1 and B.shape == A.shape[:-1])
    return (B.unsqueeze(-1) if vector else B), vector


def _check_solve_arguments(A, B, B_matrix, vector, init, options: CallOptions, left) -> None:
    """The arguments of a solve, with B as :func:`_right_hand_sides` read it (B_matrix, vector)."""
    check_arguments(A, init, options)
    check_flag(left, "left")
    n = A.shape[-1]
    if B_matrix.dim() < 2 or B_matrix.shape[-2 if left else -1] != n or (vector and not left):
        expected = f"(*, {n}) or (*, {n}, k)" if left else f"(*, k, {n}), not a batch of vectors as in torch,"
        raise ArgumentValueError(f"B must have shape {expected} for A of shape {tuple(A.shape)}"
                                 f"{'' if left else ' and left=False (X A = B)'}; got {tuple(B.shape)}")
    if B.dtype != A.dtype:
        raise ArgumentDtypeError(f"B must have A's dtype {A.dtype}, got {B.dtype}")
    if B.device != A.device:
        raise ArgumentValueError(f"B must be on A's device {A.device}, got {B.device}")
    try:
        broadcast_batch(A.shape[:-2], B_matrix.shape[:-2])
    except ValueError:
        raise ArgumentValueError(f"the batch dimensions of A {tuple(A.shape[:-2])} and B "
                                 f"{tuple(B_matrix.shape[:-2])} do not broadcast") from None


def _solution_shape(A, B_matrix, vector) -> torch.Size:
    """X's shape: B's matrices' shape (n x k, or k x n for left=False) on the broadcast batch, the last dimension
    dropped for vectors."""
    batch = broadcast_batch(A.shape[:-2], B_matrix.shape[:-2])
    return torch.Size((*batch, *B_matrix.shape[-2:-1 if vector else None]))


def _check_out_pair(out, A, B, B_matrix, vector, init, return_inverse: bool) -> None:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError("out must be a pair (X, info) with info a SolveInfo of five tensors")
    X_out, info_out = out
    X_shape = _solution_shape(A, B_matrix, vector)
    check_out(X_out, "out[0] (X)", X_shape, A.dtype, A.device, A, B, init)
    if not (isinstance(info_out, (tuple, list)) and len(info_out) == len(SolveInfo._fields)):
        raise TypeError("out[1] must be a SolveInfo (certified, error_bound, iterations, fallback, inverse)")
    if (info_out[-1] is None) == return_inverse:
        raise ArgumentValueError("out[1].inverse must be " + ("a tensor of A's shape: return_inverse=True"
                                                             if return_inverse else
                                                             "None: the inverse is returned only with "
                                                             "return_inverse=True"))
    batch = broadcast_batch(A.shape[:-2], B_matrix.shape[:-2])
    shapes = (batch, batch, A.shape[:-2], A.shape[:-2], A.shape)
    for i, (field, tensor, dtype, shape) in enumerate(zip(SolveInfo._fields, info_out, INFO_DTYPES + (A.dtype,),
                                                          shapes)):
        if field != "inverse" or return_inverse:  # (the inverse alone may be None: checked above)
            check_out(tensor, f"out[1].{field}", shape, dtype, A.device, A, B, init, X_out, *info_out[:i])
