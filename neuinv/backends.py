"""Backends: the pure-torch reference and the fast paths that override it.

A backend provides these operations on flat batches ``(b, n, n)``:
``newton_schulz_step``, ``newton_schulz`` (the refinement loop), ``residual_norm``,
``exact_inverse`` (see :mod:`neuinv.reference` for their definitions), ``error_bound`` (the certificate,
:mod:`neuinv.certificate`) and ``inverse_and_error_bound`` (the exact path and its certificate). :func:`resolve_backend` is the one
place that decides which backend runs: ``"auto"`` takes the fastest usable one and
falls back quietly; an explicitly named backend that cannot run raises.
"""
from __future__ import annotations

import importlib
import os
from typing import NamedTuple

import torch

from . import certificate, reference

BACKEND_NAMES = ("torch", "triton", "cpp", "cuda")
CPP_EXACT_MAX_N = 64
"""Largest n for which ``auto`` takes the C++ exact path (inverse and certificate in one pass): every n the
kernels take. Its results do not depend on a matrix's position in the batch, unlike those of LAPACK's LU
and the batched products of the torch path, and it is the faster of the two with the certificate
(bench/RESULTS.md)."""
CPP_REFINE_MAX_N = 64
"""Largest n for which the C++ Newton–Schulz loop beat the torch path: every n the kernels take (same
machine, warm start 1e-3: 1.9-2.5x in float32 for n = 12-48, 1.3x at 64; 1.4-4.1x in float64)."""


class BackendStatus(NamedTuple):
    available: bool
    reason: str


class TorchBackend:
    """The reference path: batched matmuls and LAPACK/cuSOLVER LU. Any dtype, any device."""

    name = "torch"
    workspace_matrices = 8
    """n x n temporaries per matrix that the paths allocate at once (the Newton–Schulz loop's products and
    gathers); batched_inverse chunks a batch so that they stay under WORKSPACE_BYTES."""
    newton_schulz_step = staticmethod(reference.newton_schulz_step)
    residual_norm = staticmethod(reference.residual_norm)
    exact_inverse = staticmethod(reference.exact_inverse)

    def newton_schulz(self, A, X0, tol, accept, max_iter, guarded, guard):
        """Refine X0 to (X, r, converged, steps): :func:`neuinv.reference.newton_schulz_refine`."""
        return reference.newton_schulz_refine(self.newton_schulz_step, A, X0, tol, accept, max_iter, guarded, guard)

    error_bound = staticmethod(certificate.error_bound)

    def inverse_and_error_bound(self, A):
        """The exact path: (X, error_bound), the bound +inf where A has a zero pivot."""
        X, pivot_info = self.exact_inverse(A)
        bound = self.error_bound(A, X)
        return X, torch.where(pivot_info == 0, bound, torch.full_like(bound, float("inf")))

    def unsupported_reason(self, A: torch.Tensor) -> str | None:
        return None


class _CompiledBackend(TorchBackend):
    """The compiled extension's kernels (loaded lazily) for float32/float64 tensors on `device_type`."""

    device_type: str
    kernels: str
    workspace_matrices = 2  # the kernels keep each matrix on chip; a partly refined chunk gathers A and X0

    def __init__(self):
        from . import extension

        extension.load()

    def unsupported_reason(self, A: torch.Tensor) -> str | None:
        if A.dtype not in (torch.float32, torch.float64):
            return f"the {self.kernels} kernels take float32 or float64, not {A.dtype}"
        if A.device.type != self.device_type:
            return f"the {self.kernels} kernels run on {self.device_type.upper()} tensors, not on {A.device.type}"
        return None


class CppBackend(_CompiledBackend):
    """The compiled CPU kernels (csrc/neuinv_cpu.cpp), used where they measured faster than the
    torch path on CPU: the whole Newton–Schulz loop per matrix in one call for n <= ``CPP_REFINE_MAX_N``,
    the exact path (closed forms or Gauss–Jordan in double precision, and the certified residual, in one
    pass) for n <= ``CPP_EXACT_MAX_N``."""

    name = "cpp"
    device_type = "cpu"
    kernels = "C++"

    def inverse_and_error_bound(self, A):
        """Closed forms or Gauss–Jordan in double precision, certified before the rounding to A's dtype
        (float64 results get one Newton–Schulz step in the kernel where that helps: csrc/neuinv_cpu.cpp)."""
        if A.shape[-1] <= CPP_EXACT_MAX_N:
            return torch.ops.neuinv.inverse_and_error_bound(A)
        return super().inverse_and_error_bound(A)

    @staticmethod
    def error_bound(A, X):
        """The certificate of :mod:`neuinv.certificate`, in the C++ kernels for n <= 64."""
        if A.shape[-1] <= CPP_REFINE_MAX_N:
            return torch.ops.neuinv.error_bound(A, X)
        return certificate.error_bound(A, X)

    def newton_schulz(self, A, X0, tol, accept, max_iter, guarded, guard):
        if A.shape[-1] <= CPP_REFINE_MAX_N:
            return torch.ops.neuinv.newton_schulz(A, X0, tol, accept, max_iter, guarded, guard)
        return super().newton_schulz(A, X0, tol, accept, max_iter, guarded, guard)


