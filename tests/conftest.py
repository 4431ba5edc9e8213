"""Shared test helpers. On a machine without CUDA the Triton kernels run in the Triton
interpreter, which must be switched on before triton is first imported."""
import multiprocessing
import multiprocessing.forkserver
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("NEUINV_TRITON_AUTOTUNE", "0")  # one tile per kernel: tests check results, not speed

from neuinv.testing import (TRUTH_SLACK, accurate_inverse, accurate_solve, conditioned_matrices,  # noqa: E402,F401
                            true_residual, warm_start)  # (re-exported)
from neuinv import extension  # noqa: E402

extension.ensure("cpu")  # as a first call would: the compiled CPU kernels, built here on a fresh checkout


def residual_bound(A):
    """What neuinv must achieve: 4x torch.linalg.inv's worst residual on the same batch.

    Two floors: n eps(dtype), for sizes where torch happens to be exact (n = 1); and the
    resolution of the float64 measurement itself, eps64 ||A||_F ||X||_F, below which float64
    inputs' residuals cannot be told apart (LAPACK's 2x2 inverses sometimes land there)."""
    X = torch.linalg.inv(A)
    torch_residual = true_residual(A, X).max().item()
    measurement = torch.finfo(torch.float64).eps * (
        torch.linalg.matrix_norm(A).cpu().double() * torch.linalg.matrix_norm(X).cpu().double()).max().item()
    return 4 * max(torch_residual, A.shape[-1] * torch.finfo(A.dtype).eps, measurement)


def invert_operator(A, X0=None, use_guess=None, *, refine=None, tol=1e-16, accept=1e-3, max_iter=10, guard=0.5,
                    max_error=1.0, positive_definite=False):
    """torch.ops.neuinv.invert with its defaults spelled out: the exact path without X0, Newton-Schulz from X0
    (guarded) with it. Returns (X, certified, error_bound, iterations, fallback)."""
    refine = X0 is not None if refine is None else refine
    return torch.ops.neuinv.invert(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error,
                                   positive_definite)


def compiled_error_bound(A, X):
    """The compiled certificate of X as given (certificate.error_bound's counterpart in the operator): X as the
    operator's X0 with a stopping rule that accepts it at step 0; +inf where the operator left X (its bound not
    below 1, or X not finite)."""
    X_out, _, bound, iterations, fallback = invert_operator(A, X, tol=1e300, accept=1e300, max_iter=0, guard=1e300)
    assert (iterations == 0).all()
    kept = ~fallback
    assert torch.equal(X_out[kept], X[kept])
    return torch.where(kept, bound, torch.full_like(bound, float("inf")))


def assert_no_host_synchronisation(backend: str) -> None:
    """batched_inverse_ex on a CUDA batch (exact path, warm start, Newton–Schulz from the scaled transpose) under
    torch.cuda.set_sync_debug_mode("error"): any host synchronisation raises."""
    import neuinv

    A = conditioned_matrices(1000, 8, 1e3, torch.float32).cuda()
    init = warm_start(A, 1e-3)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for options in (dict(), dict(init=init), dict(method="newton_schulz")):
            neuinv.batched_inverse_ex(A, backend=backend, **options)
    finally:
        torch.cuda.set_sync_debug_mode("default")


FORKSERVER_PRELOAD = ["pytest", "numpy", "scipy.sparse.linalg", "torch.distributed.tensor", "neuinv.distributed",
                      "neuinv.sparse.precond", "neuinv.testing", "dask.array", "distributed", "neuinv.dask"]
"""What the fork server of the multi-process tests imports once (those not installed are skipped)."""


@pytest.fixture(scope="session")
def forkserver():
    """The "forkserver" multiprocessing context, its server started with FORKSERVER_PRELOAD imported: a process
    forked from it starts in a fraction of a second (spawned: 5-10 s each on the 2-core CI machine). It has run no
    torch operation, so forking it is safe. Started here, before dask.distributed would start it with its own
    preload list; it preloads installed modules, not test modules (Python 3.11's fork server does not take the
    tests folder onto its sys.path)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORKSERVER_PRELOAD)
    multiprocessing.forkserver.ensure_running()
    return context


