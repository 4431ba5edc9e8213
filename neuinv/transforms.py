"""Autograd and the torch.func transforms: when a call needs them (:func:`transformed`), and the verified inverse as
an ``autograd.Function`` with ``setup_context``, a ``vmap`` rule and a ``jvp`` (:func:`inverse_function`)."""
from __future__ import annotations

import torch
from torch.autograd import forward_ad

from .pipeline import invert_or_raise


def transformed(*tensors) -> bool:
    """Whether a tensor needs the autograd.Function: it requires a gradient (with grad mode on), it carries a
    forward-mode tangent (``torch.autograd.forward_ad.make_dual``), or a torch.func transform (vmap, grad, jvp)
    wraps it. Under torch.compile always (dynamo traces the Function; it cannot ask functorch whether a tensor is
    wrapped)."""
    if torch.compiler.is_compiling():
        return True
    for tensor in tensors:
        if tensor is None:
            continue
        if tensor.requires_grad and torch.is_grad_enabled():
            return True
        if torch._C._functorch.is_functorch_wrapped_tensor(tensor):
            return True
        if forward_ad._current_level >= 0 and forward_ad.unpack_dual(tensor).tangent is not None:
            return True  # (a tangent exists only inside forward_ad.dual_level(), which sets the level)
    return False


class _BatchedInverse(torch.autograd.Function):
    """The verified inverse as a differentiable function of A (init: no gradient, the result does not depend on
    it): d(A^-1) = -A^-1 dA A^-1, so grad_A = -X^H G X^H. A vmapped call is one call with the vmapped dimension as
    the first batch dimension. (torch.compile traces this class, which has no jvp: dynamo refuses a custom jvp.)"""

    @staticmethod
    def forward(A, init, options, raise_failures):
        X, info = invert_or_raise(A, init, options, raise_failures)
        return (X, *info)

    @staticmethod
    def setup_context(ctx, inputs, output):
        X, *info = output
        ctx.mark_non_differentiable(*info)
        ctx.save_for_backward(X)
        ctx.save_for_forward(X)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_X, *unused_info_grads):
        (X,) = ctx.saved_tensors
        if grad_X is None:
            return None, None, None, None
        X_h = X.mH
        return -(X_h @ grad_X @ X_h), None, None, None

    @staticmethod
    def vmap(info, in_dims, A, init, options, raise_failures):
        A = _batch_first(A, in_dims[0], info.batch_size)
        init = None if init is None else _batch_first(init, in_dims[1], info.batch_size)
        return inverse_function().apply(A, init, options, raise_failures), (0, 0, 0, 0, 0)


class _BatchedInverseWithJvp(_BatchedInverse):
    """:class:`_BatchedInverse` with forward-mode derivatives (torch.func.jvp, jacfwd): dX = -X dA X."""

    @staticmethod
    def jvp(ctx, tangent_A, tangent_init, *unused):
        (X,) = ctx.saved_tensors
        tangent_X = None if tangent_A is None else -(X @ tangent_A @ X)
        return tangent_X, None, None, None, None


def inverse_function():
    """The Function to apply: the one with a jvp, but under torch.compile (see :class:`_BatchedInverse`)."""
    return _BatchedInverse if torch.compiler.is_compiling() else _BatchedInverseWithJvp


def _batch_first(tensor, dim, size):
    """The vmapped dimension of tensor moved to the front, or (dim None) a broadcast one of `size` added."""
    if dim is None:
        return tensor.expand(size, *tensor.shape)
    return tensor.movedim(dim, 0)

