"""``batched_inverse``: a verified, drop-in replacement for ``torch.linalg.inv``.

How each matrix A is inverted
-----------------------------
1. An initial guess X0: the user's ``init`` (warm start), a learned ``model``, or the
   classical scaled transpose A^H / (||A||_1 ||A||_inf).
2. Guard: a guess from ``init`` or ``model`` whose residual r0 = ||I - A X0||_F is at least
   ``GUARD_RESIDUAL`` (or that the model calls out of its domain) is not refined; the matrix
   takes the exact path. (r0 < 1 guarantees quadratic convergence since ||.||_F >= ||.||_2.)
3. Newton–Schulz (Hotelling, 1943): X <- X + X (I - A X), which squares the residual each step.
   A matrix is done when r <= min(tol ||A||_F ||X||_F, accept) (a backward-error test;
   ``torch.linalg.inv`` itself lands at about eps ||A||_F ||X||_F), or when the quadratic
   phase is over (r_prev < 0.5 but r > r_prev / 2: the rounding floor) with r <= accept.
   It goes to the exact path when it reaches ``max_iter``, stalls above ``accept`` or turns
   non-finite.
4. Exact path: LU with partial pivoting (with the compiled kernels -- ``cpp`` for n <= 32, ``cuda``
   -- Gauss–Jordan with partial pivoting in double precision; ``cpp`` inverts float32 n <= 4 by
   closed forms in double, redone by Gauss–Jordan when their residual is not at rounding level), then
   verified: its residual must be at most ``accept`` (``ACCEPT_RESIDUAL``).

Every returned matrix therefore carries a certificate: ||X - A^-1||_2 <= r ||A^-1||_2, with
r = info.residual. ``info.converged`` is True exactly when X is finite and r <= accept;
``batched_inverse`` raises for any other matrix, so it never returns an uncertified inverse.

Without ``init`` or ``model``, ``backend="auto"`` goes straight to the exact path: from the
scaled transpose, Newton–Schulz needs about 2 log2(cond A) + 6 steps of 4 n^3 flops each,
against 2 n^3 for LU. Naming a backend explicitly runs Newton–Schulz from the scaled
transpose instead (the textbook method, for study and benchmarks).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import reference
from .backends import TorchBackend, resolve_backend

GUARD_RESIDUAL = 0.5
"""Initial guesses (init or model) with ||I - A X0||_F >= this take the exact path."""

ACCEPT_RESIDUAL = {torch.float32: 1e-3, torch.complex64: 1e-3,
                   torch.float64: 1e-6, torch.complex128: 1e-6}
"""Largest certified residual ||I - A X||_F accepted as an answer, per dtype."""

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

    converged: X is finite and certified: residual <= ACCEPT_RESIDUAL[dtype].
    iterations: Newton–Schulz steps applied (also counted when the matrix then fell back).
    residual: ||I - A X||_F of the returned X (NaN where A is not finite).
    fallback: the returned X came from the exact (LU) path.
    """

    converged: torch.Tensor
    iterations: torch.Tensor
    residual: torch.Tensor
    fallback: torch.Tensor


def batched_inverse(A: torch.Tensor, *, model=None, init=None, tol=None, max_iter=None,
                    backend: str = "auto") -> torch.Tensor:
    """Inverse of each matrix in A, shape (*, n, n); a drop-in for ``torch.linalg.inv``.

    Raises ``torch.linalg.LinAlgError`` naming the first matrix that is singular or whose
    inverse cannot be certified in A's dtype, and ``ValueError`` for NaN or Inf input.
    See :func:`batched_inverse_ex` for the arguments.
    """
    X, info = batched_inverse_ex(A, model=model, init=init, tol=tol, max_iter=max_iter, backend=backend)
    if not bool(info.converged.all()):
        _raise_first_failure(A, info)
    return X


def batched_inverse_ex(A: torch.Tensor, *, model=None, init=None, tol=None, max_iter=None,
                       backend: str = "auto") -> tuple[torch.Tensor, InverseInfo]:
    """Inverse of each matrix in A and an :class:`InverseInfo`; never raises for singular input.

    Args:
        A: (*, n, n) float32, float64, complex64 or complex128 tensor; never modified.
        model: learned initializer, an ``nn.Module`` mapping (b, n, n) matrices to (b, n, n)
            guesses, with ``in_domain(A) -> bool tensor (b,)``.
        init: (*, n, n) tensor of approximate inverses (a warm start), same dtype and device.
        tol: stopping tolerance on ||I - A X||_F / (||A||_F ||X||_F); default eps(dtype) / 2.
        max_iter: most Newton–Schulz steps per matrix; default ``MAX_ITER_FROM_GUESS`` with
            init or model, ``MAX_ITER_FROM_SCALED_TRANSPOSE`` otherwise.
        backend: "auto", "torch", "triton", "cpp" or "cuda" (see ``available_backends()``).

    Gradients flow to A by the analytic rule dA = -X^H G X^H, not through the iterations.
    """
    _check_arguments(A, model, init, tol, max_iter)
    options = dict(model=model, init=init, tol=tol, max_iter=max_iter, backend=backend)
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


