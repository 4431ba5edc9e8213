"""neuinv.distributed on torch.distributed (gloo, CPU) with 2 and 4 processes.

Each world size is spawned once (a module fixture); every rank runs all scenarios in order and saves what it
got (results or the exception raised) and the tests compare that, in this process, with the single-process
call on the concatenated batch. A hang cannot block CI: the collectives time out after COLLECTIVE_TIMEOUT and
the whole spawn is killed, failing the tests, after SPAWN_TIMEOUT.
"""
from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.distributed as dist
import torch.multiprocessing

import neuinv
from neuinv.testing import conditioned_matrices

distributed = pytest.importorskip("neuinv.distributed", reason="torch without torch.distributed")
from torch.distributed.tensor import Replicate, Shard, distribute_tensor  # noqa: E402
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh  # noqa: E402

COLLECTIVE_TIMEOUT = timedelta(seconds=30)
SPAWN_TIMEOUT = 120.0

SHARD_SIZES = {2: [7, 4], 4: [3, 0, 6, 2]}
"""Uneven shards along dim 0, one of them empty for 4 ranks."""

SINGULAR = (8, 9)
"""Global indices of the singular matrices of singular_batch (on the last non-empty rank(s))."""


def good_batch(dtype=torch.float64) -> torch.Tensor:
    return conditioned_matrices(11, 5, 1e3, dtype, seed=3)


def singular_batch() -> torch.Tensor:
    A = good_batch()
    A[SINGULAR[0], 2] = A[SINGULAR[0], 1]  # two equal rows
    A[SINGULAR[1]] = 0.0
    return A


def nan_batch() -> torch.Tensor:
    A = singular_batch()
    A[10, 0, 0] = float("nan")  # after the singular ones: the NaN is still the one named
    return A


def shard(A: torch.Tensor, rank: int, world_size: int, dim: int = 0) -> torch.Tensor:
    sizes = SHARD_SIZES[world_size]
    return A.split(sizes, dim=dim)[rank].clone()


class Raised(tuple):
    """(type name, message) of an exception a scenario raised."""


def _attempt(call):
    try:
        return call()
    except Exception as error:
        name = "LinAlgError" if isinstance(error, torch.linalg.LinAlgError) else type(error).__name__
        return Raised((name, str(error)))


def _refusal(call):
    """The Raised of a call that should raise, or None when it returned (its result, a DTensor or a tensor shard,
    is not compared)."""
    return _attempt(lambda: (call(), None)[1])


def _summary(info):
    return dict(batch_shape=tuple(info.batch_shape), offset=info.offset, failed=info.failed,
                first_failed=info.first_failed, fallbacks=info.fallbacks, max_iterations=info.max_iterations,
                max_error_bound=info.max_error_bound)


# -------------------------------------------------------------------------------------------------------------
# Scenarios: run on every rank, in this order; each returns something picklable.

def scenario_good(rank, world_size):
    results = {}
    for dtype in (torch.float64, torch.float32, torch.complex64):
        X, info = distributed.batched_inverse_ex(shard(good_batch(dtype), rank, world_size))
        results[str(dtype)] = (X, tuple(info.per_matrix), _summary(info))
    return results


def scenario_singular(rank, world_size):
    A_local = shard(singular_batch(), rank, world_size)
    X, info = distributed.batched_inverse_ex(A_local)
    return dict(ex=(X, tuple(info.per_matrix), _summary(info)),
                raised=_attempt(lambda: distributed.batched_inverse(A_local)))


def scenario_nan(rank, world_size):
    return _attempt(lambda: distributed.batched_inverse(shard(nan_batch(), rank, world_size)))


MAX_ERROR = 1e-9


def max_error_batch() -> torch.Tensor:
    """float64: the first 6 matrices (cond 1e2) certified to about 1e-13, the last 5 (cond 1e12) mostly to 1e-7 to
    1e-5, which MAX_ERROR refuses (their true errors exceed it: no second look certifies them)."""
    return torch.cat([conditioned_matrices(6, 5, 1e2, torch.float64, seed=5),
                      conditioned_matrices(5, 5, 1e12, torch.float64, seed=6)])


