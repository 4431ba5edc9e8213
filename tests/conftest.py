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

from neuinv.testing import conditioned_matrices, true_residual, warm_start  # noqa: E402,F401 (re-exported)
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
