"""A seeded fuzz test of the promise "never silently wrong, never needlessly refused", on every backend: random
matrices of chosen condition (10^1 to past 1/eps), graded D C D, row/column-scaled and permuted, triangular, and
exactly singular ones; exact truths by mpmath. Asserted: no certified bound below the exact error, no refusal where
cond(A) eps <= 1e-2, X NaN wherever not certified, A and B never modified. NEUINV_FUZZ_MATRICES (default 1200 per
dtype; a release check runs 10^5) sets the size; the Triton interpreter takes a tenth."""
import os

import mpmath
import pytest
import torch

import neuinv

COUNT = int(os.environ.get("NEUINV_FUZZ_MATRICES", "1200"))
SIZES = (1, 2, 3, 4, 5, 8)


def require(backend):
    status = neuinv.available_backends()[backend]
    if not status.available:
        pytest.skip(f"{backend}: {status.reason}")


def fuzz_matrices(count, dtype, seed):
    """(A (count, n, n) per size, families) in float64 before the cast: one of six families per matrix."""
    generator = torch.Generator().manual_seed(seed)
    max_log_cond = 14 if dtype in (torch.float64, torch.complex128) else 6
    batches = []
    for n in SIZES:
        m = count // len(SIZES)
        Q1, _ = torch.linalg.qr(torch.randn(m, n, n, generator=generator, dtype=torch.float64))
        Q2, _ = torch.linalg.qr(torch.randn(m, n, n, generator=generator, dtype=torch.float64))
        log_cond = torch.rand(m, 1, generator=generator, dtype=torch.float64) * max_log_cond
        sigma = 10.0 ** (-log_cond * torch.linspace(0, 1, n, dtype=torch.float64))
        conditioned = Q1 @ torch.diag_embed(sigma) @ Q2.mT
        C = torch.randn(m, n, n, generator=generator, dtype=torch.float64) + 2 * n ** 0.5 * torch.eye(n)
        D = 10.0 ** (24 * torch.rand(m, n, generator=generator, dtype=torch.float64) - 12)
        graded = D[:, :, None] * C * D[:, None, :]
        D2 = 10.0 ** (24 * torch.rand(m, n, generator=generator, dtype=torch.float64) - 12)
        permutation = torch.argsort(torch.rand(m, n, generator=generator), dim=1)
        scaled = (D[:, :, None] * C * D2[:, None, :])[torch.arange(m)[:, None], permutation]
        triangular = torch.tril(torch.randn(m, n, n, generator=generator, dtype=torch.float64)) + torch.eye(n)
        singular = torch.randint(-2, 3, (m, n, n), generator=generator).double()
        if n > 1:
            singular[:, :, -1] = singular[:, :, 0] - singular[:, :, 1 % (n - 1)]  # rank < n, exactly
        else:
            singular.zero_()
        family = torch.randint(0, 5, (m,), generator=generator)
        pick = torch.stack([conditioned, graded, scaled, triangular, singular])[family, torch.arange(m)]
        batches.append(pick.to(dtype))
    return batches


def mp_matrix(M):
    convert = (lambda z: mpmath.mpc(z.real, z.imag)) if M.is_complex() else mpmath.mpf
    rows = M.tolist()
    return mpmath.matrix([[convert(value) for value in row] for row in rows])


def exact_inverse(A):
    """A^-1 in mpmath (60 digits), None where A is exactly singular."""
    with mpmath.workdps(60):
        try:
            return mp_matrix(A) ** -1
        except ZeroDivisionError:
            return None


def relative_error(exact, X):
    with mpmath.workdps(60):
        return float(mpmath.mnorm(mp_matrix(X) - exact, "f") / mpmath.mnorm(exact, "f"))


def condition(A, exact):
    """||A||_2 ||A^-1||_2, the second from the exact inverse rounded to float64 (a few digits suffice)."""
    inverse = torch.tensor([[complex(exact[i, j]) if A.is_complex() else float(exact[i, j])
                             for j in range(A.shape[0])] for i in range(A.shape[0])])
    return float(torch.linalg.matrix_norm(A.to(inverse.dtype), ord=2) * torch.linalg.matrix_norm(inverse, ord=2))


