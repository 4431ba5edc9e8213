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

from typing import NamedTuple

import torch

from .arguments import CallOptions, check_arguments, check_flag, check_out, refuse_out_with_transforms, resolved
from .pipeline import INFO_DTYPES, WORKSPACE_BYTES, InverseInfo, invert_or_raise, written_then_raised
from .transforms import inverse_function, transformed

__all__ = ["INFO_DTYPES", "WORKSPACE_BYTES", "InverseInfo", "InverseResult", "batched_inverse", "batched_inverse_ex"]


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
    """Inverse of each matrix in A, shape (*, n, n), every one certified; a drop-in for ``torch.linalg.inv``.

    Without ``max_error`` a matrix counts as certified when its ``error_bound`` is below 1, i.e. at least one
    correct digit; pass ``max_error`` (e.g. 1e-6) to demand more. :func:`batched_inverse_ex` returns the bounds.

    Args:
        A: (*, n, n) float32, float64, complex64, complex128, float16 or bfloat16 tensor, CPU or CUDA; never
            modified.
        model: learned initializer whose guesses are refined where ``model.in_domain(A)``; default None.
        init: (*, n, n) approximate inverses (a warm start), A's dtype and device; default None.
        tol: Newton–Schulz stopping tolerance; default eps(dtype) / 2 (:func:`neuinv.default_tol`).
        max_iter: most Newton–Schulz steps per matrix; default 10 with init or model, 64 otherwise.
        max_error: largest ``error_bound`` (relative error of X, Frobenius norm) accepted; default None: below 1.
        method: "auto" (default), "exact" or "newton_schulz", as in :func:`batched_inverse_ex`.
        assume_a: "gen" (default) or "pos" (symmetric/Hermitian positive definite: Cholesky).
        backend: "auto" (default), "torch", "triton", "cpp" or "cuda".
        out: tensor of A's shape, dtype and device that receives X (and is returned); the compiled and Triton
            kernels write into it directly where it is contiguous. Written before a raise, NaN where not certified.

    Returns:
        torch.Tensor: X, A^-1 for every matrix, with A's shape, dtype and device (``out`` if given).

    Raises:
        ValueError: a matrix that is not certified holds NaN or Inf; the message names the first such matrix.
        torch.linalg.LinAlgError: otherwise, a matrix is not certified; the message names the first one and why:
            not positive definite (``assume_a="pos"``), singular or numerically singular (``error_bound`` +inf,
            no digit certified), an inverse that overflows A's dtype, subnormal entries the path cannot certify,
            or an ``error_bound`` above ``max_error``.
        TypeError: an argument that is not a tensor.
        neuinv.ArgumentDtypeError: a dtype that is not supported or does not match A's.
        neuinv.ArgumentValueError: a bad shape, device or option value, an ``out`` that overlaps an input
            (the full list: :func:`batched_inverse_ex`).

    Examples:
        >>> A = torch.randn(1000, 8, 8, dtype=torch.float64) + 8 * torch.eye(8, dtype=torch.float64)
        >>> X = neuinv.batched_inverse(A, max_error=1e-10)
        >>> torch.allclose(X @ A, torch.eye(8, dtype=torch.float64))
        True
    """
    options = CallOptions(model, tol, max_iter, max_error, method, assume_a, backend)
    check_arguments(A, init, options)
    if out is not None:
        check_out(out, "out", A.shape, A.dtype, A.device, A, init)
    X, _ = _inverse(A, init, options, raise_failures=True, out=out)
    return X


