"""The exceptions neuinv raises for bad arguments.

``torch.linalg.inv`` and ``torch.linalg.solve`` raise ``RuntimeError`` for a tensor argument of the wrong shape
(not square, fewer than 2 dimensions, B incompatible with A, batch dimensions that do not broadcast), the wrong
dtype (an integer tensor, B of another dtype than A, out= of another dtype) or on the wrong device, and for an out=
tensor that overlaps an input; ``TypeError`` for an argument that is not a tensor (or a flag that is not a bool).
neuinv raised ``ValueError`` and ``TypeError``, so code written for torch caught nothing: each error below is an
instance of both, the class neuinv has always raised and torch's ``RuntimeError``::

    except ValueError    # catches ArgumentValueError (neuinv's own code)
    except TypeError     # catches ArgumentDtypeError
    except RuntimeError  # catches both (code written for torch.linalg)

An argument that is not a tensor at all raises a plain ``TypeError``, as in torch. The failure of a matrix (singular,
not certified) is ``torch.linalg.LinAlgError``, a ``RuntimeError`` too; one holding NaN or Inf is ``ValueError``
(:func:`neuinv.failures.failure_error`), where torch returns NaN without raising.
"""
from __future__ import annotations

__all__ = ["ArgumentError", "ArgumentValueError", "ArgumentDtypeError"]


class ArgumentError(RuntimeError):
    """A bad argument to a neuinv function: the base of :class:`ArgumentValueError` and :class:`ArgumentDtypeError`
    (``except neuinv.ArgumentError`` catches both), a ``RuntimeError`` as torch.linalg's argument errors are."""


class ArgumentValueError(ArgumentError, ValueError):
    """A bad shape, device or option value, or an out= tensor that shares memory with an input or another output
    (torch: ``RuntimeError``; neuinv: ``ValueError``)."""


class ArgumentDtypeError(ArgumentError, TypeError):
    """A tensor of a dtype neuinv does not take or that differs from A's (torch: ``RuntimeError``; neuinv:
    ``TypeError``)."""


BY_NAME = {cls.__name__: cls for cls in (ArgumentValueError, ArgumentDtypeError, ValueError, TypeError)}
"""The argument errors by class name (:mod:`neuinv.distributed` raises on every rank the class one rank raised)."""
