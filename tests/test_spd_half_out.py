"""assume_a="pos" (the Cholesky route, a matrix that is not positive definite named as such), float16 / bfloat16
input (computed in float32, certified in the input dtype), and out= (written, not reallocated, aliasing refused),
on every backend available."""
from __future__ import annotations

import pytest
import torch

import neuinv
from neuinv.inverse import InverseInfo
from neuinv.solve import SolveInfo
from neuinv.testing import conditioned_matrices
from conftest import TRUTH_SLACK, accurate_inverse, accurate_solve

AVAILABLE = [name for name, status in neuinv.available_backends().items() if status.available and name != "cuda"]
pytestmark = [pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]


def relative_error(X, truth):
    return torch.linalg.matrix_norm(X.double() - truth) / torch.linalg.matrix_norm(truth)


def spd_batch(batch, n, cond, dtype, indefinite=None):
    """Q diag(sigma) Q^T with sigma from 1 to 1/cond; member `indefinite` gets one eigenvalue -1/2 (symmetric,
    non-singular, cond 2 * cond at most: LU inverts it, Cholesky must refuse it)."""
    A = conditioned_matrices(batch, n, cond, torch.float64, symmetric=True)
    if indefinite is not None:
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
        sigma = torch.linspace(1, 0.5, n, dtype=torch.float64)
        sigma[n // 2] = -0.5
        A[indefinite] = (q * sigma) @ q.mT
    return A.to(dtype)


# ---------------------------------------------------------------------------------------------- assume_a="pos"

@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [1, 3, 8, 13])
def test_positive_definite_batch_with_one_indefinite_member(backend, dtype, n):
    """The SPD members are certified and as accurate as torch.cholesky_inverse; the indefinite one (which LU
    would invert: checked with assume_a="gen") is not certified, X NaN, named 'not positive definite'; the same
    for the solve."""
    if n == 1:
        A = torch.tensor([[[2.0]], [[-3.0]], [[0.5]]], dtype=dtype)
        bad = 1
    else:
        bad = 2
        A = spd_batch(6, n, 1e3, dtype, indefinite=bad)
    good = [i for i in range(A.shape[0]) if i != bad]
    X, info = neuinv.batched_inverse_ex(A, assume_a="pos", backend=backend)
    assert not info.certified[bad] and torch.isnan(X[bad]).all() and info.error_bound[bad] == float("inf")
    assert info.certified[good].all()
    truth = accurate_inverse(A[good])
    cholesky = torch.cholesky_inverse(torch.linalg.cholesky(A[good]))
    assert (relative_error(X[good], truth) <= info.error_bound[good] + TRUTH_SLACK).all()
    assert relative_error(X[good], truth).max() <= 4 * max(float(relative_error(cholesky, truth).max()),
                                                           n * torch.finfo(dtype).eps)
    _, general = neuinv.batched_inverse_ex(A, assume_a="gen", backend=backend)
    assert general.certified.all()
    with pytest.raises(torch.linalg.LinAlgError, match=rf"A\[{bad}\] is not positive definite \(assume_a='pos'\)"):
        neuinv.batched_inverse(A, assume_a="pos", backend=backend)
    B = torch.ones(A.shape[0], n, 2, dtype=dtype)
    X_solve, solve_info = neuinv.batched_solve_ex(A, B, assume_a="pos", backend=backend)
    assert not solve_info.certified[bad] and torch.isnan(X_solve[bad]).all() and solve_info.certified[good].all()
    truth = accurate_solve(A[good], B[good])
    assert (relative_error(X_solve[good], truth) <= solve_info.error_bound[good] + TRUTH_SLACK).all()
    with pytest.raises(torch.linalg.LinAlgError, match=rf"A\[{bad}\] is not positive definite"):
        neuinv.batched_solve(A, B, assume_a="pos", backend=backend)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_positive_definite_warm_start_and_singular_members(backend):
    """Newton–Schulz from a warm start as for "gen"; a zero matrix, a NaN and a semi-definite (singular) member are
    not certified, and the message for each is the right one."""
    A = spd_batch(6, 4, 100.0, torch.float64)
    X, info = neuinv.batched_inverse_ex(A, assume_a="pos", init=torch.linalg.inv(A) * (1 + 1e-4), backend=backend)
    assert info.certified.all() and not info.fallback.any()
    A[1] = 0.0
    A[3] = torch.ones(4, 4, dtype=torch.float64)  # rank 1, positive semi-definite
    A[4, 0, 0] = float("nan")
    X, info = neuinv.batched_inverse_ex(A, assume_a="pos", backend=backend)
    assert info.certified.tolist() == [True, False, True, False, False, True]
    with pytest.raises(ValueError, match=r"A\[4\] contains NaN"):
        neuinv.batched_inverse(A, assume_a="pos", backend=backend)
    A[4] = torch.eye(4, dtype=torch.float64)
    with pytest.raises(torch.linalg.LinAlgError, match=r"A\[1\] is not positive definite"):
        neuinv.batched_inverse(A, assume_a="pos", backend=backend)


