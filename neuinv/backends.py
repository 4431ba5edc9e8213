"""Backends: where a verified inversion runs. The algorithm (``method=``) is chosen in :mod:`neuinv.inverse`.

Every backend implements one operation on a batch ``(*, n, n)``, :meth:`TorchBackend.invert`, with the
contract of :func:`neuinv.reference.invert` (initial guess with a per-matrix "use it" mask, guard,
Newton–Schulz loop, exact path, certificate, verdict). The pure-torch backend *is* that reference; the others
override it:

- ``cpp``: the compiled operator ``neuinv::invert`` on CPU tensors, one call per chunk (csrc/cpu);
- ``cuda``: the same operator on CUDA tensors (csrc/cuda), no host synchronisation;
- ``triton``: the whole pipeline in one Triton launch (kernels/invert.py; CUDA, or the CPU under
  TRITON_INTERPRET=1).

:data:`REGISTRY` holds one entry per backend (its class and cached availability check);
:func:`resolve_backend` is the one dispatch point. ``auto`` takes the first available backend of
:data:`AUTO_ORDER` for the input's device that can run it; ``NEUINV_BACKEND`` (environment variable) forces
one backend for ``auto`` calls, and raises like an explicit request where that backend cannot run.
"""
from __future__ import annotations

import importlib
import math
import os
from typing import NamedTuple

import torch

from . import reference
from .errors import ArgumentValueError
from .rules import (CERTIFIED_BELOW, POSITIVE_DEFINITE_SOLVE_WITHOUT_INVERSE_ABOVE, NewtonSchulzRules,
                    newton_schulz_rules)

BACKEND_ENV = "NEUINV_BACKEND"
"""Environment variable that makes ``backend="auto"`` mean the backend it names (read when neuinv is imported,
and again by :func:`forget_availability`)."""
_forced = os.environ.get(BACKEND_ENV) or None


class BackendStatus(NamedTuple):
    available: bool
    reason: str


def _fused_mlp_initializer(a, center, inv_radius, weights, biases, skip=None):
    """The fused Triton kernel for the learned initializer on CUDA tensors where it takes the network (2 layers,
    or 3 with the first hidden layer small enough to stay on chip), else the reference."""
    if a.is_cuda and not torch.is_grad_enabled() and _available("triton"):
        from neuinv.kernels import mlp

        if len(weights) == 2 or weights[0].shape[0] <= mlp.MAX_HIDDEN_3FC:
            return mlp.fused_mlp_initializer(a, center, inv_radius, weights, biases, skip)
    return reference.mlp_initializer(a, center, inv_radius, weights, biases, skip)


def _on_flat_batch(invert, A, X0, use_guess):
    """invert(A, X0, use_guess) on the flattened batch (b, n, n), its outputs in A's shape and batch shape."""
    if A.dim() == 3:
        return invert(A, X0, use_guess)
    n, batch = A.shape[-1], A.shape[:-2]
    X, *info = invert(A.reshape(-1, n, n), None if X0 is None else X0.reshape(-1, n, n),
                      None if use_guess is None else use_guess.reshape(-1))
    return (X.reshape(A.shape), *(field.reshape(batch) for field in info))


@torch.library.custom_op("neuinv::reference_invert", mutates_args=())
def _reference_invert_op(A: torch.Tensor, X0: torch.Tensor | None, use_guess: torch.Tensor | None, refine: bool,
                         tol: float, accept: float, max_iter: int, guard: float, max_error: float,
                         positive_definite: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                           torch.Tensor]:
    """:func:`neuinv.reference.invert` on a flat batch as one operator with the arguments of ``neuinv::invert``:
    what a torch.compile graph calls on the torch backend, whose Newton–Schulz loop and exact-path subset depend on
    the data."""
    rules = NewtonSchulzRules(tol, accept, max_iter, False, guard)
    return reference.invert(A, X0, use_guess, refine, rules, max_error, positive_definite)  # (new tensors only)


