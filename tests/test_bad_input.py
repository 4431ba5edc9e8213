"""Bad input gets a clear error or a documented result; nothing is silently wrong."""
import pytest
import torch

import neuinv
from conftest import conditioned_matrices, residual_bound, true_residual, warm_start


class TinyModel(torch.nn.Module):
    """A learned-initializer stand-in: exact inverse for matrices with a positive diagonal."""

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, A):
        return torch.linalg.inv(A) * self.scale

    def in_domain(self, A):
        return (torch.diagonal(A, dim1=-2, dim2=-1) > 0).all(-1)


@pytest.mark.parametrize("A, error, words", [
    pytest.param(torch.ones(4), ValueError, "1-D", id="one-dimensional"),
    pytest.param(torch.ones(()), ValueError, "0-D", id="scalar"),
    pytest.param(torch.ones(2, 3, 4), ValueError, "square", id="non-square"),
    pytest.param(torch.ones(2, 3, 3, dtype=torch.int64), TypeError, "torch.int64", id="integer"),
    pytest.param(torch.ones(2, 3, 3, dtype=torch.bool), TypeError, "torch.bool", id="bool"),
    pytest.param(torch.ones(2, 3, 3, dtype=torch.complex32), TypeError, "torch.complex32", id="complex32"),
    pytest.param([[1.0, 0.0], [0.0, 1.0]], TypeError, "torch.Tensor", id="list"),
    pytest.param(torch.ones(2, 3, 3, device="meta"), ValueError, "A is a meta tensor", id="meta"),
])
def test_bad_matrices_are_named(A, error, words):
    with pytest.raises(error, match=words):
        neuinv.batched_inverse(A)
    with pytest.raises(error, match=words):
        neuinv.batched_inverse_ex(A)
    with pytest.raises(error, match=words):
        neuinv.batched_solve(A, torch.ones(4, device=getattr(A, "device", "cpu")))


