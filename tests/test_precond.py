"""Block-Jacobi on batched_inverse, the torch Krylov solvers, and the Matrix Market loader."""
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg as sla
import torch

from neuinv import solvers
from neuinv.io import read_matrix_market
from neuinv.precond import BlockJacobi

SHARED_MATRICES = Path(__file__).resolve().parents[2] / "shared" / "matrices"


def spd_matrix(N, seed=0, density=0.02):
    """A sparse SPD matrix: a random symmetric pattern plus a dominant diagonal."""
    rng = np.random.default_rng(seed)
    R = scipy.sparse.random(N, N, density=density, random_state=rng)
    S = R + R.T
    return scipy.sparse.csr_matrix(S + scipy.sparse.diags(np.abs(S).sum(1).A1 + 1.0))


def nonsymmetric_matrix(N, seed=0):
    rng = np.random.default_rng(seed)
    R = scipy.sparse.random(N, N, density=0.03, random_state=rng)
    return scipy.sparse.csr_matrix(R + scipy.sparse.diags(np.abs(R).sum(1).A1 + 0.5 + rng.random(N)))


def exact_block_inverse_apply(A, boundaries, r):
    """M^-1 r with each diagonal block inverted by numpy, the baseline."""
    dense = A.toarray()
    out = np.zeros_like(r)
    for start, stop in zip(boundaries[:-1], boundaries[1:]):
        out[start:stop] = np.linalg.inv(dense[start:stop, start:stop]) @ r[start:stop]
    return out


@pytest.mark.parametrize("layout", ["scipy", "torch_coo", "torch_csr", "torch_dense"])
@pytest.mark.parametrize("blocking", [dict(block_size=4), dict(block_size=7), dict(blocks=[0, 1, 4, 9, 30, 50])],
                         ids=["fixed4", "fixed7-partial-last", "variable"])
def test_apply_matches_per_block_numpy(layout, blocking):
    A = spd_matrix(50)
    dense = torch.as_tensor(A.toarray())
    source = {"scipy": A, "torch_coo": dense.to_sparse_coo(), "torch_csr": dense.to_sparse_csr(),
              "torch_dense": dense}[layout]
    M = BlockJacobi(source, **blocking)
    boundaries = M.boundaries
    r = np.random.default_rng(1).standard_normal((50, 3))
    expected = exact_block_inverse_apply(A, boundaries, r)
    assert np.allclose(M(torch.as_tensor(r)).numpy(), expected, rtol=1e-12, atol=1e-12)
    assert np.allclose(M(torch.as_tensor(r[:, 0])).numpy(), expected[:, 0], rtol=1e-12, atol=1e-12)
    assert np.allclose(M.as_linear_operator() @ r[:, 1], expected[:, 1], rtol=1e-12, atol=1e-12)


def test_singular_block_is_named_or_left_unpreconditioned():
    A = spd_matrix(30).tolil()
    A[6:9, 6:9] = 0.0  # block 2 of size 3 becomes zero
    A = A.tocsr()
    with pytest.raises(torch.linalg.LinAlgError, match=r"block 2 \(rows 6\.\.8\)"):
        BlockJacobi(A, block_size=3)
    M = BlockJacobi(A, block_size=3, on_singular="identity")
    assert M.singular_blocks.tolist() == [2]
    r = torch.randn(30, dtype=torch.float64)
    assert torch.equal(M(r)[6:9], r[6:9])


def test_bad_arguments_are_named():
    A = spd_matrix(10)
    with pytest.raises(ValueError, match="exactly one"):
        BlockJacobi(A)
    with pytest.raises(ValueError, match="boundaries"):
        BlockJacobi(A, blocks=[0, 5, 4, 10])
    with pytest.raises(ValueError, match="square"):
        BlockJacobi(scipy.sparse.random(4, 5, density=0.5), block_size=2)
    with pytest.raises(ValueError, match="shape"):
        BlockJacobi(A, block_size=2)(torch.zeros(11))