@_reference_invert_op.register_fake
def _(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, positive_definite):
    b = A.shape[0]
    return (torch.empty_like(A), A.new_empty(b, dtype=torch.bool), A.new_empty(b, dtype=torch.float64),
            A.new_empty(b, dtype=torch.int32), A.new_empty(b, dtype=torch.bool))


class TorchBackend:
    """The reference path (:func:`neuinv.reference.invert`): batched matmuls and LAPACK/cuSOLVER LU.
    Any dtype, any device, any n."""

    name = "torch"
    workspace_matrices = 8
    """n x n temporaries per matrix that `invert` allocates at once (the Newton–Schulz loop's products and
    gathers); batched_inverse chunks a batch so that they stay under ``neuinv.pipeline.WORKSPACE_BYTES``."""

    mlp_initializer = staticmethod(reference.mlp_initializer)
    """The learned initializer's forward pass (a model with ``initializer_parameters()``)."""

    def invert(self, A, X0, use_guess, refine, rules, max_error, positive_definite=False):
        """(X, certified, error_bound, iterations, fallback) for A (*, n, n) with use_guess of its batch shape:
        :func:`neuinv.reference.invert` on the flattened batch. positive_definite: the exact path is Cholesky
        (A symmetric/Hermitian positive definite; a matrix whose factorisation fails is not certified)."""
        def run(A, X0, use_guess):
            if torch.compiler.is_compiling():  # the loop and the exact path's subset depend on the data
                return torch.ops.neuinv.reference_invert(A, X0, use_guess, refine, rules.tol, rules.accept,
                                                         rules.max_iter, rules.guard, max_error, positive_definite)
            return reference.invert(A, X0, use_guess, refine, rules, max_error, positive_definite)

        return _on_flat_batch(run, A, X0, use_guess)

    def invert_into(self, A, X0, use_guess, refine, rules, max_error, positive_definite, outputs):
        """:meth:`invert` written into ``outputs`` (X, certified, error_bound, iterations, fallback): contiguous
        tensors of A's shape and batch shape with the dtypes of :meth:`invert`'s results, sharing no memory with A
        or X0. Here the results are computed, then copied."""
        for target, value in zip(outputs, self.invert(A, X0, use_guess, refine, rules, max_error, positive_definite)):
            target.copy_(value)

    def solve(self, A, B, R=None, inverse_bound=None, positive_definite=False):
        """(X, error_bound) for A (b, n, n) and B (b, n, k) (either may have 1 in place of b), from R like A
        certified to inverse_bound (b,), or without them from this backend's exact-path inverse of A
        (:meth:`invert` without refinement): :func:`neuinv.reference.solve`. Real positive-definite systems without
        R take :func:`neuinv.reference.positive_definite_solve` (no inverse), and the inverse only where that
        certifies nothing."""
        if (R is None and positive_definite and not A.is_complex() and A.shape[0] >= B.shape[0]
                and A.shape[-1] > POSITIVE_DEFINITE_SOLVE_WITHOUT_INVERSE_ABOVE):
            X, bound = reference.positive_definite_solve(A, B)
            return self._from_the_cholesky_inverse_where_refused(A, B, X, bound)
        if R is None and A.shape[-1] > 0:
            R, inverse_bound = self._exact_inverse(A, positive_definite)
        return reference.solve(A, B, R, inverse_bound)

    def _exact_inverse(self, A, positive_definite):
        """(R, its bound) by :meth:`invert` without refinement."""
        rules = newton_schulz_rules(A.dtype, None, None, False)  # the defaults; unused without refinement
        R, _, inverse_bound, _, _ = self.invert(A, None, None, False, rules, CERTIFIED_BELOW, positive_definite)
        return R, inverse_bound

    def _from_the_cholesky_inverse_where_refused(self, A, B, X, bound):
        """X and bound with the systems whose bound is +inf solved again from the Cholesky inverse
        (:meth:`solve` with R)."""
        refused = ~(bound < math.inf)
        if torch.compiler.is_compiling():  # no data-dependent subset in a graph: every system, then a choice
            X_i, bound_i = reference.solve(A, B, *self._exact_inverse(A, True))
            return torch.where(refused[:, None, None], X_i, X), torch.where(refused, bound_i, bound)
        if not bool(refused.any()):
            return X, bound
        index = refused.nonzero().squeeze(1)
        A_i, B_i = (M if M.shape[0] == 1 else M[index] for M in (A, B))
        X_i, bound_i = reference.solve(A_i, B_i, *self._exact_inverse(A_i, True))
        return X.index_put((index,), X_i), bound.index_put((index,), bound_i)

    @classmethod
    def unsupported_reason(cls, A: torch.Tensor) -> str | None:
        return None


