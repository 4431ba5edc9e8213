"""neuinv.dask: lazy batched_inverse over Dask arrays, against the single-process call, bit for bit; schedulers
(synchronous, threads, a local dask.distributed cluster of threads and of processes); errors raised eagerly for
bad chunking and lazily, at compute, for failed matrices; an out-of-core run from a numpy memmap."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import neuinv
from neuinv.testing import conditioned_matrices, warm_start

da = pytest.importorskip("dask.array", reason="dask is not installed (pip install 'neuinv[distributed]')")
import dask  # noqa: E402

import neuinv.dask as neuinv_dask  # noqa: E402

RESULT_TIMEOUT = 60
"""Seconds a cluster may take to compute a result before the test fails (instead of hanging CI)."""


def batch(shape=(1000,), n=4, dtype=torch.float32, singular=(), nan=()) -> np.ndarray:
    """A numpy batch of conditioned matrices; singular (zero) and NaN-holding members at the given indices."""
    count = int(np.prod(shape))
    A = conditioned_matrices(count, n, 1e3, dtype, seed=7).reshape(*shape, n, n).numpy().copy()
    for index in singular:
        A[index] = 0
    for index in nan:
        A[index][0, 0] = np.nan
    return A


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def assert_matches_single_process(A: np.ndarray, X, info, **options):
    """Computed X and info are bit for bit those of neuinv.batched_inverse_ex on the whole batch."""
    X_single, info_single = neuinv.batched_inverse_ex(torch.from_numpy(A), **options)
    assert bitwise_equal(X, X_single.numpy())
    for field, single in zip(info, info_single):
        assert bitwise_equal(field, single.numpy())


def raised(call) -> tuple[str, str]:
    with pytest.raises(Exception) as caught:
        call()
    error = caught.value
    return ("LinAlgError" if isinstance(error, torch.linalg.LinAlgError) else type(error).__name__), str(error)


@pytest.mark.parametrize("shape, chunks", [((1000,), (300,)), ((6, 50), (4, 20)), ((0,), (10,))],
                         ids=["1d-uneven", "2d", "empty"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_equal_to_single_process_bit_for_bit(shape, chunks, dtype):
    A = batch(shape, dtype=dtype, singular=[(3,) + (0,) * (len(shape) - 1)] if shape[0] else [])
    A_lazy = da.from_array(A, chunks=chunks + (4, 4))
    X, info = neuinv_dask.batched_inverse_ex(A_lazy)
    assert X.chunks == A_lazy.chunks and info.certified.chunks == A_lazy.chunks[:-2]
    X, *info = dask.compute(X, *info, scheduler="synchronous")
    assert_matches_single_process(A, X, info)


def test_threads_scheduler_and_warm_start():
    A = batch()
    init = warm_start(torch.from_numpy(A), 1e-2).numpy()
    X, info = neuinv_dask.batched_inverse_ex(da.from_array(A, chunks=(250, 4, 4)),
                                             init=da.from_array(init, chunks=(100, 4, 4)))  # rechunked like A
    X, *info = dask.compute(X, *info, scheduler="threads")
    assert info[2].max() > 0  # Newton-Schulz steps: the guesses were used
    assert_matches_single_process(A, X, info, init=torch.from_numpy(init))


def test_failure_is_lazy_and_raised_at_compute_with_the_global_index():
    A = batch((6, 50), singular=[(4, 30), (4, 35)])
    X = neuinv_dask.batched_inverse(da.from_array(A, chunks=(4, 20, 4, 4)))  # builds the graph: no error yet
    expected = raised(lambda: neuinv.batched_inverse(torch.from_numpy(A)))
    assert expected[1].startswith("neuinv.batched_inverse: A[4, 30] is singular")
    name, message = raised(lambda: X.compute(scheduler="synchronous"))
    assert name == "LinAlgError"
    assert message == expected[1].replace("of the batch", "of its chunk")  # (4, 30) and (4, 35): one chunk


def test_nan_in_a_chunk_is_named_before_its_singular_matrices():
    A = batch(singular=[610], nan=[640])
    X = neuinv_dask.batched_inverse(da.from_array(A, chunks=(300, 4, 4)))
    assert raised(lambda: X.compute(scheduler="synchronous")) == (
        "ValueError", "neuinv.batched_inverse: A[640] contains NaN or Inf (2 matrices of its chunk failed; "
                      "batched_inverse_ex returns the others)")


def test_several_failing_chunks_each_names_its_own_first_failure():
    A = batch(singular=[950, 310, 320])
    X = neuinv_dask.batched_inverse(da.from_array(A, chunks=(300, 4, 4)))
    message = raised(lambda: X.compute(scheduler="threads"))[1]
    assert message.startswith(("neuinv.batched_inverse: A[310] is singular", "neuinv.batched_inverse: A[950] is"))
    assert ("(2 matrices of its chunk failed" in message) == ("A[310]" in message)


def test_max_error_applies_per_chunk():
    A = batch(dtype=torch.float64)
    X, info = neuinv_dask.batched_inverse_ex(da.from_array(A, chunks=(300, 4, 4)), max_error=1e-30)
    assert not info.certified.any().compute(scheduler="synchronous")
    X = neuinv_dask.batched_inverse(da.from_array(A, chunks=(300, 4, 4)), max_error=1e-30)
    message = raised(lambda: X.compute(scheduler="synchronous"))[1]
    chunk_start = int(message.split("A[")[1].split("]")[0])  # the first matrix of whichever chunk ran first
    assert chunk_start in (0, 300, 600, 900)
    assert f"above max_error = 1e-30 ({min(300, 1000 - chunk_start)} matrices of its chunk failed" in message


def test_bad_input_refused_before_any_graph_is_built():
    A = batch()
    good = da.from_array(A, chunks=(250, 4, 4))
    assert raised(lambda: neuinv_dask.batched_inverse(da.from_array(A, chunks=(250, 2, 4)))) == (
        "ArgumentValueError", "a chunk of A splits its matrices: the matrix dimensions are chunked as (2, 2) x (4,); "
                      "chunk the batch dimensions only: A.rechunk({-2: -1, -1: -1})")
    assert "splits its matrices" in raised(lambda: neuinv_dask.batched_inverse_ex(good.rechunk((250, 4, 3))))[1]
    unknown = good[good[:, 0, 0] > 0]
    assert "unknown chunk sizes" in raised(lambda: neuinv_dask.batched_inverse(unknown))[1]
    assert raised(lambda: neuinv_dask.batched_inverse(good[:, :, :3]))[0] == "ArgumentValueError"
    assert raised(lambda: neuinv_dask.batched_inverse(good.astype(np.int64)))[0] == "ArgumentDtypeError"
    assert raised(lambda: neuinv_dask.batched_inverse(A))[0] == "TypeError"  # numpy, not dask
    assert "tol must be a positive finite number" in raised(lambda: neuinv_dask.batched_inverse(good, tol=-1.0))[1]
    assert "unexpected option" in raised(lambda: neuinv_dask.batched_inverse(good, nonsense=1))[1]
    assert "init must have A's shape" in raised(lambda: neuinv_dask.batched_inverse(good, init=good[:10]))[1]


def test_docstring_names_the_exception_each_bad_input_raises():
    """batched_inverse_ex's "Raises" sentence lists each case under the exception the code raises (an unknown
    option is a TypeError, not a ValueError; an ArgumentValueError is a ValueError)."""
    good = da.from_array(batch(), chunks=(250, 4, 4))
    cases = {"TypeError": {"an unknown option": dict(nonsense=1), "an init that is not a Dask array": dict(
                 init=batch()), "a ``model`` without ``in_domain``": dict(model=lambda A: A)},
             "ValueError": {"an init of another shape or dtype": dict(init=good[:10]),
                            "``tol``, ``max_iter``, ``max_error`` out of range": dict(tol=-1.0),
                            "an unknown ``method``": dict(method="nonsense")}}
    doc = " ".join(neuinv_dask.batched_inverse_ex.__doc__.split())
    raises = doc[doc.index("Raises at once"):]
    type_part, value_part = raises.split("``ValueError`` for a chunk")
    sections = {"TypeError": type_part + raises.split("; ``TypeError`` for")[-1],
                "ValueError": value_part.split("; ``TypeError`` for")[0]}
    for name, documented in cases.items():
        for case, options in documented.items():
            with pytest.raises(Exception) as caught:
                neuinv_dask.batched_inverse_ex(good, **options)
            assert isinstance(caught.value, {"TypeError": TypeError, "ValueError": ValueError}[name]), case
            assert not isinstance(caught.value, {"TypeError": ValueError, "ValueError": TypeError}[name]), case
            assert case in sections[name], (name, case)

def test_out_of_core_from_and_to_numpy_memmaps(tmp_path):
    """The README's example: a read-only memmap in, a memmap out, chunk by chunk."""
    A = batch((2000,))
    np.save(tmp_path / "A.npy", A)
    source = np.load(tmp_path / "A.npy", mmap_mode="r")  # read-only: neuinv never writes to its input
    A_lazy = da.from_array(source, chunks=(500, 4, 4))
    target = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=A.dtype, shape=A.shape)
    da.store(neuinv_dask.batched_inverse(A_lazy), target, scheduler="threads")
    target.flush()
    assert bitwise_equal(np.load(tmp_path / "X.npy"), neuinv.batched_inverse(torch.from_numpy(A)).numpy())
    assert bitwise_equal(np.load(tmp_path / "A.npy"), A)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_local_cluster(processes, forkserver):
    """A dask.distributed LocalCluster (2 workers): results as in one process; a failure raised through the
    client at compute."""
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    A = batch(singular=[777])
    forked = {"distributed.worker.multiprocessing-method": "forkserver"}  # workers from the preloaded fork server
    with dask.config.set(forked), distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=processes,
                                                           dashboard_address=None, worker_dashboard_address=None) \
            as cluster, distributed.Client(cluster) as client:
        X, info = neuinv_dask.batched_inverse_ex(da.from_array(A, chunks=(250, 4, 4)))
        X, *info = client.compute([X, *info], sync=False)
        assert_matches_single_process(A, X.result(RESULT_TIMEOUT), [f.result(RESULT_TIMEOUT) for f in info])
        failing = client.compute(neuinv_dask.batched_inverse(da.from_array(A, chunks=(250, 4, 4))))
        name, message = raised(lambda: failing.result(RESULT_TIMEOUT))
        assert name == "LinAlgError" and message.startswith("neuinv.batched_inverse: A[777] is singular")


def test_module_name_does_not_shadow_the_dask_package():
    assert neuinv_dask.__name__ == "neuinv.dask"
    assert sys.modules["dask"].__name__ == "dask" and neuinv_dask.da.__name__ == "dask.array"
