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

``assume_a="pos"`` (scipy's name): A is symmetric (Hermitian) positive definite; the exact path is Cholesky, and
a matrix whose factorisation fails is not certified (no LU fallback). float16 and bfloat16 input is computed in
float32 and rounded back; its bound includes that rounding (:func:`neuinv.certificate.error_bound`'s
``rounded_to`` form), and an X that overflows the input dtype is not certified.

Transforms: the result is an ``autograd.Function`` with ``setup_context``, a ``vmap`` rule (the batch of a vmapped
call is one more batch dimension of A) and a ``jvp``, so ``torch.func.vmap``, ``grad``, ``jacrev``, ``jvp`` and
their compositions work, with the analytic derivatives d(A^-1) = -A^-1 dA A^-1.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch._library.effects import EffectType

from . import certificate, reference
from .backends import resolve_backend
from .errors import ArgumentDtypeError, ArgumentValueError
from .rules import (CERTIFIED_BELOW, GUARD_RESIDUAL, MAX_ITER_FROM_GUESS, MAX_ITER_FROM_SCALED_TRANSPOSE,
                    MAX_ITERATIONS, NEWTON_SCHULZ_ACCEPT, NewtonSchulzRules, certified, default_tol,
                    second_stage_mask)

METHODS = ("auto", "exact", "newton_schulz")
ASSUME_A = ("gen", "pos")
"""scipy.linalg.solve's names: a general matrix, or a symmetric (Hermitian) positive definite one."""

WORKSPACE_BYTES = 2**30
"""Large batches are processed in chunks whose workspace (the backend's ``workspace_matrices`` n x n
temporaries per matrix) stays under this many bytes."""

HALF_DTYPES = (torch.float16, torch.bfloat16)
"""Computed in float32 and rounded back (:data:`COMPUTE_DTYPE`)."""
COMPUTE_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128) + HALF_DTYPES


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


class InverseResult(NamedTuple):
    """What :func:`batched_inverse_ex` returns: ``X, info = batched_inverse_ex(A)`` unpacks it, and its fields
    have the names of ``torch.linalg.inv_ex``'s result, ``.inverse`` (X) and ``.info``. Unlike torch's ``info``
    (an int32 tensor of A's batch shape, 0 where the inversion succeeded), ``info`` is the
    :class:`InverseInfo` of the call: torch's ``info == 0`` is ``info.certified``."""

    inverse: torch.Tensor
    info: InverseInfo


