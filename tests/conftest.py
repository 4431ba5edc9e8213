"""Shared test helpers. On a machine without CUDA the Triton kernels run in the Triton
interpreter, which must be switched on before triton is first imported."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("NEUINV_TRITON_AUTOTUNE", "0")  # one tile per kernel: tests check results, not speed

from neuinv.testing import conditioned_matrices, true_residual, warm_start  # noqa: E402,F401 (re-exported)


def residual_bound(A):
    """What neuinv must achieve: 4x torch.linalg.inv's worst residual on the same batch,
    with a floor of n*eps for sizes where torch happens to be exact."""
    torch_residual = true_residual(A, torch.linalg.inv(A)).max().item()
    eps = torch.finfo(A.dtype).eps
    return 4 * max(torch_residual, A.shape[-1] * eps)
