"""The Python side of a call, in one place: the options as one typed value (:class:`CallOptions`), the checks of
A, init, the options and ``out=`` tensors, the views resolved on the way in and the copy into ``out=`` on the way
out. Every entry point (:mod:`neuinv.inverse`, :mod:`neuinv.solve`, :mod:`neuinv.dask`) checks through these."""
from __future__ import annotations

from typing import NamedTuple

import torch

from .errors import ArgumentDtypeError, ArgumentValueError
from .rules import MAX_ITERATIONS

METHODS = ("auto", "exact", "newton_schulz")
ASSUME_A = ("gen", "pos")
"""scipy.linalg.solve's names: a general matrix, or a symmetric (Hermitian) positive definite one."""

HALF_DTYPES = (torch.float16, torch.bfloat16)
"""Computed in float32 and rounded back (:data:`COMPUTE_DTYPE`)."""
COMPUTE_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128) + HALF_DTYPES


class CallOptions(NamedTuple):
    """The options of one call of :func:`neuinv.batched_inverse_ex` (and of the solve, which has no ``model``), as
    given (None: the default); their meaning is documented there, their checks are :func:`check_arguments`. The
    initial guess ``init`` is a tensor and travels beside A, not here. A named tuple: cheap to build on every
    call."""

    model: object = None
    tol: float | None = None
    max_iter: int | None = None
    max_error: float | None = None
    method: str = "auto"
    assume_a: str = "gen"
    backend: str = "auto"


def check_arguments(A, init, options: CallOptions) -> None:
    """A, init and the options of a call: raises what :func:`neuinv.batched_inverse_ex` lists for them."""
    model, tol, max_iter, max_error = options.model, options.tol, options.max_iter, options.max_error
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"A must be a torch.Tensor, got {type(A).__name__}")
    shape = A.shape
    if len(shape) < 2:
        raise ArgumentValueError(f"A must have shape (*, n, n); got a {len(shape)}-D tensor of shape {tuple(shape)}")
    if shape[-1] != shape[-2]:
        raise ArgumentValueError(f"A must hold square matrices (*, n, n); got shape {tuple(shape)}")
    if A.dtype not in SUPPORTED_DTYPES:
        raise ArgumentDtypeError(f"A must be float32, float64, complex64, complex128, float16 or bfloat16; "
                                 f"got {A.dtype}")
    if A.is_meta:
        raise ArgumentValueError("A is a meta tensor: it holds no values, and neuinv inverts and certifies each "
                                 "matrix's values (torch.compile traces neuinv with fake tensors)")
    if options.assume_a not in ASSUME_A:
        raise ArgumentValueError(f"assume_a must be one of {ASSUME_A} (scipy's names), got {options.assume_a!r}")
    if options.method not in METHODS:
        raise ArgumentValueError(f"method must be one of {METHODS}, got {options.method!r}")
    if init is not None or model is not None:
        _check_guess(A, init, options)
    if tol is not None and not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 < tol < float("inf")):
        raise ArgumentValueError(f"tol must be a positive finite number, got {tol!r}")
    if max_iter is not None and not (isinstance(max_iter, int) and not isinstance(max_iter, bool)
                                     and 0 <= max_iter <= MAX_ITERATIONS):
        raise ArgumentValueError(f"max_iter must be an int in [0, {MAX_ITERATIONS}], got {max_iter!r}")
    if max_error is not None and not (isinstance(max_error, (int, float)) and not isinstance(max_error, bool)
                                      and 0 <= max_error < 1):
        raise ArgumentValueError(f"max_error must be a number in [0, 1) (a relative error), got {max_error!r}")


def _check_guess(A, init, options: CallOptions) -> None:
    """The initial guess of a call, given by init or by a model (one of them is not None)."""
    model = options.model
    if init is not None and model is not None:
        raise ArgumentValueError("give an initial guess by init or by model, not both")
    if options.method == "exact":
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