def scenario_max_error(rank, world_size):
    A_local = shard(max_error_batch(), rank, world_size)
    return _attempt(lambda: distributed.batched_inverse(A_local, max_error=MAX_ERROR))


def scenario_warm_start(rank, world_size):
    A = good_batch()
    init = neuinv.testing.warm_start(A, 1e-2)
    X, info = distributed.batched_inverse_ex(shard(A, rank, world_size), init=shard(init, rank, world_size))
    return X, tuple(info.per_matrix), _summary(info)


def scenario_dim1(rank, world_size):
    A = singular_batch().reshape(1, 11, 5, 5).expand(2, 11, 5, 5).clone()
    A_local = shard(A, rank, world_size, dim=1)
    X, info = distributed.batched_inverse_ex(A_local, dim=1)
    return dict(ex=(X, _summary(info)), raised=_attempt(lambda: distributed.batched_inverse(A_local, dim=-3)))


def scenario_bad_input_on_one_rank(rank, world_size):
    A_local = shard(good_batch(), rank, world_size)
    return _attempt(lambda: distributed.batched_inverse(A_local.to(torch.int64) if rank == 1 else A_local))


def scenario_shards_disagree(rank, world_size):
    A_local = shard(good_batch(), rank, world_size)
    return _attempt(lambda: distributed.batched_inverse(A_local.float() if rank == world_size - 1 else A_local))


def scenario_no_batch_dimension(rank, world_size):
    return _attempt(lambda: distributed.batched_inverse(good_batch()[0]))


def scenario_dtensor(rank, world_size):
    mesh = init_device_mesh("cpu", (world_size,))
    A = distribute_tensor(singular_batch()[6:], mesh, [Shard(0)])  # 5 matrices: uneven; 4 ranks: 2, 2, 1, 0
    good = distribute_tensor(good_batch()[6:], mesh, [Shard(0)])
    X, info = distributed.batched_inverse_ex(good)
    X_singular, info_singular = distributed.batched_inverse_ex(A)
    init = distribute_tensor(neuinv.testing.warm_start(good_batch()[6:], 1e-2), mesh, [Shard(0)])
    X_warm, info_warm = distributed.batched_inverse_ex(good, init=init)
    return dict(
        warm=(X_warm.full_tensor(), info_warm.per_matrix.iterations.full_tensor()),
        types=(type(X).__name__, type(info.per_matrix.certified).__name__),
        placements=(X.placements, info.per_matrix.certified.placements, X.device_mesh == mesh),
        local_shape=tuple(X.to_local().shape),
        X=X.full_tensor(), certified=info_singular.per_matrix.certified.full_tensor(),
        X_singular=X_singular.full_tensor(), summary=_summary(info_singular),
        raised=_attempt(lambda: distributed.batched_inverse(A)))


def scenario_dtensor_refused(rank, world_size):
    mesh = init_device_mesh("cpu", (world_size,))
    A = good_batch()[:4]
    return dict(replicated=_attempt(lambda: distributed.batched_inverse(distribute_tensor(A, mesh, [Replicate()]))),
                matrix_dim=_attempt(lambda: distributed.batched_inverse(distribute_tensor(A, mesh, [Shard(1)]))),
                group=_attempt(lambda: distributed.batched_inverse(distribute_tensor(A, mesh, [Shard(0)]),
                                                                    group=dist.group.WORLD)))


def scenario_dtensor_2d_mesh(rank, world_size):
    if world_size != 4:
        return None
    mesh = init_device_mesh("cpu", (2, 2))
    A = singular_batch()[:9].reshape(3, 3, 5, 5)  # (3, 3) batch on a 2 x 2 mesh: uneven on both
    A_d = distribute_tensor(A, mesh, [Shard(0), Shard(1)])
    X, info = distributed.batched_inverse_ex(A_d)
    return dict(X=X.full_tensor(), summary=_summary(info), placements=X.placements,
                raised=_attempt(lambda: distributed.batched_inverse(A_d)))