class CudaBackend(_CompiledBackend):
    """The compiled CUDA kernels (csrc/neuinv_cuda_*.cu): the whole Newton–Schulz loop per matrix in one
    launch (no host round trip per step), the residual, and the Gauss–Jordan inverse, for n <= 64."""

    name = "cuda"
    device_type = "cuda"
    kernels = "CUDA"

    @staticmethod
    def exact_inverse(A):
        return torch.ops.neuinv.exact_inverse(A)

    @staticmethod
    def residual_norm(A, X):
        return torch.ops.neuinv.residual_norm(A, X)

    def newton_schulz(self, A, X0, tol, accept, max_iter, guarded, guard):
        return torch.ops.neuinv.newton_schulz(A, X0, tol, accept, max_iter, guarded, guard)

    def unsupported_reason(self, A: torch.Tensor) -> str | None:
        if A.shape[-1] > 64:
            return f"the CUDA kernels take n <= 64, not {A.shape[-1]}"
        return super().unsupported_reason(A)


class TritonBackend(TorchBackend):
    """Fused Triton kernels for the Newton–Schulz step and the residual (real dtypes).

    Runs on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1 (the Triton
    interpreter, used by the test suite on machines without a GPU).
    """

    name = "triton"

    def __init__(self):
        from neuinv.kernels import newton_schulz

        self.newton_schulz_step = newton_schulz.newton_schulz_step
        self.residual_norm = newton_schulz.residual_norm

    def unsupported_reason(self, A: torch.Tensor) -> str | None:
        if A.dtype not in (torch.float32, torch.float64):
            return f"the Triton kernels take float32 or float64, not {A.dtype}"
        if A.device.type == "cuda" or (A.device.type == "cpu" and _triton_interpreter_on()):
            return None
        return (f"the Triton kernels run on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1), "
                f"not on {A.device.type}")


_BACKEND_CLASSES = {"torch": TorchBackend, "triton": TritonBackend, "cpp": CppBackend, "cuda": CudaBackend}


def _triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_status() -> BackendStatus:
    try:
        importlib.import_module("triton")
    except ImportError as error:
        return BackendStatus(False, f"triton is not importable ({error})")
    if torch.cuda.is_available():
        return BackendStatus(True, "Triton kernels on CUDA")
    if _triton_interpreter_on():
        return BackendStatus(True, "Triton interpreter on the CPU (TRITON_INTERPRET=1; slow, for testing)")
    return BackendStatus(False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU)")


def _torch_status() -> BackendStatus:
    return BackendStatus(True, f"pure PyTorch {torch.__version__} (reference path)")


def _cpp_status() -> BackendStatus:
    from . import extension

    return BackendStatus(*extension.status())


def _cuda_status() -> BackendStatus:
    from . import extension

    if not extension.load():
        return BackendStatus(False, extension.status()[1])
    if not extension.has_cuda_kernels():
        return BackendStatus(False, "the extension was built without its CUDA part "
                                    f"({extension.cuda_build_problem() or 'rebuild with `neuinv build-ext`'})")
    if not torch.cuda.is_available():
        return BackendStatus(False, "the CUDA kernels are compiled, but no CUDA device is visible")
    return BackendStatus(True, "compiled CUDA kernels")


_STATUS = {"torch": _torch_status, "triton": _triton_status, "cpp": _cpp_status, "cuda": _cuda_status}


def available_backends() -> dict[str, BackendStatus]:
    """Each backend name mapped to (available, reason): whether it can run here, or why not."""
    return {name: status() for name, status in _STATUS.items()}


def resolve_backend(name: str, A: torch.Tensor) -> TorchBackend:
    """The dispatch point: the backend that runs for input A when the user asked for `name`."""
    if name not in BACKEND_NAMES + ("auto",):
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {name!r}")
    if name == "auto":  # only the candidates for A's device are asked (this runs on every call)
        preferred = {"cuda": ("cuda", "triton"), "cpu": ("cpp",)}.get(A.device.type, ())
        for candidate in preferred:
            if _STATUS[candidate]().available:
                backend = _BACKEND_CLASSES[candidate]()
                if backend.unsupported_reason(A) is None:
                    return backend
        return TorchBackend()
    status = _STATUS[name]()
    if not status.available:
        raise RuntimeError(f"backend {name!r} was requested but is not available: {status.reason}")
    backend = _BACKEND_CLASSES[name]()
    reason = backend.unsupported_reason(A)
    if reason is not None:
        raise RuntimeError(f"backend {name!r} cannot run this input: {reason}")
    return backend
