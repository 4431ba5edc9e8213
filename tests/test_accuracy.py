"""batched_inverse against torch.linalg.inv and a float64 truth, on every backend available here (Triton in the
interpreter on the CPU)."""
import pytest
import torch

import neuinv
from neuinv.backends import resolve_backend
from conftest import TRUTH_SLACK, accurate_inverse, conditioned_matrices, residual_bound, true_residual, warm_start

SIZES = [1, 2, 3, 4, 5, 7, 8, 16, 31, 32, 64]
CONDITIONS = {torch.float32: [10.0, 1e3], torch.float64: [10.0, 1e4]}
GUESSES = ["exact", "scaled_transpose", "warm_start"]
BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(not status.available, reason=f"{name}: {status.reason}"))
            for name, status in neuinv.available_backends().items() if name in ("torch", "cpp", "triton")]


def _cases():
    for dtype, conds in CONDITIONS.items():
        for n in SIZES:
            for cond in conds:
                for guess in GUESSES:
                    yield pytest.param(n, dtype, cond, guess,
                                       id=f"n{n}-{str(dtype)[6:]}-cond{cond:.0e}-{guess}")


def invert(A, guess, backend="torch"):
    if guess == "exact":
        return neuinv.batched_inverse_ex(A, backend=backend)
    if guess == "scaled_transpose":
        return neuinv.batched_inverse_ex(A, method="newton_schulz", backend=backend)
    return neuinv.batched_inverse_ex(A, init=warm_start(A, 1e-3), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n, dtype, cond, guess", list(_cases()))
def test_as_accurate_as_torch(n, dtype, cond, guess, backend):
    A = conditioned_matrices(23, n, cond, dtype, seed=n)
    X, info = invert(A, guess, backend)
    assert X.shape == A.shape and X.dtype == A.dtype
    assert info.certified.all()
    assert true_residual(A, X).max().item() <= residual_bound(A)
    # The certificate holds: the error bound is at least the true relative error (against a truth accurate to
    # a few float64 eps, which float64 bounds at the error itself need), and it is no bound of "anything": below 1.
    truth = accurate_inverse(A)
    error = torch.linalg.matrix_norm(X.double() - truth) / torch.linalg.matrix_norm(truth)
    assert (error <= info.error_bound * (1 + 1e-6) + TRUTH_SLACK).all() and (info.error_bound < 1).all()
    if guess == "warm_start":
        assert not info.fallback.any()
        assert info.iterations.max() <= 4  # r0 ~ 1e-3 * sqrt(n): quadratic convergence
    if guess == "exact":
        assert info.fallback.all() and (info.iterations == 0).all()


@pytest.mark.parametrize("batch_shape", [(), (1,), (3, 5), (2, 1, 4)], ids=lambda s: "B" + "x".join(map(str, s)))
@pytest.mark.parametrize("guess", GUESSES)
def test_batch_shapes(batch_shape, guess):
    n = 5
    A = conditioned_matrices(max(1, torch.Size(batch_shape).numel()), n, 100.0, torch.float64).reshape(*batch_shape, n, n)
    X, info = invert(A, guess)
    assert X.shape == A.shape
    for field in info:
        assert field.shape == batch_shape
    assert torch.allclose(X, torch.linalg.inv(A), rtol=1e-10, atol=1e-10)


def test_complex_input_is_inverted():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 4, 4, dtype=torch.complex128, generator=g) + 4 * torch.eye(4)
    for backend in ["auto", "torch"]:
        X, info = neuinv.batched_inverse_ex(A, backend=backend)
        assert info.certified.all()
        assert true_residual(A, X).max().item() <= residual_bound(A)


def test_large_batch_is_chunked(monkeypatch):
    """A batch whose workspace exceeds WORKSPACE_BYTES is inverted in chunks, one operator call each."""
    A = conditioned_matrices(50, 3, 10.0, torch.float64)
    for guess in GUESSES:
        backend = resolve_backend("auto", A)
        calls = []
        invert_chunk = type(backend).invert
        monkeypatch.setattr(type(backend), "invert", lambda self, *args: calls.append(1) or invert_chunk(self, *args))
        per_matrix = backend.workspace_matrices * 3 * 3 * A.element_size()
        monkeypatch.setattr(neuinv.pipeline, "WORKSPACE_BYTES", per_matrix * 7)  # 7 matrices per chunk
        X, info = invert(A, guess, "auto")
        monkeypatch.undo()
        assert len(calls) == 8  # ceil(50 / 7)
        assert info.certified.all()
        assert torch.allclose(X, torch.linalg.inv(A), rtol=1e-12, atol=1e-12)


def test_input_is_never_modified():
    A = conditioned_matrices(9, 4, 10.0, torch.float32)
    init = warm_start(A, 1e-2)
    A_before, init_before = A.clone(), init.clone()
    for guess in GUESSES:
        invert(A, guess)
    neuinv.batched_inverse(A, init=init)
    assert torch.equal(A, A_before) and torch.equal(init, init_before)


def test_non_contiguous_and_expanded_input():
    base = conditioned_matrices(4, 6, 10.0, torch.float64)
    transposed = base.mT  # non-contiguous
    assert not transposed.is_contiguous()
    assert torch.allclose(neuinv.batched_inverse(transposed, backend="torch"), torch.linalg.inv(transposed), atol=1e-12)
    expanded = base[:1].expand(5, 6, 6)  # stride 0 over the batch
    X = neuinv.batched_inverse(expanded, init=torch.linalg.inv(expanded).contiguous().expand(5, 6, 6))
    assert torch.allclose(X, torch.linalg.inv(expanded), atol=1e-12)


def test_empty_batch_and_zero_size():
    for shape in [(0, 3, 3), (2, 0, 0), (0, 0, 0)]:
        A = torch.empty(shape)
        X, info = neuinv.batched_inverse_ex(A, backend="torch")
        assert X.shape == shape
        assert info.certified.shape == shape[:-2]
        assert neuinv.batched_inverse(A).shape == torch.linalg.inv(A).shape


def test_one_by_one():
    A = torch.tensor([[[4.0]], [[-0.5]]], dtype=torch.float64)
    for guess in GUESSES:
        X, info = invert(A, guess)
        assert torch.allclose(X, 1 / A, rtol=1e-15)