def scenario_dtensor_init_laid_out_otherwise(rank, world_size):
    """init a DTensor with A's local shapes but other placements or mesh: each rank would get another
    matrix's guess."""
    A = good_batch()[:4].reshape(2, 2, 5, 5)
    guesses = neuinv.testing.warm_start(A, 1e-2)
    mesh = init_device_mesh("cpu", (world_size,))
    reversed_mesh = DeviceMesh("cpu", list(reversed(range(world_size))))
    A_d = distribute_tensor(A, mesh, [Shard(0)])
    results = dict(
        other_mesh=_refusal(lambda: distributed.batched_inverse(
            A_d, init=distribute_tensor(guesses, reversed_mesh, [Shard(0)]))),
        local_A=_refusal(lambda: distributed.batched_inverse(
            A_d.to_local(), init=distribute_tensor(guesses, mesh, [Shard(0)]))))
    if world_size == 4:  # the tester's repro: equal local shapes (1, 1, 5, 5), swapped shards
        mesh_2d = init_device_mesh("cpu", (2, 2))
        results["swapped"] = _refusal(lambda: distributed.batched_inverse(
            distribute_tensor(A, mesh_2d, [Shard(0), Shard(1)]),
            init=distribute_tensor(guesses, mesh_2d, [Shard(1), Shard(0)])))
    return results


def scenario_dtensor_with_dim(rank, world_size):
    mesh = init_device_mesh("cpu", (world_size,))
    A_d = distribute_tensor(good_batch()[:4], mesh, [Shard(0)])
    return dict(batch_dim=_refusal(lambda: distributed.batched_inverse(A_d, dim=0)),
                matrix_dim=_refusal(lambda: distributed.batched_inverse(A_d, dim=1)))


def scenario_dtensor_on_one_rank_only(rank, world_size):
    """Rank 0 passes a DTensor, the others their local shards: a neuinv error on every rank, not a hang."""
    mesh = init_device_mesh("cpu", (world_size,))
    A_d = distribute_tensor(good_batch(), mesh, [Shard(0)])
    return _refusal(lambda: distributed.batched_inverse(A_d if rank == 0 else A_d.to_local()))


OPTIONS_ON_THE_LAST_RANK = {"max_error": dict(max_error=1e-3), "tol": dict(tol=1e-10), "max_iter": dict(max_iter=3),
                            "method": dict(method="exact"), "backend": dict(backend="torch")}
"""Options the last rank gives and the others leave at their defaults."""


def scenario_options_disagree(rank, world_size):
    A_local = shard(good_batch(), rank, world_size)
    last = rank == world_size - 1
    results = {name: _refusal(lambda: distributed.batched_inverse(A_local, **(options if last else {})))
               for name, options in OPTIONS_ON_THE_LAST_RANK.items()}
    results["dim"] = _refusal(lambda: distributed.batched_inverse(A_local.unsqueeze(0), dim=1 if last else 0))
    # Equal values of other Python types agree: max_error 1/1000 as float and as numpy float64, dim 0 and -3.
    X = distributed.batched_inverse(A_local, max_error=np.float64(1e-3) if last else 1e-3, dim=-3 if last else 0)
    results["equal_values_agree"] = X
    return results

# Block-Jacobi on a row-partitioned SPD matrix, inside a torch.distributed CG.

ROW_STARTS = {2: [0, 28, 60], 4: [0, 12, 28, 44, 60]}
"""Row partition of the 60 x 60 test matrix; 4-row blocks inside each rank's rows."""