def test_update_is_warm_started():
    A = spd_matrix(300, seed=2)
    M = BlockJacobi(A, block_size=6)
    drifted = A + scipy.sparse.diags(1e-3 * np.random.default_rng(3).random(300))
    report = M.update(drifted)
    assert report.fallbacks == 0 and 1 <= report.max_iterations <= 3
    fresh = BlockJacobi(drifted, block_size=6)
    assert torch.allclose(M.inverse, fresh.inverse, rtol=1e-12, atol=1e-13)
    jumped = A + scipy.sparse.diags(10.0 * np.random.default_rng(4).random(300))
    report = M.update(jumped)
    assert report.fallbacks > 0  # the old inverses are no guess for a far-away matrix
    assert torch.allclose(M.inverse, BlockJacobi(jumped, block_size=6).inverse, rtol=1e-12, atol=1e-13)


def scipy_iterations(solver, A, b, M, **kwargs):
    count = [0]

    def callback(_):
        count[0] += 1

    x, info = solver(A, b, M=M, rtol=1e-8, callback=callback, **kwargs)
    return count[0], info


def test_cg_matches_scipy_and_exact_block_jacobi():
    A = spd_matrix(400, seed=5)
    b = np.random.default_rng(6).standard_normal(400)
    M = BlockJacobi(A, block_size=5)
    result = solvers.cg(A, torch.as_tensor(b), M, rtol=1e-8)
    assert result.converged.all()
    assert np.linalg.norm(A @ result.x.numpy() - b) <= 1.01e-8 * np.linalg.norm(b)
    exact = sla.LinearOperator(A.shape, matvec=lambda v: exact_block_inverse_apply(A, M.boundaries, v))
    scipy_count, info = scipy_iterations(sla.cg, A, b, exact)
    assert info == 0 and abs(int(result.iterations[0]) - scipy_count) <= 1
    ours_in_scipy, info = scipy_iterations(sla.cg, A, b, M.as_linear_operator())
    assert info == 0 and abs(ours_in_scipy - scipy_count) <= 1


def test_gmres_matches_exact_block_jacobi_and_batches_columns():
    A = nonsymmetric_matrix(300, seed=7)
    B = np.random.default_rng(8).standard_normal((300, 3))
    M = BlockJacobi(A, block_size=3)
    result = solvers.gmres(A, torch.as_tensor(B), M, rtol=1e-8, restart=40)
    assert result.converged.all()
    relres = np.linalg.norm(A @ result.x.numpy() - B, axis=0) / np.linalg.norm(B, axis=0)
    assert (relres <= 1.01e-8).all()
    def exact(R):  # per-block numpy inverses, the baseline
        return torch.as_tensor(exact_block_inverse_apply(A, M.boundaries, R.numpy()))

    single = solvers.gmres(A, torch.as_tensor(B[:, 0]), exact, rtol=1e-8, restart=40)
    assert abs(int(single.iterations) - int(result.iterations[0])) <= 1
    scipy_count, info = scipy_iterations(sla.gmres, A, B[:, 0], M.as_linear_operator(), restart=40,
                                         callback_type="pr_norm")
    assert info == 0 and abs(scipy_count - int(result.iterations[0])) <= 2


def test_non_convergence_is_reported():
    A = spd_matrix(200, seed=9)
    b = torch.randn(200, dtype=torch.float64)
    result = solvers.cg(A, b, rtol=1e-14, max_iter=3)
    assert not result.converged.any()
    assert "did not reach rtol" in result.message and "[0]" in result.message
    assert result.history.shape == (4, 1)


@pytest.mark.skipif(not SHARED_MATRICES.is_dir(), reason="../shared/matrices is not present")
@pytest.mark.parametrize("name, block, symmetric", [("bcsstk01", 6, True), ("nos4", 2, True), ("pores_1", 2, False)])
def test_shared_matrices(name, block, symmetric):
    A = read_matrix_market(SHARED_MATRICES / f"{name}.mtx")
    assert scipy.sparse.isspmatrix_csr(A)
    if symmetric:
        assert abs(A - A.T).max() == 0  # the stored triangle was expanded
    b = A @ np.ones(A.shape[0])
    M = BlockJacobi(A, block_size=block)
    solve = solvers.cg if symmetric else solvers.gmres
    result = solve(A, torch.as_tensor(b), M, rtol=1e-8, max_iter=20 * A.shape[0])
    assert result.converged.all(), result.message
    assert np.linalg.norm(A @ result.x.numpy() - b) <= 1.01e-8 * np.linalg.norm(b)