def test_bad_init_is_named():
    A = conditioned_matrices(3, 4, 10.0, torch.float64)
    with pytest.raises(ValueError, match="init must have A's shape"):
        neuinv.batched_inverse(A, init=torch.zeros(3, 4, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="init must have A's dtype"):
        neuinv.batched_inverse(A, init=torch.linalg.inv(A).float())
    with pytest.raises(ValueError, match="not both"):
        neuinv.batched_inverse(A, init=torch.linalg.inv(A), model=TinyModel(4))


def test_bad_model_is_named():
    A = conditioned_matrices(3, 4, 10.0, torch.float64)
    with pytest.raises(ValueError, match="built for 5x5"):
        neuinv.batched_inverse(A, model=TinyModel(5))
    with pytest.raises(TypeError, match="in_domain"):
        neuinv.batched_inverse(A, model=torch.nn.Identity())


@pytest.mark.parametrize("kwargs, words", [
    ({"tol": -1.0}, "tol"), ({"tol": float("nan")}, "tol"), ({"max_iter": -1}, "max_iter"),
    ({"max_iter": 2.5}, "max_iter"), ({"max_iter": 10001}, "max_iter"), ({"tol": True}, "tol"),
    ({"backend": "fortran"}, "backend must be"),
])
def test_bad_options_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        neuinv.batched_inverse(conditioned_matrices(2, 3, 10.0, torch.float64), **kwargs)


def test_missing_backend_requested_explicitly_raises():
    for name, status in neuinv.available_backends().items():
        if not status.available:
            with pytest.raises(RuntimeError, match=name):
                neuinv.batched_inverse(torch.eye(3)[None], backend=name)


def good_batch_with(bad_members, n=4, dtype=torch.float64):
    A = conditioned_matrices(7, n, 10.0, dtype)
    for index, matrix in bad_members.items():
        A[index] = matrix
    return A


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("guess", ["exact", "scaled_transpose", "warm_start"])
def test_singular_members_are_flagged_and_the_rest_exact(dtype, guess):
    n = 4
    rank_deficient = torch.ones(n, n)  # rank 1
    combined_rows = torch.tensor([[1.0, 2, 3, 4], [2, 1, 0, 1], [3, 3, 3, 5], [0, 1, 1, 2]])  # row 2 = row 0 + row 1
    A = good_batch_with({2: rank_deficient, 5: combined_rows}, n, dtype)
    kwargs = {"exact": {}, "scaled_transpose": {"backend": "torch"},
              "warm_start": {"init": torch.nan_to_num(warm_start(A, 1e-2))}}[guess]
    X, info = neuinv.batched_inverse_ex(A, **kwargs)
    good = torch.tensor([i not in (2, 5) for i in range(7)])
    assert info.certified.tolist() == good.tolist()
    assert info.fallback[~good].all()
    assert true_residual(A[good], X[good]).max().item() <= residual_bound(A[good])
    with pytest.raises(torch.linalg.LinAlgError, match=r"A\[2\] is singular.*2 matrices"):
        neuinv.batched_inverse(A, **kwargs)


def test_singular_error_names_multi_dimensional_index():
    A = conditioned_matrices(6, 3, 10.0, torch.float64).reshape(2, 3, 3, 3)
    A[1, 2] = 0.0
    with pytest.raises(torch.linalg.LinAlgError, match=r"A\[1, 2\] is singular"):
        neuinv.batched_inverse(A)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_members(poison):
    A = good_batch_with({}, 4)
    A[3, 1, 2] = poison
    X, info = neuinv.batched_inverse_ex(A, init=torch.linalg.inv(torch.nan_to_num(A)))
    assert not info.certified[3] and info.certified[torch.arange(7) != 3].all()
    assert torch.isnan(X[3]).all() and torch.isinf(info.error_bound[3])
    with pytest.raises(ValueError, match=r"A\[3\] contains NaN or Inf"):
        neuinv.batched_inverse(A)


def test_guard_sends_bad_guesses_to_the_exact_path():
    A = conditioned_matrices(6, 5, 10.0, torch.float64)
    init = warm_start(A, 1e-3)
    init[1] = 0.0  # residual ||I||_F = sqrt(5): far outside the guard
    init[4] = warm_start(A[4:5], neuinv.GUARD_RESIDUAL * 1.2)[0]  # just outside
    X, info = neuinv.batched_inverse_ex(A, init=init)
    assert info.fallback.tolist() == [False, True, False, False, True, False]
    assert info.certified.all()
    assert torch.allclose(X, torch.linalg.inv(A), atol=1e-12)


def test_model_out_of_domain_takes_exact_path():
    A = conditioned_matrices(6, 3, 10.0, torch.float64)
    sign = torch.sign(torch.diagonal(A, dim1=-2, dim2=-1))
    A = A * sign[..., None, :]  # make every diagonal positive
    A[0] *= -1  # now out of the model's domain
    X, info = neuinv.batched_inverse_ex(A, model=TinyModel(3))
    assert info.fallback.tolist() == [True] + [False] * 5
    assert (info.iterations[1:] <= 3).all()  # the guess was exact: only the rounding-floor test runs
    assert torch.allclose(X, torch.linalg.inv(A), atol=1e-12)


def test_max_iter_reached_falls_back():
    A = conditioned_matrices(4, 6, 1e3, torch.float64)
    X, info = neuinv.batched_inverse_ex(A, method="newton_schulz", backend="torch", max_iter=3)
    assert info.fallback.all() and (info.iterations == 3).all() and info.certified.all()
    assert torch.allclose(X, torch.linalg.inv(A), rtol=1e-9, atol=1e-9)


def test_taylor_initializer_in_and_out_of_its_box():
    from neuinv.learned.models import TaylorInitializer

    g = torch.Generator().manual_seed(0)
    center = torch.randint(-2, 3, (6, 6), generator=g).double() + 6 * torch.eye(6, dtype=torch.float64)
    model = TaylorInitializer(center, radius=0.01)
    A = center + 0.01 * (2 * torch.rand(9, 6, 6, generator=g, dtype=torch.float64) - 1)
    A[4] += 0.5  # leaves the box
    X, info = neuinv.batched_inverse_ex(A, model=model)
    assert info.fallback.tolist() == [i == 4 for i in range(9)]
    assert info.certified.all() and (info.iterations[info.fallback == 0] <= 3).all()
    assert torch.allclose(X, torch.linalg.inv(A), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="singular"):
        TaylorInitializer(torch.ones(3, 3), 0.1)


def test_method_is_checked():
    A = conditioned_matrices(3, 4, 10.0, torch.float64)
    with pytest.raises(ValueError, match="method must be one of"):
        neuinv.batched_inverse(A, method="lu")
    with pytest.raises(ValueError, match="method='exact' uses no initial guess"):
        neuinv.batched_inverse(A, init=torch.linalg.inv(A), method="exact")


def test_backend_forced_by_the_environment(monkeypatch):
    """NEUINV_BACKEND makes auto mean the backend it names; a name that is no backend, or a backend that cannot
    run the input, raises like an explicit request."""
    from neuinv import backends

    A = conditioned_matrices(3, 4, 10.0, torch.float64)
    monkeypatch.setenv("NEUINV_BACKEND", "torch")
    backends.forget_availability()
    try:
        assert backends.resolve_backend("auto", A).name == "torch"
        assert backends.resolve_backend("auto", A.to(torch.complex128)).name == "torch"
        monkeypatch.setenv("NEUINV_BACKEND", "tpu")
        backends.forget_availability()
        with pytest.raises(ValueError, match="NEUINV_BACKEND='tpu' names no backend"):
            neuinv.batched_inverse(A)
        if backends.available_backends()["cpp"].available:
            monkeypatch.setenv("NEUINV_BACKEND", "cpp")
            backends.forget_availability()
            with pytest.raises(RuntimeError, match="requested by NEUINV_BACKEND but cannot run this input"):
                neuinv.batched_inverse(A.to(torch.complex128))
    finally:
        monkeypatch.delenv("NEUINV_BACKEND")
        backends.forget_availability()


def test_a_model_that_writes_into_its_input_leaves_A_as_it_was():
    """A model whose forward pass scales its input in place gets a copy: A is never modified, and X is the certified
    inverse of A as given."""
    class Overwriting(torch.nn.Module):
        def forward(self, M):
            M.mul_(2)
            return torch.linalg.inv(M)

        def in_domain(self, M):
            return torch.ones(M.shape[0], dtype=torch.bool)

    A = conditioned_matrices(3, 4, 10.0, torch.float64)
    before = A.clone()
    X, info = neuinv.batched_inverse_ex(A, model=Overwriting())
    assert torch.equal(A, before)
    assert bool(info.certified.all())
    assert torch.allclose(X @ A, torch.eye(4, dtype=torch.float64).expand(3, 4, 4), atol=1e-13)


def test_singular_float16_matrix_with_a_float16_subnormal_is_called_singular():
    """float16 is computed in float32, where an entry below float16's smallest normal number is normal: an exactly
    singular matrix holding one is called singular, not refused for its subnormal entries."""
    A = torch.tensor([[[0.0, 1.0], [0.0, 2e-5]]], dtype=torch.float16)
    with pytest.raises(torch.linalg.LinAlgError, match="singular or numerically singular") as raised:
        neuinv.batched_inverse(A)
    assert "subnormal" not in str(raised.value)
