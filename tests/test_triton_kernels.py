"""The Triton kernels against the torch reference (interpreter on the CPU, compiled on CUDA)."""
import pytest
import torch

import neuinv
from neuinv import reference
from conftest import conditioned_matrices, residual_bound, true_residual, warm_start

triton = pytest.importorskip("triton")
from neuinv.kernels import newton_schulz  # noqa: E402

pytestmark = pytest.mark.interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [1, 2, 3, 5, 8, 9, 16, 31, 33, 64]
BATCHES = [1, 37]  # 37: not a multiple of any tile, so the masked tail runs


def kernel_cases():
    return [pytest.param(n, batch, dtype, id=f"n{n}-B{batch}-{str(dtype)[6:]}")
            for n in SIZES for batch in BATCHES for dtype in (torch.float32, torch.float64)]


@pytest.mark.parametrize("n, batch, dtype", kernel_cases())
def test_step_matches_reference(n, batch, dtype):
    A = conditioned_matrices(batch, n, 10.0, dtype, seed=n).to(DEVICE)
    X = warm_start(A.cpu(), 0.05, seed=1).to(DEVICE)
    # Some matrices are already done (exact inverse), the rest take a step.
    X[::3] = torch.linalg.inv(A[::3].double()).to(dtype)
    a_norm = torch.linalg.matrix_norm(A)
    tol, accept = 4 * torch.finfo(dtype).eps, 1e-3
    X_ref, r_ref, done_ref = reference.newton_schulz_step(A, X, a_norm, tol, accept)
    X_new, r_new, done_new = newton_schulz.newton_schulz_step(A, X, a_norm, tol, accept)
    eps = torch.finfo(dtype).eps
    scale = torch.linalg.matrix_norm(A) * torch.linalg.matrix_norm(X)
    assert torch.allclose(r_new, r_ref, rtol=0, atol=0) or ((r_new - r_ref).abs() <= 4 * eps * scale).all()
    # The done flags agree wherever the test is not decided by rounding.
    margin = (r_ref - torch.clamp(tol * a_norm * torch.linalg.matrix_norm(X), max=accept)).abs() > 4 * eps * scale
    assert torch.equal(done_new[margin], done_ref[margin])
    assert torch.allclose(X_new, X_ref, rtol=16 * eps, atol=16 * eps * X_ref.abs().max().item())
    assert torch.equal(X_new[done_new], X[done_new])


@pytest.mark.parametrize("n, batch, dtype", kernel_cases())
def test_every_output_element_is_written(n, batch, dtype, monkeypatch):
    """Poison the output buffers: a masked-out or forgotten store would leave NaN behind."""
    A = conditioned_matrices(batch, n, 10.0, dtype).to(DEVICE)
    X = warm_start(A.cpu(), 0.1).to(DEVICE)
    poison = torch.full_like(X, float("nan"))
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: poison if t.shape == X.shape else empty_like(t, **kw))
    X_new, r, done = newton_schulz.newton_schulz_step(A, X, torch.linalg.matrix_norm(A), 0.0, 1e-3)
    monkeypatch.undo()
    assert X_new.data_ptr() == poison.data_ptr()
    assert torch.isfinite(X_new).all() and torch.isfinite(r).all()


def test_residual_kernel_matches_reference():
    for n in (1, 4, 8, 17):
        A = conditioned_matrices(13, n, 100.0, torch.float64).to(DEVICE)
        X = warm_start(A.cpu(), 0.3).to(DEVICE)
        assert torch.allclose(newton_schulz.residual_norm(A, X), reference.residual_norm(A, X), rtol=1e-12, atol=1e-14)


def test_empty_batch():
    A = torch.empty(0, 4, 4, device=DEVICE)
    X_new, r, done = newton_schulz.newton_schulz_step(A, A, torch.empty(0, device=DEVICE), 1e-6, 1e-3)
    assert X_new.shape == (0, 4, 4) and r.shape == (0,) and done.shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("guess", ["scaled_transpose", "warm_start"])
def test_batched_inverse_triton_matches_torch_backend(dtype, guess):
    for n in (3, 16):
        A = conditioned_matrices(21, n, 100.0, dtype, seed=n).to(DEVICE)
        init = None if guess == "scaled_transpose" else warm_start(A.cpu(), 0.01).to(DEVICE)
        X_t, info_t = neuinv.batched_inverse_ex(A, init=init, backend="torch")
        X_k, info_k = neuinv.batched_inverse_ex(A, init=init, backend="triton")
        assert info_k.converged.all() and not info_k.fallback.any()
        assert (info_k.iterations - info_t.iterations).abs().max() <= 1
        assert true_residual(A.cpu(), X_k.cpu()).max().item() <= residual_bound(A.cpu())


def test_triton_backend_rejects_complex():
    A = torch.eye(3, dtype=torch.complex128, device=DEVICE)[None]
    with pytest.raises(RuntimeError, match="float32 or float64"):
        neuinv.batched_inverse(A, backend="triton")
