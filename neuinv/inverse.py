"""``batched_inverse``: a verified, drop-in replacement for ``torch.linalg.inv``.

How each matrix A is inverted
-----------------------------
1. An initial guess X0: the user's ``init`` (warm start), a learned ``model``, or the
   classical scaled transpose A^H / ||A||_1 / ||A||_inf.
2. Guard: a guess from ``init`` or ``model`` whose residual r0 = ||I - A X0||_F is at least
   ``GUARD_RESIDUAL`` (or that the model calls out of its domain) is not refined; the matrix
   takes the exact path. (r0 < 1 guarantees quadratic convergence since ||.||_F >= ||.||_2.)
3. Newton–Schulz (Hotelling, 1943): X <- X + X (I - A X), which squares the residual each step.
   A matrix is done when r <= min(tol ||A||_F ||X||_F, accept) (a backward-error test;
   ``torch.linalg.inv`` itself lands at about eps ||A||_F ||X||_F; the product of norms is
   evaluated as ||A / m||_F ||m X||_F, m = max |a_ij|, so that it never overflows), or when the
   quadratic phase is over (r_prev < 0.5 but r > r_prev / 2: the rounding floor) with
   r <= accept (``NEWTON_SCHULZ_ACCEPT``). It goes to the exact path when it reaches ``max_iter``,
   stalls above ``accept``, turns non-finite, or its certificate (below) fails.
4. Exact path: LU with partial pivoting (with the compiled kernels -- ``cpp`` for n <= 32, ``cuda``
   -- Gauss–Jordan with partial pivoting in double precision; ``cpp`` inverts float32 n <= 4 by
   closed forms in double, redone by Gauss–Jordan when they are not accurate to float32).
5. The certificate (:mod:`neuinv.certificate`): ``info.error_bound`` >= ||X - A^-1||_F / ||A^-1||_F
   for the X returned, rigorous in exact arithmetic (the rounding of its own evaluation included),
   +inf where nothing can be certified (A singular or numerically singular, NaN or Inf).
   ``info.certified`` is True exactly when error_bound <= ``max_error`` (default: < 1); X is NaN
   wherever it is False.
   ``batched_inverse`` raises for every matrix that is not certified.

Without ``init`` or ``model``, ``backend="auto"`` goes straight to the exact path: from the
scaled transpose, Newton–Schulz needs about 2 log2(cond A) + 6 steps of 4 n^3 flops each,
against 2 n^3 for LU. Naming a backend explicitly runs Newton–Schulz from the scaled
transpose instead (the textbook method, for study and benchmarks).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import certificate, reference
from .backends import TorchBackend, resolve_backend

GUARD_RESIDUAL = 0.5
"""Initial guesses (init or model) with ||I - A X0||_F >= this take the exact path."""

NEWTON_SCHULZ_ACCEPT = {torch.float32: 1e-3, torch.complex64: 1e-3,
                        torch.float64: 1e-6, torch.complex128: 1e-6}
"""Largest computed residual ||I - A X||_F at which a Newton–Schulz result is kept (and then certified);
a matrix whose iteration stalls above it takes the exact path instead, per dtype."""

MAX_ITER_FROM_GUESS = 10
"""Default max_iter with init or model: from r0 < 0.5, six steps reach 0.5**64 ~ 5e-20."""

MAX_ITER_FROM_SCALED_TRANSPOSE = 64
"""Default max_iter from the scaled transpose: enough for cond(A) up to about 1e9."""

WORKSPACE_BYTES = 2**30
"""Large batches are processed in chunks whose workspace (the backend's ``workspace_matrices`` n x n
temporaries per matrix) stays under this many bytes."""

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def default_tol(dtype: torch.dtype) -> float:
    """Default stopping tolerance on ||I - A X||_F / (||A||_F ||X||_F): eps(dtype) / 2.

    ||A||_F ||X||_F overestimates cond_2(A) by up to n, and LU lands at about
    0.2-1 eps ||A||_F ||X||_F; matrices whose rounding floor lies above this tolerance stop
    by the floor test instead (one more step), so the result is as accurate as LU's.
    (eps/4 cost 0.3-0.6 more steps on average for warm starts; eps failed the 4x-LU accuracy bar.)"""
    return torch.finfo(dtype).eps / 2


class InverseInfo(NamedTuple):
    """Per-matrix report of :func:`batched_inverse_ex`; each field has A's batch shape.

    certified: use this X: its error_bound is at most ``max_error`` (by default: below 1, i.e. at
        least one correct digit is certified). X is NaN wherever certified is False.
    error_bound: float64 upper bound on ||X - A^-1||_F / ||A^-1||_F, rigorous (see
        :mod:`neuinv.certificate`); +inf where nothing is certified (singular or numerically singular
        A, NaN or Inf): there X is NaN.
    iterations: Newton–Schulz steps applied (also counted when the matrix then took the exact path).
    fallback: the returned X came from the exact path.
    """

    certified: torch.Tensor
    error_bound: torch.Tensor
    iterations: torch.Tensor
    fallback: torch.Tensor


def batched_inverse(A: torch.Tensor, *, model=None, init=None, tol=None, max_iter=None, max_error=None,
                    backend: str = "auto") -> torch.Tensor:
    """Inverse of each matrix in A, shape (*, n, n); a drop-in for ``torch.linalg.inv``.

    Raises ``ValueError`` naming the first matrix holding NaN or Inf if any matrix that failed does, else
    ``torch.linalg.LinAlgError`` naming the first matrix that is singular, numerically singular (no digit
    certified: ``error_bound`` >= 1) or whose ``error_bound`` exceeds ``max_error``.
    See :func:`batched_inverse_ex` for the arguments.
    """
    X, info = batched_inverse_ex(A, model=model, init=init, tol=tol, max_iter=max_iter, max_error=max_error,
                                 backend=backend)
    if not bool(info.certified.all()):
        _raise_first_failure(A, info, max_error)
    return X


def batched_inverse_ex(A: torch.Tensor, *, model=None, init=None, tol=None, max_iter=None, max_error=None,
                       backend: str = "auto") -> tuple[torch.Tensor, InverseInfo]:
    """Inverse of each matrix in A and an :class:`InverseInfo`; never raises for singular input.

    Args:
        A: (*, n, n) float32, float64, complex64 or complex128 tensor; never modified.
        model: learned initializer, an ``nn.Module`` mapping (b, n, n) matrices to (b, n, n)
            guesses, with ``in_domain(A) -> bool tensor (b,)``.
        init: (*, n, n) tensor of approximate inverses (a warm start), same dtype and device.
        tol: Newton–Schulz stopping tolerance on ||I - A X||_F / (||A||_F ||X||_F); default eps(dtype) / 2.
        max_iter: most Newton–Schulz steps per matrix; default ``MAX_ITER_FROM_GUESS`` with
            init or model, ``MAX_ITER_FROM_SCALED_TRANSPOSE`` otherwise.
        max_error: largest ``error_bound`` (relative error of X in the Frobenius norm) a matrix may have
            and be ``certified``; default None: any bound below 1.
        backend: "auto", "torch", "triton", "cpp" or "cuda" (see ``available_backends()``).

    Returns:
        X with A's shape, dtype and device (NaN where it is not certified), and the :class:`InverseInfo`.

    Gradients flow to A by the analytic rule dA = -X^H G X^H, not through the iterations.
    """
    _check_arguments(A, model, init, tol, max_iter, max_error)
    options = dict(model=model, init=init, tol=tol, max_iter=max_iter, max_error=max_error, backend=backend)
    if not (A.requires_grad and torch.is_grad_enabled()):  # the autograd wrapper costs ~15 us per call
        return _invert(A.detach(), **options)
    X, *info = _BatchedInverse.apply(A, options)
    return X, InverseInfo(*info)


class _BatchedInverse(torch.autograd.Function):
    """Forward: the verified inverse. Backward: d(A^-1) = -A^-1 dA A^-1, so grad_A = -X^H G X^H."""

    @staticmethod
    def forward(ctx, A, options):
        X, info = _invert(A.detach(), **options)
        ctx.save_for_backward(X)
        ctx.mark_non_differentiable(*info)
        return (X, *info)

    @staticmethod
    def backward(ctx, grad_X, *unused_info_grads):
        (X,) = ctx.saved_tensors
        X_h = X.mH
        return -(X_h @ grad_X @ X_h), None


def _invert(A, *, model, init, tol, max_iter, max_error, backend):
    batch_shape, n = A.shape[:-2], A.shape[-1]
    if n == 0:
        info = InverseInfo(torch.ones(batch_shape, dtype=torch.bool, device=A.device),
                           torch.zeros(batch_shape, dtype=torch.float64, device=A.device),
                           torch.zeros(batch_shape, dtype=torch.int32, device=A.device),
                           torch.zeros(batch_shape, dtype=torch.bool, device=A.device))
        return A.new_empty(A.shape), info

    chosen = resolve_backend(backend, A)
    has_guess = init is not None or model is not None
    use_newton_schulz = has_guess or backend != "auto"
    settings = _Settings(
        tol=default_tol(A.dtype) if tol is None else float(tol),
        accept=NEWTON_SCHULZ_ACCEPT[A.dtype],
        max_iter=max_iter if max_iter is not None else (
            MAX_ITER_FROM_GUESS if has_guess else MAX_ITER_FROM_SCALED_TRANSPOSE),
        guarded=has_guess,
        max_error=None if max_error is None else float(max_error),
    )

    A_flat = A if A.dim() == 3 else A.reshape(-1, n, n)
    init_flat = None if init is None else init.detach().reshape(-1, n, n)
    b = A_flat.shape[0]
    chunk = max(1, WORKSPACE_BYTES // (chosen.workspace_matrices * n * n * A.element_size()))
    parts = [_invert_chunk(chosen, settings, A_flat[start:start + chunk],
                           None if init_flat is None else init_flat[start:start + chunk], model, use_newton_schulz)
             for start in range(0, max(b, 1), chunk)]
    X, certified, error_bound, iterations, fallback = (
        parts[0] if len(parts) == 1 else [torch.cat(field) for field in zip(*parts)])
    if A.dim() != 3:
        X, certified, error_bound, iterations, fallback = (
            X.reshape(A.shape), certified.reshape(batch_shape), error_bound.reshape(batch_shape),
            iterations.reshape(batch_shape), fallback.reshape(batch_shape))
    return X, InverseInfo(certified, error_bound, iterations, fallback)


class _Settings(NamedTuple):
    tol: float
    accept: float
    max_iter: int
    guarded: bool
    max_error: float | None


def _certified(error_bound: torch.Tensor, max_error: float | None) -> torch.Tensor:
    """The rule for ``info.certified``: error_bound <= max_error, or, without one, any bound below 1 (the
    bounds are below 1 or +inf, never NaN)."""
    return error_bound < math.inf if max_error is None else error_bound <= max_error


def _invert_chunk(backend: TorchBackend, settings: _Settings, A, init, model, use_newton_schulz):
    """Invert one chunk (b, n, n): returns (X, certified, error_bound, iterations, fallback), X NaN where it is
    not certified. Newton–Schulz results that stall or are not certified take the exact path."""
    b = A.shape[0]
    iterations = torch.zeros(b, dtype=torch.int32, device=A.device)
    fallback = torch.zeros(b, dtype=torch.bool, device=A.device)
    if b == 0:
        return A.new_empty(A.shape), torch.zeros_like(fallback), A.new_empty(0, dtype=torch.float64), iterations, fallback
    if model is not None:
        to_refine = _model_in_domain(model, A)
        refine_idx, exact_idx = to_refine.nonzero().squeeze(1), (~to_refine).nonzero().squeeze(1)
    else:
        everything = torch.arange(b, device=A.device)
        refine_idx, exact_idx = (everything, everything[:0]) if use_newton_schulz else (everything[:0], everything)
    X = error_bound = None

    if use_newton_schulz and refine_idx.numel():
        chosen = _index_or_view(refine_idx, b)
        A_r = A[chosen]
        if init is not None:
            X0 = init[chosen]
        elif model is not None:
            X0 = _model_guess(model, A_r)
        else:
            X0 = reference.scaled_transpose_guess(A_r)
        X_r, _r, done, steps = backend.newton_schulz(A_r, X0, settings.tol, settings.accept, settings.max_iter,
                                                     settings.guarded, GUARD_RESIDUAL)
        if bool(done.all()):
            bound_r = backend.error_bound(A_r, X_r)
        else:
            bound_r = torch.full((A_r.shape[0],), math.inf, dtype=torch.float64, device=A.device)
            if bool(done.any()):
                bound_r[done] = backend.error_bound(A_r[done], X_r[done])
        X = _put(X, chosen, X_r, b)
        error_bound = _put(error_bound, chosen, bound_r, b)
        iterations[chosen] = steps
        kept = _certified(bound_r, settings.max_error)
        if not bool(kept.all()):
            exact_idx = torch.cat([exact_idx, refine_idx[~kept]])

    if exact_idx.numel():
        chosen = _index_or_view(exact_idx, b)
        X_e, bound_e = backend.inverse_and_error_bound(A[chosen])
        X = _put(X, chosen, X_e, b)
        error_bound = _put(error_bound, chosen, bound_e, b)
        fallback[chosen] = True

    certified = _certified(error_bound, settings.max_error)
    if not bool(certified.all()):
        X[~certified] = float("nan")
    return X, certified, error_bound, iterations, fallback


def _put(target, index, values, batch):
    """`values` placed at `index` of a batch-long tensor: written into `target`, or, when there is no target
    yet, `values` itself if it covers the whole batch, else a new tensor."""
    if target is None:
        if isinstance(index, slice):
            return values
        target = values.new_empty((batch, *values.shape[1:]))
    target[index] = values
    return target


def _index_or_view(indices: torch.Tensor, batch: int):
    """The indices, or a slice (a view, no gathered copy) when they cover the whole chunk."""
    return slice(None) if indices.numel() == batch else indices


def _model_in_domain(model, A) -> torch.Tensor:
    with torch.no_grad():
        inside = model.in_domain(A)
    if not isinstance(inside, torch.Tensor) or inside.shape != A.shape[:1] or inside.dtype != torch.bool:
        raise ValueError(f"model.in_domain(A) must return a bool tensor of shape {tuple(A.shape[:1])}, "
                         f"got {getattr(inside, 'dtype', type(inside))} of shape {tuple(getattr(inside, 'shape', ()))}")
    return inside.to(A.device)


def _model_guess(model, A) -> torch.Tensor:
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    model_dtype = A.dtype if parameter is None else parameter.dtype
    with torch.no_grad():
        X0 = model(A.to(model_dtype))
    if not isinstance(X0, torch.Tensor) or X0.shape != A.shape:
        raise ValueError(f"model(A) must return a tensor of shape {tuple(A.shape)}, "
                         f"got {tuple(getattr(X0, 'shape', ()))}")
    return X0.to(A.dtype)


def _check_arguments(A, model, init, tol, max_iter, max_error) -> None:
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"A must be a torch.Tensor, got {type(A).__name__}")
    if A.dim() < 2:
        raise ValueError(f"A must have shape (*, n, n); got a {A.dim()}-D tensor of shape {tuple(A.shape)}")
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must hold square matrices (*, n, n); got shape {tuple(A.shape)}")
    if A.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"A must be float32, float64, complex64 or complex128; got {A.dtype}")
    if init is not None and model is not None:
        raise ValueError("give an initial guess by init or by model, not both")
    if init is not None:
        if not isinstance(init, torch.Tensor):
            raise TypeError(f"init must be a torch.Tensor, got {type(init).__name__}")
        if init.shape != A.shape:
            raise ValueError(f"init must have A's shape {tuple(A.shape)}, got {tuple(init.shape)}")
        if init.dtype != A.dtype:
            raise TypeError(f"init must have A's dtype {A.dtype}, got {init.dtype}")
        if init.device != A.device:
            raise ValueError(f"init must be on A's device {A.device}, got {init.device}")
    if model is not None:
        if not callable(model) or not callable(getattr(model, "in_domain", None)):
            raise TypeError("model must be callable and have an in_domain(A) method")
        model_n = getattr(model, "n", None)
        if model_n is not None and model_n != A.shape[-1]:
            raise ValueError(f"model was built for {model_n}x{model_n} matrices, but A holds "
                             f"{A.shape[-1]}x{A.shape[-1]} matrices")
    if tol is not None and not (isinstance(tol, (int, float)) and 0 < tol < float("inf")):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    if max_iter is not None and not (isinstance(max_iter, int) and not isinstance(max_iter, bool) and max_iter >= 0):
        raise ValueError(f"max_iter must be a non-negative int, got {max_iter!r}")
    if max_error is not None and not (isinstance(max_error, (int, float)) and not isinstance(max_error, bool)
                                      and 0 <= max_error < 1):
        raise ValueError(f"max_error must be a number in [0, 1) (a relative error), got {max_error!r}")


def _raise_first_failure(A: torch.Tensor, info: InverseInfo, max_error) -> None:
    """ValueError for the first failed matrix holding NaN or Inf, if any; else LinAlgError for the first failed."""
    failed_mask = ~info.certified
    count = int(failed_mask.sum())
    others = f" ({count} matrices of the batch failed; batched_inverse_ex returns the others)" if count > 1 else ""
    non_finite = failed_mask & ~torch.isfinite(A).flatten(-2).all(dim=-1)
    if bool(non_finite.any()):
        raise ValueError(f"neuinv.batched_inverse: {_matrix_name(non_finite)} contains NaN or Inf{others}")
    index = _first_index(failed_mask)
    bound = float(info.error_bound[index])
    if math.isinf(bound):
        reason = f"is singular or numerically singular in {A.dtype}: no digit of its inverse can be certified"
    else:
        reason = (f"has an inverse certified only to a relative error of {bound:.3g}, "
                  f"above max_error = {max_error:g}")
    raise torch.linalg.LinAlgError(f"neuinv.batched_inverse: {_matrix_name(failed_mask)} {reason}{others}")


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def _matrix_name(mask: torch.Tensor) -> str:
    index = _first_index(mask)
    return "A" if not index else "A[" + ", ".join(map(str, index)) + "]"