class CompiledBackend(TorchBackend):
    """The compiled operator ``neuinv::invert`` (csrc/): the whole inversion of a chunk in one call, for
    float32/float64 tensors with n <= ``MAX_N`` on `device_type`."""

    name = "cpp"
    device_type = "cpu"
    MAX_N = 64
    workspace_matrices = 1
    """The operator allocates only its outputs (X and four per-matrix fields); each matrix's work stays on
    chip or in a per-thread buffer."""

    def invert(self, A, X0, use_guess, refine, rules, max_error, positive_definite=False):
        return torch.ops.neuinv.invert(A, X0, use_guess, refine, rules.tol, rules.accept, rules.max_iter,
                                       rules.guard, max_error, positive_definite)

    def invert_into(self, A, X0, use_guess, refine, rules, max_error, positive_definite, outputs):
        """The operator ``neuinv::invert.out``: the kernels write into ``outputs`` themselves."""
        X, certified, bound, iterations, fallback = outputs
        torch.ops.neuinv.invert.out(A, X0, use_guess, refine, rules.tol, rules.accept, rules.max_iter, rules.guard,
                                    max_error, positive_definite, X=X, certified=certified, error_bound=bound,
                                    iterations=iterations, fallback=fallback)

    def solve(self, A, B, R=None, inverse_bound=None, positive_definite=False):
        """The operator ``neuinv::solve`` where A, B (and R) share a real dtype of the kernels (float16 and
        bfloat16 systems, solved with a float32 R, and complex ones take the reference); without R each system's
        inverse is computed in the same pass."""
        if A.dtype in (torch.float32, torch.float64) and A.dtype == B.dtype and (R is None or R.dtype == A.dtype):
            return torch.ops.neuinv.solve(A, B, R, inverse_bound, positive_definite)
        return super().solve(A, B, R, inverse_bound, positive_definite)

    @classmethod
    def unsupported_reason(cls, A: torch.Tensor) -> str | None:
        if A.dtype not in (torch.float32, torch.float64):
            return f"the compiled kernels take float32 or float64, not {A.dtype}"
        if A.device.type != cls.device_type:
            return f"the {cls.name} backend runs on {cls.device_type.upper()} tensors, not on {A.device.type}"
        if A.shape[-1] > cls.MAX_N:
            return f"the compiled kernels take n <= {cls.MAX_N}, not {A.shape[-1]}"
        return None


class CudaBackend(CompiledBackend):
    name = "cuda"
    device_type = "cuda"
    mlp_initializer = staticmethod(_fused_mlp_initializer)
    SOLVE_MAX_N = 8
    """The CUDA solve kernel's largest n (csrc/cuda/neuinv_cuda_launch.h, kSmallMaxN: one system per thread)."""

    def solve(self, A, B, R=None, inverse_bound=None, positive_definite=False):
        """The operator ``neuinv::solve`` for n <= ``SOLVE_MAX_N`` (csrc/cuda/neuinv_cuda_solve_small.cu), the
        reference above."""
        if A.shape[-1] <= self.SOLVE_MAX_N:
            return super().solve(A, B, R, inverse_bound, positive_definite)
        return TorchBackend.solve(self, A, B, R, inverse_bound, positive_definite)