def batched_inverse_ex(A: torch.Tensor, *, model=None, init=None, tol=None, max_iter=None, max_error=None,
                       method: str = "auto", assume_a: str = "gen", backend: str = "auto",
                       check_errors: bool = False, out: tuple | None = None) -> InverseResult:
    """Inverse of each matrix in A and an :class:`InverseInfo`; never raises for singular input (unless
    ``check_errors``).

    Gradients flow to A by the analytic rule dA = -X^H G X^H, not through the iterations.

    Args:
        A: (*, n, n) float32, float64, complex64, complex128, float16 or bfloat16 tensor (the last two computed
            in float32, returned and certified in their own dtype); never modified. Any strides, and views with
            the conjugate or negative bit set (``A.conj()``, ``torch._neg_view``), which are read as their values.
        model: learned initializer, an ``nn.Module`` mapping (b, n, n) matrices to (b, n, n)
            guesses, with ``in_domain(A) -> bool tensor (b,)``.
        init: (*, n, n) tensor of approximate inverses (a warm start), same dtype and device.
        tol: Newton–Schulz stopping tolerance on ||I - A X||_F / (||A||_F ||X||_F); default eps(dtype) / 2.
        max_iter: most Newton–Schulz steps per matrix; default 10 with init or model, 64 from the scaled
            transpose (the documentation's [The rules][neuinv.rules] page).
        max_error: largest ``error_bound`` (relative error of X in the Frobenius norm) a matrix may have
            and be ``certified``; default None: any bound below 1 (at least one correct digit) is accepted. A
            matrix whose first bound exceeds it is certified again by the scale-aware second stage (equilibrated,
            componentwise; :data:`neuinv.rules.SCALED_SECOND_STAGE_ABOVE`) before it counts as refused.
        method: what is computed. "auto" (default): Newton–Schulz when init or model gives a guess, else the
            exact path. "exact": Gauss–Jordan or LU with partial pivoting (Cholesky with ``assume_a="pos"``);
            refused with init or model. "newton_schulz": Newton–Schulz from init, model or the scaled transpose. Whatever
            does not converge or certify takes the exact path ([The rules][neuinv.rules]).
        assume_a: "gen" (default) or "pos": A symmetric (Hermitian) positive definite; the exact path is then
            Cholesky of A's lower triangle, and a matrix whose factorisation fails is not certified.
        backend: "auto", "torch", "triton", "cpp" or "cuda": where (see ``available_backends()``); "auto"
            takes the fastest that can run A, or the one the environment variable ``NEUINV_BACKEND`` names.
        check_errors: as torch's: raise where a matrix failed (here: is not certified), the error that
            :func:`batched_inverse` raises, after the results have been written into ``out`` (X NaN where not
            certified; ``torch.linalg.inv(A, out=X)`` also writes X before it raises). Default False.
        out: (X, info) to write the results into: X of A's shape, dtype and device, info an
            :class:`InverseInfo` (or 4-tuple) of tensors of A's batch shape with the dtypes of its fields
            (bool, float64, int32, bool). No output may share memory (overlapping byte ranges, whatever storage
            holds them) with A, init or another output; out cannot be combined with gradients (as torch's
            ``out=``). The compiled and Triton kernels write into contiguous outputs directly.

    Returns:
        InverseResult: ``(inverse, info)``, X with A's shape, dtype and device (NaN where it is not
        certified), and the :class:`InverseInfo`; with ``out``, those tensors.

    Raises:
        TypeError: A, init or an output is not a tensor, or ``check_errors`` is not a bool (as torch).
        neuinv.ArgumentDtypeError: (a ``TypeError`` and a ``RuntimeError``, torch's class) A's dtype is
            not one of the above, or init's or an output's differs from what is expected.
        neuinv.ArgumentValueError: (a ``ValueError`` and a ``RuntimeError``) a shape that is not (*, n, n), A
            on the meta device (no values to certify), init or an output of the wrong shape or device, an output
            that overlaps an input or another output, an option out of range.

    Examples:
        >>> A = torch.randn(1000, 8, 8, dtype=torch.float64) + 8 * torch.eye(8, dtype=torch.float64)
        >>> X, info = neuinv.batched_inverse_ex(A, max_error=1e-10)
        >>> bool(info.certified.all()), bool((info.error_bound <= 1e-10).all())
        (True, True)
    """
    options = CallOptions(model, tol, max_iter, max_error, method, assume_a, backend)
    check_arguments(A, init, options)
    check_flag(check_errors, "check_errors")
    if out is not None:
        _check_out_pair(out, A, init)
    return _inverse(A, init, options, raise_failures=check_errors, out=out)


def _inverse(A, init, options: CallOptions, raise_failures: bool, out):
    """The inversion through the autograd.Function of :mod:`neuinv.transforms` where autograd or a torch.func
    transform needs it, else directly: the results written into ``out`` (by the operator itself where it can), then
    with ``raise_failures`` the raise of :func:`batched_inverse`."""
    A, init = resolved(A), resolved(init)
    if transformed(A, init):
        refuse_out_with_transforms(out)  # (out reaches the Function only under torch.compile: written, then raised)
        X, *info = inverse_function().apply(A, init, options, raise_failures and out is None)
        return InverseResult(*written_then_raised(A, X, InverseInfo(*info), options,
                                                  raise_failures and out is not None, out))
    return InverseResult(*invert_or_raise(A, init, options, raise_failures, out))  # (no tensor records a graph)


def _check_out_pair(out, A, init) -> None:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError("out must be a pair (X, info) with info an InverseInfo of four tensors")
    X_out, info_out = out
    check_out(X_out, "out[0] (X)", A.shape, A.dtype, A.device, A, init)
    if not (isinstance(info_out, (tuple, list)) and len(info_out) == len(InverseInfo._fields)):
        raise TypeError("out[1] must be an InverseInfo (certified, error_bound, iterations, fallback)")
    for i, (field, tensor, dtype) in enumerate(zip(InverseInfo._fields, info_out, INFO_DTYPES)):
        check_out(tensor, f"out[1].{field}", A.shape[:-2], dtype, A.device, A, init, X_out, *info_out[:i])