def batched_inverse(A: torch.Tensor, *, model=None, init=None, tol=None, max_iter=None, max_error=None,
                    method: str = "auto", assume_a: str = "gen", backend: str = "auto",
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of each matrix in A, shape (*, n, n); a drop-in for ``torch.linalg.inv``.

    Raises ``ValueError`` naming the first matrix holding NaN or Inf if any matrix that failed does, else
    ``torch.linalg.LinAlgError`` naming the first matrix that is not positive definite (``assume_a="pos"``),
    singular, numerically singular (no digit certified: ``error_bound`` >= 1) or whose ``error_bound`` exceeds
    ``max_error``. ``out``: a tensor of A's shape, dtype and device that receives X (returned). Bad arguments
    raise as listed in :func:`batched_inverse_ex`; see there for the other arguments.
    """
    _check_arguments(A, model, init, tol, max_iter, max_error, method, assume_a)
    if out is not None:
        _check_out(out, "out", A.shape, A.dtype, A.device, A, init)
    options = dict(model=model, tol=tol, max_iter=max_iter, max_error=max_error, method=method, assume_a=assume_a,
                   backend=backend)
    X, _ = _inverse(A, init, options, raise_failures=True, out=out)
    return X


def batched_inverse_ex(A: torch.Tensor, *, model=None, init=None, tol=None, max_iter=None, max_error=None,
                       method: str = "auto", assume_a: str = "gen", backend: str = "auto",
                       check_errors: bool = False, out: tuple | None = None) -> InverseResult:
    """Inverse of each matrix in A and an :class:`InverseInfo`; never raises for singular input (unless
    ``check_errors``).

    Args:
        A: (*, n, n) float32, float64, complex64, complex128, float16 or bfloat16 tensor (the last two computed
            in float32, returned and certified in their own dtype); never modified. Any strides, and views with
            the conjugate or negative bit set (``A.conj()``, ``torch._neg_view``), which are read as their values.
        model: learned initializer, an ``nn.Module`` mapping (b, n, n) matrices to (b, n, n)
            guesses, with ``in_domain(A) -> bool tensor (b,)``.
        init: (*, n, n) tensor of approximate inverses (a warm start), same dtype and device.
        tol: Newton–Schulz stopping tolerance on ||I - A X||_F / (||A||_F ||X||_F); default eps(dtype) / 2.
        max_iter: most Newton–Schulz steps per matrix; default ``MAX_ITER_FROM_GUESS`` with
            init or model, ``MAX_ITER_FROM_SCALED_TRANSPOSE`` otherwise.
        max_error: largest ``error_bound`` (relative error of X in the Frobenius norm) a matrix may have
            and be ``certified``; default None: any bound below 1.
        method: "auto", "exact" or "newton_schulz": what is computed (see the module docstring).
        assume_a: "gen" (default) or "pos": A symmetric (Hermitian) positive definite; the exact path is then
            Cholesky of A's lower triangle, and a matrix whose factorisation fails is not certified.
        backend: "auto", "torch", "triton", "cpp" or "cuda": where (see ``available_backends()``); "auto"
            takes the fastest that can run A, or the one the environment variable ``NEUINV_BACKEND`` names.
        check_errors: as torch's: raise where a matrix failed (here: is not certified), the error that
            :func:`batched_inverse` raises, after nothing has been written to ``out``. Default False.
        out: (X, info) to write the results into: X of A's shape, dtype and device, info an
            :class:`InverseInfo` (or 4-tuple) of tensors of A's batch shape with the dtypes of its fields
            (bool, float64, int32, bool). No output may share memory (overlapping byte ranges, whatever storage
            holds them) with A, init or another output; out cannot be combined with gradients (as torch's
            ``out=``).

    Returns:
        An :class:`InverseResult` ``(inverse, info)``: X with A's shape, dtype and device (NaN where it is not
        certified), and the :class:`InverseInfo`; with ``out``, those tensors.

    Raises:
        TypeError: A, init or an output is not a tensor, or ``check_errors`` is not a bool (as torch).
        neuinv.errors.ArgumentDtypeError (a ``TypeError`` and a ``RuntimeError``, torch's class): A's dtype is
            not one of the above, or init's or an output's differs from what is expected.
        neuinv.errors.ArgumentValueError (a ``ValueError`` and a ``RuntimeError``): a shape that is not (*, n, n),
            init or an output of the wrong shape or device, an output that overlaps an input or another output, an
            option out of range.

    Gradients flow to A by the analytic rule dA = -X^H G X^H, not through the iterations.
    """
    _check_arguments(A, model, init, tol, max_iter, max_error, method, assume_a)
    _check_flag(check_errors, "check_errors")
    if out is not None:
        _check_out_pair(out, A, init)
    options = dict(model=model, tol=tol, max_iter=max_iter, max_error=max_error, method=method, assume_a=assume_a,
                   backend=backend)
    return _inverse(A, init, options, raise_failures=check_errors, out=out)


def resolved(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A tensor with its conjugate and negative bits resolved (a new tensor holding the values the view reads; the
    tensor itself where neither bit is set), differentiable: what every entry point computes on, once, so that no
    kernel or certificate meets a lazy view. The user's tensor is never modified."""
    if tensor is None:
        return None
    return torch.resolve_neg(torch.resolve_conj(tensor))


def _inverse(A, init, options, raise_failures, out):
    """The inversion through :class:`_BatchedInverse` where autograd or a torch.func transform needs it, else
    directly; then the raise of :func:`batched_inverse` and the copy into ``out``."""
    A, init = resolved(A), resolved(init)
    if _transformed(A, init):
        _refuse_out_with_transforms(out)
        X, *info = _inverse_function().apply(A, init, options, raise_failures)
        return InverseResult(*_written(out, X, InverseInfo(*info), InverseInfo))
    X, info = _invert(A.detach(), None if init is None else init.detach(), **options)
    if raise_failures:
        _raise_if_failed(A, info, options)
    return InverseResult(*_written(out, X, info, InverseInfo))


def _check_flag(value, name: str) -> None:
    """A bool flag (left=, check_errors=): anything else is a TypeError, as torch's argument parser raises."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _refuse_out_with_transforms(out) -> None:
    """out= with gradients or a torch.func transform (not with torch.compile, which takes the Function path)."""
    if out is not None and not torch.compiler.is_compiling():
        raise RuntimeError("neuinv: out= cannot be combined with gradients or torch.func transforms "
                           "(as torch's out= functions)")


def _transformed(*tensors) -> bool:
    """Whether a tensor needs the autograd.Function: it requires a gradient (with grad mode on), or a torch.func
    transform (vmap, grad, jvp) wraps it. Under torch.compile always (dynamo traces the Function; it cannot ask
    functorch whether a tensor is wrapped)."""
    if torch.compiler.is_compiling():
        return True
    for tensor in tensors:
        if tensor is None:
            continue
        if tensor.requires_grad and torch.is_grad_enabled():
            return True
        if torch._C._functorch.is_functorch_wrapped_tensor(tensor):
            return True
    return False


def _written(out, X, info, info_type):
    """(X, info), or their copies into out = (X_out, info_out) (or a bare X_out for batched_inverse)."""
    if out is None:
        return X, info
    if isinstance(out, torch.Tensor):
        return out.copy_(X), info
    X_out, info_out = out
    X_out.copy_(X)
    for target, value in zip(info_out, info):
        target.copy_(value)
    return X_out, info_type(*info_out)


class _BatchedInverse(torch.autograd.Function):
    """The verified inverse as a differentiable function of A (init: no gradient, the result does not depend on
    it): d(A^-1) = -A^-1 dA A^-1, so grad_A = -X^H G X^H. A vmapped call is one call with the vmapped dimension as
    the first batch dimension. (torch.compile traces this class, which has no jvp: dynamo refuses a custom jvp.)"""

    @staticmethod
    def forward(A, init, options, raise_failures):
        X, info = _invert(A, init, **options)
        if raise_failures:
            _raise_if_failed(A, info, options)
        return (X, *info)

    @staticmethod
    def setup_context(ctx, inputs, output):
        X, *info = output
        ctx.mark_non_differentiable(*info)
        ctx.save_for_backward(X)
        ctx.save_for_forward(X)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_X, *unused_info_grads):
        (X,) = ctx.saved_tensors
        if grad_X is None:
            return None, None, None, None
        X_h = X.mH
        return -(X_h @ grad_X @ X_h), None, None, None

    @staticmethod
    def vmap(info, in_dims, A, init, options, raise_failures):
        A = _batch_first(A, in_dims[0], info.batch_size)
        init = None if init is None else _batch_first(init, in_dims[1], info.batch_size)
        return _inverse_function().apply(A, init, options, raise_failures), (0, 0, 0, 0, 0)


class _BatchedInverseWithJvp(_BatchedInverse):
    """:class:`_BatchedInverse` with forward-mode derivatives (torch.func.jvp, jacfwd): dX = -X dA X."""

    @staticmethod
    def jvp(ctx, tangent_A, tangent_init, *unused):
        (X,) = ctx.saved_tensors
        tangent_X = None if tangent_A is None else -(X @ tangent_A @ X)
        return tangent_X, None, None, None, None


def _inverse_function():
    return _BatchedInverse if torch.compiler.is_compiling() else _BatchedInverseWithJvp


def _batch_first(tensor, dim, size):
    """The vmapped dimension of tensor moved to the front, or (dim None) a broadcast one of `size` added."""
    if dim is None:
        return tensor.expand(size, *tensor.shape)
    return tensor.movedim(dim, 0)


def _invert(A, init, *, model, tol, max_iter, max_error, method, assume_a, backend):
    """float16/bfloat16 through float32 (:func:`_invert_half`), every other dtype by :func:`_invert_in_dtype`."""
    if A.dtype in HALF_DTYPES:
        return _invert_half(A, init, model=model, tol=tol, max_iter=max_iter, max_error=max_error, method=method,
                            assume_a=assume_a, backend=backend)
    return _invert_in_dtype(A, init, model=model, tol=tol, max_iter=max_iter, max_error=max_error, method=method,
                            assume_a=assume_a, backend=backend)


def _invert_half(A, init, *, max_error, **options):
    """X_w = the inverse of A (exactly representable in float32) computed and certified in float32 (bound eps_w),
    rounded to A's dtype: ||X - A^-1||_F / ||A^-1||_F <= eps_w + delta (1 + eps_w), delta the rounding of
    :func:`neuinv.certificate.rounding_bound` (neuinv/certificate.py, the rounded_to form); an X that
    overflows A's dtype is not certified."""
    wide = COMPUTE_DTYPE[A.dtype]
    X_w, info = _invert_in_dtype(A.to(wide), None if init is None else init.to(wide), max_error=None, **options)
    X = X_w.to(A.dtype)
    n = A.shape[-1]
    flat = X_w.reshape(-1, n, n) if n else X_w  # (-1, 0, 0) is ambiguous for 0 elements
    delta = certificate.rounding_bound(flat, A.dtype).reshape(info.error_bound.shape) if n else 0.0
    bound = certificate.certified_or_inf(info.error_bound + delta * (1 + info.error_bound))
    bound = torch.where(torch.isfinite(X).flatten(-2).all(dim=-1), bound, torch.full_like(bound, math.inf))
    verdict = certified(bound, max_error)
    X = torch.where(verdict[..., None, None], X, torch.full_like(X, math.nan))
    return X, InverseInfo(verdict, bound, info.iterations, info.fallback)


def _invert_in_dtype(A, init, *, model, tol, max_iter, max_error, method, assume_a, backend):
    """Argument defaults, the model's forward pass, and one call of the backend's operator per chunk."""
    chosen = resolve_backend(backend, A)
    positive_definite = assume_a == "pos"
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
    X0 = init
    if b <= chunk and model is None:  # the common case: one call on A as it is, (*, n, n)
        X, certified, error_bound, iterations, fallback = chosen.invert(A, X0, None, refine, rules, limit,
                                                                              positive_definite)
        return _second_stage(A, X, InverseInfo(certified, error_bound, iterations, fallback), limit,
                             positive_definite)

    A_flat = A.reshape(-1, n, n)
    X0_flat = None if X0 is None else X0.reshape(-1, n, n)
    parts = []
    for start in range(0, max(b, 1), chunk):
        A_part = A_flat[start:start + chunk]
        X0_part, use_guess = None if X0_flat is None else X0_flat[start:start + chunk], None
        if model is not None:  # (a model always means refine: method="exact" with a model is refused)
            X0_part, use_guess = _model_guess(model, A_part, chosen), _model_in_domain(model, A_part)
        parts.append(chosen.invert(A_part, X0_part, use_guess, refine, rules, limit, positive_definite))
    X, certified, error_bound, iterations, fallback = (
        parts[0] if len(parts) == 1 else [torch.cat(field) for field in zip(*parts)])
    info = InverseInfo(certified.reshape(batch_shape), error_bound.reshape(batch_shape),
                       iterations.reshape(batch_shape), fallback.reshape(batch_shape))
    return _second_stage(A, X.reshape(A.shape), info, limit, positive_definite)


def _second_stage(A, X, info, limit, positive_definite):
    """The scale-aware second stage (:func:`second_stage_index`) on the matrices whose first certificate is refused or
    above the threshold: the certificate of :func:`neuinv.certificate.scaled_error_bound` for the X they have, and
    the equilibrated exact path (:func:`neuinv.reference.scaled_exact_inverse`); each matrix keeps the result with the
    smallest bound. Under torch.compile it is the operator ``neuinv::second_stage_inverse``, which the graph calls as
    it is (its subset depends on the data)."""
    n = A.shape[-1]
    flat = (A.reshape(-1, n, n), X.reshape(-1, n, n), info.certified.reshape(-1), info.error_bound.reshape(-1),
            info.fallback.reshape(-1))
    stage = torch.ops.neuinv.second_stage_inverse if torch.compiler.is_compiling() else _second_stage_inverse
    X_flat, certified_mask, error_bound, fallback = stage(*flat, limit, positive_definite)
    batch_shape = info.certified.shape
    return X_flat.reshape(A.shape), InverseInfo(certified_mask.reshape(batch_shape), error_bound.reshape(batch_shape),
                                                info.iterations, fallback.reshape(batch_shape))


def _second_stage_inverse(A, X, certified_mask, bound, fallback, limit: float, positive_definite: bool):
    """:func:`_second_stage` on the flat batch: (X, certified, error_bound, fallback), new tensors where any matrix
    took it, else the inputs themselves."""
    index = second_stage_index(bound, A.dtype, A)
    if index is None:
        return X, certified_mask, bound, fallback
    A_i, X_i, bound_i = A[index], X[index], bound[index]
    kept = torch.isfinite(X_i).flatten(1).all(dim=1)
    bound_kept = torch.where(kept, torch.minimum(bound_i, certificate.scaled_error_bound(A_i, X_i)), bound_i)
    X_new, bound_new = reference.scaled_exact_inverse(A_i, positive_definite)
    better = bound_new < bound_kept
    bound_i = torch.where(better, bound_new, bound_kept)
    verdict_i = certified(bound_i, limit)
    X_i = torch.where(better[:, None, None], X_new, X_i)
    X_i = torch.where(verdict_i[:, None, None], X_i, torch.full_like(X_i, math.nan))
    return (X.index_put((index,), X_i), certified_mask.index_put((index,), verdict_i),
            bound.index_put((index,), bound_i), fallback.index_put((index,), fallback[index] | better))


@torch.library.custom_op("neuinv::second_stage_inverse", mutates_args=())
def _second_stage_inverse_op(A: torch.Tensor, X: torch.Tensor, certified_mask: torch.Tensor, bound: torch.Tensor,
                             fallback: torch.Tensor, limit: float,
                             positive_definite: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    outputs = _second_stage_inverse(A, X, certified_mask, bound, fallback, limit, positive_definite)
    return tuple(output.clone() if output is given else output
                 for output, given in zip(outputs, (X, certified_mask, bound, fallback)))


@_second_stage_inverse_op.register_fake
def _(A, X, certified_mask, bound, fallback, limit, positive_definite):
    return torch.empty_like(X), torch.empty_like(certified_mask), torch.empty_like(bound), torch.empty_like(fallback)


@_second_stage_inverse_op.register_vmap
def _(info, in_dims, *arguments):
    return flat_batch_vmap(_second_stage_inverse_op, info, in_dims, arguments)


def flat_batch_vmap(operator, info, in_dims, arguments):
    """The vmap rule of an operator on flat batches whose tensor arguments share their first dimension: the vmapped
    dimension of each tensor (broadcast where it has none) is merged into that first one, and split off the outputs
    again."""
    size = info.batch_size
    merged = []
    for argument, dim in zip(arguments, in_dims):
        if isinstance(argument, torch.Tensor):
            argument = argument.movedim(dim, 0) if dim is not None else argument.expand(size, *argument.shape)
            argument = argument.reshape(size * argument.shape[1], *argument.shape[2:])
        merged.append(argument)
    outputs = operator(*merged)
    return tuple(output.reshape(size, -1, *output.shape[1:]) for output in outputs), (0,) * len(outputs)


def second_stage_index(bound: torch.Tensor, dtype: torch.dtype, *operands: torch.Tensor) -> torch.Tensor | None:
    """The indices of the flat batch that take the second stage: :func:`neuinv.rules.second_stage_mask` of the
    (b,) first bounds, then only those whose operands ((b, r, c) each) are finite, read for those few only; None where
    there are none. The ``nonzero`` that selects them is the one data-dependent operator of ``batched_inverse_ex`` on
    the compiled backends (a host synchronisation on CUDA)."""
    index = second_stage_mask(bound, dtype).nonzero().squeeze(1)
    if index.numel() == 0:  # the common case: one nonzero over the mask, nothing else
        return None
    for operand in operands:
        index = index[torch.isfinite(operand[index]).flatten(1).all(dim=1)]
    return index if index.numel() else None


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
        raise ArgumentValueError(f"model.in_domain(A) must return a bool tensor of shape {tuple(A.shape[:1])}, got "
                                 f"{getattr(inside, 'dtype', type(inside))} of shape "
                                 f"{tuple(getattr(inside, 'shape', ()))}")
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
        raise ArgumentValueError(f"model(A) must return a tensor of shape {tuple(A.shape)}, "
                                 f"got {tuple(getattr(X0, 'shape', ()))}")
    return X0.to(A.dtype)


def _check_arguments(A, model, init, tol, max_iter, max_error, method, assume_a) -> None:
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"A must be a torch.Tensor, got {type(A).__name__}")
    if A.dim() < 2:
        raise ArgumentValueError(f"A must have shape (*, n, n); got a {A.dim()}-D tensor of shape {tuple(A.shape)}")
    if A.shape[-1] != A.shape[-2]:
        raise ArgumentValueError(f"A must hold square matrices (*, n, n); got shape {tuple(A.shape)}")
    if A.dtype not in SUPPORTED_DTYPES:
        raise ArgumentDtypeError(f"A must be float32, float64, complex64, complex128, float16 or bfloat16; "
                                 f"got {A.dtype}")
    if assume_a not in ASSUME_A:
        raise ArgumentValueError(f"assume_a must be one of {ASSUME_A} (scipy's names), got {assume_a!r}")
    if init is not None and model is not None:
        raise ArgumentValueError("give an initial guess by init or by model, not both")
    if method not in METHODS:
        raise ArgumentValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "exact" and (init is not None or model is not None):
        raise ArgumentValueError("method='exact' uses no initial guess; drop init/model or use method='newton_schulz'")
    if init is not None:
        if not isinstance(init, torch.Tensor):
            raise TypeError(f"init must be a torch.Tensor, got {type(init).__name__}")
        if init.shape != A.shape:
            raise ArgumentValueError(f"init must have A's shape {tuple(A.shape)}, got {tuple(init.shape)}")
        if init.dtype != A.dtype:
            raise ArgumentDtypeError(f"init must have A's dtype {A.dtype}, got {init.dtype}")
        if init.device != A.device:
            raise ArgumentValueError(f"init must be on A's device {A.device}, got {init.device}")
    if model is not None:
        if not callable(model) or not callable(getattr(model, "in_domain", None)):
            raise TypeError("model must be callable and have an in_domain(A) method")
        model_n = getattr(model, "n", None)
        if model_n is not None and model_n != A.shape[-1]:
            raise ArgumentValueError(f"model was built for {model_n}x{model_n} matrices, but A holds "
                                     f"{A.shape[-1]}x{A.shape[-1]} matrices")
    if tol is not None and not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 < tol < float("inf")):
        raise ArgumentValueError(f"tol must be a positive finite number, got {tol!r}")
    if max_iter is not None and not (isinstance(max_iter, int) and not isinstance(max_iter, bool)
                                     and 0 <= max_iter <= MAX_ITERATIONS):
        raise ArgumentValueError(f"max_iter must be an int in [0, {MAX_ITERATIONS}], got {max_iter!r}")
    if max_error is not None and not (isinstance(max_error, (int, float)) and not isinstance(max_error, bool)
                                      and 0 <= max_error < 1):
        raise ArgumentValueError(f"max_error must be a number in [0, 1) (a relative error), got {max_error!r}")