def check_flag(value, name: str) -> None:
    """A bool flag (left=, check_errors=): anything else is a TypeError, as torch's argument parser raises."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_out(tensor, name: str, shape, dtype, device, *inputs) -> None:
    """out= tensors: not requiring grad and outside torch.func transforms (:func:`refuse_out_with_transforms`),
    dense, exactly the expected shape, dtype and device (no resizing), no element stored twice
    (:func:`_may_hold_an_element_twice`), sharing no memory (by byte ranges: :func:`share_memory`) with any of
    ``inputs`` (the inputs and the outputs checked before it)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not torch.compiler.is_compiling() and (tensor.requires_grad and torch.is_grad_enabled() or any(
            t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in (tensor, *inputs))):
        refuse_out_with_transforms(tensor)  # (before any data pointer is read: a transform's tensors have none)
    if tensor.layout != torch.strided:
        raise ArgumentValueError(f"{name} must be a dense (strided) tensor, got layout {tensor.layout}")
    if tensor.shape != shape:
        raise ArgumentValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
    if tensor.dtype != dtype:
        raise ArgumentDtypeError(f"{name} must have dtype {dtype}, got {tensor.dtype}")
    if tensor.device != device:
        raise ArgumentValueError(f"{name} must be on device {device}, got {tensor.device}")
    if _may_hold_an_element_twice(tensor):
        raise ArgumentValueError(f"{name} must not share memory with itself: its strides {tuple(tensor.stride())} "
                                 f"for shape {tuple(tensor.shape)} may address one element twice (an expanded or "
                                 f"overlapping view)")
    for other in inputs:
        if other is not None and share_memory(tensor, other):
            raise ArgumentValueError(f"{name} must not share memory with the input or another output "
                                     f"(out= may not alias A, B, init or itself)")


def _may_hold_an_element_twice(tensor: torch.Tensor) -> bool:
    """Whether a strided layout cannot be shown to address each element once: its dimensions of size > 1, by
    increasing |stride|, must each step past everything the smaller ones span (conservative: a layout whose
    dimensions interleave without overlapping counts as overlapping)."""
    spanned = 0
    for size, stride in sorted(((size, abs(stride)) for size, stride in zip(tensor.shape, tensor.stride())
                                if size > 1), key=lambda pair: pair[1]):
        if stride <= spanned:
            return True
        spanned += (size - 1) * stride
    return False


def share_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
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


def refuse_out_with_transforms(out) -> None:
    """out= with gradients or a torch.func transform (not with torch.compile, which takes the Function path)."""
    if out is not None and not torch.compiler.is_compiling():
        raise RuntimeError("neuinv: out= cannot be combined with gradients or torch.func transforms "
                           "(as torch's out= functions)")


def resolved(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A tensor with its conjugate and negative bits resolved (a new tensor holding the values the view reads; the
    tensor itself where neither bit is set), differentiable: what every entry point computes on, once, so that no
    kernel or certificate meets a lazy view. The user's tensor is never modified."""
    if tensor is None or not (torch.compiler.is_compiling() or tensor.is_conj() or tensor.is_neg()):
        return tensor  # (dynamo cannot read the bits: under torch.compile the resolves are traced)
    return torch.resolve_neg(torch.resolve_conj(tensor))


def written(out, X, info, info_type):
    """(X, info), or their copies into out = (X_out, info_out) (or a bare X_out for batched_inverse); a value that
    is already its output (the operator wrote into it) is not copied."""
    if out is None:
        return X, info
    if isinstance(out, torch.Tensor):
        return _copied(out, X), info
    X_out, info_out = out
    _copied(X_out, X)
    for target, value in zip(info_out, info):
        if target is not None:  # (None where the field is not computed: a solve's inverse without return_inverse)
            _copied(target, value)
    return X_out, info_type(*info_out)


def _copied(target: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """target holding value: copied, unless value is a view of target's own elements in target's layout."""
    if not (value.data_ptr() == target.data_ptr() and value.shape == target.shape
            and value.stride() == target.stride() and value.dtype == target.dtype and value.device == target.device):
        target.copy_(value)
    return target
