"""The inversion itself, after the checks: argument defaults, the model's guess, the backend's operator on chunks of
the batch, the half-precision route through float32 and the scale-aware second stage (what is computed:
:mod:`neuinv.inverse`; the rules: :mod:`neuinv.rules`)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import certificate, reference
from .arguments import COMPUTE_DTYPE, HALF_DTYPES, CallOptions, written
from .backends import resolve_backend
from .errors import ArgumentValueError
from .failures import raise_if_not_certified
from .rules import (BADLY_SCALED_SPREAD, CERTIFIED_BELOW, SCALED_SECOND_STAGE_ABOVE, certified, newton_schulz_rules,
                    second_stage_mask, second_stage_threshold, spreads)

WORKSPACE_BYTES = 2**30
"""Large batches are processed in chunks whose workspace (the backend's ``workspace_matrices`` n x n
temporaries per matrix) stays under this many bytes."""


class InverseInfo(NamedTuple):
    """Per-matrix report of :func:`neuinv.batched_inverse_ex`; each field has A's batch shape.

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


INFO_DTYPES = (torch.bool, torch.float64, torch.int32, torch.bool)
"""The dtypes of the fields of :class:`InverseInfo` (certified, error_bound, iterations, fallback)."""


def invert_or_raise(A, init, options: CallOptions, raise_failures: bool, out=None):
    """:func:`invert`, its results written into ``out`` where given (X, or (X, info): :func:`operator_outputs`),
    then (``raise_failures``) batched_inverse's raise for the first matrix that is not certified
    (:func:`neuinv.failures.raise_first_failure`): when it raises, out holds the results, X NaN where not
    certified."""
    X, info = invert(A, init, options, operator_outputs(out, A))
    return written_then_raised(A, X, info, options, raise_failures, out)


def written_then_raised(A, X, info, options: CallOptions, raise_failures: bool, out=None):
    """(X, info) written into ``out`` where given (:func:`neuinv.arguments.written`), then (``raise_failures``)
    batched_inverse's raise for the first matrix of A that is not certified."""
    if out is not None:
        X, info = written(out, X, info, InverseInfo)
    if raise_failures:
        raise_if_not_certified("batched_inverse", A, info.certified, info.error_bound, options.max_error,
                               options.assume_a)
    return X, info


def operator_outputs(out, A) -> tuple | None:
    """The tensors the backend's operator writes (X, certified, error_bound, iterations, fallback) into: out's own
    (with fresh info fields where out is X alone) where they are contiguous, without math bits, writable in place
    (no inference tensor outside inference mode) and A is computed in its own dtype, in eager mode; else None, and
    the results are copied into out afterwards (the operators bump the outputs' version counters, as torch's
    in-place operations do). What the second stage changes is
    copied in too (:func:`neuinv.arguments.written` skips the tensors that are out's already)."""
    if out is None or torch.compiler.is_compiling() or A.dtype in HALF_DTYPES or A.shape[-1] == 0:
        return None
    X_out, info_out = (out, None) if isinstance(out, torch.Tensor) else out
    if info_out is None:
        info_out = [torch.empty(A.shape[:-2], dtype=dtype, device=A.device) for dtype in INFO_DTYPES]
    outputs = (X_out, *info_out)
    if all(t.is_contiguous() and not t.is_conj() and not t.is_neg()
           and (torch.is_inference_mode_enabled() or not t.is_inference()) for t in outputs):
        return outputs
    return None  # (an inference tensor outside inference mode: torch's copy_ refuses it, as every in-place write)


def invert(A, init, options: CallOptions, into=None):
    """(X, :class:`InverseInfo`) for checked arguments (A and init resolved: :func:`neuinv.arguments.resolved`):
    float16/bfloat16 through float32 (:func:`_invert_half`), every other dtype by :func:`_invert_in_dtype`, whose
    operator writes into ``into`` where given (:func:`operator_outputs`)."""
    if A.dtype in HALF_DTYPES:
        return _invert_half(A, init, options)
    return _invert_in_dtype(A, init, options, into)


