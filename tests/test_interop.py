"""NumPy and JAX arrays through DLPack (docs/guide/interop.md): zero copy in, neuinv's result back zero copy,
the input untouched, the answers those of torch tensors. JAX tests skip where JAX is not installed; CuPy needs a
GPU and is documented, not tested here."""
import numpy as np
import pytest
import torch

import neuinv


def _matrices(batch=64, n=4, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, n, n)) + n * np.eye(n)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
def test_numpy_zero_copy_round_trip(dtype):
    a = _matrices(dtype=dtype)
    if np.iscomplexobj(a):
        a = a + 0.5j * _matrices(seed=1)
    before = a.copy()
    A = torch.from_dlpack(a)
    assert A.data_ptr() == a.ctypes.data                     # no copy in
    X, info = neuinv.batched_inverse_ex(A, backend="torch")
    x = np.from_dlpack(X)
    assert x.ctypes.data == X.data_ptr()                     # no copy back
    assert np.array_equal(a, before)                         # neuinv never writes into A
    assert info.certified.all()
    torch.testing.assert_close(X, neuinv.batched_inverse(torch.tensor(before), backend="torch"))
    bound = np.from_dlpack(info.error_bound)
    truth = np.linalg.inv(before.astype(np.complex128 if np.iscomplexobj(a) else np.float64))
    error = np.linalg.norm(x - truth, axis=(1, 2)) / np.linalg.norm(truth, axis=(1, 2))
    assert (error <= bound).all()


def test_numpy_strided_and_read_only(tmp_path):
    a = _matrices(batch=16)
    np.save(tmp_path / "A.npy", a)
    m = np.load(tmp_path / "A.npy", mmap_mode="r")          # read-only memmap
    A = torch.from_dlpack(m)
    X = neuinv.batched_inverse(A, backend="torch")
    f = np.asfortranarray(a[:, ::1, :])                      # column-major matrices: a strided tensor
    F = torch.from_dlpack(f)
    assert not F.is_contiguous()
    torch.testing.assert_close(neuinv.batched_inverse(F, backend="torch"), X)


def test_numpy_solve():
    a, b = _matrices(), np.random.default_rng(2).standard_normal((64, 4))
    x = np.from_dlpack(neuinv.batched_solve(torch.from_dlpack(a), torch.from_dlpack(b), backend="torch"))
    np.testing.assert_allclose(x, np.linalg.solve(a, b[..., None])[..., 0], rtol=1e-10, atol=1e-12)


def test_exports_that_dlpack_refuses_are_named():
    X = neuinv.batched_inverse(torch.eye(3, dtype=torch.float64, requires_grad=True)[None], backend="torch")
    with pytest.raises(BufferError):
        np.from_dlpack(X)                                    # requires grad: documented, detach() first
    np.from_dlpack(X.detach())


def test_jax_zero_copy_round_trip():
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    jax.config.update("jax_enable_x64", True)
    a = jnp.asarray(_matrices())
    A = torch.from_dlpack(a)
    assert A.dtype == torch.float64 and A.shape == (64, 4, 4)
    X, info = neuinv.batched_inverse_ex(A, backend="torch")
    x = jnp.from_dlpack(X)
    assert bool(info.certified.all())
    np.testing.assert_allclose(np.asarray(x), np.linalg.inv(np.asarray(a)), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(a), _matrices())  # the JAX array is untouched


def test_jax_float32():
    jnp = pytest.importorskip("jax.numpy")
    a = jnp.asarray(_matrices(dtype=np.float32))
    X = neuinv.batched_inverse(torch.from_dlpack(a), backend="torch")
    assert X.dtype == torch.float32
    np.testing.assert_allclose(np.asarray(jnp.from_dlpack(X)), np.linalg.inv(np.asarray(a)), rtol=1e-4, atol=1e-5)