def _raise_if_failed(A: torch.Tensor, info, options) -> None:
    """batched_inverse's policy: raise for the first matrix that is not certified (:func:`raise_first_failure`)."""
    raise_if_not_certified("batched_inverse", A, info.certified, info.error_bound, options["max_error"],
                           options["assume_a"])


def raise_if_not_certified(function: str, A: torch.Tensor, certified_mask: torch.Tensor, error_bound: torch.Tensor,
                           max_error, assume_a: str, operands: tuple = ()) -> None:
    """:func:`raise_first_failure` unless every matrix is certified. Under torch.compile through the operator
    ``neuinv::raise_if_not_certified``, registered with a side effect, so that the check stays in the graph
    without breaking it (the test reads a value)."""
    if torch.compiler.is_compiling():
        torch.ops.neuinv.raise_if_not_certified(function, A.detach(), certified_mask, error_bound, max_error,
                                                assume_a, [operand.detach() for operand in operands])
    elif not bool(certified_mask.all()):
        raise_first_failure(function, A, certified_mask, error_bound, max_error, assume_a, operands=operands)


@torch.library.custom_op("neuinv::raise_if_not_certified", mutates_args=())
def _raise_if_not_certified_op(function: str, A: torch.Tensor, certified_mask: torch.Tensor,
                               error_bound: torch.Tensor, max_error: float | None, assume_a: str,
                               operands: list[torch.Tensor]) -> None:
    if not bool(certified_mask.all()):
        raise_first_failure(function, A, certified_mask, error_bound, max_error, assume_a, operands=tuple(operands))