def _invert_half(A, init, options):
    """X_w = the inverse of A (exactly representable in float32) computed and certified in float32 (bound eps_w),
    rounded to A's dtype: ||X - A^-1||_F / ||A^-1||_F <= eps_w + delta (1 + eps_w), delta the rounding of
    :func:`neuinv.certificate.rounding_bound` (neuinv/certificate.py, the rounded_to form); an X that
    overflows A's dtype is not certified."""
    wide = COMPUTE_DTYPE[A.dtype]
    X_w, info = _invert_in_dtype(A.to(wide), None if init is None else init.to(wide),
                                 options._replace(max_error=None))
    X = X_w.to(A.dtype)
    n = A.shape[-1]
    flat = X_w.reshape(-1, n, n) if n else X_w  # (-1, 0, 0) is ambiguous for 0 elements
    delta = certificate.rounding_bound(flat, A.dtype).reshape(info.error_bound.shape) if n else 0.0
    bound = certificate.certified_or_inf(info.error_bound + delta * (1 + info.error_bound))
    bound = torch.where(torch.isfinite(X).flatten(-2).all(dim=-1), bound, torch.full_like(bound, math.inf))
    verdict = certified(bound, options.max_error)
    X = torch.where(verdict[..., None, None], X, torch.full_like(X, math.nan))
    return X, InverseInfo(verdict, bound, info.iterations, info.fallback)


