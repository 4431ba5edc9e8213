"""Gradients through batched_inverse follow d(A^-1) = -A^-1 dA A^-1."""
import torch

import neuinv
from conftest import conditioned_matrices, warm_start


def test_gradcheck_float64():
    A = conditioned_matrices(3, 4, 10.0, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda M: neuinv.batched_inverse(M), (A,))
    init = warm_start(A.detach(), 1e-2)
    assert torch.autograd.gradcheck(lambda M: neuinv.batched_inverse(M, init=init), (A,))


def test_gradgradcheck_float64():
    A = conditioned_matrices(2, 3, 10.0, torch.float64).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda M: neuinv.batched_inverse(M, backend="torch"), (A,))


def test_gradient_matches_torch():
    A = conditioned_matrices(5, 6, 100.0, torch.float64)
    G = torch.randn(5, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    A1, A2 = A.clone().requires_grad_(), A.clone().requires_grad_()
    (neuinv.batched_inverse(A1) * G).sum().backward()
    (torch.linalg.inv(A2) * G).sum().backward()
    assert torch.allclose(A1.grad, A2.grad, rtol=1e-10, atol=1e-10)


def test_info_is_not_differentiable():
    A = conditioned_matrices(2, 3, 10.0, torch.float64).requires_grad_()
    X, info = neuinv.batched_inverse_ex(A)
    assert X.requires_grad
    assert not any(field.requires_grad for field in info)


def test_no_graph_without_gradients():
    """Under no_grad, or for inputs that need no gradient, no autograd node is built (as torch.linalg.inv)."""
    A = conditioned_matrices(2, 3, 10.0, torch.float64).requires_grad_()
    with torch.no_grad():
        X = neuinv.batched_inverse(A)
    assert not X.requires_grad and X.grad_fn is None
    X_plain = neuinv.batched_inverse(A.detach())
    assert X_plain.grad_fn is None and torch.equal(X_plain, X)
    assert neuinv.batched_inverse(A).grad_fn is not None
