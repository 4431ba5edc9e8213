"""Property tests: for any well-conditioned matrix, every initial guess gives torch's answer."""
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import neuinv
from conftest import conditioned_matrices, residual_bound, true_residual, warm_start


@settings(max_examples=60, deadline=None, derandomize=True)
@example(n=2, batch=2, log_cond=2.5, dtype=torch.float64, seed=423, guess="scaled_transpose")  # LAPACK exact
@given(n=st.integers(1, 20), batch=st.integers(1, 9), log_cond=st.floats(0, 3),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**31 - 1),
       guess=st.sampled_from(["exact", "scaled_transpose", "warm_start"]))
def test_any_guess_matches_torch(n, batch, log_cond, dtype, seed, guess):
    A = conditioned_matrices(batch, n, 10.0**log_cond, dtype, seed=seed)
    kwargs = {"exact": {}, "scaled_transpose": {"backend": "torch"},
              "warm_start": {"init": warm_start(A, 0.1, seed=seed)}}[guess]
    X, info = neuinv.batched_inverse_ex(A, **kwargs)
    assert info.certified.all()
    assert true_residual(A, X).max().item() <= residual_bound(A)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.integers(2, 8), scale=st.floats(-20, 20), seed=st.integers(0, 2**31 - 1))
def test_scale_invariance(n, scale, seed):
    """Inverting c A gives X / c: the stopping test is relative, so no threshold depends on scale."""
    A = conditioned_matrices(3, n, 10.0, torch.float64, seed=seed)
    c = 2.0**scale
    X1 = neuinv.batched_inverse(A, method="newton_schulz", backend="torch")
    X2 = neuinv.batched_inverse(A * c, method="newton_schulz", backend="torch")
    assert torch.allclose(X2 * c, X1, rtol=1e-12, atol=1e-12)
