"""neuinv: fast, verified inverses of large batches of small dense matrices in PyTorch.

Learned, warm-started or classical initial guesses are refined by Newton–Schulz and every
matrix is verified; anything that cannot be certified takes an exact LU path. Following
Ji, Wu & Xi, "Rethinking Neural-based Matrix Inversion: Why can't, and Where can" (AISTATS 2025).
"""
__version__ = "0.1.0"

from .backends import available_backends  # noqa: E402
from .errors import ArgumentDtypeError, ArgumentError, ArgumentValueError  # noqa: E402
from .inverse import InverseInfo, InverseResult, batched_inverse, batched_inverse_ex  # noqa: E402
from .solve import SolveInfo, SolveResult, batched_solve, batched_solve_ex  # noqa: E402
from .rules import GUARD_RESIDUAL, NEWTON_SCHULZ_ACCEPT, default_tol  # noqa: E402

__all__ = ["NEWTON_SCHULZ_ACCEPT", "GUARD_RESIDUAL", "ArgumentDtypeError", "ArgumentError", "ArgumentValueError",
           "InverseInfo", "InverseResult", "available_backends", "batched_inverse", "batched_inverse_ex",
           "batched_solve", "batched_solve_ex", "SolveInfo", "SolveResult", "default_tol", "fit", "load_pretrained",
           "__version__"]

_LAZY = {"fit": "neuinv.learned.training", "load_pretrained": "neuinv.learned.training"}
"""Names imported on first use (PEP 562), so that ``import neuinv`` does not load the learned code."""


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
