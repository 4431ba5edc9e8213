"""The positive-definite exact path (``invert(..., positive_definite=True)``: Cholesky A = L L^T of A's lower
triangle, the inverse from the factor, the certificate of the full A) on every available backend, against the
reference (neuinv.reference.invert) and a float64 (or mpmath) truth: an indefinite, a non-symmetric, a NaN and a
zero member among symmetric positive definite ones, a nearly symmetric one, near-singular ones (cond ~ 1/eps),
n = 1 to 64, an empty batch."""
from __future__ import annotations

import math

import pytest
import torch

import neuinv
from neuinv import reference
from neuinv.backends import resolve_backend
from neuinv.rules import newton_schulz_rules
from neuinv.testing import warm_start
from conftest import TRUTH_SLACK, accurate_inverse

BACKENDS = [name for name, status in neuinv.available_backends().items()
            if status.available and name != "cuda"] + (["cuda"] if torch.cuda.is_available() and
                                                       neuinv.available_backends()["cuda"].available else [])
DEVICE = {"cuda": "cuda"}
SIZES = [1, 2, 3, 4, 5, 8, 13, 16, 33, 64]
pytestmark = [pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

GOOD, INDEFINITE, NON_SYMMETRIC, WITH_NAN, ZERO, NEARLY_SYMMETRIC = 0, 1, 2, 3, 4, 5


def symmetric_matrices(batch, n, cond, dtype, seed, flip=()):
    """Q diag(sigma) Q^T (sigma log-spaced from 1 to 1/cond, the sign of sigma_0 flipped for the members in
    `flip`), symmetrised exactly, then rounded to dtype."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=torch.float64))
    sigma = torch.logspace(0, -math.log10(cond), n, dtype=torch.float64) if n > 1 else torch.ones(1, dtype=torch.float64)
    sigma = sigma.repeat(batch, 1)
    for index in flip:
        sigma[index, 0] = -sigma[index, 0]
    A = (q * sigma[:, None, :]) @ q.mT
    return ((A + A.mT) / 2).to(dtype)


def mixed_batch(n, dtype):
    """Seven matrices: SPD (cond 100) except an indefinite, a non-symmetric (2 added above the diagonal, so that
    ||I - A S^-1||_F >= 2 for the S the factorisation sees), a NaN and a zero member, and a nearly symmetric one
    (100 eps(dtype) added above the diagonal: Cholesky inverts its lower triangle, which the certificate of the full
    A accepts with a bound that must still hold)."""
    A = symmetric_matrices(7, n, 100.0, dtype, seed=n, flip=(INDEFINITE,))
    if n > 1:
        A[NON_SYMMETRIC, 0, n - 1] += 2.0
        A[NEARLY_SYMMETRIC, 0, n - 1] += 100 * torch.finfo(dtype).eps
    A[WITH_NAN, n // 2, n // 2] = math.nan
    A[ZERO] = 0.0
    return A


def _invert(backend, A, X0=None, refine=False, positive_definite=True):
    rules = newton_schulz_rules(A.dtype, None, None, X0 is not None)
    return resolve_backend(backend, A).invert(A, X0, None, refine, rules, 1.0, positive_definite)


def _relative_error(X, truth):
    return (torch.linalg.matrix_norm(X.double() - truth) / torch.linalg.matrix_norm(truth)).cpu()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_positive_definite_path(backend, n, dtype):
    """Per matrix the verdict and path of the reference; the indefinite, non-symmetric (n > 1), NaN and zero
    members not certified (X NaN, bound +inf), where the general path certifies the indefinite one; every certified
    bound holds against the float64 inverse of the full A; on the symmetric members the error is at most 4x that of
    torch.cholesky_inverse(torch.linalg.cholesky(A)) in A's dtype (or n eps)."""
    A = mixed_batch(n, dtype).to(DEVICE.get(backend, "cpu"))
    X, certified, bound, iterations, fallback = _invert(backend, A)
    X_ref, certified_ref, bound_ref, _, fallback_ref = reference.invert(
        A.cpu(), None, None, False, newton_schulz_rules(dtype, None, None, False), 1.0, positive_definite=True)
    label = f"{backend} n={n} {dtype}: {certified.tolist()} {bound.tolist()}"
    assert torch.equal(certified.cpu(), certified_ref) and fallback.all() and (iterations == 0).all(), label
    refused = [INDEFINITE, WITH_NAN, ZERO] + ([NON_SYMMETRIC] if n > 1 else [])
    assert not certified[refused].any() and torch.isnan(X[refused]).all(), label
    assert torch.isinf(bound[refused]).all(), label
    good = [i for i in range(7) if i not in refused]
    assert certified[good].all(), label
    _, general_certified, *_ = _invert(backend, A, positive_definite=False)
    assert general_certified[INDEFINITE], label
    truth = accurate_inverse(A[good].cpu())
    error = _relative_error(X[good].cpu(), truth)
    assert (error <= bound[good].cpu() + TRUTH_SLACK).all(), (label, error)
    symmetric = [i for i in good if i != NEARLY_SYMMETRIC]  # the nearly symmetric one: A's lower triangle inverted
    spd, spd_truth = A[symmetric].cpu(), accurate_inverse(A[symmetric].cpu())
    torch_error = _relative_error(torch.cholesky_inverse(torch.linalg.cholesky(spd)), spd_truth)
    allowed = 4 * max(float(torch_error.max()), n * torch.finfo(dtype).eps)
    assert float(_relative_error(X[symmetric].cpu(), spd_truth).max()) <= allowed, (label, error, torch_error)


def _mpmath_inverse(A):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    inverse = mpmath.inverse(mpmath.matrix(A.double().tolist()))
    return torch.tensor([[float(inverse[i, j]) for j in range(A.shape[-1])] for i in range(A.shape[-1])],
                        dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [2, 3, 8, 13])
@pytest.mark.parametrize("backend", BACKENDS)
def test_near_singular(backend, n, dtype):
    """SPD with cond ~ 1/eps(dtype): every certified bound holds against a 50-digit truth of the stored matrix.
    Where Cholesky runs in double (the compiled and Triton kernels), every float32 member that is still positive
    definite after its rounding to float32, by a margin Cholesky in double resolves (lambda_min > 20 n^1.5 u_64
    ||A||_2, Higham Thm. 10.7), is certified."""
    cond = 1 / torch.finfo(dtype).eps
    A = symmetric_matrices(4, n, cond, dtype, seed=10 + n).to(DEVICE.get(backend, "cpu"))
    X, certified, bound, _, _ = _invert(backend, A)
    for i in range(4):
        if certified[i]:
            truth = _mpmath_inverse(A[i].cpu())
            error = float(_relative_error(X[i].cpu()[None], truth[None])[0])
            assert error <= float(bound[i]), (backend, n, dtype, i, error, float(bound[i]))
        else:
            assert torch.isnan(X[i]).all() and math.isinf(float(bound[i]))
    if dtype == torch.float32 and backend != "torch":
        eigenvalues = torch.linalg.eigvalsh(A.cpu().double())
        resolved = eigenvalues[:, 0] > 20 * n ** 1.5 * 2.0 ** -53 * eigenvalues[:, -1]
        assert resolved.any() and certified.cpu()[resolved].all(), (backend, n, eigenvalues[:, 0], certified)


@pytest.mark.parametrize("backend", BACKENDS)
def test_newton_schulz_unchanged(backend):
    """With a guess, positive_definite changes only the exact path: Newton–Schulz results are the same, and a
    guarded (bad) guess on an indefinite matrix is refused instead of inverted by LU."""
    A = symmetric_matrices(6, 5, 10.0, torch.float64, seed=3, flip=(4,)).to(DEVICE.get(backend, "cpu"))
    X0 = warm_start(A.cpu(), 1e-3).to(A.device)
    X0[4] = 0.0  # r0 = sqrt(5) >= guard: exact path
    pos = _invert(backend, A, X0, True, True)
    general = _invert(backend, A, X0, True, False)
    keep = [0, 1, 2, 3, 5]
    assert torch.equal(pos[0][keep], general[0][keep]) and torch.equal(pos[3], general[3])
    assert general[1][4] and not pos[1][4] and pos[4][4]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_empty_batch(backend, dtype):
    A = torch.empty(0, 4, 4, dtype=dtype, device=DEVICE.get(backend, "cpu"))
    X, certified, bound, iterations, fallback = _invert(backend, A)
    assert X.shape == (0, 4, 4) and certified.shape == bound.shape == iterations.shape == fallback.shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_is_not_modified(backend):
    A = mixed_batch(8, torch.float64).to(DEVICE.get(backend, "cpu"))
    kept = A.clone()
    _invert(backend, A)
    assert torch.equal(A.nan_to_num(), kept.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_hermitian_on_the_reference(dtype):
    """Complex input (the torch backend): Hermitian positive definite members certified with bounds that hold; a
    negative definite one and one changed above the diagonal (not Hermitian) refused."""
    g = torch.Generator().manual_seed(5)
    B = torch.randn(4, 6, 6, generator=g, dtype=torch.complex128)
    A = B @ B.mH + 6 * torch.eye(6, dtype=torch.complex128)
    A[1] = -A[1]
    A[2, 0, 5] += 2 * torch.linalg.matrix_norm(A[2], ord=2)
    A = A.to(dtype)
    X, certified, bound, _, fallback = _invert("torch", A)
    assert certified.tolist() == [True, False, False, True] and fallback.all()
    assert torch.isnan(X[1:3]).all() and torch.isinf(bound[1:3]).all()
    truth = torch.linalg.inv(A[[0, 3]].to(torch.complex128))
    error = torch.linalg.matrix_norm(X[[0, 3]].to(torch.complex128) - truth) / torch.linalg.matrix_norm(truth)
    assert (error <= bound[[0, 3]]).all()