def test_positive_definite_gradients():
    """Of a symmetric parametrisation (M + M^T) / 2, as for torch.linalg.cholesky: the Cholesky route reads one
    triangle, so a perturbation of the other alone is not a direction the function is defined in."""
    A = spd_batch(3, 3, 10.0, torch.float64).requires_grad_()

    def symmetric(M):
        return (M + M.mT) / 2

    assert torch.autograd.gradcheck(lambda M: neuinv.batched_inverse(symmetric(M), assume_a="pos"), (A,))
    B = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda M, C: neuinv.batched_solve(symmetric(M), C, assume_a="pos"), (A, B))
    assert torch.autograd.gradgradcheck(lambda M, C: neuinv.batched_solve(symmetric(M), C, assume_a="pos"), (A, B))


# ------------------------------------------------------------------------------------------ float16, bfloat16

@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [2, 5, 8])
def test_half_precision_input(backend, dtype, n):
    """Returned in the input dtype, certified in its terms: the bound (which includes the rounding to the input
    dtype) holds against the float64 inverse of the stored matrix, is at least the dtype's unit roundoff scale,
    and the result is as accurate as rounding torch's float32 inverse to the dtype."""
    A = conditioned_matrices(6, n, 100.0, torch.float64, seed=n).to(dtype)
    truth = torch.linalg.inv(A.double())
    X, info = neuinv.batched_inverse_ex(A, backend=backend)
    assert X.dtype == dtype and info.certified.all()
    error = relative_error(X, truth)
    assert (error <= info.error_bound).all()
    assert (info.error_bound < 2 * torch.finfo(dtype).eps).all()
    torch_error = relative_error(torch.linalg.inv(A.float()).to(dtype), truth)
    assert error.max() <= 2 * torch_error.max()
    B = torch.randn(6, n, 2, generator=torch.Generator().manual_seed(1)).to(dtype)
    X_solve, solve_info = neuinv.batched_solve_ex(A, B, backend=backend)
    assert X_solve.dtype == dtype and solve_info.certified.all()
    truth = torch.linalg.solve(A.double(), B.double())
    assert (relative_error(X_solve, truth) <= solve_info.error_bound).all()


@pytest.mark.parametrize("backend", AVAILABLE)
def test_half_precision_overflow_is_not_certified(backend):
    """float16's largest number is 65504: A = 1e-5 I has an inverse of 1e5, which overflows: not certified; a
    NaN member is named; bfloat16 (float32's range) takes the same matrix."""
    A = torch.eye(3).repeat(4, 1, 1).to(torch.float16)
    A[1] *= 1e-5
    X, info = neuinv.batched_inverse_ex(A, backend=backend)
    assert info.certified.tolist() == [True, False, True, True] and torch.isnan(X[1]).all()
    with pytest.raises(torch.linalg.LinAlgError, match=r"A\[1\] .* overflows torch.float16"):
        neuinv.batched_inverse(A, backend=backend)
    X, info = neuinv.batched_solve_ex(A, torch.ones(4, 3, dtype=torch.float16), backend=backend)
    assert info.certified.tolist() == [True, False, True, True]
    assert neuinv.batched_inverse_ex(A.to(torch.bfloat16), backend=backend)[1].certified.all()


def test_half_precision_gradients_and_bad_init():
    A = conditioned_matrices(3, 3, 10.0, torch.float64).half().requires_grad_()
    neuinv.batched_inverse(A).float().sum().backward()
    expected = -(torch.linalg.inv(A.detach().double()).mT @ torch.ones(3, 3, 3, dtype=torch.float64)
                 @ torch.linalg.inv(A.detach().double()).mT)
    assert torch.allclose(A.grad.double(), expected, rtol=1e-2, atol=1e-2)
    with pytest.raises(TypeError, match="init must have A's dtype torch.float16"):
        neuinv.batched_inverse(A.detach(), init=A.detach().float())


# ------------------------------------------------------------------------------------------------------- out=

def inverse_out(A):
    batch = A.shape[:-2]
    fields = (torch.empty(batch, dtype=dtype) for dtype in (torch.bool, torch.float64, torch.int32, torch.bool))
    return torch.empty_like(A), InverseInfo(*fields)


