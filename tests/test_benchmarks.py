"""pytest-benchmark cases on CI-sized inputs (run `pytest tests/test_benchmarks.py --benchmark-enable`).
With benchmarks disabled (the default here) each runs once as a correctness check."""
import pytest
import torch

import neuinv
from conftest import conditioned_matrices, warm_start

CASES = [pytest.param(n, dtype, id=f"n{n}-{str(dtype)[6:]}") for n in (4, 16) for dtype in (torch.float32, torch.float64)]


@pytest.mark.parametrize("n, dtype", CASES)
def test_bench_torch_linalg_inv(benchmark, n, dtype):
    A = conditioned_matrices(2000, n, 100.0, dtype)
    assert benchmark(torch.linalg.inv, A).shape == A.shape


@pytest.mark.parametrize("n, dtype", CASES)
def test_bench_neuinv_exact(benchmark, n, dtype):
    A = conditioned_matrices(2000, n, 100.0, dtype)
    assert torch.allclose(benchmark(neuinv.batched_inverse, A), torch.linalg.inv(A), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("n, dtype", CASES)
def test_bench_neuinv_warm_start(benchmark, n, dtype):
    A = conditioned_matrices(2000, n, 100.0, dtype)
    init = warm_start(A, 1e-3)
    X = benchmark(lambda: neuinv.batched_inverse(A, init=init))
    assert torch.allclose(X, torch.linalg.inv(A), rtol=1e-3, atol=1e-3)
