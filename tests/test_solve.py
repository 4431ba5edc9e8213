"""batched_solve / batched_solve_ex: solutions against an exact truth (rational arithmetic, mpmath above n = 8), the
certificate never below the true error (ill-conditioned, graded, extreme scales, subnormal right-hand sides),
singular / NaN members inside good batches, torch.linalg.solve's broadcasting and vector rule, warm starts, the
raise policy, on every backend available."""
from __future__ import annotations

from fractions import Fraction

import mpmath
import pytest
import torch

import neuinv
from neuinv.testing import conditioned_matrices

AVAILABLE = [name for name, status in neuinv.available_backends().items() if status.available and name != "cuda"]
pytestmark = [pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]


def exact_relative_error(A: torch.Tensor, B: torch.Tensor, X: torch.Tensor) -> float:
    """||X - A^-1 B||_F / ||A^-1 B||_F of one stored real system (A n x n, B and X n x k), exactly: Gauss-Jordan
    over the rationals for n <= 8, mpmath at 60 digits above; the result rounded to a float."""
    n, k = B.shape
    if n <= 8:
        w = [[Fraction(v) for v in row] + [Fraction(v) for v in b_row]
             for row, b_row in zip(A.double().tolist(), B.double().tolist())]
        for c in range(n):
            pivot = next(i for i in range(c, n) if w[i][c] != 0)
            w[c], w[pivot] = w[pivot], w[c]
            w[c] = [v / w[c][c] for v in w[c]]
            for i in range(n):
                if i != c and w[i][c] != 0:
                    factor = w[i][c]
                    w[i] = [a - factor * b for a, b in zip(w[i], w[c])]
        truth = [row[n:] for row in w]
        x = [[Fraction(v) for v in row] for row in X.double().tolist()]
        difference = sum((x[i][j] - truth[i][j]) ** 2 for i in range(n) for j in range(k))
        norm = sum(truth[i][j] ** 2 for i in range(n) for j in range(k))
        return float(difference / norm) ** 0.5
    with mpmath.workdps(60):
        A_mp = mpmath.matrix(A.double().tolist())
        difference = norm = mpmath.mpf(0)
        for j in range(k):
            truth = mpmath.lu_solve(A_mp, mpmath.matrix(B[:, j].double().tolist()))
            x = mpmath.matrix(X[:, j].double().tolist())
            difference += mpmath.mnorm(x - truth, "f") ** 2
            norm += mpmath.mnorm(truth, "f") ** 2
        return float(mpmath.sqrt(difference / norm))