def _invert_in_dtype(A, init, options, into=None):
    """Argument defaults, the model's forward pass, and one call of the backend's operator per chunk, into the
    tensors ``into`` where given."""
    chosen = resolve_backend(options.backend, A)
    n = A.shape[-1]
    if n == 0:
        batch_shape = A.shape[:-2]
        info = InverseInfo(torch.ones(batch_shape, dtype=torch.bool, device=A.device),
                           torch.zeros(batch_shape, dtype=torch.float64, device=A.device),
                           torch.zeros(batch_shape, dtype=torch.int32, device=A.device),
                           torch.zeros(batch_shape, dtype=torch.bool, device=A.device))
        return A.new_empty(A.shape), info

    model, method = options.model, options.method
    positive_definite = options.assume_a == "pos"
    has_guess = init is not None or model is not None
    refine = method == "newton_schulz" or (method == "auto" and has_guess)
    rules = newton_schulz_rules(A.dtype, options.tol, options.max_iter, has_guess)
    limit = CERTIFIED_BELOW if options.max_error is None else float(options.max_error)
    # The exact path's X is kept where its first bound exceeds max_error, for the second stage to certify it
    # componentwise (its verdict and NaN follow there); Newton-Schulz needs max_error to leave for the exact path.
    operator_limit = limit if refine else CERTIFIED_BELOW
    b, workspace_bytes = A.numel() // (n * n), chosen.workspace_matrices * n * n * A.element_size()
    X0 = init
    if model is None and (b * workspace_bytes <= WORKSPACE_BYTES or b == 1):
        # the common case: one call on A as it is, (*, n, n)
        if into is None:
            X, *info = chosen.invert(A, X0, None, refine, rules, operator_limit, positive_definite)
        else:
            chosen.invert_into(A, X0, None, refine, rules, operator_limit, positive_definite, into)
            X, *info = into
        X, info = _exact_path_where_refused(chosen, A, X, InverseInfo(*info), rules, operator_limit, positive_definite)
        return _second_stage(A, X, info, limit, positive_definite, chosen.name == "torch")

    batch_shape, chunk = A.shape[:-2], max(1, WORKSPACE_BYTES // workspace_bytes)
    A_flat = A.reshape(-1, n, n)
    X0_flat = None if X0 is None else X0.reshape(-1, n, n)
    # (with a model, whose guesses could alias out and whose errors could come after a chunk was written, the
    # results are copied into out at the end)
    flat_into = None if into is None or model is not None else (into[0].view(-1, n, n),
                                                                 *(field.view(-1) for field in into[1:]))
    parts = []
    for start in range(0, max(b, 1), chunk):
        A_part = A_flat[start:start + chunk]
        X0_part, use_guess = None if X0_flat is None else X0_flat[start:start + chunk], None
        if model is not None:  # (a model always means refine: method="exact" with a model is refused)
            X0_part, use_guess = _model_guess(model, A_part, chosen), _model_in_domain(model, A_part)
        if flat_into is None:
            parts.append(chosen.invert(A_part, X0_part, use_guess, refine, rules, operator_limit,
                                       positive_definite))
        else:
            chosen.invert_into(A_part, X0_part, use_guess, refine, rules, operator_limit, positive_definite,
                               tuple(output[start:start + chunk] for output in flat_into))
    X, certified, error_bound, iterations, fallback = (
        flat_into if flat_into is not None else parts[0] if len(parts) == 1
        else [torch.cat(field) for field in zip(*parts)])
    info = InverseInfo(certified.reshape(batch_shape), error_bound.reshape(batch_shape),
                       iterations.reshape(batch_shape), fallback.reshape(batch_shape))
    X, info = _exact_path_where_refused(chosen, A, X.reshape(A.shape), info, rules, operator_limit, positive_definite)
    return _second_stage(A, X, info, limit, positive_definite, chosen.name == "torch")


def _exact_path_where_refused(chosen, A, X, info, rules, operator_limit, positive_definite):
    """(X, info) with the exact path's X put back where the operator's max_error (``operator_limit``, below
    CERTIFIED_BELOW only in refining calls) refused it with a finite bound, so that the second stage can certify that
    X componentwise as it does for an exact-path call: those matrices inverted again on the exact path alone (the same
    per-matrix arithmetic, so the same X and bound); still uncertified here. Under torch.compile nothing is put back
    (a data-dependent subset): the second stage then has only its own X."""
    if operator_limit >= CERTIFIED_BELOW or torch.compiler.is_compiling() or not X.numel():
        return X, info
    n = A.shape[-1]
    bound = info.error_bound.reshape(-1)
    refused = info.fallback.reshape(-1) & ~info.certified.reshape(-1) & (bound < CERTIFIED_BELOW)
    index = refused.nonzero().squeeze(1)
    if index.numel() == 0:
        return X, info
    X_i, _, bound_i, _, _ = chosen.invert(A.reshape(-1, n, n)[index], None, None, False, rules, CERTIFIED_BELOW,
                                          positive_definite)
    X = X.reshape(-1, n, n).index_put((index,), X_i).reshape(A.shape)
    return X, info._replace(error_bound=bound.index_put((index,), bound_i).reshape(info.error_bound.shape))


def _second_stage(A, X, info, limit, positive_definite, torch_path):
    """The scale-aware second stage (:func:`second_stage_index`) on the exact path's matrices whose certificate is
    refused or above the threshold: the certificate of :func:`neuinv.certificate.scaled_error_bound` for the X they have, and
    the equilibrated exact path (:func:`neuinv.reference.scaled_exact_inverse`); each matrix keeps the result with the
    smallest bound. Under torch.compile it is the operator ``neuinv::second_stage_inverse``, which the graph calls as
    it is (its subset depends on the data)."""
    if all_below_second_stage(info.error_bound, A.dtype, limit, torch_path):
        return X, info
    n = A.shape[-1]
    flat = (A.reshape(-1, n, n), X.reshape(-1, n, n), info.certified.reshape(-1), info.error_bound.reshape(-1),
            info.fallback.reshape(-1))
    stage = torch.ops.neuinv.second_stage_inverse if torch.compiler.is_compiling() else _second_stage_inverse
    X_flat, certified_mask, error_bound, fallback = stage(*flat, limit, positive_definite, torch_path)
    batch_shape = info.certified.shape
    return X_flat.reshape(A.shape), InverseInfo(certified_mask.reshape(batch_shape), error_bound.reshape(batch_shape),
                                                info.iterations, fallback.reshape(batch_shape))


def _second_stage_inverse(A, X, certified_mask, bound, fallback, limit: float, positive_definite: bool,
                          torch_path: bool):
    """:func:`_second_stage` on the flat batch: (X, certified, error_bound, fallback), new tensors where any matrix
    took it, else the inputs themselves."""
    index = second_stage_index(bound, A.dtype, A, exact_path=fallback, torch_path=torch_path, limit=limit)
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
                             fallback: torch.Tensor, limit: float, positive_definite: bool,
                             torch_path: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    outputs = _second_stage_inverse(A, X, certified_mask, bound, fallback, limit, positive_definite, torch_path)
    return tuple(output.clone() if output is given else output
                 for output, given in zip(outputs, (X, certified_mask, bound, fallback)))


@_second_stage_inverse_op.register_fake
def _(A, X, certified_mask, bound, fallback, limit, positive_definite, torch_path):
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


def all_below_second_stage(bound: torch.Tensor, dtype: torch.dtype, limit: float = math.inf,
                           torch_path: bool = False) -> bool:
    """Whether every first bound is at most both the second stage's lowest threshold
    (:func:`neuinv.rules.second_stage_threshold`; ``torch_path``: the first stage ran on backend "torch") and
    ``limit``, so that no matrix (system) takes the second stage: one reduction and one host read decide the common
    case without building :func:`second_stage_index`. False for an empty batch, and under torch.compile, whose graph
    calls the stage's operator."""
    if torch.compiler.is_compiling() or not bound.numel():
        return False
    largest = bound.item() if bound.numel() == 1 else float(bound.max())  # (one value: no reduction to launch)
    return largest <= min(second_stage_threshold(dtype, torch_path), limit)


def second_stage_index(bound: torch.Tensor, dtype: torch.dtype, A: torch.Tensor, *operands: torch.Tensor,
                       exact_path: torch.Tensor | None = None, torch_path: bool = False,
                       limit: float = math.inf) -> torch.Tensor | None:
    """The indices of the flat batch that take the second stage: :func:`neuinv.rules.second_stage_mask` of the
    (b,) first bounds and the (b, n, n) matrices A, and every first bound above ``limit`` (the caller's
    ``max_error``: a bound that would refuse is re-evaluated first, whatever its size); among the exact path's
    results where ``exact_path``, an inverse's ``fallback``, is given (``torch_path``: the first stage ran on backend
    "torch"); then only those whose A and other operands ((b, r, c) each) are finite; None where there are none. On
    the torch path the diagonals of the matrices above the lower threshold decide which ones the rule itself reads.
    Called where
    :func:`all_below_second_stage` could not rule the stage out: that read of the largest bound is the one host
    synchronisation of ``batched_inverse_ex`` on the compiled backends in the common case, the ``nonzero`` here a
    second one where some bound is above the threshold."""
    above = (bound > second_stage_threshold(dtype, torch_path)) | (bound > limit)
    index = (above if exact_path is None else above & exact_path).nonzero().squeeze(1)
    if index.numel() == 0:
        return None
    if torch_path:
        diagonal = torch.diagonal(A, dim1=-2, dim2=-1)[index].abs()
        spread = spreads(diagonal, BADLY_SCALED_SPREAD ** 2)  # implied by the rule
        index = index[(bound[index] > SCALED_SECOND_STAGE_ABOVE[dtype]) | spread | (bound[index] > limit)]
        index = index[second_stage_mask(bound[index], dtype, A[index], torch_path) | (bound[index] > limit)]
    for operand in (A, *operands):
        index = index[torch.isfinite(operand[index]).flatten(1).all(dim=1)]
    return index if index.numel() else None


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
            X0 = model(A.to(model_dtype, copy=True))  # (a model that writes into its input leaves A as it was)
    if not isinstance(X0, torch.Tensor) or X0.shape != A.shape:
        raise ArgumentValueError(f"model(A) must return a tensor of shape {tuple(A.shape)}, "
                                 f"got {tuple(getattr(X0, 'shape', ()))}")
    return X0.to(A.dtype)