@_raise_if_not_certified_op.register_fake
def _(function, A, certified_mask, error_bound, max_error, assume_a, operands):
    return None


@_raise_if_not_certified_op.register_vmap
def _(info, in_dims, function, A, certified_mask, error_bound, max_error, assume_a, operands):
    """The check of a vmapped call: the vmapped dimension becomes the first batch dimension."""
    def batch_first(tensor, dim):
        return tensor if dim is None else tensor.movedim(dim, 0)

    _raise_if_not_certified_op(function, batch_first(A, in_dims[1]), batch_first(certified_mask, in_dims[2]),
                               batch_first(error_bound, in_dims[3]), max_error, assume_a,
                               [batch_first(operand, dim) for operand, dim in zip(operands, in_dims[6])])
    return None, None


_raise_if_not_certified_op.register_effect(EffectType.ORDERED)


def raise_first_failure(function: str, A: torch.Tensor, certified_mask: torch.Tensor, error_bound: torch.Tensor,
                        max_error, assume_a: str, operands: tuple = (), offset: tuple[int, ...] = (),
                        scope: str = "the batch") -> None:
    """Raise :func:`failure_error` for the first failed matrix holding NaN or Inf (in A or in the other operands,
    of the batch shape of certified_mask), if any, else for the first failed matrix. A part of a larger batch
    (:mod:`neuinv.dask`) gives its ``offset`` in it and its ``scope`` ("its chunk")."""
    batch = certified_mask.shape
    failed_mask = ~certified_mask
    non_finite = torch.zeros(batch, dtype=torch.bool, device=failed_mask.device)
    for operand in (A,) + operands:
        non_finite = non_finite | ~torch.isfinite(operand).flatten(-2).all(dim=-1).expand(batch)
    non_finite = failed_mask & non_finite
    has_non_finite = bool(non_finite.any())
    index = _first_index(non_finite if has_non_finite else failed_mask)
    bound = float(error_bound[index])
    order = overflow = None
    subnormal = False
    if not has_non_finite and math.isinf(bound):
        matrix = A.expand(*batch, *A.shape[-2:])[index]
        if assume_a == "pos":
            order = _not_positive_definite(matrix)
        if order is None:
            rhs = operands[0].expand(*batch, *operands[0].shape[-2:])[index] if operands else None
            overflow = _overflow(matrix, rhs, assume_a == "pos")
            subnormal = any(bool(certificate.has_subnormal(M[None])) for M in (matrix, rhs) if M is not None)
    global_index = tuple(i + o for i, o in zip(index, offset)) if offset else index
    raise failure_error(function, global_index, has_non_finite, bound, int(failed_mask.sum()), A.dtype, max_error,
                        scope=scope, not_positive_definite_at=order, overflow=overflow, subnormal=subnormal,
                        holder=" or its right-hand side" if operands else "")