def right_hand_sides(batch, n, k, dtype, seed=1):
    return torch.randn(batch, n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_solution_and_certificate_against_the_exact_truth(backend, dtype, n):
    """Every system certified, its bound above the exact error, and the error within 4x torch.linalg.solve's
    worst on the same batch (floor: n eps)."""
    if backend == "triton" and n > 8:
        pytest.skip("the interpreter is slow")
    A = conditioned_matrices(6, n, 1e3, dtype, seed=n)
    B = right_hand_sides(6, n, 2, dtype)
    X, info = neuinv.batched_solve_ex(A, B, backend=backend)
    assert X.dtype == dtype and X.shape == B.shape and info.certified.all()
    errors = [exact_relative_error(A[i], B[i], X[i]) for i in range(6)]
    for error, bound in zip(errors, info.error_bound.tolist()):
        assert error <= bound, (error, bound)
    torch_error = max(exact_relative_error(A[i], B[i], torch.linalg.solve(A[i], B[i])) for i in range(6))
    assert max(errors) <= 4 * max(torch_error, n * torch.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("exponent", [2, 5, 7, 10, 13, 15, 17])
def test_bound_holds_for_ill_conditioned_systems(dtype, exponent):
    """cond 10^2 .. 10^17 (beyond 1/eps): the bound is never below the exact error; where nothing can be certified
    X is NaN and the bound +inf. Every backend available."""
    n = 6
    A = conditioned_matrices(5, n, 10.0 ** exponent, dtype, seed=exponent)
    B = right_hand_sides(5, n, 1, dtype, seed=exponent)
    for backend in AVAILABLE:
        X, info = neuinv.batched_solve_ex(A, B, backend=backend)
        for i in range(5):
            if info.certified[i]:
                assert exact_relative_error(A[i], B[i], X[i]) <= float(info.error_bound[i]), (backend, i)
            else:
                assert torch.isnan(X[i]).all() and info.error_bound[i] == float("inf")
        if exponent <= (5 if dtype == torch.float32 else 13):
            assert info.certified.all(), backend


def test_bound_is_tight_for_well_conditioned_float64():
    """The bound tracks the true error: for cond 10 in float64 it lies within 1e-13 (not a loose a-priori
    estimate), and for cond 1e10 the compensated residual keeps it within 100x the true error."""
    A = conditioned_matrices(8, 5, 10.0, torch.float64)
    X, info = neuinv.batched_solve_ex(A, right_hand_sides(8, 5, 3, torch.float64))
    assert (info.error_bound < 1e-13).all()
    A = conditioned_matrices(8, 5, 1e10, torch.float64, seed=3)
    B = right_hand_sides(8, 5, 1, torch.float64)
    X, info = neuinv.batched_solve_ex(A, B, backend="torch")
    errors = torch.tensor([exact_relative_error(A[i], B[i], X[i]) for i in range(8)], dtype=torch.float64)
    assert (info.error_bound <= 100 * errors.clamp_min(1e-16)).all(), (info.error_bound, errors)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_singular_and_non_finite_members_inside_a_good_batch(backend):
    n = 4
    A = conditioned_matrices(12, n, 100.0, torch.float64)
    B = right_hand_sides(12, n, 2, torch.float64)
    A[3] = 0.0
    A[5] = torch.tensor([[1.0, 2, 3, 4], [2, 4, 6, 8], [0, 1, 0, 1], [1, 0, 1, 0]])  # rank 3, exactly
    A[7, 1, 2] = float("nan")
    B[9, 0, 1] = float("inf")
    kept = A.clone(), B.clone()
    X, info = neuinv.batched_solve_ex(A, B, backend=backend)
    assert torch.equal(kept[0].nan_to_num(), A.nan_to_num()) and torch.equal(kept[1], B)
    bad = [3, 5, 7, 9]
    good = [i for i in range(12) if i not in bad]
    assert not info.certified[bad].any() and torch.isnan(X[bad]).all()
    assert (info.error_bound[bad] == float("inf")).all()
    assert info.certified[good].all()
    assert torch.allclose(X[good], torch.linalg.solve(A[good], B[good]), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"A\[7\] or its right-hand side contains NaN or Inf \(4 matrices"):
        neuinv.batched_solve(A, B, backend=backend)
    A[7] = torch.eye(n)
    with pytest.raises(ValueError, match=r"A\[9\] or its right-hand side contains NaN or Inf"):
        neuinv.batched_solve(A, B, backend=backend)
    B[9] = 1.0
    with pytest.raises(torch.linalg.LinAlgError, match=r"A\[3\] is singular .* solution"):
        neuinv.batched_solve(A, B, backend=backend)


@pytest.mark.parametrize("A_shape,B_shape", [
    ((4, 4), (4,)), ((4, 4), (4, 3)), ((2, 4, 4), (4,)), ((2, 4, 4), (2, 4)), ((2, 4, 4), (4, 1)),
    ((2, 4, 4), (3, 1, 4, 2)), ((3, 1, 4, 4), (2, 4, 5)), ((1, 4, 4), (3, 4, 2)), ((3, 4, 4), (3, 4)),
    ((3, 4, 4), (3, 4, 4)), ((0, 4, 4), (0, 4, 2)), ((2, 4, 4), (2, 4, 0)), ((4, 4), (2, 4, 3))])
def test_broadcasting_as_torch_linalg_solve(A_shape, B_shape):
    """Shapes, values and the vector rule as torch.linalg.solve; info of the broadcast batch shape (certified,
    error_bound) and of A's (iterations, fallback, inverse); A's inverse computed once per matrix of A."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(A_shape, generator=g, dtype=torch.float64) + 4 * torch.eye(4, dtype=torch.float64)
    B = torch.randn(B_shape, generator=g, dtype=torch.float64)
    expected = torch.linalg.solve(A, B)
    X, info = neuinv.batched_solve_ex(A, B)
    assert X.shape == expected.shape
    assert torch.allclose(X, expected, rtol=1e-12, atol=1e-12)
    vector = B.dim() == 1 or (B.dim() == A.dim() - 1 and B.shape == A.shape[:-1])
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-1] if vector else B.shape[:-2])
    assert info.certified.shape == batch and info.error_bound.shape == batch and info.certified.all()
    assert info.iterations.shape == A.shape[:-2] and info.fallback.shape == A.shape[:-2] and info.inverse is None
    assert torch.equal(neuinv.batched_solve(A, B), X)
    X_inverse_first, info = neuinv.batched_solve_ex(A, B, return_inverse=True)
    assert torch.allclose(X_inverse_first, expected, rtol=1e-12, atol=1e-12) and info.certified.all()
    assert info.inverse.shape == A.shape and torch.allclose(info.inverse, torch.linalg.inv(A), rtol=1e-12, atol=1e-13)


def test_bad_input_is_named():
    A = conditioned_matrices(2, 3, 10.0, torch.float64)
    with pytest.raises(ValueError, match=r"B must have shape \(\*, 3\) or \(\*, 3, k\)"):
        neuinv.batched_solve(A, torch.ones(2, 4, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not broadcast"):
        neuinv.batched_solve(A, torch.ones(3, 3, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="B must have A's dtype"):
        neuinv.batched_solve(A, torch.ones(2, 3, dtype=torch.float32))
    with pytest.raises(TypeError, match="B must be a torch.Tensor"):
        neuinv.batched_solve(A, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="assume_a must be one of"):
        neuinv.batched_solve(A, torch.ones(2, 3, dtype=torch.float64), assume_a="sym")
    with pytest.raises(ValueError, match="init must have A's shape"):
        neuinv.batched_solve(A, torch.ones(2, 3, dtype=torch.float64), init=A[0])


@pytest.mark.parametrize("backend", AVAILABLE)
def test_warm_start_from_the_previous_inverse(backend):
    """info.inverse of one step warm-starts the next (Newton–Schulz steps, no exact path); a spoiled guess takes the
    exact path; both certified and correct."""
    A = conditioned_matrices(10, 5, 100.0, torch.float64)
    B = right_hand_sides(10, 5, 1, torch.float64)
    _, info = neuinv.batched_solve_ex(A, B, backend=backend, return_inverse=True)
    A_next = A + 1e-6 * torch.randn(A.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    X, info_next = neuinv.batched_solve_ex(A_next, B, init=info.inverse, backend=backend)
    assert info_next.certified.all() and not info_next.fallback.any() and (info_next.iterations > 0).all()
    assert torch.allclose(X, torch.linalg.solve(A_next, B), rtol=1e-11, atol=1e-12)
    spoiled = info.inverse.clone()
    spoiled[2] *= 3
    X, info_spoiled = neuinv.batched_solve_ex(A_next, B, init=spoiled, backend=backend)
    assert info_spoiled.certified.all() and bool(info_spoiled.fallback[2])
    assert torch.allclose(X, torch.linalg.solve(A_next, B), rtol=1e-11, atol=1e-12)


def test_max_error_is_applied_to_the_solution():
    A = conditioned_matrices(4, 5, 1e8, torch.float64)
    B = right_hand_sides(4, 5, 1, torch.float64)
    _, info = neuinv.batched_solve_ex(A, B)
    limit = float(info.error_bound.min()) / 2
    X, info_limited = neuinv.batched_solve_ex(A, B, max_error=limit)
    # (systems that the limit would refuse are re-evaluated by the second stage first: a bound never grows)
    assert bool((info_limited.error_bound <= info.error_bound).all())
    assert torch.equal(info_limited.certified, info_limited.error_bound <= limit)
    assert bool(torch.isnan(X[~info_limited.certified]).all()) and not torch.isnan(X[info_limited.certified]).any()
    unattainable = 1e-30
    X, info_limited = neuinv.batched_solve_ex(A, B, max_error=unattainable)
    assert not info_limited.certified.any() and torch.isnan(X).all()
    with pytest.raises(torch.linalg.LinAlgError, match="certified only to a relative error of .* above max_error"):
        neuinv.batched_solve(A, B, max_error=unattainable)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_scaling_by_powers_of_two(backend):
    """A 2^j and B 2^k give X 2^(k-j) exactly and the same bounds (no underflow or overflow of the certificate's
    evaluation at 2^+-500 in float64, 2^+-60 in float32)."""
    for dtype, exponents in ((torch.float64, (-500, -40, 40, 500)), (torch.float32, (-60, 60))):
        A = conditioned_matrices(4, 5, 100.0, dtype)
        B = right_hand_sides(4, 5, 2, dtype)
        X, info = neuinv.batched_solve_ex(A, B, backend=backend)
        for j in exponents:
            for k in (-j, j):
                X_s, info_s = neuinv.batched_solve_ex(A * 2.0 ** j, B * 2.0 ** k, backend=backend)
                assert torch.equal(X_s, X * 2.0 ** (k - j)), (dtype, j, k)
                assert torch.equal(info_s.error_bound, info.error_bound), (dtype, j, k)


def test_subnormal_and_zero_right_hand_sides():
    """A right-hand side with subnormal entries: the bound still holds; B = 0: X = 0, certified with bound 0."""
    A = conditioned_matrices(3, 4, 10.0, torch.float64)
    B = right_hand_sides(3, 4, 1, torch.float64)
    B[0, 1:] = 5e-324
    B[1] = 0.0
    B[2] *= 1e-310
    X, info = neuinv.batched_solve_ex(A, B)
    assert info.certified.all()
    assert torch.equal(X[1], torch.zeros_like(X[1])) and info.error_bound[1] == 0
    for i in (0, 2):
        assert exact_relative_error(A[i], B[i], X[i]) <= float(info.error_bound[i])


def test_gradcheck_and_gradgradcheck():
    A = conditioned_matrices(2, 3, 10.0, torch.float64).requires_grad_()
    for B in (torch.randn(2, 3, 2, dtype=torch.float64), torch.randn(3, dtype=torch.float64),
              torch.randn(4, 1, 3, 1, dtype=torch.float64)):
        B.requires_grad_()
        assert torch.autograd.gradcheck(neuinv.batched_solve, (A, B))
        assert torch.autograd.gradgradcheck(neuinv.batched_solve, (A, B))
    assert torch.autograd.gradcheck(lambda M, C: neuinv.batched_solve_ex(M, C, return_inverse=True)[1].inverse,
                                    (A, B))


def test_gradient_matches_torch():
    A = conditioned_matrices(5, 6, 100.0, torch.float64)
    B = right_hand_sides(5, 6, 2, torch.float64)
    grads = []
    for solve in (neuinv.batched_solve, torch.linalg.solve):
        A_g, B_g = A.clone().requires_grad_(), B.clone().requires_grad_()
        solve(A_g, B_g).pow(2).sum().backward()
        grads.append((A_g.grad, B_g.grad))
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(*grads))


def test_flush_to_zero_cannot_fake_a_certificate():
    """With denormals flushed in this thread, subnormal right-hand sides and solutions are read as zero: such a
    system is either not certified or its bound still holds against the exact truth."""
    A = conditioned_matrices(3, 4, 10.0, torch.float64)
    B = right_hand_sides(3, 4, 1, torch.float64)
    B[0, 1:] = 5e-324
    B[1] *= 1e-310
    B[2] *= 1e-300
    try:
        if not torch.set_flush_denormal(True):
            pytest.skip("this CPU cannot flush denormals")
        X, info = neuinv.batched_solve_ex(A, B, backend="torch")
    finally:
        torch.set_flush_denormal(False)
    for i in range(3):
        if info.certified[i]:
            assert exact_relative_error(A[i], B[i], X[i]) <= float(info.error_bound[i]), i
    assert info.certified[2]


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_complex_systems_against_the_exact_truth(dtype):
    """Complex A and B (the torch backend), the exact error through the real 2n x 2n form [[P, -Q], [Q, P]]."""
    g = torch.Generator().manual_seed(4)
    A = (torch.randn(4, 3, 3, dtype=torch.complex128, generator=g) + 3 * torch.eye(3)).to(dtype)
    B = torch.randn(4, 3, 2, dtype=torch.complex128, generator=g).to(dtype)
    A[1] = 0
    X, info = neuinv.batched_solve_ex(A, B)
    assert info.certified.tolist() == [True, False, True, True] and torch.isnan(X[1]).all()

    def real(M):
        M = M.to(torch.complex128)
        return torch.cat([torch.cat([M.real, -M.imag], -1), torch.cat([M.imag, M.real], -1)], -2)

    for i in (0, 2, 3):
        stacked = lambda V: torch.cat([V.real, V.imag], -2).double()  # noqa: E731
        error = exact_relative_error(real(A[i]), stacked(B[i].to(torch.complex128)), stacked(X[i].to(torch.complex128)))
        assert error <= float(info.error_bound[i]) < 100 * torch.finfo(dtype).eps


@pytest.mark.parametrize("backend", AVAILABLE)
def test_solution_below_the_dtype_range_is_not_certified_as_zero(backend):
    """A = 1e200 I, B = 1e-300: X* = 1e-500 underflows float64 to 0, whose relative error is 1. Nothing may be
    certified (the equilibrated second stage once certified X = 0 with bound 0: its scaled B underflowed to 0)."""
    for scale in (1e200, 1e300, 1e305):
        A = (scale * torch.eye(2, dtype=torch.float64))[None]
        B = torch.full((1, 2, 1), 1e-300, dtype=torch.float64)
        X, info = neuinv.batched_solve_ex(A, B, backend=backend)
        assert not info.certified.any() and torch.isinf(info.error_bound).all() and torch.isnan(X).all(), scale


@pytest.mark.parametrize("backend", AVAILABLE)
def test_no_right_hand_sides_with_a_singular_matrix(backend):
    """B (b, n, 0): the same verdict on every backend, as torch.linalg.solve_ex's info: certified (bound 0) where
    A is certified non-singular, not where it is singular."""
    A = conditioned_matrices(3, 3, 10.0, torch.float64)
    A[1] = 0.0
    X, info = neuinv.batched_solve_ex(A, torch.ones(3, 3, 0, dtype=torch.float64), backend=backend)
    assert X.shape == (3, 3, 0)
    assert info.certified.tolist() == [True, False, True]
    assert info.error_bound[0] == 0 and torch.isinf(info.error_bound[1])


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("left", [True, False], ids=["left", "right"])
def test_no_right_hand_sides_with_a_badly_scaled_matrix(backend, left):
    """k = 0 with a non-singular A whose normwise certificate is refused (diag(1e-200, 1, 1e200)): an empty X, as
    torch gives, on every entry point (the equilibrated second stage certifies A; there is no solution to overflow)."""
    A = torch.diag(torch.tensor([1e-200, 1.0, 1e200], dtype=torch.float64))
    B = torch.empty(3, 0, dtype=torch.float64)
    B = B if left else B.mT
    X = neuinv.batched_solve(A, B, left=left, backend=backend)
    X_ex, info = neuinv.batched_solve_ex(A, B, left=left, backend=backend)
    assert X.shape == X_ex.shape == torch.linalg.solve(A, B, left=left).shape and bool(info.certified)


def test_info_of_empty_matrices_is_the_same_with_and_without_the_inverse():
    """0 x 0 systems: X empty and certified with bound 0, and iterations and fallback as the inversion reports them,
    whether or not the inverse is returned."""
    A, B = torch.empty(3, 0, 0, dtype=torch.float64), torch.empty(3, 0, 2, dtype=torch.float64)
    X, info = neuinv.batched_solve_ex(A, B)
    X_inverse_first, info_inverse_first = neuinv.batched_solve_ex(A, B, return_inverse=True)
    assert X.shape == X_inverse_first.shape == (3, 0, 2) and info.inverse is None
    for field in ("certified", "error_bound", "iterations", "fallback"):
        assert torch.equal(getattr(info, field), getattr(info_inverse_first, field)), field
    assert info.certified.all() and (info.error_bound == 0).all()