CASES = [("cpp", torch.float64), ("cpp", torch.float32), ("torch", torch.float64), ("torch", torch.float32),
         ("torch", torch.complex128), ("torch", torch.complex64), ("triton", torch.float64), ("triton", torch.float32)]


@pytest.mark.parametrize("backend, dtype", CASES, ids=[f"{b}-{str(d)[6:]}" for b, d in CASES])
def test_inverse_is_never_silently_wrong_nor_needlessly_refused(backend, dtype):
    require(backend)
    count = COUNT // 10 if backend == "triton" else COUNT
    if dtype.is_complex:
        count //= 4
    eps = torch.finfo(dtype).eps
    violations, needless, nan_missing = [], [], []
    for A in fuzz_matrices(count, dtype, seed=len(str(dtype)) + count):
        if dtype.is_complex:
            A = A + 1j * torch.flip(A, dims=(-1,)).to(dtype)
        before = A.clone()
        X, info = neuinv.batched_inverse_ex(A, backend=backend)
        assert torch.equal(A, before), "A was modified"
        for i in range(A.shape[0]):
            certified, bound = bool(info.certified[i]), float(info.error_bound[i])
            if not certified and not bool(torch.isnan(X[i]).all()):
                nan_missing.append(i)
            exact = exact_inverse(A[i])
            if exact is None:
                if certified:
                    violations.append((A[i], "certified a singular matrix", bound))
                continue
            if certified:
                error = relative_error(exact, X[i])
                if bound < error:
                    violations.append((A[i], error, bound))
            elif condition(A[i], exact) * eps <= 1e-2:
                needless.append((A[i], bound))
    assert not violations, f"{len(violations)} certified bounds below the exact error, e.g. {violations[0]}"
    assert not nan_missing, f"{len(nan_missing)} refused matrices returned numbers"
    assert not needless, f"{len(needless)} refused with cond eps <= 1e-2, e.g. {needless[0]}"


@pytest.mark.parametrize("backend, dtype", CASES[:4], ids=[f"{b}-{str(d)[6:]}" for b, d in CASES[:4]])
@pytest.mark.parametrize("k", [1, 3])
def test_solve_is_never_silently_wrong_nor_needlessly_refused(backend, dtype, k):
    require(backend)
    eps = torch.finfo(dtype).eps
    generator = torch.Generator().manual_seed(k)
    violations, needless = [], []
    for A in fuzz_matrices(COUNT // 4, dtype, seed=7 * k):
        B = (torch.randn(A.shape[0], A.shape[-1], k, generator=generator, dtype=torch.float64)
             * 10.0 ** torch.randint(-8, 9, (A.shape[0], 1, 1), generator=generator)).to(dtype)
        A_before, B_before = A.clone(), B.clone()
        X, info = neuinv.batched_solve_ex(A, B, backend=backend)
        assert torch.equal(A, A_before) and torch.equal(B, B_before), "A or B was modified"
        assert bool(torch.isnan(X[~info.certified]).all())
        for i in range(A.shape[0]):
            exact_inv = exact_inverse(A[i])
            certified, bound = bool(info.certified[i]), float(info.error_bound[i])
            if exact_inv is None:
                if certified:
                    violations.append((A[i], "certified a singular system", bound))
                continue
            if certified:
                with mpmath.workdps(60):
                    exact = exact_inv * mp_matrix(B[i])
                error = relative_error(exact, X[i])
                if bound < error:
                    violations.append((A[i], B[i], error, bound))
            elif condition(A[i], exact_inv) * eps <= 1e-2:
                needless.append((A[i], B[i], bound))
    assert not violations, f"{len(violations)} certified bounds below the exact error, e.g. {violations[0]}"
    assert not needless, f"{len(needless)} refused with cond eps <= 1e-2, e.g. {needless[0]}"