def _overflow(matrix: torch.Tensor, rhs: torch.Tensor | None, positive_definite: bool) -> float | None:
    """log10 of the largest |entry| of the inverse of one (n, n) matrix (of the solution, given the right-hand side
    (n, k)) where that overflows the matrix's dtype although the matrix is certified non-singular (its equilibrated
    inverse in float64 / complex128 certified by :func:`neuinv.certificate.scaled_error_bound`); else None."""
    A_s, X_s, p, q, accepted = reference.equilibrated_inverse(matrix[None], positive_definite)
    if not bool(accepted.all()) or not bool(torch.isfinite(certificate.scaled_error_bound(A_s, X_s)).all()):
        return None
    exponent = q[:, :, None] + p[:, None, :]
    if rhs is not None:
        B_s, f = reference.scaled_right_hand_sides(rhs[None], p, A_s.dtype)
        X_s, exponent = torch.bmm(X_s, B_s), q[:, :, None] + f[:, None, None]
    magnitude = X_s.abs().clamp_min(1e-300).log2() + exponent
    largest = float(magnitude.amax())
    limit = math.log2(torch.finfo(matrix.dtype).max)
    return largest * math.log10(2) if largest > limit else None


def failure_error(function: str, index: tuple[int, ...], non_finite: bool, error_bound: float, failed: int,
                  dtype: torch.dtype, max_error, *, scope: str = "the batch",
                  not_positive_definite_at: int | None = None, overflow: float | None = None,
                  subnormal: bool = False, holder: str = "") -> Exception:
    """The exception neuinv.<function> raises when A[index] is the first matrix it names (one wording for every
    entry point: the single-process functions, :mod:`neuinv.distributed` and :mod:`neuinv.dask`, which name a
    global index): ``ValueError`` if it holds NaN or Inf, else ``torch.linalg.LinAlgError``: not positive
    definite (its Cholesky factorisation fails at the leading minor of order ``not_positive_definite_at``),
    non-singular with an inverse or solution that overflows ``dtype`` (``overflow``: log10 of its largest entry),
    not certified while it (or its right-hand side) holds subnormal entries (``subnormal``), singular or
    numerically singular (error_bound +inf), or certified above ``max_error``; ``failed`` matrices of
    ``scope`` failed in all; ``holder`` names what else may hold the NaN (" or its right-hand side")."""
    name = "A" if not index else "A[" + ", ".join(map(str, index)) + "]"
    others = (f" ({failed} matrices of {scope} failed; {function}_ex returns the others)" if failed > 1 else "")
    if non_finite:
        return ValueError(f"neuinv.{function}: {name}{holder} contains NaN or Inf{others}")
    if not_positive_definite_at is not None:
        reason = (f"is not positive definite (assume_a='pos'): its Cholesky factorisation fails at the leading "
                  f"minor of order {not_positive_definite_at}")
    elif overflow is not None:
        reason = (f"is not singular, but its {_what(function)} overflows {dtype} (largest |entry| about "
                  f"1e{overflow:.0f}, above {torch.finfo(dtype).max:.3g}); scale {'A or B' if 'solve' in function else 'A'}")
    elif subnormal:
        reason = (f"{holder.strip() + ' ' if holder else ''}holds subnormal entries (below "
                  f"{torch.finfo(COMPUTE_DTYPE.get(dtype, dtype)).smallest_normal:.3g}), which this path does not "
                  f"certify: a thread that flushes denormals would read them as zero. It may be singular too; scale "
                  f"{'A and B' if 'solve' in function else 'A'} by a power of two")
    elif math.isinf(error_bound):
        reason = (f"is singular or numerically singular in {COMPUTE_DTYPE.get(dtype, dtype)}: no digit "
                  f"of its {_what(function)} can be certified")
    else:
        what = _what(function)
        article = "an" if what[0] in "aeiou" else "a"
        reason = (f"has {article} {what} certified only to a relative error of {error_bound:.3g}, "
                  f"above max_error = {max_error:g}")
    return torch.linalg.LinAlgError(f"neuinv.{function}: {name} {reason}{others}")