def test_out_is_written_and_returned():
    A = conditioned_matrices(6, 4, 10.0, torch.float32).view(2, 3, 4, 4)
    A[1, 2] = 0.0
    X_expected, info_expected = neuinv.batched_inverse_ex(A)
    X_out, info_out = inverse_out(A)
    pointers = [X_out.data_ptr()] + [t.data_ptr() for t in info_out]
    for _ in range(2):  # repeated calls write the same buffers
        X, info = neuinv.batched_inverse_ex(A, out=(X_out, info_out))
        assert X is X_out and all(a is b for a, b in zip(info, info_out))
        assert [X_out.data_ptr()] + [t.data_ptr() for t in info_out] == pointers
        assert torch.equal(X.nan_to_num(), X_expected.nan_to_num())
        assert all(torch.equal(a, b) for a, b in zip(info, info_expected))
    good = A[0]
    X_out = torch.full_like(good, 7.0)
    assert neuinv.batched_inverse(good, out=X_out) is X_out and torch.equal(X_out, neuinv.batched_inverse(good))
    B = torch.randn(2, 3, 4, 2)
    X_solve_expected, solve_expected = neuinv.batched_solve_ex(A, B)
    solve_out = (torch.empty(2, 3, 4, 2), SolveInfo(torch.empty(2, 3, dtype=torch.bool),
                                                    torch.empty(2, 3, dtype=torch.float64),
                                                    torch.empty(2, 3, dtype=torch.int32),
                                                    torch.empty(2, 3, dtype=torch.bool), None))
    X, info = neuinv.batched_solve_ex(A, B, out=solve_out)
    assert X is solve_out[0] and torch.equal(X.nan_to_num(), X_solve_expected.nan_to_num())
    assert all(a is b for a, b in zip(info, solve_out[1]))  # (the inverse None: not asked for)
    assert torch.equal(info.error_bound, solve_expected.error_bound)
    X_vector = torch.empty(3, 4)
    assert neuinv.batched_solve(A[0], B[0, :, :, 0], out=X_vector) is X_vector


def test_out_errors_are_clear():
    A = conditioned_matrices(3, 4, 10.0, torch.float64)
    with pytest.raises(ValueError, match="out must not share memory with the input"):
        neuinv.batched_inverse(A, out=A)
    with pytest.raises(ValueError, match="must not share memory"):
        neuinv.batched_inverse(A, out=A.mT)
    init = A.clone()
    with pytest.raises(ValueError, match="must not share memory"):
        neuinv.batched_inverse(A, init=init, out=init)
    with pytest.raises(ValueError, match=r"out must have shape \(3, 4, 4\), got \(2, 4, 4\)"):
        neuinv.batched_inverse(A, out=torch.empty(2, 4, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="out must have dtype torch.float64, got torch.float32"):
        neuinv.batched_inverse(A, out=torch.empty(3, 4, 4))
    X_out, info_out = inverse_out(A)
    with pytest.raises(TypeError, match=r"out\[1\].iterations must have dtype torch.int32"):
        neuinv.batched_inverse_ex(A, out=(X_out, info_out._replace(iterations=torch.empty(3, dtype=torch.int64))))
    with pytest.raises(ValueError, match=r"out\[1\].fallback must not share memory"):
        shared = torch.empty(3, dtype=torch.bool)
        neuinv.batched_inverse_ex(A, out=(X_out, info_out._replace(certified=shared, fallback=shared)))
    with pytest.raises(TypeError, match="out must be a pair"):
        neuinv.batched_inverse_ex(A, out=X_out)
    B = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="must not share memory"):
        neuinv.batched_solve(A, B, out=B)
    with pytest.raises(ValueError, match=r"out must have shape \(3, 4\)"):
        neuinv.batched_solve(A, B, out=torch.empty(3, 4, 1, dtype=torch.float64))
    solve_info = SolveInfo(torch.empty(3, dtype=torch.bool), torch.empty(3, dtype=torch.float64),
                           torch.empty(3, dtype=torch.int32),
                           torch.empty(3, dtype=torch.bool), None)
    with pytest.raises(ValueError, match=r"out\[1\].inverse must be a tensor of A's shape: return_inverse=True"):
        neuinv.batched_solve_ex(A, B, out=(torch.empty(3, 4, dtype=torch.float64), solve_info), return_inverse=True)
    with pytest.raises(ValueError, match=r"out\[1\].inverse must be None: the inverse is returned only with"):
        neuinv.batched_solve_ex(A, B, out=(torch.empty(3, 4, dtype=torch.float64),
                                           solve_info._replace(inverse=torch.empty(3, 4, 4, dtype=torch.float64))))
    with pytest.raises(TypeError, match="return_inverse must be a bool"):
        neuinv.batched_solve_ex(A, B, return_inverse=1)
    for field in ("certified", "error_bound", "iterations", "fallback"):  # only the inverse may be None
        with pytest.raises(TypeError, match=rf"out\[1\].{field} must be a torch.Tensor"):
            neuinv.batched_solve_ex(A, B, out=(torch.empty(3, 4, dtype=torch.float64),
                                               solve_info._replace(**{field: None})))
    with pytest.raises(RuntimeError, match="out= cannot be combined with gradients"):
        neuinv.batched_inverse(A.clone().requires_grad_(), out=X_out)
    kept = A.clone()
    neuinv.batched_inverse(A, out=X_out)
    assert torch.equal(A, kept)
