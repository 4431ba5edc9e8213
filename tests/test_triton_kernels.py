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
    X_ref, r_ref, done_ref = reference.newton_schulz_step(A, X, tol, accept)
    X_new, r_new, done_new = newton_schulz.newton_schulz_step(A, X, tol, accept)
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
    X_new, r, done = newton_schulz.newton_schulz_step(A, X, 0.0, 1e-3)
    monkeypatch.undo()
    assert X_new.data_ptr() == poison.data_ptr()
    assert torch.isfinite(X_new).all() and torch.isfinite(r).all()


def test_empty_batch():
    A = torch.empty(0, 4, 4, device=DEVICE)
    X_new, r, done = newton_schulz.newton_schulz_step(A, A, 1e-6, 1e-3)
    assert X_new.shape == (0, 4, 4) and r.shape == (0,) and done.shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("guess", ["scaled_transpose", "warm_start"])
def test_batched_inverse_triton_matches_torch_backend(dtype, guess):
    for n in (3, 16):
        A = conditioned_matrices(21, n, 100.0, dtype, seed=n).to(DEVICE)
        init = None if guess == "scaled_transpose" else warm_start(A.cpu(), 0.01).to(DEVICE)
        X_t, info_t = neuinv.batched_inverse_ex(A, init=init, method="newton_schulz", backend="torch")
        X_k, info_k = neuinv.batched_inverse_ex(A, init=init, method="newton_schulz", backend="triton")
        assert info_k.certified.all() and not info_k.fallback.any()
        assert (info_k.iterations - info_t.iterations).abs().max() <= 1
        assert true_residual(A.cpu(), X_k.cpu()).max().item() <= residual_bound(A.cpu())


def test_triton_backend_rejects_complex():
    A = torch.eye(3, dtype=torch.complex128, device=DEVICE)[None]
    with pytest.raises(RuntimeError, match="float32 or float64"):
        neuinv.batched_inverse(A, backend="triton")


def random_mlp(n, hidden, depth, dtype, skip, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = n * n
    dims = [K] + [hidden] * (depth - 1) + [K]
    weights = [torch.randn(dims[i + 1], dims[i], generator=g, dtype=torch.float64) / dims[i] ** 0.5 for i in range(depth)]
    biases = [torch.randn(dims[i + 1], generator=g, dtype=torch.float64) for i in range(depth)]
    skip_matrix = torch.randn(K, K, generator=g, dtype=torch.float64) / K if skip else None
    center = torch.randn(K, generator=g, dtype=torch.float64)
    return center, weights, biases, skip_matrix


def mlp_cases():
    cases = []
    for n, hidden in [(1, 8), (2, 8), (2, 32), (3, 72), (5, 32), (8, 72), (16, 2048)]:
        for depth in (2, 3):
            if depth == 3 and hidden > 512:
                continue
            for dtype in (torch.float32, torch.float64):
                cases.append(pytest.param(n, hidden, depth, dtype, id=f"n{n}-h{hidden}-{depth}FC-{str(dtype)[6:]}"))
    return cases


@pytest.mark.parametrize("n, hidden, depth, dtype", mlp_cases())
@pytest.mark.parametrize("skip", [False, True], ids=["direct", "taylor"])
def test_fused_mlp_matches_reference(n, hidden, depth, dtype, skip, monkeypatch):
    from neuinv.kernels.mlp import fused_mlp_initializer

    center64, weights64, biases64, skip64 = random_mlp(n, hidden, depth, torch.float64, skip)
    batch = 37  # a masked tail for every tile size
    a64 = center64 + 0.01 * (2 * torch.rand(batch, n * n, generator=torch.Generator().manual_seed(1),
                                            dtype=torch.float64) - 1)
    truth = reference.mlp_initializer(a64, center64, 100.0, weights64, biases64, skip64)

    def cast(t):
        return None if t is None else t.to(dtype=dtype, device=DEVICE)

    args = (cast(a64), cast(center64), 100.0, [cast(w) for w in weights64], [cast(b) for b in biases64], cast(skip64))
    expected = reference.mlp_initializer(*args)
    poison = torch.full_like(args[0], float("nan"))
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: poison if t is args[0] else empty_like(t, **kw))
    out = fused_mlp_initializer(*args)
    monkeypatch.undo()
    assert out.data_ptr() == poison.data_ptr() and torch.isfinite(out).all()
    torch_error = (expected.double().cpu() - truth).abs().max().item()
    kernel_error = (out.double().cpu() - truth).abs().max().item()
    # A priori rounding bound: gamma_k |W| |h| summed over the layers, from the network on absolute values.
    magnitude = reference.mlp_initializer((a64 - center64).abs(), torch.zeros_like(center64), 100.0,
                                          [w.abs() for w in weights64], [b.abs() for b in biases64],
                                          None if skip64 is None else skip64.abs()).max().item()
    inner = n * n * (2 if skip else 1) + (depth - 1) * hidden
    assert kernel_error <= 4 * torch_error + inner * torch.finfo(dtype).eps * magnitude


def test_fused_mlp_rejects_bad_shapes():
    from neuinv.kernels.mlp import fused_mlp_initializer

    center, weights, biases, _ = random_mlp(2, 8, 2, torch.float64, False)
    a = torch.zeros(3, 4, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="layer 2"):
        fused_mlp_initializer(a, center.to(DEVICE), 1.0, [weights[0].to(DEVICE), weights[0].to(DEVICE)],
                              [b.to(DEVICE) for b in biases])
    with pytest.raises(TypeError, match="one dtype"):
        fused_mlp_initializer(a.float(), center.to(DEVICE), 1.0, [w.to(DEVICE) for w in weights],
                              [b.to(DEVICE) for b in biases])
    with pytest.raises(ValueError, match="hidden <= 512"):
        c3, w3, b3, _ = random_mlp(2, 600, 3, torch.float64, False)
        fused_mlp_initializer(a, c3.to(DEVICE), 1.0, [w.to(DEVICE) for w in w3], [b.to(DEVICE) for b in b3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_auto_uses_triton_on_cuda_and_matches_cpu(dtype):
    from neuinv.backends import resolve_backend

    A = conditioned_matrices(1000, 7, 100.0, dtype).cuda()
    assert resolve_backend("auto", A).name == "triton"
    init = warm_start(A, 1e-2)
    X, info = neuinv.batched_inverse_ex(A, init=init)
    assert info.certified.all() and not info.fallback.any()
    assert true_residual(A, X).max().item() <= residual_bound(A.cpu())
