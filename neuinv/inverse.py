"""``batched_inverse``: a verified, drop-in replacement for ``torch.linalg.inv``.

How each matrix A is inverted (the rules: :mod:`neuinv.rules`; the pipeline: :func:`neuinv.reference.invert`)
------------------------------------------------------------------------------------------------------------
``method`` chooses what is computed, ``backend`` where (:mod:`neuinv.backends`).

- ``method="exact"``: Gauss–Jordan with partial pivoting in double precision in the compiled kernels (float32
  n <= 4 by closed forms in double, redone by Gauss–Jordan when not accurate to float32), LU with partial
  pivoting (LAPACK / cuSOLVER) on the torch backend.
- ``method="newton_schulz"``: from an initial guess X0 -- the user's ``init`` (warm start), a learned
  ``model`` (used where ``model.in_domain(A)``), or else the scaled transpose A^H / ||A||_1 / ||A||_inf --
  Newton–Schulz (Hotelling, 1943): X <- X + X (I - A X), which squares the residual each step, with the stopping
  rule and guard of :mod:`neuinv.rules`. A matrix that does not converge, or whose result is not certified,
  takes the exact path (``info.fallback``).
- ``method="auto"`` (default): Newton–Schulz when init or model gives a guess, else the exact path. From the
  scaled transpose Newton–Schulz needs about 2 log2(cond A) + 6 steps of 4 n^3 flops each, against 2 n^3
  for LU; it is there for study and benchmarks.

Every result gets the certificate of :mod:`neuinv.certificate`: ``info.error_bound`` >=
||X - A^-1||_F / ||A^-1||_F for the X returned, rigorous in exact arithmetic (the rounding of its own
evaluation included), +inf where nothing can be certified (A singular or numerically singular, NaN or Inf).
``info.certified`` is True exactly when error_bound <= ``max_error`` (default: < 1); X is NaN wherever it is
False. ``batched_inverse`` raises for every matrix that is not certified.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .backends import resolve_backend
from .rules import (CERTIFIED_BELOW, GUARD_RESIDUAL, MAX_ITER_FROM_GUESS, MAX_ITER_FROM_SCALED_TRANSPOSE,
                    MAX_ITERATIONS, NEWTON_SCHULZ_ACCEPT, NewtonSchulzRules, default_tol)

METHODS = ("auto", "exact", "newton_schulz")

WORKSPACE_BYTES = 2**30
"""Large batches are processed in chunks whose workspace (the backend's ``workspace_matrices`` n x n
temporaries per matrix) stays under this many bytes."""

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


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
                    method: str = "auto", backend: str = "auto") -> torch.Tensor:
    """Inverse of each matrix in A, shape (*, n, n); a drop-in for ``torch.linalg.inv``.

    Raises ``ValueError`` naming the first matrix holding NaN or Inf if any matrix that failed does, else
    ``torch.linalg.LinAlgError`` naming the first matrix that is singular, numerically singular (no digit
    certified: ``error_bound`` >= 1) or whose ``error_bound`` exceeds ``max_error``.
    See :func:`batched_inverse_ex` for the arguments.
    """
    X, info = batched_inverse_ex(A, model=model, init=init, tol=tol, max_iter=max_iter, max_error=max_error,
                                 method=method, backend=backend)
    if not bool(info.certified.all()):
        _raise_first_failure(A, info, max_error)
    return X


def batched_inverse_ex(A: torch.Tensor, *, model=None, init=None, tol=None, max_iter=None, max_error=None,
                       method: str = "auto", backend: str = "auto") -> tuple[torch.Tensor, InverseInfo]:
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
        method: "auto", "exact" or "newton_schulz": what is computed (see the module docstring).
        backend: "auto", "torch", "triton", "cpp" or "cuda": where (see ``available_backends()``); "auto"
            takes the fastest that can run A, or the one the environment variable ``NEUINV_BACKEND`` names.

    Returns:
        X with A's shape, dtype and device (NaN where it is not certified), and the :class:`InverseInfo`.

    Gradients flow to A by the analytic rule dA = -X^H G X^H, not through the iterations.
    """
    _check_arguments(A, model, init, tol, max_iter, max_error, method)
    options = dict(model=model, init=init, tol=tol, max_iter=max_iter, max_error=max_error, method=method,
                   backend=backend)
    if not A.requires_grad:
        return _invert(A, **options)
    if not torch.is_grad_enabled():  # the autograd wrapper costs ~15 us per call
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