def spd_block_matrix(N=60, block=4, seed=0):
    """SPD: strong random SPD 4 x 4 diagonal blocks coupled by a weak random symmetric sparse part."""
    rng = np.random.default_rng(seed)
    blocks = [(lambda G: G @ G.T + block * np.eye(block))(rng.standard_normal((block, block)))
              for _ in range(N // block)]
    R = scipy.sparse.random(N, N, density=0.05, random_state=rng)
    coupling = 0.1 * (R + R.T)
    return scipy.sparse.csr_matrix(scipy.sparse.block_diag(blocks) + coupling
                                   + scipy.sparse.diags(np.abs(coupling).sum(1).A1))


def distributed_cg(A_rows, b_local, M, rtol=1e-10, max_iter=200):
    """Preconditioned CG (Hestenes & Stiefel 1952) over row-partitioned A: x is all-gathered for each matvec,
    inner products are all-reduced. Returns (x_local, iterations)."""
    A_rows = torch.as_tensor(A_rows.toarray())
    sizes = [torch.zeros((), dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor(b_local.numel()))
    width = max(int(s) for s in sizes)

    def matvec(v):
        parts = [torch.empty(width, dtype=v.dtype) for _ in sizes]
        dist.all_gather(parts, torch.nn.functional.pad(v, (0, width - v.numel())))
        return A_rows @ torch.cat([p[:int(s)] for p, s in zip(parts, sizes)])

    def dot(u, v):
        total = (u * v).sum()
        dist.all_reduce(total)
        return total

    x = torch.zeros_like(b_local)
    r = b_local.clone()
    z = M(r)
    p, rz, b_norm = z.clone(), dot(r, z), dot(b_local, b_local).sqrt()
    for iteration in range(1, max_iter + 1):
        Ap = matvec(p)
        alpha = rz / dot(p, Ap)
        x += alpha * p
        r -= alpha * Ap
        if dot(r, r).sqrt() <= rtol * b_norm:
            return x, iteration
        z = M(r)
        rz_new = dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, max_iter


def scenario_block_jacobi_cg(rank, world_size):
    A = spd_block_matrix()
    start, end = ROW_STARTS[world_size][rank:rank + 2]
    A_rows = A[start:end]
    b = torch.as_tensor(np.random.default_rng(1).standard_normal(A.shape[0]))
    M = distributed.block_jacobi(A_rows, start, block_size=4)
    x_local, iterations = distributed_cg(A_rows, b[start:end], M)
    _, unpreconditioned = distributed_cg(A_rows, b[start:end], lambda r: r)
    return dict(x=x_local, iterations=iterations, unpreconditioned=unpreconditioned, inverse=M.inverse)


def scenario_block_jacobi_singular(rank, world_size):
    A = spd_block_matrix().tolil()
    A[44:48, :] = 0.0  # zero rows: block 44..47 is singular (rank 1 of 2, rank 3 of 4)
    A = A.tocsr()
    start, end = ROW_STARTS[world_size][rank:rank + 2]
    identity = distributed.block_jacobi(A[start:end], start, block_size=4, on_singular="identity")
    return dict(raised=_attempt(lambda: distributed.block_jacobi(A[start:end], start, block_size=4)),
                bad_start=_attempt(lambda: distributed.block_jacobi(A[start:end], start + 100, block_size=4)),
                singular_blocks=identity.singular_blocks)


SCENARIOS = {name[len("scenario_"):]: function for name, function in globals().items()
             if name.startswith("scenario_")}


def _worker(rank, world_size, store, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                            timeout=COLLECTIVE_TIMEOUT)
    results = {name: _attempt(lambda: scenario(rank, world_size)) for name, scenario in SCENARIOS.items()}
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"{w}ranks")
def ranks(request, tmp_path_factory, forkserver):
    """What every rank got from every scenario: a list (by rank) of {scenario: result}."""
    world_size = request.param
    out = tmp_path_factory.mktemp(f"distributed{world_size}")
    context = torch.multiprocessing.start_processes(_worker, args=(world_size, str(out / "store"), str(out)),
                                                    nprocs=world_size, join=False, start_method="forkserver")
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{world_size} ranks did not finish in {SPAWN_TIMEOUT:.0f} s (a hang)")
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bits (NaN included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def expected_summary(A: torch.Tensor, info) -> dict:
    failed = ~info.certified
    return dict(batch_shape=tuple(A.shape[:-2]), failed=int(failed.sum()),
                first_failed=tuple(int(i) for i in failed.nonzero()[0]) if failed.any() else None,
                fallbacks=int(info.fallback.sum()), max_iterations=int(info.iterations.max()),
                max_error_bound=float(info.error_bound.max()))


def single_process_error(A, **options) -> Raised:
    return _attempt(lambda: neuinv.batched_inverse(A, **options))


def check_gathered(ranks_results, A, X_single, info_single, dim=0):
    """The ranks' shards, concatenated, are bit for bit the single-process result, summaries alike."""
    world_size = len(ranks_results)
    X_parts, info_parts, summaries = zip(*ranks_results)
    assert bitwise_equal(torch.cat(X_parts, dim=dim), X_single)
    for field, single in enumerate(info_single):
        assert bitwise_equal(torch.cat([part[field] for part in info_parts], dim=dim), single), field
    expected = expected_summary(A, info_single)
    starts = np.cumsum([0] + SHARD_SIZES[world_size])
    for rank, summary in enumerate(summaries):
        assert summary == dict(expected, offset=(int(starts[rank]),))


def test_equal_to_single_process_bit_for_bit_uneven_and_empty_shards(ranks):
    for dtype in (torch.float64, torch.float32, torch.complex64):
        A = good_batch(dtype)
        X, info = neuinv.batched_inverse_ex(A)
        check_gathered([r["good"][str(dtype)] for r in ranks], A, X, info)
    assert [r["good"][str(torch.float64)][0].shape[0] for r in ranks] == SHARD_SIZES[len(ranks)]


def test_singular_matrix_on_one_rank_every_rank_raises_the_same_error(ranks):
    A = singular_batch()
    expected = single_process_error(A)
    assert expected[0] == "LinAlgError" and f"A[{SINGULAR[0]}] is singular" in expected[1]
    assert "2 matrices of the batch failed" in expected[1]
    assert [r["singular"]["raised"] for r in ranks] == [expected] * len(ranks)
    check_gathered([r["singular"]["ex"] for r in ranks], A, *neuinv.batched_inverse_ex(A))
    assert ranks[0]["singular"]["ex"][2]["first_failed"] == (SINGULAR[0],)


def test_nan_is_named_before_an_earlier_singular_matrix(ranks):
    expected = single_process_error(nan_batch())
    assert expected == Raised(("ValueError", "neuinv.batched_inverse: A[10] contains NaN or Inf "
                                             "(3 matrices of the batch failed; batched_inverse_ex returns the others)"))
    assert [r["nan"] for r in ranks] == [expected] * len(ranks)


def test_max_error_verdict_and_message_as_single_process(ranks):
    expected = single_process_error(max_error_batch(), max_error=MAX_ERROR)
    refused = int((~neuinv.batched_inverse_ex(max_error_batch(), max_error=MAX_ERROR)[1].certified).sum())
    assert 1 <= refused <= 5  # only cond-1e12 matrices, whose true errors mostly exceed MAX_ERROR
    assert expected[0] == "LinAlgError" and "A[6] has an inverse certified only" in expected[1]
    assert f"above max_error = 1e-09 ({refused} matrices of the batch failed" in expected[1]
    assert [r["max_error"] for r in ranks] == [expected] * len(ranks)


def test_options_reach_the_local_call(ranks):
    A = good_batch()
    init = neuinv.testing.warm_start(A, 1e-2)
    X, info = neuinv.batched_inverse_ex(A, init=init)
    assert int(info.iterations.max()) > 0  # the warm start was refined, not ignored
    check_gathered([r["warm_start"] for r in ranks], A, X, info)


def test_shards_along_another_batch_dimension(ranks):
    A = singular_batch().reshape(1, 11, 5, 5).expand(2, 11, 5, 5).clone()
    X, info = neuinv.batched_inverse_ex(A)
    assert bitwise_equal(torch.cat([r["dim1"]["ex"][0] for r in ranks], dim=1), X)
    starts = np.cumsum([0] + SHARD_SIZES[len(ranks)])
    for rank, r in enumerate(ranks):
        assert r["dim1"]["ex"][1] == dict(expected_summary(A, info), offset=(0, int(starts[rank])))
        assert r["dim1"]["raised"] == single_process_error(A)
    assert "A[0, 8] is singular" in ranks[0]["dim1"]["raised"][1]


def test_bad_input_on_one_rank_raises_on_every_rank(ranks):
    single = single_process_error(good_batch().to(torch.int64))
    expected = Raised(("ArgumentDtypeError", f"neuinv.distributed: rank 1: ArgumentDtypeError: {single[1]}"))
    assert [r["bad_input_on_one_rank"] for r in ranks] == [expected] * len(ranks)


def test_disagreeing_shards_raise_on_every_rank(ranks):
    outcomes = [r["shards_disagree"] for r in ranks]
    assert outcomes == [outcomes[0]] * len(ranks)
    assert outcomes[0][0] == "ArgumentValueError" and "the ranks must agree in dtype:" in outcomes[0][1]
    assert "rank 0: dtype=torch.float64; rank 1: " in outcomes[0][1]
    assert f"rank {len(ranks) - 1}: dtype=torch.float32 (" in outcomes[0][1]


def test_a_single_matrix_has_no_batch_dimension_to_shard(ranks):
    for r in ranks:
        assert r["no_batch_dimension"][0] == "ArgumentValueError"
        assert "at least one batch dimension" in r["no_batch_dimension"][1]


def test_dtensor_in_dtensor_out(ranks):
    world_size = len(ranks)
    good, A = good_batch()[6:], singular_batch()[6:]
    X_single, _ = neuinv.batched_inverse_ex(good)
    X_singular, info_singular = neuinv.batched_inverse_ex(A)
    X_warm, info_warm = neuinv.batched_inverse_ex(good, init=neuinv.testing.warm_start(good, 1e-2))
    assert int(info_warm.iterations.max()) > 0
    local_sizes = [r["dtensor"]["local_shape"][0] for r in ranks]
    assert local_sizes == {2: [3, 2], 4: [2, 2, 1, 0]}[world_size]  # torch.chunk's split: uneven, one empty
    for r in ranks:
        d = r["dtensor"]
        assert d["types"] == ("DTensor", "DTensor")
        assert d["placements"] == ((Shard(0),), (Shard(0),), True)
        assert bitwise_equal(d["X"], X_single)
        assert bitwise_equal(d["X_singular"], X_singular)
        assert bitwise_equal(d["certified"], info_singular.certified)
        assert d["summary"]["failed"] == int((~info_singular.certified).sum())
        assert d["raised"] == single_process_error(A)
        assert bitwise_equal(d["warm"][0], X_warm) and bitwise_equal(d["warm"][1], info_warm.iterations)


def test_dtensor_on_a_2d_mesh(ranks):
    if len(ranks) != 4:
        pytest.skip("a 2 x 2 mesh needs 4 ranks")
    A = singular_batch()[:9].reshape(3, 3, 5, 5)
    X, info = neuinv.batched_inverse_ex(A)
    for r in ranks:
        d = r["dtensor_2d_mesh"]
        assert bitwise_equal(d["X"], X)
        assert d["placements"] == (Shard(0), Shard(1))
        assert d["raised"] == single_process_error(A) and "A[2, 2] is singular" in d["raised"][1]
        assert d["summary"]["first_failed"] == (2, 2)


def test_replicated_or_matrix_dim_placements_refused(ranks):
    for r in ranks:
        refused = r["dtensor_refused"]
        assert refused["replicated"][0] == "ArgumentValueError"
        assert "Replicate() on mesh dimension 0" in refused["replicated"][1]
        assert refused["matrix_dim"][0] == "ArgumentValueError" and "a matrix dimension" in refused["matrix_dim"][1]
        assert refused["group"][0] == "ArgumentValueError" and "group=None" in refused["group"][1]


def test_dtensor_init_laid_out_otherwise_than_A_refused(ranks):
    world_size = len(ranks)
    outcomes = [r["dtensor_init_laid_out_otherwise"] for r in ranks]
    assert outcomes == [outcomes[0]] * world_size
    mesh, reversed_mesh = list(range(world_size)), list(reversed(range(world_size)))
    other_mesh = outcomes[0]["other_mesh"]
    assert other_mesh and other_mesh[0] == "ArgumentValueError" and "init must be laid out like A" in other_mesh[1]
    assert f"ranks {mesh}" in other_mesh[1] and f"ranks {reversed_mesh}" in other_mesh[1]
    local_A = outcomes[0]["local_A"]
    assert local_A and local_A[0] == "ArgumentValueError"
    assert "init is a DTensor but A is this rank's local shard" in local_A[1]
    if world_size == 4:
        swapped = outcomes[0]["swapped"]
        assert swapped and swapped[0] == "ArgumentValueError" and "init must be laid out like A" in swapped[1]
        assert "placements (Shard(dim=0), Shard(dim=1))" in swapped[1]
        assert "placements (Shard(dim=1), Shard(dim=0))" in swapped[1]


def test_dim_with_a_dtensor_refused(ranks):
    for r in ranks:
        for outcome in r["dtensor_with_dim"].values():
            assert outcome and outcome[0] == "ArgumentValueError" and "dim applies to a local shard" in outcome[1]


def test_dtensor_on_one_rank_local_tensor_on_the_others_raises_on_every_rank(ranks):
    outcomes = [r["dtensor_on_one_rank_only"] for r in ranks]
    assert outcomes == [outcomes[0]] * len(ranks)
    assert outcomes[0] and outcomes[0][0] == "ArgumentValueError" and "the ranks must agree in A" in outcomes[0][1]
    assert "rank 0: A=a DTensor" in outcomes[0][1] and "rank 1: A=a local tensor shard" in outcomes[0][1]


def test_options_that_disagree_across_ranks_raise_on_every_rank(ranks):
    world_size = len(ranks)
    for name, options in list(OPTIONS_ON_THE_LAST_RANK.items()) + [("dim", dict(dim=1))]:
        outcomes = [r["options_disagree"][name] for r in ranks]
        assert outcomes == [outcomes[0]] * world_size, name
        differing = "dim, shape" if name == "dim" else name  # the shard's shape, (*, b, 5, 5) or (1, *, 5, 5)
        assert outcomes[0] and outcomes[0][0] == "ArgumentValueError", name
        assert f"the ranks must agree in {differing}:" in outcomes[0][1], name
        value = options[name]
        assert f"rank {world_size - 1}: {name}={value!r}" in outcomes[0][1], name
    X = torch.cat([r["options_disagree"]["equal_values_agree"] for r in ranks])
    assert bitwise_equal(X, neuinv.batched_inverse(good_batch(), max_error=1e-3))

def test_block_jacobi_inside_a_distributed_cg(ranks):
    """Each rank inverts only its own blocks, and CG over the row partition converges as single-process CG with
    the same preconditioner does."""
    from neuinv.sparse import solvers
    from neuinv.sparse.precond import BlockJacobi

    world_size = len(ranks)
    A = spd_block_matrix()
    b = torch.as_tensor(np.random.default_rng(1).standard_normal(A.shape[0]))
    boundaries = sorted(set(np.concatenate([np.arange(s, e, 4) for s, e in zip(ROW_STARTS[world_size],
                                                                                  ROW_STARTS[world_size][1:])])))
    reference = BlockJacobi(A, blocks=boundaries + [A.shape[0]])
    assert bitwise_equal(torch.cat([r["block_jacobi_cg"]["inverse"] for r in ranks]), reference.inverse)
    single = solvers.cg(A, b, reference, rtol=1e-10)
    x = torch.cat([r["block_jacobi_cg"]["x"] for r in ranks])
    truth = torch.as_tensor(scipy.sparse.linalg.spsolve(A.tocsc(), b.numpy()))
    assert torch.linalg.vector_norm(x - truth) <= 1e-8 * torch.linalg.vector_norm(truth)
    iterations = {r["block_jacobi_cg"]["iterations"] for r in ranks}
    assert len(iterations) == 1 and abs(iterations.pop() - int(single.iterations[0])) <= 1
    assert ranks[0]["block_jacobi_cg"]["iterations"] < ranks[0]["block_jacobi_cg"]["unpreconditioned"]


def test_block_jacobi_singular_block_raises_on_every_rank(ranks):
    world_size = len(ranks)
    owner = world_size - 1
    local_block = (44 - ROW_STARTS[world_size][owner]) // 4
    expected = Raised(("LinAlgError", f"block {local_block} of rank {owner} (rows 44..47 of A) is singular or too "
                                      f"ill-conditioned to invert in torch.float64; 1 of 15 blocks failed. Use "
                                      f"on_singular='identity' to leave them unpreconditioned."))
    assert [r["block_jacobi_singular"]["raised"] for r in ranks] == [expected] * world_size
    for rank, r in enumerate(ranks):
        assert r["block_jacobi_singular"]["bad_start"][0] == "ArgumentValueError"
        assert r["block_jacobi_singular"]["singular_blocks"].tolist() == ([local_block] if rank == owner else [])


def test_not_initialized_is_a_clear_error():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        distributed.batched_inverse(good_batch())