class TritonBackend(TorchBackend):
    """The whole inversion of a chunk in one Triton launch (``kernels/invert.py``): the Newton–Schulz loop,
    the certificate and Gauss–Jordan on chip, float32/float64, n <= 64, no host synchronisation.

    Runs on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1 (the Triton
    interpreter, used by the test suite on machines without a GPU).
    """

    name = "triton"
    MAX_N = 64
    workspace_matrices = 1
    """The launch allocates only its outputs; each matrix's work stays on chip."""
    mlp_initializer = staticmethod(_fused_mlp_initializer)

    def __init__(self):
        from neuinv.kernels import invert

        self._invert, self._invert_out = invert.invert, invert.invert_out

    def invert(self, A, X0, use_guess, refine, rules, max_error, positive_definite=False):
        """(X, certified, error_bound, iterations, fallback) for A (*, n, n): :func:`neuinv.reference.invert` in
        one launch."""
        def launch(A, X0, use_guess):
            return self._invert(A, X0, use_guess, refine, rules.tol, rules.accept, rules.max_iter, rules.guard,
                                max_error, positive_definite)

        return _on_flat_batch(launch, A, X0, use_guess)

    def invert_into(self, A, X0, use_guess, refine, rules, max_error, positive_definite, outputs):
        """The launch writes into ``outputs`` itself."""
        n = A.shape[-1]
        X, *info = outputs
        self._invert_out(A.reshape(-1, n, n), None if X0 is None else X0.reshape(-1, n, n),
                         None if use_guess is None else use_guess.reshape(-1), refine, rules.tol, rules.accept,
                         rules.max_iter, rules.guard, max_error, positive_definite, X.view(-1, n, n),
                         *(field.view(-1) for field in info))

    @classmethod
    def unsupported_reason(cls, A: torch.Tensor) -> str | None:
        if A.dtype not in (torch.float32, torch.float64):
            return f"the Triton kernels take float32 or float64, not {A.dtype}"
        if A.shape[-1] > cls.MAX_N:
            return f"the Triton kernels hold a matrix in registers: n <= {cls.MAX_N}, not {A.shape[-1]}"
        if A.device.type == "cuda" or (A.device.type == "cpu" and _triton_interpreter_on()):
            return None
        return (f"the Triton kernels run on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1), "
                f"not on {A.device.type}")


def _triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _torch_status(build: bool) -> BackendStatus:
    return BackendStatus(True, f"pure PyTorch {torch.__version__} (reference path)")


def _triton_status(build: bool) -> BackendStatus:
    try:
        importlib.import_module("triton")
    except ImportError as error:
        return BackendStatus(False, f"triton is not importable ({error})")
    if torch.cuda.is_available():
        return BackendStatus(True, "Triton kernels on CUDA")
    if _triton_interpreter_on():
        return BackendStatus(True, "Triton interpreter on the CPU (TRITON_INTERPRET=1; slow, for testing)")
    return BackendStatus(False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU)")


def _cpp_status(build: bool) -> BackendStatus:
    from . import extension

    if build:
        extension.ensure("cpu")
    return BackendStatus(*extension.status("cpu"))


def _cuda_status(build: bool) -> BackendStatus:
    from . import extension

    if not torch.cuda.is_available():  # nothing to build for: the kernels would not run
        loaded, reason = extension.status("cuda")
        return BackendStatus(False, f"no CUDA device is visible (the CUDA kernels: {reason})")
    if build:
        extension.ensure("cuda")
    return BackendStatus(*extension.status("cuda"))


class Entry(NamedTuple):
    """One backend: its class and the check of whether it can run in this process (``status(build)``; with
    build=True it may build the compiled kernels just in time, :func:`neuinv.extension.ensure`)."""

    backend: type
    status: object