def _invert(A, *, model, init, tol, max_iter, max_error, method, backend):
    """Argument defaults, the model's forward pass, and one call of the backend's operator per chunk."""
    chosen = resolve_backend(backend, A)
    batch_shape, n = A.shape[:-2], A.shape[-1]
    if n == 0:
        info = InverseInfo(torch.ones(batch_shape, dtype=torch.bool, device=A.device),
                           torch.zeros(batch_shape, dtype=torch.float64, device=A.device),
                           torch.zeros(batch_shape, dtype=torch.int32, device=A.device),
                           torch.zeros(batch_shape, dtype=torch.bool, device=A.device))
        return A.new_empty(A.shape), info

    has_guess = init is not None or model is not None
    refine = method == "newton_schulz" or (method == "auto" and has_guess)
    rules = _rules(A.dtype, tol, max_iter, has_guess)
    limit = CERTIFIED_BELOW if max_error is None else float(max_error)
    b = A.numel() // (n * n)
    chunk = max(1, WORKSPACE_BYTES // (chosen.workspace_matrices * n * n * A.element_size()))
    X0 = None if init is None else init.detach()
    if b <= chunk and model is None:  # the common case: one call on A as it is, (*, n, n)
        X, certified, error_bound, iterations, fallback = chosen.invert(A, X0, None, refine, rules, limit)
        return X, InverseInfo(certified, error_bound, iterations, fallback)

    A_flat = A.reshape(-1, n, n)
    X0_flat = None if X0 is None else X0.reshape(-1, n, n)
    parts = []
    for start in range(0, max(b, 1), chunk):
        A_part = A_flat[start:start + chunk]
        X0_part, use_guess = None if X0_flat is None else X0_flat[start:start + chunk], None
        if model is not None:  # (a model always means refine: method="exact" with a model is refused)
            X0_part, use_guess = _model_guess(model, A_part, chosen), _model_in_domain(model, A_part)
        parts.append(chosen.invert(A_part, X0_part, use_guess, refine, rules, limit))
    X, certified, error_bound, iterations, fallback = (
        parts[0] if len(parts) == 1 else [torch.cat(field) for field in zip(*parts)])
    return X.reshape(A.shape), InverseInfo(certified.reshape(batch_shape), error_bound.reshape(batch_shape),
                                           iterations.reshape(batch_shape), fallback.reshape(batch_shape))


_rules_cache: dict = {}


def _rules(dtype: torch.dtype, tol, max_iter, has_guess: bool) -> NewtonSchulzRules:
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


def _model_in_domain(model, A) -> torch.Tensor:
    with torch.no_grad():
        inside = model.in_domain(A)
    if not isinstance(inside, torch.Tensor) or inside.shape != A.shape[:1] or inside.dtype != torch.bool:
        raise ValueError(f"model.in_domain(A) must return a bool tensor of shape {tuple(A.shape[:1])}, "
                         f"got {getattr(inside, 'dtype', type(inside))} of shape {tuple(getattr(inside, 'shape', ()))}")
    return inside.to(A.device)


def _model_guess(model, A, backend) -> torch.Tensor:
    """The model's guess for A (b, n, n): an MLP initializer through the backend's ``mlp_initializer`` (fused
    kernels where it has them), any other model by calling it."""
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    model_dtype = A.dtype if parameter is None else parameter.dtype
    with torch.no_grad():
        if hasattr(model, "initializer_parameters"):
            a = A.reshape(A.shape[0], -1).to(model_dtype)
            X0 = backend.mlp_initializer(a, **model.initializer_parameters()).reshape(A.shape)
        else:
            X0 = model(A.to(model_dtype))
    if not isinstance(X0, torch.Tensor) or X0.shape != A.shape:
        raise ValueError(f"model(A) must return a tensor of shape {tuple(A.shape)}, "
                         f"got {tuple(getattr(X0, 'shape', ()))}")
    return X0.to(A.dtype)


def _check_arguments(A, model, init, tol, max_iter, max_error, method) -> None:
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
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "exact" and (init is not None or model is not None):
        raise ValueError("method='exact' uses no initial guess; drop init/model or use method='newton_schulz'")
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
    if tol is not None and not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 < tol < float("inf")):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    if max_iter is not None and not (isinstance(max_iter, int) and not isinstance(max_iter, bool)
                                     and 0 <= max_iter <= MAX_ITERATIONS):
        raise ValueError(f"max_iter must be an int in [0, {MAX_ITERATIONS}], got {max_iter!r}")
    if max_error is not None and not (isinstance(max_error, (int, float)) and not isinstance(max_error, bool)
                                      and 0 <= max_error < 1):
        raise ValueError(f"max_error must be a number in [0, 1) (a relative error), got {max_error!r}")


def _raise_first_failure(A: torch.Tensor, info: InverseInfo, max_error, offset: tuple[int, ...] = (),
                         scope: str = "the batch") -> None:
    """ValueError for the first failed matrix holding NaN or Inf, if any; else LinAlgError for the first failed.
    A part of a larger batch (:mod:`neuinv.dask`) gives its ``offset`` in it and its ``scope`` ("its chunk")."""
    failed_mask = ~info.certified
    non_finite = failed_mask & ~torch.isfinite(A).flatten(-2).all(dim=-1)
    has_non_finite = bool(non_finite.any())
    index = _first_index(non_finite if has_non_finite else failed_mask)
    global_index = tuple(i + o for i, o in zip(index, offset)) if offset else index
    raise _failure_error(global_index, has_non_finite, float(info.error_bound[index]), int(failed_mask.sum()),
                         A.dtype, max_error, scope)


def _failure_error(index: tuple[int, ...], non_finite: bool, error_bound: float, failed: int, dtype: torch.dtype,
                   max_error, scope: str = "the batch") -> Exception:
    """The exception ``batched_inverse`` raises when A[index] is the first matrix it names: ``ValueError`` if
    it holds NaN or Inf, else ``torch.linalg.LinAlgError`` (singular, or ``error_bound`` above ``max_error``);
    ``failed`` matrices of ``scope`` failed in all. Shared with :mod:`neuinv.distributed` and
    :mod:`neuinv.dask`, which name a global index."""
    name = "A" if not index else "A[" + ", ".join(map(str, index)) + "]"
    others = f" ({failed} matrices of {scope} failed; batched_inverse_ex returns the others)" if failed > 1 else ""
    if non_finite:
        return ValueError(f"neuinv.batched_inverse: {name} contains NaN or Inf{others}")
    if math.isinf(error_bound):
        reason = f"is singular or numerically singular in {dtype}: no digit of its inverse can be certified"
    else:
        reason = (f"has an inverse certified only to a relative error of {error_bound:.3g}, "
                  f"above max_error = {max_error:g}")
    return torch.linalg.LinAlgError(f"neuinv.batched_inverse: {name} {reason}{others}")


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])
