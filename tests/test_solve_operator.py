"""The compiled operator neuinv::solve (csrc/kernels/solve.h): its registration (opcheck), agreement
with its specification reference.solve on the same inverses, and without R with the compiled inversion followed by
the solve from its inverse, bit for bit; its bound never below the exact error
(odd sizes, many right-hand sides, extreme scales, ill-conditioned systems, zero, NaN and uncertified members inside
good batches), its inputs never modified, bad arguments named; and batched_solve running on it."""
from __future__ import annotations

import math

import pytest
import torch

import neuinv
from neuinv import reference
from neuinv.rules import (NEWTON_SCHULZ_ACCEPT, POSITIVE_DEFINITE_SOLVE_WITHOUT_INVERSE_ABOVE, NewtonSchulzRules,
                          default_tol)
from neuinv.testing import conditioned_matrices
from conftest import TRUTH_SLACK, accurate_solve
from test_solve import exact_relative_error, right_hand_sides

pytestmark = pytest.mark.skipif(not neuinv.available_backends()["cpp"].available,
                                reason="the compiled CPU operator is not built")


def _inverse(A):
    """R and its certified bound from the reference inversion (the exact path)."""
    rules = NewtonSchulzRules(default_tol(A.dtype), NEWTON_SCHULZ_ACCEPT[A.dtype], 0, False)
    R, _, bound, _, _ = reference.invert(A, None, None, False, rules, 1.0)
    return R, bound


def _both(A, B, R=None, bound=None):
    if R is None:
        R, bound = _inverse(A)
    return (torch.ops.neuinv.solve(A, B, R, bound),
            reference.solve(A, B, R, bound))


def within_twice(bound, bound_ref):
    """Within 2x of each other; for float64 the compiled bound may lie further below the reference's: the compiled
    solve re-evaluates residuals above certificate.TIGHT_THRESHOLD, the torch path above DOT2_THRESHOLD only."""
    return bool(((bound <= 2 * bound_ref) & ((bound_ref <= 2 * bound) | (bound_ref > 2.0 ** -40))).all())


def test_opcheck():
    A = conditioned_matrices(5, 3, 10.0, torch.float64)
    B = right_hand_sides(5, 3, 2, torch.float64)
    for A_, B_ in ((A, B), (A.mT, B), (A, B[..., :1])):
        R, bound = _inverse(A_.contiguous())
        torch.library.opcheck(torch.ops.neuinv.solve.default, (A_, B_, R, bound))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 13, 33, 64])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_operator_matches_its_specification(dtype, n, k):
    """The same verdict per system as the reference, solutions within the sum of the two bounds of each other
    (X_w's order of summation differs), bounds within 2x of each other (the bound of a well-conditioned
    system follows its evaluated residual, which those roundings move); singular, NaN and zero members inside a
    good batch."""
    A = conditioned_matrices(11, n, 1e3, dtype, seed=n)
    B = right_hand_sides(11, n, k, dtype, seed=k)
    A[2] = 0.0
    A[5, 0, 0] = math.nan
    B[7] = 0.0
    B[8, -1, 0] = math.nan
    (X, bound), (X_ref, bound_ref) = _both(A, B)
    assert X.dtype == dtype and X.shape == B.shape and bound.dtype == torch.float64 and bound.shape == (11,)
    finite = torch.isfinite(bound_ref)
    assert torch.equal(torch.isfinite(bound), finite)
    assert not finite[[2, 5, 8]].any() and bound[7] == 0 and (X[7] == 0).all()
    assert within_twice(bound[finite], bound_ref[finite])
    # Both certificates hold, so the two solutions lie within the sum of their bounds of the truth.
    difference = torch.linalg.matrix_norm((X[finite] - X_ref[finite]).double())
    allowed = (bound[finite] + bound_ref[finite]) * torch.linalg.matrix_norm(X_ref[finite].double()) \
        / (1 - bound_ref[finite])
    assert (difference <= 1.01 * allowed).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("exponent", [1, 4, 8, 12, 15, 17])
