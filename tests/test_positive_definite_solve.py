"""batched_solve(assume_a="pos") without an inverse (neuinv.reference.positive_definite_solve, the compiled
kernels::solve_positive_definite; n > rules.POSITIVE_DEFINITE_SOLVE_WITHOUT_INVERSE_ABOVE = 8): the certificate of certificate.positive_definite_solve_error_bound against an
accurate float64 truth on every available backend -- sound everywhere, tight where it certifies, the same on the
compiled path as on the reference -- and a batch built to break it: nearly symmetric and non-symmetric members, an
indefinite, a NaN and a zero member, a smallest eigenvector orthogonal to the start of the inverse iteration, scales
2^+-600, a zero right-hand side, near-singular members that only the Cholesky inverse certifies."""
from __future__ import annotations

import math

import pytest
import torch

import neuinv
from neuinv import reference
from conftest import TRUTH_SLACK, accurate_solve

BACKENDS = [name for name, status in neuinv.available_backends().items() if status.available and name != "cuda"]
pytestmark = [pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]


def spd(batch, n, cond, seed=0, first_eigenvector=None):
    """Q diag(sigma) Q^T in float64, sigma log-spaced from 1 down to 1/cond, symmetric exactly; with
    `first_eigenvector` (n,) the eigenvector of the smallest eigenvalue is that vector (normalised)."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    if first_eigenvector is not None:
        M[:, :, 0] = first_eigenvector
    q, _ = torch.linalg.qr(M)
    sigma = torch.logspace(0, -math.log10(cond), n, dtype=torch.float64).flip(0) if n > 1 else torch.ones(1)
    A = (q * sigma.to(torch.float64)[None, None, :]) @ q.mT
    return (A + A.mT) / 2


def relative_errors(X, A, B):
    """||X - A^-1 B||_F / ||A^-1 B||_F per system, the truth taken of A 2^-e (e the exponent of its largest entry,
    exact), so that the refinement of the truth does not overflow for A near the ends of float64's range."""
    e = torch.frexp(A.double().abs().amax(dim=(-2, -1))).exponent.double()[:, None, None]
    truth = accurate_solve(A.double() * 2.0 ** -e, B.double())
    return torch.linalg.matrix_norm(X.double() * 2.0 ** e - truth) / torch.linalg.matrix_norm(truth)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [9, 17, 40])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sound_and_tight(backend, n, dtype):
    """Every system certified, no bound below the error; where the bound tracks the error (float32, whose
    rounding dominates, and float64 at cond 1e6, whose residual is evaluated by Dot2) its median is within 10x
    (float64 at cond 10 keeps the a-priori rounding term, as certificate.TIGHT_THRESHOLD says)."""
    for cond in ((10.0, 1e4) if dtype == torch.float32 else (10.0, 1e6)):
        A = spd(16, n, cond, seed=n).to(dtype)
        B = torch.randn(16, n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
        X, info = neuinv.batched_solve_ex(A, B, assume_a="pos", backend=backend)
        error = relative_errors(X, A, B)
        assert info.certified.all(), (cond, info.error_bound)
        assert (error <= info.error_bound * (1 + TRUTH_SLACK) + TRUTH_SLACK).all(), (cond, error, info.error_bound)
        if dtype == torch.float32 or cond > 1e3:
            ratio = info.error_bound / error.clamp_min(torch.finfo(torch.float64).tiny)
            assert ratio.median() <= 10, (cond, ratio)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="the compiled CPU kernels are not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_compiled_matches_the_reference(dtype):
    """The compiled kernel follows reference.positive_definite_solve, at a fixed size (16) and at run-time sizes:
    both certify every system, their solutions lie within the sum of their bounds of each other, and the bounds
    agree -- to a few digits for float32, whose rounding they bound; within 8x for float64, whose solutions differ
    in their last bits (LAPACK's factor against the kernel's) and whose bounds follow each one's own residual."""
    for n in (9, 12, 16, 33):
        A = spd(11, n, 1e5, seed=n).to(dtype)
        B = torch.randn(11, n, 3, generator=torch.Generator().manual_seed(n), dtype=torch.float64).to(dtype)
        X_cpp, bound_cpp = torch.ops.neuinv.solve(A, B, None, None, True)
        X_ref, bound_ref = reference.positive_definite_solve(A, B)
        assert torch.isfinite(bound_ref).all() and torch.isfinite(bound_cpp).all()
        apart = torch.linalg.matrix_norm(X_cpp.double() - X_ref.double())
        assert (apart <= (bound_cpp + bound_ref) * torch.linalg.matrix_norm(X_ref.double()) * 1.01).all()
        ratio = bound_cpp / bound_ref
        spread = 1.01 if dtype == torch.float32 else 8.0
        assert ((ratio > 1 / spread) & (ratio < spread)).all(), (n, ratio)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_built_to_break_it(backend):
    n = 10
    alternating = torch.tensor([(-1.0) ** i for i in range(n)], dtype=torch.float64)
    good = spd(1, n, 1e3, seed=1)
    members = {
        "good": good,
        "nearly symmetric": good.clone(),
        "non-symmetric": good.clone(),
        "indefinite": -good,
        "nan": good.clone(),
        "zero": torch.zeros_like(good),
        "eigenvector orthogonal to (1, ..., 1)": spd(1, n, 1e3, seed=2, first_eigenvector=alternating),
        "scaled up": good * 2.0 ** 600,
        "scaled down": good * 2.0 ** -600,
        "zero right-hand side": good.clone(),
        "near-singular": spd(1, n, 1e15, seed=3),
    }
    members["nearly symmetric"][0, 0, n - 1] += 1e3 * torch.finfo(torch.float64).eps
    members["non-symmetric"][0, 0, n - 1] += 2.0
    members["nan"][0, 2, 2] = math.nan
    names = list(members)
    A = torch.cat([members[name] for name in names])
    B = torch.randn(len(names), n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    B[names.index("zero right-hand side")] = 0.0
    B[names.index("scaled up")] = B[names.index("scaled down")] = B[names.index("good")]
    A_before, B_before = A.clone(), B.clone()
    X, info = neuinv.batched_solve_ex(A, B, assume_a="pos", backend=backend)
    assert torch.equal(A.view(torch.int64), A_before.view(torch.int64)) and torch.equal(B, B_before)  # bit for bit
    certified = dict(zip(names, info.certified.tolist()))
    for name in ("good", "nearly symmetric", "eigenvector orthogonal to (1, ..., 1)", "scaled up", "scaled down",
                 "zero right-hand side"):
        assert certified[name], name
    for name in ("indefinite", "nan", "zero"):
        assert not certified[name] and torch.isnan(X[names.index(name)]).all(), name
    ok = info.certified.clone()
    ok[names.index("zero right-hand side")] = False  # checked below: X = 0 exactly, bound 0
    error = relative_errors(X[ok], A[ok], B[ok])
    assert (error <= info.error_bound[ok] * (1 + TRUTH_SLACK) + TRUTH_SLACK).all(), (error, info.error_bound[ok])
    bound = dict(zip(names, info.error_bound.tolist()))
    assert bound["zero right-hand side"] == 0.0 and torch.equal(X[names.index("zero right-hand side")],
                                                                 torch.zeros(n, 2, dtype=torch.float64))
    assert bound["scaled up"] == bound["good"] == bound["scaled down"]


@pytest.mark.parametrize("n, rho", [(9, 0.9), (32, 0.5), (64, 0.5), (40, 0.99)])
def test_equicorrelation_matrices_need_no_inverse(n, rho):
    """(1 - rho) I + rho 1 1^T, whose eigenvector (1, ..., 1) belongs to the largest eigenvalue: the estimate of
    lambda_min must not start from that vector alone, or every shift fails and the route refuses them."""
    A = ((1 - rho) * torch.eye(n, dtype=torch.float64) + rho * torch.ones(n, n, dtype=torch.float64))[None]
    B = torch.randn(1, n, 2, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    X, bound = reference.positive_definite_solve(A, B)
    assert torch.isfinite(bound).all()
    assert (relative_errors(X, A, B) <= bound * (1 + TRUTH_SLACK) + TRUTH_SLACK).all()


def test_refused_systems_take_the_cholesky_inverse():
    """Where no shift proves A non-singular (the margin of the shifted factorisation exceeds lambda_min), the
    system is solved from the Cholesky inverse, which certifies it: the reference route leaves it at +inf, the
    backend's solve does not."""
    A = spd(8, 12, 1e15, seed=4)
    B = torch.randn(8, 12, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, bound_alone = reference.positive_definite_solve(A, B)
    X, bound = neuinv.backends.resolve_backend("torch", A).solve(A, B, positive_definite=True)
    refused = ~torch.isfinite(bound_alone)
    assert refused.any()
    assert torch.isfinite(bound[refused]).any()
    error = relative_errors(X, A, B)
    assert (error[torch.isfinite(bound)] <= bound[torch.isfinite(bound)] * (1 + TRUTH_SLACK) + TRUTH_SLACK).all()