def _invert(A, *, model, init, tol, max_iter, backend):
    batch_shape, n = A.shape[:-2], A.shape[-1]
    real_dtype = A.real.dtype if A.is_complex() else A.dtype
    if n == 0:
        info = InverseInfo(torch.ones(batch_shape, dtype=torch.bool, device=A.device),
                           torch.zeros(batch_shape, dtype=torch.int32, device=A.device),
                           torch.zeros(batch_shape, dtype=real_dtype, device=A.device),
                           torch.zeros(batch_shape, dtype=torch.bool, device=A.device))
        return A.new_empty(A.shape), info

    chosen = resolve_backend(backend, A)
    has_guess = init is not None or model is not None
    use_newton_schulz = has_guess or backend != "auto"
    settings = _Settings(
        tol=default_tol(A.dtype) if tol is None else float(tol),
        accept=ACCEPT_RESIDUAL[A.dtype],
        max_iter=max_iter if max_iter is not None else (
            MAX_ITER_FROM_GUESS if has_guess else MAX_ITER_FROM_SCALED_TRANSPOSE),
        guarded=has_guess,
    )

    A_flat = A if A.dim() == 3 else A.reshape(-1, n, n)
    init_flat = None if init is None else init.detach().reshape(-1, n, n)
    b = A_flat.shape[0]
    chunk = max(1, WORKSPACE_BYTES // (chosen.workspace_matrices * n * n * A.element_size()))
    parts = [_invert_chunk(chosen, settings, A_flat[start:start + chunk],
                           None if init_flat is None else init_flat[start:start + chunk], model, use_newton_schulz)
             for start in range(0, max(b, 1), chunk)]
    X, converged, iterations, residual, fallback = (
        parts[0] if len(parts) == 1 else [torch.cat(field) for field in zip(*parts)])
    if A.dim() == 3:
        return X, InverseInfo(converged, iterations, residual, fallback)
    info = InverseInfo(converged.reshape(batch_shape), iterations.reshape(batch_shape),
                       residual.reshape(batch_shape), fallback.reshape(batch_shape))
    return X.reshape(A.shape), info


class _Settings(NamedTuple):
    tol: float
    accept: float
    max_iter: int
    guarded: bool


def _invert_chunk(backend: TorchBackend, settings: _Settings, A, init, model, use_newton_schulz):
    """Invert one chunk (b, n, n): returns (X, converged, iterations, residual, fallback). Where one path
    covers the whole chunk its output tensors are returned as they are (no copy)."""
    b = A.shape[0]
    iterations = torch.zeros(b, dtype=torch.int32, device=A.device)
    fallback = torch.zeros(b, dtype=torch.bool, device=A.device)
    if b == 0:
        real_dtype = A.real.dtype if A.is_complex() else A.dtype
        return A.new_empty(A.shape), torch.zeros_like(fallback), iterations, A.new_empty(0, dtype=real_dtype), fallback
    if model is not None:
        to_refine = _model_in_domain(model, A)
        refine_idx, exact_idx = to_refine.nonzero().squeeze(1), (~to_refine).nonzero().squeeze(1)
    else:
        everything = torch.arange(b, device=A.device)
        refine_idx, exact_idx = (everything, everything[:0]) if use_newton_schulz else (everything[:0], everything)
    X = residual = converged = None

    # NaN or Inf in A needs no pre-pass: it makes the residual non-finite, the matrix goes to the
    # exact path and fails verification; only failures are checked for it, at the end.
    if use_newton_schulz:
        chosen = _index_or_view(refine_idx, b)
        if refine_idx.numel():
            A_r = A[chosen]
            if init is not None:
                X0 = init[chosen]
            elif model is not None:
                X0 = _model_guess(model, A_r)
            else:
                X0 = reference.scaled_transpose_guess(A_r)
            X_r, r, done, steps = backend.newton_schulz(A_r, X0, settings.tol, settings.accept, settings.max_iter,
                                                        settings.guarded, GUARD_RESIDUAL)
            X = _put(X, chosen, X_r, b)
            residual = _put(residual, chosen, r, b)
            converged = _put(converged, chosen, done, b)
            iterations[chosen] = steps
            if not bool(done.all()):
                exact_idx = torch.cat([exact_idx, refine_idx[~done]])

    if exact_idx.numel():
        chosen = _index_or_view(exact_idx, b)
        A_e = A[chosen]
        X_e, _pivot_info, r = backend.inverse_and_residual(A_e)
        X = _put(X, chosen, X_e, b)
        residual = _put(residual, chosen, r, b)
        converged = _put(converged, chosen, r <= settings.accept, b)  # False for NaN/Inf, which singular LU gives
        fallback[chosen] = True

    failed = (~converged).nonzero().squeeze(1)
    if failed.numel():
        non_finite = failed[~torch.isfinite(A[failed]).all(dim=-1).all(dim=-1)]
        X[non_finite] = float("nan")
        residual[non_finite] = float("nan")
    return X, converged, iterations, residual, fallback


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


def _check_arguments(A, model, init, tol, max_iter) -> None:
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


def _raise_first_failure(A: torch.Tensor, info: InverseInfo) -> None:
    failed = (~info.converged).nonzero()
    count = failed.shape[0]
    index = tuple(int(i) for i in failed[0])
    name = "A" if not index else "A[" + ", ".join(map(str, index)) + "]"
    others = f" ({count} matrices of the batch failed; batched_inverse_ex returns the others)" if count > 1 else ""
    if not bool(torch.isfinite(A[index]).all()):
        raise ValueError(f"neuinv.batched_inverse: {name} contains NaN or Inf{others}")
    raise torch.linalg.LinAlgError(
        f"neuinv.batched_inverse: {name} is singular or too ill-conditioned for {A.dtype}: "
        f"its inverse could not be certified (||I - A X||_F = {float(info.residual[index]):.3g}, "
        f"needs <= {ACCEPT_RESIDUAL[A.dtype]:g}){others}")
