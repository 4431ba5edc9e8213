"""Every backend follows the rules of neuinv.rules: a scenario table run through each available backend.

Each scenario's matrices are built so that its outcome is decided by a margin, not by rounding: A is a
permuted diagonal of powers of two, so A X0 = c I exactly for a guess X0 = c A^-1 and the residuals of the
Newton–Schulz steps are 2 |1 - c_k| (n = 4), c_{k+1} = c_k (2 - c_k), far from every threshold. For those the
(iterations, fallback, certified) triple must be the same on every backend. The two scenarios whose step count
is set by rounding noise (tol = 0, which forces the rounding floor, and a stall) compare the verdict only.
"""
from __future__ import annotations

import math

import pytest
import torch

import neuinv
from neuinv import rules
from neuinv.testing import conditioned_matrices

BACKENDS = [name for name, status in neuinv.available_backends().items() if status.available]
DTYPES = [torch.float32, torch.float64]


def _device(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def power_of_two_matrix() -> torch.Tensor:
    """A 4 x 4 permuted diagonal of powers of two: its inverse and every product A (c A^-1) are exact."""
    diagonal = torch.diag(torch.tensor([2.0, 4.0, 0.5, 0.25], dtype=torch.float64))
    return diagonal[[2, 0, 3, 1]]


def scenarios(dtype):
    """(name, A, options, expected (iterations, fallback, certified) or None for verdict-only cases)."""
    A = power_of_two_matrix().to(dtype)[None]
    X = torch.linalg.inv(A.double()).to(dtype)
    singular = torch.tensor([[1.0, 2, 3, 4], [2, 4, 6, 8], [0, 1, 0, 1], [1, 0, 1, 0]], dtype=dtype)[None]
    with_nan = A.clone()
    with_nan[0, 1, 2] = math.nan
    # From c0 = 1.1: r = 0.2, 0.02, 2e-4, 2e-8, ~2e-16. Converged at step 3 in float32 (tol ~ 6e-7 = eps/2
    # ||A||_F ||X||_F), at step 4 in float64 (tol ~ 1.2e-15).
    converged_at = 3 if dtype == torch.float32 else 4
    near = 1.1 * X
    yield "exact guess: done at step 0", A, dict(init=X), (0, False, True)
    yield "guess above the guard: exact path", A, dict(init=1.3 * X), (0, True, True)
    yield "guess converges", A, dict(init=near), (converged_at, False, True)
    for max_iter in (0, 1, 2):
        yield f"max_iter={max_iter}: exact path", A, dict(init=near, max_iter=max_iter), (max_iter, True, True)
    yield "max_error below every bound: refused", A, dict(init=near, max_error=0.0), (converged_at, True, False)
    yield "NaN member", with_nan, dict(init=near), (0, True, False)
    yield "singular member: r0 >= 1 >= guard", singular, dict(init=X), (0, True, False)
    yield "exact path only", A, dict(), (0, True, True)
    yield "singular, exact path", singular, dict(), (0, True, False)
    g = torch.Generator().manual_seed(7)
    general = torch.randn(1, 4, 4, generator=g, dtype=torch.float64) + 4 * torch.eye(4, dtype=torch.float64)
    general_inverse = torch.linalg.inv(general)
    yield ("tol = 0: stops at the rounding floor, done", general.to(dtype),
           dict(init=(1.01 * general_inverse).to(dtype), tol=1e-300), None)
    ill = conditioned_matrices(1, 4, 1e13, torch.float64, seed=3)
    if dtype == torch.float64:
        yield ("stall above accept: exact path", ill,
               dict(init=(torch.linalg.inv(ill) * 1.1), max_iter=30), None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_scenario_table(backend, dtype):
    device = _device(backend)
    for name, A, options, expected in scenarios(dtype):
        A = A.to(device)
        options = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                   for key, value in options.items()}
        X, info = neuinv.batched_inverse_ex(A, backend=backend, **options)
        reference_X, reference_info = neuinv.batched_inverse_ex(A.cpu(), backend="torch", **{
            key: value.cpu() if isinstance(value, torch.Tensor) else value for key, value in options.items()})
        label = f"{backend} {dtype} {name}: {info}"
        got = (int(info.iterations[0]), bool(info.fallback[0]), bool(info.certified[0]))
        if expected is not None:
            assert got == expected, label
        else:  # decided by rounding: the verdict only, against the reference
            assert got[1:] == (bool(reference_info.fallback[0]), bool(reference_info.certified[0])), label
            assert abs(got[0] - int(reference_info.iterations[0])) <= 2, label
        assert torch.isnan(X).all() != info.certified[0], label
        assert math.isinf(float(info.error_bound[0])) == (not got[2] and "max_error" not in options), label


def test_scenarios_decided_as_the_rules_say():
    """The table's expectations follow from neuinv.rules, not from what a backend happens to do: the rounding
    floor and guard constants it relies on."""
    assert rules.GUARD_RESIDUAL == 0.5 and rules.FLOOR_START == 0.5 and rules.FLOOR_RATIO == 0.5
    # the guard scenario: r0 = 2 * 0.3 = 0.6 >= 0.5; the converging one: r0 = 0.2 < 0.5
    A = power_of_two_matrix()[None]
    X = torch.linalg.inv(A)
    assert float(torch.linalg.matrix_norm(torch.eye(4) - A @ (1.3 * X))) >= rules.GUARD_RESIDUAL
    assert float(torch.linalg.matrix_norm(torch.eye(4) - A @ (1.1 * X))) < rules.GUARD_RESIDUAL


def positive_definite_scenarios(dtype):
    """(name, A, X0 or None, refine, expected (iterations, fallback, certified)) for the positive-definite exact
    path (Cholesky). A is a diagonal of squares of powers of two: its Cholesky factor, the inverse from it and
    every product A (c A^-1) are exact, so each outcome is decided by a margin."""
    A = torch.diag(torch.tensor([4.0, 16.0, 0.25, 1.0], dtype=dtype))[None]
    X = torch.linalg.inv(A.double()).to(dtype)
    indefinite = A.clone()
    indefinite[0, 1, 1] = -16.0  # LU inverts it (and certifies it); Cholesky meets the pivot -16
    non_symmetric = A.clone()
    non_symmetric[0, 0, 3] = 1.0  # upper triangle: Cholesky never reads it, the certificate of the full A does
    with_nan = A.clone()
    with_nan[0, 2, 2] = math.nan
    zero_pivot = A.clone()
    zero_pivot[0, 3, 3] = 0.0
    converged_at = 3 if dtype == torch.float32 else 4
    yield "Cholesky", A, None, False, (0, True, True)
    yield "indefinite: not certified, no LU fallback", indefinite, None, False, (0, True, False)
    yield "non-symmetric given as positive definite: refused by the certificate", non_symmetric, None, False, \
        (0, True, False)
    yield "NaN member", with_nan, None, False, (0, True, False)
    yield "zero pivot", zero_pivot, None, False, (0, True, False)
    yield "guess converges: Newton–Schulz as without it", A, 1.1 * X, True, (converged_at, False, True)
    yield "guess above the guard: Cholesky", A, 1.3 * X, True, (0, True, True)
    yield "indefinite with a guess above the guard", indefinite, 1.3 * X, True, (0, True, False)
    yield "scaled transpose", A, None, True, None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_positive_definite_scenarios(backend, dtype):
    """The positive-definite exact path through each backend's ``invert(..., positive_definite=True)``: the same
    (iterations, fallback, certified) as the rule says, and as the torch reference gives."""
    from neuinv.backends import resolve_backend
    from neuinv.rules import newton_schulz_rules

    device = _device(backend)
    for name, A, X0, refine, expected in positive_definite_scenarios(dtype):
        A = A.to(device)
        X0 = None if X0 is None else X0.to(device)
        rule = newton_schulz_rules(dtype, None, None, X0 is not None)
        X, certified, bound, iterations, fallback = resolve_backend(backend, A).invert(
            A, X0, None, refine, rule, 1.0, positive_definite=True)
        _, certified_ref, _, iterations_ref, fallback_ref = resolve_backend("torch", A.cpu()).invert(
            A.cpu(), None if X0 is None else X0.cpu(), None, refine, rule, 1.0, positive_definite=True)
        got = (int(iterations[0]), bool(fallback[0]), bool(certified[0]))
        label = f"{backend} {dtype} {name}: {got}"
        assert got[1:] == (bool(fallback_ref[0]), bool(certified_ref[0])), label
        if expected is not None:
            assert got == expected and int(iterations_ref[0]) == expected[0], label
        assert torch.isnan(X).all() != certified[0], label
        assert math.isinf(float(bound[0])) != got[2], label
        if got[1] and got[2]:  # the Cholesky inverse of these diagonals is exact
            assert torch.equal(X.cpu().double(), torch.linalg.inv(A.cpu().double())), label


def test_positive_definite_rule():
    """rules.cholesky_pivot_accepted: positive and finite pivots only."""
    pivots = torch.tensor([1.0, 1e-300, 0.0, -0.0, -1.0, math.inf, -math.inf, math.nan], dtype=torch.float64)
    assert rules.cholesky_pivot_accepted(pivots).tolist() == [True, True] + [False] * 6
