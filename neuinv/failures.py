"""The wording of failures: the exception every entry point raises for the first matrix (or system) that is not
certified, and the check that raises it (kept in the graph under torch.compile)."""
from __future__ import annotations

import math

import torch
from torch._library.effects import EffectType

from . import certificate, reference
from .arguments import COMPUTE_DTYPE


def raise_if_not_certified(function: str, A: torch.Tensor, certified_mask: torch.Tensor, error_bound: torch.Tensor,
                           max_error, assume_a: str, operands: tuple = ()) -> None:
    """:func:`raise_first_failure` unless every matrix is certified. Under torch.compile through the operator
    ``neuinv::raise_if_not_certified``, registered with a side effect, so that the check stays in the graph
    without breaking it (the test reads a value)."""
    if torch.compiler.is_compiling():
        torch.ops.neuinv.raise_if_not_certified(function, A.detach(), certified_mask, error_bound, max_error,
                                                assume_a, [operand.detach() for operand in operands])
    elif not (certified_mask.item() if certified_mask.numel() == 1 else bool(certified_mask.all())):
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
    order = overflow = span = None
    subnormal = False
    if not has_non_finite and math.isinf(bound):
        matrix = A.expand(*batch, *A.shape[-2:])[index]
        if assume_a == "pos":
            order = _not_positive_definite(matrix)
        if order is None:
            rhs = operands[0].expand(*batch, *operands[0].shape[-2:])[index] if operands else None
            overflow, span = _overflow(matrix, rhs, assume_a == "pos")
            subnormal = any(bool(certificate.has_subnormal(M.to(COMPUTE_DTYPE.get(M.dtype, M.dtype))[None]))
                            for M in (matrix, rhs) if M is not None)  # (half precision is computed in float32)
    global_index = tuple(i + o for i, o in zip(index, offset)) if offset else index
    raise failure_error(function, global_index, has_non_finite, bound, int(failed_mask.sum()), A.dtype, max_error,
                        scope=scope, not_positive_definite_at=order, overflow=overflow, span=span,
                        subnormal=subnormal,
                        holder=" or its right-hand side" if operands else "")


def _overflow(matrix: torch.Tensor, rhs: torch.Tensor | None,
              positive_definite: bool) -> tuple[float | None, tuple[float, float] | None]:
    """(overflow, span) for one (n, n) matrix certified non-singular (its equilibrated inverse in float64 /
    complex128 certified by :func:`neuinv.certificate.scaled_error_bound`), else (None, None). overflow: log10 of
    the largest |entry| of the inverse (of the solution, given the right-hand side (n, k)) where that overflows the
    matrix's dtype. span: (log10 of the smallest, of the largest) nonzero |entry| of the solution where they lie
    too far apart for the equilibrated solve to scale the right-hand side exactly
    (:func:`neuinv.reference.scaled_right_hand_sides`), which holds no subnormal entry."""
    A_s, X_s, p, q, accepted = reference.equilibrated_inverse(matrix[None], positive_definite)
    if not bool(accepted.all()) or not bool(torch.isfinite(certificate.scaled_error_bound(A_s, X_s)).all()):
        return None, None
    exponent = q[:, :, None] + p[:, None, :]
    exact = True
    if rhs is not None:
        B_s, f, exact_B = reference.scaled_right_hand_sides(rhs[None], p, A_s.dtype)
        X_s, exponent, exact = torch.bmm(X_s, B_s), q[:, :, None] + f[:, None, None], bool(exact_B.all())
    nonzero = X_s != 0
    if not bool(nonzero.any()):  # no right-hand sides, or a zero solution: nothing to overflow
        return None, None
    magnitude = (X_s.abs().where(nonzero, 1.0).log2() + exponent)[nonzero] * math.log10(2)
    largest = float(magnitude.amax())
    if largest > math.log10(torch.finfo(matrix.dtype).max):
        return largest, None
    spans = not exact and not bool(certificate.has_subnormal(rhs[None]))  # not a subnormal entry's own loss
    return None, ((float(magnitude.amin()), largest) if spans else None)


def failure_error(function: str, index: tuple[int, ...], non_finite: bool, error_bound: float, failed: int,
                  dtype: torch.dtype, max_error, *, scope: str = "the batch",
                  not_positive_definite_at: int | None = None, overflow: float | None = None,
                  span: tuple[float, float] | None = None, subnormal: bool = False,
                  holder: str = "") -> Exception:
    """The exception neuinv.<function> raises when A[index] is the first matrix it names (one wording for every
    entry point: the single-process functions, :mod:`neuinv.distributed` and :mod:`neuinv.dask`, which name a
    global index): ``ValueError`` if it holds NaN or Inf, else ``torch.linalg.LinAlgError``: not positive
    definite (its Cholesky factorisation fails at the leading minor of order ``not_positive_definite_at``),
    non-singular with an inverse or solution that overflows ``dtype`` (``overflow``: log10 of its largest entry),
    non-singular with a solution whose entries span more than the solve's certificate scales exactly (``span``:
    log10 of its smallest and largest nonzero entries),
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
    elif span is not None:
        reason = (f"is not singular (its inverse is certified), but its solution's entries span 1e{span[0]:.0f} to "
                  f"1e{span[1]:.0f}, a range the solution's certificate cannot scale exactly in "
                  f"{COMPUTE_DTYPE.get(dtype, dtype)}; batched_inverse certifies its inverse")
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


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])
