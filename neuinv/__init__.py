"""neuinv: fast, verified inverses of large batches of small dense matrices in PyTorch.

Learned, warm-started or classical initial guesses are refined by Newton–Schulz and every
matrix is verified; anything that cannot be certified takes an exact LU path. Following
Ji, Wu & Xi, "Rethinking Neural-based Matrix Inversion: Why can't, and Where can" (AISTATS 2025).
"""
__version__ = "0.1.0"

from .backends import available_backends  # noqa: E402
from .inverse import (NEWTON_SCHULZ_ACCEPT, GUARD_RESIDUAL, InverseInfo, batched_inverse,  # noqa: E402
                      batched_inverse_ex, default_tol)
from .learned.training import fit, load_pretrained  # noqa: E402

__all__ = ["NEWTON_SCHULZ_ACCEPT", "GUARD_RESIDUAL", "InverseInfo", "available_backends", "batched_inverse",
           "batched_inverse_ex", "default_tol", "fit", "load_pretrained", "__version__"]