REGISTRY = {
    "torch": Entry(TorchBackend, _torch_status),
    "triton": Entry(TritonBackend, _triton_status),
    "cpp": Entry(CompiledBackend, _cpp_status),
    "cuda": Entry(CudaBackend, _cuda_status),
}
BACKEND_NAMES = tuple(REGISTRY)
AUTO_ORDER = {"cuda": ("cuda", "triton"), "cpu": ("cpp",)}
"""The backends ``auto`` tries for each device type, fastest first; the torch reference comes last."""
_NAMES_AND_AUTO = frozenset(BACKEND_NAMES + ("auto",))


def available_backends() -> dict[str, BackendStatus]:
    """Each backend name mapped to (available, reason): whether it can run here, or why not. Builds nothing: a
    backend whose compiled kernels are built just in time on first use says so."""
    return {name: entry.status(False) for name, entry in REGISTRY.items()}


_availability: dict[str, bool] = {}
_instances: dict[str, TorchBackend] = {}
_auto_choices: dict[tuple, TorchBackend] = {}


@torch.compiler.assume_constant_result
def _available(name: str) -> bool:
    """Whether backend `name` can run in this process, asked once (loading the extension or importing triton
    does not change while the process runs, except by an explicit build). A constant to torch.compile, which
    so never traces the checks (they touch the file system)."""
    if name not in _availability:
        _availability[name] = REGISTRY[name].status(True).available
    return _availability[name]


def _instance(name: str) -> TorchBackend | None:
    """The backend object for `name` if it is available."""
    if not _available(name):
        return None
    if name not in _instances:
        _instances[name] = REGISTRY[name].backend()
    return _instances[name]


def resolve_backend(name: str, A: torch.Tensor) -> TorchBackend:
    """The dispatch point: the backend that runs for input A when the user asked for `name`."""
    if name not in _NAMES_AND_AUTO:
        raise ArgumentValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {name!r}")
    if name != "auto":
        return _explicit(name, A, "")
    if _forced is not None:
        if _forced not in BACKEND_NAMES:
            raise ValueError(f"{BACKEND_ENV}={_forced!r} names no backend; use one of {BACKEND_NAMES}")
        return _explicit(_forced, A, f"by {BACKEND_ENV}")
    key = (A.device.type, A.dtype, A.shape[-1])
    backend = _auto_choices.get(key)
    if backend is None:
        backend = _auto_choices[key] = _auto_choice(A)
    return backend


def _auto_choice(A: torch.Tensor) -> TorchBackend:
    """What ``auto`` runs for A: the first backend of :data:`AUTO_ORDER` for its device that can run it and is
    available, else the torch reference. It depends on A's device type, dtype and n only (the candidates'
    ``unsupported_reason``), so :func:`resolve_backend` keeps it per (device type, dtype, n)."""
    for candidate in AUTO_ORDER.get(A.device.type, ()):
        if REGISTRY[candidate].backend.unsupported_reason(A) is None:  # first: no build for inputs it cannot run
            backend = _instance(candidate)
            if backend is not None:
                return backend
    return _instance("torch")


def _explicit(name: str, A: torch.Tensor, how: str) -> TorchBackend:
    requested = f"backend {name!r} was requested{' ' + how if how else ''}"
    reason = REGISTRY[name].backend.unsupported_reason(A)
    if reason is not None:
        raise RuntimeError(f"{requested} but cannot run this input: {reason}")
    backend = _instance(name)
    if backend is None:
        raise RuntimeError(f"{requested} but is not available: {REGISTRY[name].status(False).reason}")
    return backend


def forget_availability() -> None:
    """Ask the availability checks and ``NEUINV_BACKEND`` again (after ``neuinv build-ext`` in the same process,
    or a change of the environment variable)."""
    global _forced
    _availability.clear()
    _instances.clear()
    _auto_choices.clear()
    _forced = os.environ.get(BACKEND_ENV) or None