def _what(function: str) -> str:
    return "solution" if "solve" in function else "inverse"


def _not_positive_definite(matrix: torch.Tensor) -> int | None:
    """The order of the first leading minor at which the Cholesky factorisation of one (n, n) matrix fails (in its
    compute dtype), None where it succeeds."""
    compute = COMPUTE_DTYPE.get(matrix.dtype, matrix.dtype)
    L, info = torch.linalg.cholesky_ex(matrix.to(compute))
    if int(info) > 0:
        return int(info)
    pivots = torch.diagonal(L).real
    bad = (~((pivots > 0) & torch.isfinite(pivots))).nonzero()
    return int(bad[0]) + 1 if bad.numel() else None


def _check_out(tensor, name: str, shape, dtype, device, *inputs) -> None:
    """out= tensors: exactly the expected shape, dtype and device (no resizing), no element stored twice, sharing
    no memory (by byte ranges: :func:`_share_memory`) with any of ``inputs`` (the inputs and the outputs checked
    before it)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.shape != shape:
        raise ArgumentValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
    if tensor.dtype != dtype:
        raise ArgumentDtypeError(f"{name} must have dtype {dtype}, got {tensor.dtype}")
    if tensor.device != device:
        raise ArgumentValueError(f"{name} must be on device {device}, got {tensor.device}")
    if any(stride == 0 and size > 1 for size, stride in zip(tensor.shape, tensor.stride())):
        raise ArgumentValueError(f"{name} must not share memory with itself (an expanded tensor: stride 0 along a "
                                 f"dimension of size > 1)")
    for other in inputs:
        if other is not None and _share_memory(tensor, other):
            raise ArgumentValueError(f"{name} must not share memory with the input or another output "
                                     f"(out= may not alias A, B, init or itself)")


def _share_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the byte ranges a and b address (from the lowest to the highest byte of their elements) overlap on
    one device, whatever storages hold them: two tensors over one numpy buffer (``torch.from_numpy`` of two
    overlapping slices) have storages of their own. Conservative: two strided views that interleave (even and
    odd elements) count as overlapping."""
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False

    def span(t):
        steps = [(size - 1) * stride for size, stride in zip(t.shape, t.stride())]
        low, high = sum(min(0, step) for step in steps), sum(max(0, step) for step in steps)
        return t.data_ptr() + low * t.element_size(), t.data_ptr() + (high + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


INFO_DTYPES = (torch.bool, torch.float64, torch.int32, torch.bool)
"""The dtypes of the fields of :class:`InverseInfo` (certified, error_bound, iterations, fallback)."""


def _check_out_pair(out, A, init) -> None:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError("out must be a pair (X, info) with info an InverseInfo of four tensors")
    X_out, info_out = out
    _check_out(X_out, "out[0] (X)", A.shape, A.dtype, A.device, A, init)
    if not (isinstance(info_out, (tuple, list)) and len(info_out) == len(InverseInfo._fields)):
        raise TypeError("out[1] must be an InverseInfo (certified, error_bound, iterations, fallback)")
    for i, (field, tensor, dtype) in enumerate(zip(InverseInfo._fields, info_out, INFO_DTYPES)):
        _check_out(tensor, f"out[1].{field}", A.shape[:-2], dtype, A.device, A, init, X_out, *info_out[:i])


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])