def test_bound_holds_against_the_exact_truth(dtype, exponent):
    """cond 10 .. 1e17: every finite bound lies above the exact error of the X returned (rationals for n <= 8)."""
    n, k = 6, 2
    A = conditioned_matrices(6, n, 10.0 ** exponent, dtype, seed=exponent)
    B = right_hand_sides(6, n, k, dtype, seed=exponent)
    (X, bound), _ = _both(A, B)
    for i in range(6):
        if math.isfinite(bound[i]):
            assert exact_relative_error(A[i], B[i], X[i]) <= float(bound[i]), (i, float(bound[i]))
    if exponent <= (4 if dtype == torch.float32 else 12):
        assert torch.isfinite(bound).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_extreme_scales_give_the_same_bound(dtype):
    """A 2^s and B 2^t (exact): the bound does not move (the certificate scales A and B by powers of two), and the
    solution scales exactly where it stays normal."""
    A = conditioned_matrices(4, 5, 100.0, dtype, seed=2)
    B = right_hand_sides(4, 5, 3, dtype)
    (X, bound), _ = _both(A, B)
    top = 100 if dtype == torch.float32 else 900
    for s, t in ((top, 0), (-top, 0), (0, top), (0, -top), (top // 2, -top // 2)):
        A_s, B_t = A * 2.0 ** s, B * 2.0 ** t
        (X_st, bound_st), _ = _both(A_s, B_t)
        assert torch.equal(bound_st, bound), (s, t)
        assert torch.equal(X_st, X * 2.0 ** (t - s)), (s, t)


def test_many_right_hand_sides_at_the_largest_n():
    """n = 64 with k = 200 (the per-thread workspace grows with k): the bounds match the reference's on all
    systems, and on one system the exact error of three columns, relative to the whole solution's norm, is below
    the bound (the bound is on ||X - X*||_F / ||X*||_F over all 200 columns; ||X*||_F is taken as ||X||_F, which
    differs from it by a relative 1e-13 here, hence the 1e-8 slack)."""
    A = conditioned_matrices(3, 64, 1e4, torch.float64, seed=64)
    B = right_hand_sides(3, 64, 200, torch.float64)
    (X, bound), (X_ref, bound_ref) = _both(A, B)
    assert torch.isfinite(bound).all() and within_twice(bound, bound_ref)
    share = float(torch.linalg.matrix_norm(X[0, :, :3]) / torch.linalg.matrix_norm(X[0]))
    assert exact_relative_error(A[0], B[0, :, :3], X[0, :, :3]) * share <= float(bound[0]) * (1 + 1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [3, 12])
def test_one_matrix_or_one_right_hand_side_broadcast(dtype, n):
    """A (1, n, n) with B (b, n, k), and A (b, n, n) with B (1, n, k): the same X and bounds as on the expanded
    copies (read without copying); b = 0 with the other side 1 gives an empty result."""
    A = conditioned_matrices(13, n, 1e3, dtype, seed=n)
    B = right_hand_sides(13, n, 2, dtype)
    R, eps = _inverse(A)
    for A_, B_, R_, eps_ in ((A[:1], B, R[:1], eps[:1]), (A, B[:1], R, eps)):
        X, bound = torch.ops.neuinv.solve(A_, B_, R_, eps_)
        X_expanded, bound_expanded = torch.ops.neuinv.solve(
            A_.expand(13, n, n).contiguous(), B_.expand(13, n, 2).contiguous(), R_.expand(13, n, n).contiguous(),
            eps_.expand(13).contiguous())
        assert X.shape == (13, n, 2) and torch.equal(X, X_expanded) and torch.equal(bound, bound_expanded)
        X_ref, bound_ref = reference.solve(A_, B_, R_, eps_)
        assert X_ref.shape == X.shape and within_twice(bound, bound_ref)
    X, bound = torch.ops.neuinv.solve(A[:1], B[:0], R[:1], eps[:1])
    assert X.shape == (0, n, 2) and bound.shape == (0,)
    X, bound = torch.ops.neuinv.solve(A[:0], B[:1], R[:0], eps[:0])
    assert X.shape == (0, n, 2) and bound.shape == (0,)


def test_batched_solve_does_not_copy_a_broadcast_matrix(monkeypatch):
    """batched_solve(A (n, n), B (b, n, k)) hands the operator A as one system, not b copies."""
    shapes = []
    original = torch.ops.neuinv.solve

    def recording(A, B, *rest):
        shapes.append((tuple(A.shape), tuple(B.shape)))
        return original(A, B, *rest)

    monkeypatch.setattr(torch.ops.neuinv, "solve", recording)
    A = conditioned_matrices(1, 5, 10.0, torch.float64)[0]
    B = right_hand_sides(40, 5, 2, torch.float64)
    X, info = neuinv.batched_solve_ex(A, B, backend="cpp")
    assert shapes == [((1, 5, 5), (40, 5, 2))] and info.certified.shape == (40,) and info.certified.all()
    assert torch.allclose(X, torch.linalg.solve(A, B), rtol=1e-12, atol=0)


def test_uncertified_inverse_certifies_nothing():
    """An R whose bound is +inf, NaN or 1 certifies no solution, even a perfect one."""
    A = conditioned_matrices(3, 4, 10.0, torch.float64)
    B = right_hand_sides(3, 4, 1, torch.float64)
    R, _ = _inverse(A)
    for eps in (math.inf, math.nan, 1.0):
        X, bound = torch.ops.neuinv.solve(A, B, R, torch.full((3,), eps, dtype=torch.float64))
        assert torch.isinf(bound).all() and (bound > 0).all(), eps


def test_negative_inverse_bound_certifies_nothing():
    """A negative bound for R is no bound: +inf on the operator and on the reference (it would otherwise shrink
    the eps / (1 - eps) term); for empty right-hand sides too."""
    A = conditioned_matrices(3, 4, 10.0, torch.float64)
    B = right_hand_sides(3, 4, 1, torch.float64)
    R, _ = _inverse(A)
    eps = torch.full((3,), -0.5, dtype=torch.float64)
    for M in (B, B[..., :0]):
        for X, bound in (torch.ops.neuinv.solve(A, M, R, eps), reference.solve(A, M, R, eps)):
            assert torch.isinf(bound).all()


def test_a_meta_tensor_among_cpu_ones_is_refused():
    """A call mixing meta and CPU tensors dispatches to the shape-only fake: it refuses the mix, naming the devices,
    instead of returning uninitialised memory (both operators)."""
    A = conditioned_matrices(4, 3, 10.0, torch.float64)
    B = right_hand_sides(4, 3, 2, torch.float64)
    R, eps = _inverse(A)
    for args in ((A, B, R, eps.to("meta")), (A, B.to("meta"), R, eps), (A.to("meta"), B, R, eps)):
        with pytest.raises(RuntimeError, match="must be on one device"):
            torch.ops.neuinv.solve(*args)
    with pytest.raises(RuntimeError, match="must be on one device"):
        torch.ops.neuinv.invert(A, A.to("meta"), None, True, 1e-12, 1e-3, 10, 0.5, 1.0, False)
    with pytest.raises(RuntimeError, match="solve: A"):
        torch.ops.neuinv.solve(A.to("meta"), B[:3, :2].to("meta"), R[:1].to("meta"), eps[:1].to("meta"))


def test_overflowing_solution_is_not_certified():
    """float32 A = 1e-30 I with B = 1e10: X = 1e40 overflows float32; the operator returns Inf and no bound."""
    A = (1e-30 * torch.eye(2)).expand(2, 2, 2).contiguous()
    B = torch.full((2, 2, 1), 1e10)
    R, bound = _inverse(A)
    X, solve_bound = torch.ops.neuinv.solve(A, B, R, bound)
    assert torch.isinf(X).all() and torch.isinf(solve_bound).all()


def test_inputs_are_not_modified():
    A = conditioned_matrices(6, 5, 1e3, torch.float32)
    B = right_hand_sides(6, 5, 2, torch.float32)
    R, bound = _inverse(A)
    copies = [t.clone() for t in (A, B, R, bound)]
    torch.ops.neuinv.solve(A, B, R, bound)
    assert all(torch.equal(t, c) for t, c in zip((A, B, R, bound), copies))


@pytest.mark.parametrize("call, message", [
    (lambda A, B, R, e: (A[0], B, R, e), "A must have shape (b, n, n)"),
    (lambda A, B, R, e: (A.to(torch.float16), B, R, e), "A must be float32 or float64"),
    (lambda A, B, R, e: (A, B[:, :2], R, e), "B must have shape (b, n, k)"),
    (lambda A, B, R, e: (A, B[:2], R, e), "B must have shape (b, n, k)"),
    (lambda A, B, R, e: (A, B.double(), R, e), "B must have A's dtype"),
    (lambda A, B, R, e: (A, B, R[:2], e), "A and R must have the same shape"),
    (lambda A, B, R, e: (A, B, R, e.float()), "inverse_bound must be a float64 tensor"),
    (lambda A, B, R, e: (A, B, R, e[:2]), "inverse_bound must be a float64 tensor"),
])
def test_bad_arguments_are_named(call, message):
    A = conditioned_matrices(3, 4, 10.0, torch.float32)
    B = right_hand_sides(3, 4, 1, torch.float32)
    R, bound = _inverse(A)
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        torch.ops.neuinv.solve(*call(A, B, R, bound))


def test_batched_solve_runs_on_the_operator(monkeypatch):
    """On the compiled backend batched_solve calls the operator once per call (no Python solve certificate)."""
    calls = []
    original = torch.ops.neuinv.solve

    class Counting:
        def __call__(self, *args):
            calls.append(args[0].shape)
            return original(*args)

    monkeypatch.setattr(torch.ops.neuinv, "solve", Counting())
    monkeypatch.setattr(neuinv.certificate, "solve_error_bound", None)  # would fail if called
    A = conditioned_matrices(7, 4, 10.0, torch.float64)
    X, info = neuinv.batched_solve_ex(A, right_hand_sides(7, 4, 2, torch.float64), backend="cpp")
    assert calls == [torch.Size([7, 4, 4])] and info.certified.all()


def _compiled_exact_inverse(A, positive_definite=False):
    """R and its bound from the compiled inversion's exact path, as neuinv::solve computes them without R."""
    rules = NewtonSchulzRules(default_tol(A.dtype), NEWTON_SCHULZ_ACCEPT[A.dtype], 64, False)
    R, _, bound, _, _ = torch.ops.neuinv.invert(A, None, None, False, rules.tol, rules.accept, rules.max_iter,
                                                rules.guard, 1.0, positive_definite)
    return R, bound


def _spd(b, n, dtype, seed):
    M = conditioned_matrices(b, n, 1e2, torch.float64, seed=seed)
    return (M @ M.mT + n * torch.eye(n, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 13, 16, 33, 64])
@pytest.mark.parametrize("positive_definite", [False, True], ids=["gen", "pos"])
def test_without_R_is_the_compiled_inverse_then_the_solve(dtype, n, positive_definite):
    """Without R the operator computes each system's exact-path inverse in the same pass: the same bits as the
    compiled inversion followed by the operator given that inverse, for packs and their tails (19 systems), with
    singular, NaN, zero and (for "pos") indefinite members inside the batch; the bound never below the error.
    Positive-definite systems with n > rules.POSITIVE_DEFINITE_SOLVE_WITHOUT_INVERSE_ABOVE take the route without
    an inverse (tests/test_positive_definite_solve.py): there the same verdicts."""
    A = _spd(19, n, dtype, seed=n) if positive_definite else conditioned_matrices(19, n, 1e4, dtype, seed=n)
    B = right_hand_sides(19, n, 2, dtype, seed=n)
    A[2] = 0.0
    A[5, 0, 0] = math.nan
    A[11] = -torch.eye(n, dtype=dtype) if positive_definite else A[11].index_fill(0, torch.tensor([0]), 0.0)
    B[7] = 0.0
    X, bound = torch.ops.neuinv.solve(A, B, None, None, positive_definite)
    X_two, bound_two = torch.ops.neuinv.solve(A, B, *_compiled_exact_inverse(A, positive_definite))
    finite = torch.isfinite(bound)
    if positive_definite and n > POSITIVE_DEFINITE_SOLVE_WITHOUT_INVERSE_ABOVE:
        assert torch.equal(finite, torch.isfinite(bound_two))
    else:
        assert torch.equal(bound, bound_two)
        assert torch.equal(X[finite], X_two[finite])
    assert not finite[[2, 5, 11]].any() and finite[[0, 1, 7]].all()
    for i in (0, 1, 18) if n <= 16 else (0,):
        assert exact_relative_error(A[i], B[i], X[i]) <= bound[i]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [3, 8, 20])
def test_without_R_matches_its_specification(dtype, n):
    """Against reference.solve without R (torch's LU inverse): the same verdicts, bounds within 2x."""
    A = conditioned_matrices(10, n, 1e3, dtype, seed=n)
    B = right_hand_sides(10, n, 3, dtype, seed=n)
    A[4] = 0.0
    X, bound = torch.ops.neuinv.solve(A, B)
    X_ref, bound_ref = reference.solve(A, B)
    assert torch.equal(torch.isfinite(bound), torch.isfinite(bound_ref))
    keep = torch.isfinite(bound)
    assert within_twice(bound[keep], bound_ref[keep])
    assert (X[keep] - X_ref[keep]).abs().max() <= 2 * (bound[keep].max() + bound_ref[keep].max()) * X_ref[keep].abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_without_R_one_matrix_broadcast_is_inverted_once(dtype):
    """One A for 20 systems: the same bits as A repeated, and as its inverse given."""
    A = conditioned_matrices(1, 6, 1e2, dtype)
    B = right_hand_sides(20, 6, 2, dtype)
    X, bound = torch.ops.neuinv.solve(A, B)
    X_expanded, bound_expanded = torch.ops.neuinv.solve(A.expand(20, 6, 6).contiguous(), B)
    X_given, bound_given = torch.ops.neuinv.solve(A, B, *_compiled_exact_inverse(A))
    assert torch.equal(X, X_expanded) and torch.equal(bound, bound_expanded)
    assert torch.equal(X, X_given) and torch.equal(bound, bound_given)


def test_without_R_opcheck_and_empty_shapes():
    A = conditioned_matrices(9, 3, 10.0, torch.float64)
    B = right_hand_sides(9, 3, 2, torch.float64)
    for args in ((A, B), (A[:1], B), (A, B[:1]), (_spd(9, 3, torch.float64, seed=1), B, None, None, True)):
        torch.library.opcheck(torch.ops.neuinv.solve.default, args)
    for A_, B_ in ((A[:0], B[:0]), (A[:, :0, :0], B[:, :0]), (A, B[..., :0])):
        X, bound = torch.ops.neuinv.solve(A_, B_)
        X_ref, bound_ref = reference.solve(A_, B_)
        assert X.shape == X_ref.shape and torch.equal(bound, bound_ref)


def test_without_R_arguments_are_named():
    A = conditioned_matrices(3, 4, 10.0, torch.float64)
    B = right_hand_sides(3, 4, 1, torch.float64)
    R, bound = _inverse(A)
    for args in ((A, B, R, None), (A, B, None, bound)):
        with pytest.raises(RuntimeError, match="R and inverse_bound must be given together"):
            torch.ops.neuinv.solve(*args)


def test_batched_solve_inverts_in_the_solve(monkeypatch):
    """batched_solve and batched_solve_ex (without return_inverse) make one call of neuinv::solve without R and no
    call of neuinv::invert; batched_solve_ex(..., return_inverse=True) inverts first and returns that inverse."""
    calls = []
    solve, invert = torch.ops.neuinv.solve, torch.ops.neuinv.invert

    def recording(name, operator):
        def call(*args):
            calls.append((name, args[2] is None) if name == "solve" else (name,))
            return operator(*args)
        return call

    monkeypatch.setattr(torch.ops.neuinv, "solve", recording("solve", solve))
    monkeypatch.setattr(torch.ops.neuinv, "invert", recording("invert", invert))
    A = conditioned_matrices(7, 4, 10.0, torch.float64)
    B = right_hand_sides(7, 4, 2, torch.float64)
    X = neuinv.batched_solve(A, B, backend="cpp")
    assert calls == [("solve", True)]
    assert torch.allclose(X, torch.linalg.solve(A, B), rtol=1e-12, atol=0)
    calls.clear()
    X_ex, info = neuinv.batched_solve_ex(A, B, backend="cpp")
    assert calls == [("solve", True)] and torch.equal(X_ex, X) and info.certified.all() and info.inverse is None
    assert torch.equal(info.iterations, torch.zeros(7, dtype=torch.int32)) and info.fallback.all()
    calls.clear()
    X_ex, info = neuinv.batched_solve_ex(A, B, backend="cpp", return_inverse=True)
    assert calls == [("invert",), ("solve", False)]
    assert torch.allclose(X_ex, X, rtol=1e-12, atol=0) and torch.allclose(info.inverse, torch.linalg.inv(A), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_without_R_matrices_above_64_are_refused(dtype):
    """The exact path holds a matrix of at most 64 x 64 per thread: without R, n = 65 is refused by name (given R,
    any n runs)."""
    for A, B in ((torch.eye(65, dtype=dtype)[None], torch.ones(1, 65, 1, dtype=dtype)),
                 (torch.eye(65, dtype=dtype)[None], torch.ones(4, 65, 1, dtype=dtype))):
        with pytest.raises(RuntimeError, match="without R the kernels take n <= 64"):
            torch.ops.neuinv.solve(A, B)
        with pytest.raises(RuntimeError, match="without R the kernels take n <= 64"):
            torch.ops.neuinv.solve(A.to("meta"), B.to("meta"))
    A = torch.eye(65, dtype=dtype)[None]
    X, bound = torch.ops.neuinv.solve(A, torch.ones(1, 65, 1, dtype=dtype), A, torch.zeros(1, dtype=torch.float64))
    assert torch.equal(X, torch.ones(1, 65, 1, dtype=dtype)) and float(bound) < 1e-5


def _pack_batch(dtype, n, k, positive_definite):
    """27 systems (three packs of 8 and a tail of 3 for n <= 8): conditioned (or SPD) matrices with, at 5, one whose
    inverse overflows the dtype (A = 2^-e C, C's inverse with entries near 2^9 or 2^12: for float32 only the
    rounding of the double result overflows), at 9 one whose solution overflows it (A = 2^-100 I, B = 2^30 for
    float32; 2^-1000 I and 2^30 for float64), at 11 a zero one, at 20 a NaN. The first two packs have no NaN
    member, so every lane of theirs takes the kernels' common branch (a whole pack stored at once)."""
    A = _spd(27, n, dtype, seed=n) if positive_definite else conditioned_matrices(27, n, 1e3, dtype, seed=n)
    B = right_hand_sides(27, n, k, dtype, seed=n)
    if n >= 2:
        spread = 2.0 ** (-9 if dtype == torch.float32 else -12)
        C = torch.eye(n, dtype=torch.float64)
        C[:2, :2] = torch.tensor([[1.0, 1.0], [1.0, 1.0 + spread]], dtype=torch.float64)
        A[5] = (C * 2.0 ** (-120 if dtype == torch.float32 else -1015)).to(dtype)
    A[9] = torch.eye(n, dtype=dtype) * 2.0 ** (-100 if dtype == torch.float32 else -1000)
    B[9] = 2.0 ** 30
    A[11] = 0.0
    A[20, 0, 0] = float("nan")
    return A, B


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("positive_definite", [False, True], ids=["gen", "pos"])
def test_results_do_not_depend_on_the_position_in_a_pack(dtype, n, k, positive_definite):
    """The compact layout (csrc/cpu/simd.h): groups of 8 entries per lane moved by vector loads, a transpose and
    vector stores, the entries after the last whole group lane by lane, a pack tail lane by lane; k = 1 and 3 give
    B and X blocks of both kinds. Each system's X and bound from neuinv::invert and neuinv::solve (with and without
    R) in a batch of 27 are, bit for bit, what the operator gives it alone; the overflowing, singular and NaN
    members are not finite and have no bound, wherever they sit."""
    A, B = _pack_batch(dtype, n, k, positive_definite)
    X, bound = _compiled_exact_inverse(A, positive_definite)
    X_solve, bound_solve = torch.ops.neuinv.solve(A, B, None, None, positive_definite)
    X_with_R, bound_with_R = torch.ops.neuinv.solve(A, B, X, bound)
    for i in range(A.shape[0]):
        X_one, bound_one = _compiled_exact_inverse(A[i:i + 1], positive_definite)
        X_solve_one, bound_solve_one = torch.ops.neuinv.solve(A[i:i + 1], B[i:i + 1], None, None, positive_definite)
        pairs = [(X[i], X_one[0]), (bound[i], bound_one[0]), (X_solve[i], X_solve_one[0]),
                 (bound_solve[i], bound_solve_one[0])]
        for mine, alone in pairs:
            torch.testing.assert_close(mine, alone, rtol=0, atol=0, equal_nan=True, msg=f"system {i}")
    refused = [9, 11, 20] + ([5] if n >= 2 else [])
    inverse_refused = [i for i in refused if i != 9]  # A[9]'s inverse fits; its solution does not
    assert torch.isinf(bound[inverse_refused]).all() and torch.isnan(X[inverse_refused]).all()
    assert torch.isinf(bound_solve[refused]).all() and not torch.isfinite(X_solve[refused]).any()  # Inf: overflow
    assert torch.isinf(bound_with_R[refused]).all()
    good = [i for i in range(27) if i not in refused]
    assert (bound[good] < 1).all() and (bound_solve[good] < 1).all()
    truth = accurate_solve(A[good], B[good])
    error = torch.linalg.matrix_norm(X_solve[good].double() - truth) / torch.linalg.matrix_norm(truth)
    assert (error <= bound_solve[good] + TRUTH_SLACK).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("positive_definite", [False, True], ids=["gen", "pos"])
def test_cuda_operator_agrees_with_the_cpu_operator(dtype, n, k, positive_definite):
    """neuinv::solve on CUDA (one system per thread, csrc/cuda/neuinv_cuda_solve_small.cu) on the pack batch of the
    test above, without R, from the CPU's R, and with one A or one B broadcast: the same systems refused (X not
    finite, bound +inf); every certified bound holds against an accurate truth, and the CPU and CUDA solutions lie
    within the sum of their two bounds of each other (both bound the distance to the same A^-1 B). Inputs unchanged."""
    A, B = _pack_batch(dtype, n, k, positive_definite)
    A_gpu, B_gpu = A.cuda(), B.cuda()
    kept = A_gpu.clone(), B_gpu.clone()
    R, R_bound = _compiled_exact_inverse(A, positive_definite)
    calls = [((A, B, None, None, positive_definite), (A_gpu, B_gpu, None, None, positive_definite)),
             ((A, B, R, R_bound), (A_gpu, B_gpu, R.cuda(), R_bound.cuda())),
             ((A[:1], B, None, None, positive_definite), (A_gpu[:1], B_gpu, None, None, positive_definite)),
             ((A, B[:1], None, None, positive_definite), (A_gpu, B_gpu[:1], None, None, positive_definite))]
    for cpu_arguments, cuda_arguments in calls:
        X_cpu, bound_cpu = torch.ops.neuinv.solve(*cpu_arguments)
        X_gpu, bound_gpu = (t.cpu() for t in torch.ops.neuinv.solve(*cuda_arguments))
        refused = torch.isinf(bound_cpu)
        assert torch.equal(torch.isinf(bound_gpu), refused)
        assert not torch.isfinite(X_gpu[refused]).any()
        good = (~refused).nonzero().squeeze(1)
        A_used, B_used = cpu_arguments[0].expand(27, n, n), cpu_arguments[1].expand(27, n, k)
        truth = accurate_solve(A_used[good], B_used[good])
        truth_norm = torch.linalg.matrix_norm(truth)
        for X, bound in ((X_cpu, bound_cpu), (X_gpu, bound_gpu)):
            error = torch.linalg.matrix_norm(X[good].double() - truth) / truth_norm
            assert (error <= bound[good] + TRUTH_SLACK).all()
        apart = torch.linalg.matrix_norm(X_gpu[good].double() - X_cpu[good].double()) / truth_norm
        assert (apart <= bound_cpu[good] + bound_gpu[good] + 2 * TRUTH_SLACK).all()
    assert torch.equal(A_gpu, kept[0]) and torch.equal(B_gpu, kept[1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("with_R", [False, True], ids=["without_R", "from_R"])
def test_cuda_threads_striding_over_a_large_batch(with_R):
    """12,000 systems of 8 x 8 with 64 right-hand sides: the CUDA launch's workspace cap (64 MiB) leaves about 5,000
    threads, so each solves two or three systems in turn. Every system certified as on the CPU, each bound holding
    against an accurate truth."""
    A = conditioned_matrices(12000, 8, 1e3, torch.float64, seed=3)
    B = right_hand_sides(12000, 8, 64, torch.float64, seed=3)
    R_args = _compiled_exact_inverse(A) if with_R else (None, None)
    X_cpu, bound_cpu = torch.ops.neuinv.solve(A, B, *R_args)
    X_gpu, bound_gpu = (t.cpu() for t in torch.ops.neuinv.solve(A.cuda(), B.cuda(),
                                                                  *(None if t is None else t.cuda() for t in R_args)))
    assert (bound_cpu < 1).all() and (bound_gpu < 1).all()
    truth = accurate_solve(A, B)
    error = torch.linalg.matrix_norm(X_gpu - truth) / torch.linalg.matrix_norm(truth)
    assert (error <= bound_gpu + TRUTH_SLACK).all()
    assert (torch.linalg.matrix_norm(X_gpu - X_cpu) / torch.linalg.matrix_norm(truth) <=
            bound_cpu + bound_gpu + 2 * TRUTH_SLACK).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_solve_above_its_kernels_size_runs_the_reference():
    """The CUDA kernel takes n <= 8 and says so by name above; the cuda backend solves larger systems by the
    reference, certified."""
    A = conditioned_matrices(5, 9, 10.0, torch.float64).cuda()
    B = torch.ones(5, 9, 1, dtype=torch.float64, device="cuda")
    with pytest.raises(RuntimeError, match="on CUDA the kernels take n <= 8"):
        torch.ops.neuinv.solve(A, B, None, None, False)
    X, info = neuinv.batched_solve_ex(A, B, backend="cuda")
    assert bool(info.certified.all())
    truth = accurate_solve(A.cpu(), B.cpu())
    error = torch.linalg.matrix_norm(X.cpu() - truth) / torch.linalg.matrix_norm(truth)
    assert (error <= info.error_bound.cpu() + TRUTH_SLACK).all()
