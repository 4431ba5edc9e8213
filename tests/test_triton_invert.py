"""The one-launch Triton inversion (kernels/invert.py) against its specification reference.invert (interpreter on
the CPU, compiled on CUDA): the same verdict and path per matrix, iteration counts within 2, every certified
bound holds, and the certificate is the one of neuinv.certificate."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import neuinv
from neuinv import certificate, reference
from neuinv.rules import NEWTON_SCHULZ_ACCEPT, NewtonSchulzRules, default_tol
from neuinv.testing import conditioned_matrices, warm_start
from conftest import assert_no_host_synchronisation

triton = pytest.importorskip("triton")
from neuinv.kernels import invert as triton_invert  # noqa: E402

pytestmark = [pytest.mark.interpreter,  # NaN members: numpy's warnings in the interpreter
              pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SYNCING_OPERATORS = {"nonzero", "_local_scalar_dense", "item", "masked_select", "unique", "argwhere"}

CASES = [(1, torch.float32, 70), (3, torch.float64, 19), (5, torch.float32, 19), (13, torch.float64, 7),
         (33, torch.float32, 3), (64, torch.float64, 3)]
"""(n, dtype, batch): odd sizes, each batch not a multiple of the matrices per program (64 at n = 1, 16 at
n = 3, 4 at n = 5, 1 above), so the masked tail runs; few matrices where the interpreter is slow."""


def _rules(A, X0):
    return NewtonSchulzRules(default_tol(A.dtype), NEWTON_SCHULZ_ACCEPT[A.dtype], 10 if X0 is not None else 64,
                             X0 is not None)


def _variants(A):
    X0 = warm_start(A.cpu(), 1e-3).to(A.device)
    mask = torch.arange(A.shape[0], device=A.device) % 2 == 0
    return {"exact": (None, None, False), "scaled transpose": (None, None, True),
            "guess": (X0, None, True), "guess where masked": (X0, mask, True)}


def _launch(A, X0, use_guess, refine, rules, max_error=1.0):
    return triton_invert.invert(A, X0, use_guess, refine, rules.tol, rules.accept, rules.max_iter, rules.guard,
                                max_error)


@pytest.mark.parametrize("n, dtype, batch", [pytest.param(*case, id=f"n{case[0]}-{str(case[1])[6:]}-B{case[2]}")
                                             for case in CASES])
def test_kernel_matches_its_specification(n, dtype, batch):
    """Per matrix the same certified and fallback as reference.invert, iterations within 2, X NaN where not
    certified, and every certified bound holds against a float64 truth; an all-zero and a NaN member among
    good ones."""
    A = conditioned_matrices(batch, n, 1e3, dtype, seed=n).to(DEVICE)
    A[1] = 0.0
    A[-1, 0, 0] = float("nan")
    for name, (X0, use_guess, refine) in _variants(A).items():
        rules = _rules(A, X0)
        X, certified, bound, iterations, fallback = _launch(A, X0, use_guess, refine, rules)
        _, certified_ref, _, iterations_ref, fallback_ref = reference.invert(A, X0, use_guess, refine, rules, 1.0)
        label = f"n={n} {dtype} {name}"
        assert torch.equal(certified, certified_ref), label
        assert torch.equal(fallback, fallback_ref), label
        assert (iterations - iterations_ref).abs().max() <= 2, label
        assert not certified[1] and not certified[-1] and torch.isnan(X[~certified]).all(), label
        assert torch.isfinite(X[certified]).all() and bound.dtype == torch.float64, label
        truth = torch.linalg.inv(A[certified].double())
        error = torch.linalg.matrix_norm(X[certified].double() - truth) / torch.linalg.matrix_norm(truth)
        assert (error <= bound[certified]).all(), label


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_certificate_is_certificate_error_bound(dtype):
    """The in-kernel bound of each returned X is rho = certificate.residual_bound(A, X) up to the rounding of its
    own evaluation -- for float64 up to cond 1e12, where both re-evaluate the residual (exact path only, and
    Newton–Schulz from a guess): the kernel by Dot2, the torch path by the split residual, whose error (about
    (n + 1) 2^-25 of a plain product's rounding at n = 4) moves rho by up to about 2e-6 of itself there; the Triton
    kernel does not evaluate the product form, so certificate.error_bound may lie below it. A float32 exact-path result is certified before its rounding (Gauss–Jordan in float64): its
    bound is at most that of the stored X, about float32's unit roundoff, and holds."""
    for cond in (1e2, 1e6, 1e12 if dtype == torch.float64 else 1e5):
        A = conditioned_matrices(6, 4, cond, dtype, seed=2).to(DEVICE)
        for X0, refine in ((None, False), (warm_start(A.cpu(), 1e-2).to(DEVICE), True)):
            X, certified, bound, _, fallback = _launch(A, X0, None, refine, _rules(A, X0))
            assert certified.all(), (cond, refine)
            expected = certificate.certified_or_inf(certificate.residual_bound(A, X))
            assert (certificate.error_bound(A, X) <= expected).all(), (cond, refine)
            before_rounding = fallback & (dtype == torch.float32)  # certified before the rounding of X_w (float64)
            truth = torch.linalg.inv(A.double())
            error = torch.linalg.matrix_norm(X.double() - truth) / torch.linalg.matrix_norm(truth)
            assert (error <= bound).all(), (cond, refine, error, bound)
            assert (bound[before_rounding] <= expected[before_rounding]).all(), (cond, bound, expected)
            assert (bound[before_rounding] < 2 * 2.0**-24 + 1e-3 * cond * 2.0**-53).all(), (cond, bound)
            if not before_rounding.all():
                kept = ~before_rounding
                assert torch.allclose(bound[kept], expected[kept], rtol=1e-5, atol=0), (cond, refine, bound, expected)


def test_singular_members_and_guard():
    """Exactly singular members (a zero pivot) are not certified on either path; a guess above the guard takes
    the exact path after step 0."""
    A = conditioned_matrices(5, 4, 10.0, torch.float64).to(DEVICE)
    A[2, :, 3] = A[2, :, 0]  # two equal columns
    X0 = torch.linalg.inv_ex(A.cpu())[0].to(DEVICE)
    X0[2] = 0.0
    X0[4] *= 1.3  # r0 = 0.6 sqrt(4) > guard
    X, certified, bound, iterations, fallback = _launch(A, X0, None, True, _rules(A, X0))
    assert certified.tolist() == [True, True, False, True, True]
    assert fallback.tolist() == [False, False, True, False, True] and iterations[4] == 0
    assert torch.isinf(bound[2]) and torch.isnan(X[2]).all()


def test_empty_batch_and_batched_inverse_ex():
    A = torch.empty(0, 5, 5, device=DEVICE)
    X, certified, bound, iterations, fallback = _launch(A, None, None, False, _rules(A, None))
    assert X.shape == (0, 5, 5) and certified.shape == bound.shape == iterations.shape == fallback.shape == (0,)
    X, info = neuinv.batched_inverse_ex(torch.empty(2, 0, 3, 3, device=DEVICE), backend="triton")
    assert X.shape == (2, 0, 3, 3) and info.certified.shape == (2, 0)


def test_bad_input_is_refused():
    from neuinv.backends import resolve_backend

    A = conditioned_matrices(3, 4, 10.0, torch.float64).to(DEVICE)
    X0 = warm_start(A.cpu(), 1e-3).to(DEVICE)
    backend = resolve_backend("triton", A)
    rules = _rules(A, X0)
    with pytest.raises(RuntimeError, match="X0 is given but refine is false"):
        backend.invert(A, X0, None, False, rules, 1.0)
    with pytest.raises(RuntimeError, match="use_guess is given without X0"):
        backend.invert(A, None, torch.ones(3, dtype=torch.bool, device=DEVICE), True, rules, 1.0)
    with pytest.raises(RuntimeError, match="use_guess must be a bool tensor of shape"):
        backend.invert(A, X0, torch.ones(2, dtype=torch.bool, device=DEVICE), True, rules, 1.0)
    with pytest.raises(RuntimeError, match="must have the same shape and dtype"):
        backend.invert(A, X0.float(), None, True, rules, 1.0)
    big = torch.eye(65, dtype=torch.float64, device=DEVICE)[None]
    assert "n <= 64" in backend.unsupported_reason(big)
    with pytest.raises(RuntimeError, match="n <= 64"):
        neuinv.batched_inverse(big, backend="triton")


def test_the_registered_op_checks_its_arguments():
    """torch.ops.neuinv_triton.invert called directly refuses what the compiled operator refuses (a launch on a
    wrong shape would read and write past its buffers)."""
    op = torch.ops.neuinv_triton.invert
    A = conditioned_matrices(2, 3, 10.0, torch.float64).to(DEVICE)
    good = [A, None, None, False, 1e-16, 1e-6, 10, 0.5, 1.0]
    for index, value, message in ((0, A[0], "must have shape"), (0, A[:, :, :2], "must have shape"),
                                  (0, A[None], "must have shape"), (0, A.to(torch.int32), "float32 or float64"),
                                  (0, torch.eye(65, dtype=torch.float64, device=DEVICE)[None], "1 <= n <= 64"),
                                  (1, A[:1].clone(), "X0 is given but refine is false"),
                                  (4, float("nan"), "tol must be"), (5, float("inf"), "accept must be"),
                                  (6, -1, "max_iter must be"), (6, 2**40, "max_iter must be"), (7, 0.0, "guard must"),
                                  (8, float("nan"), "max_error must be"), (8, 5.0, "max_error must be")):
        bad = list(good)
        bad[index] = value
        with pytest.raises(RuntimeError, match=message):
            op(*bad)
    with pytest.raises(RuntimeError, match="same shape and dtype"):
        op(A, A[:1].clone(), None, True, 1e-16, 1e-6, 10, 0.5, 1.0)


def test_float32_exact_path_is_computed_in_double():
    """Gauss–Jordan in float64 for float32 input (as on the compiled backends): ill-conditioned float32
    matrices are certified to about float32's rounding, where Gauss–Jordan in float32 would leave cond * eps."""
    A = conditioned_matrices(6, 8, 1e7, torch.float32, seed=3).to(DEVICE)
    X, info = neuinv.batched_inverse_ex(A, backend="triton")
    assert info.certified.all() and (info.error_bound < 1e-6).all(), info.error_bound


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name.split("::")[-1])
        return func(*args, **(kwargs or {}))


def test_batched_inverse_ex_is_one_launch_without_synchronisation():
    """What batched_inverse_ex dispatches on the triton backend: one neuinv_triton::invert per chunk and, of the
    operators that synchronise with the host or have a data-dependent shape, only the one read of the largest bound
    that decides whether any matrix takes the second stage (neuinv.pipeline.all_below_second_stage; none of these
    does, so no nonzero selects them and nothing is indexed)."""
    A = conditioned_matrices(40, 6, 10.0, torch.float64).to(DEVICE).view(4, 10, 6, 6)
    init = warm_start(A.cpu(), 1e-3).to(DEVICE)
    for options in (dict(), dict(init=init), dict(method="newton_schulz"), dict(max_error=1e-12)):
        with _Recorder() as recorder:
            neuinv.batched_inverse_ex(A, backend="triton", **options)
        assert recorder.names.count("invert") == 1, (options, recorder.names)
        assert [name for name in recorder.names if name in SYNCING_OPERATORS] == ["_local_scalar_dense"], (options,
                                                                                               recorder.names)
        assert not any(name == "index" or name.startswith("index_put") for name in recorder.names), options


def test_torch_compile_fullgraph():
    A = conditioned_matrices(8, 4, 10.0, torch.float64).to(DEVICE)
    init = warm_start(A.cpu(), 1e-2).to(DEVICE)

    def step(M, X0):
        X, info = neuinv.batched_inverse_ex(M, init=X0, backend="triton")
        return X, info.error_bound

    X, bound = torch.compile(step, backend="eager", fullgraph=True)(A, init)
    assert torch.allclose(X, torch.linalg.inv(A), atol=1e-12) and (bound < 1e-12).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_no_host_synchronisation_on_cuda():
    assert_no_host_synchronisation("triton")


def test_strided_inputs():
    """Column-major A and X0 (LAPACK's layout, e.g. from torch.linalg.inv) are read as the matrices they are."""
    A = conditioned_matrices(5, 4, 10.0, torch.float64).to(DEVICE).mT
    X0 = torch.linalg.inv(A.cpu()).to(DEVICE) * (1 + 1e-4)
    assert not A.is_contiguous()
    X, certified, _, iterations, fallback = _launch(A, X0.mT.contiguous().mT, None, True, _rules(A, X0))
    assert certified.all() and not fallback.any() and (iterations > 0).all()
    assert torch.allclose(X, torch.linalg.inv(A), atol=1e-13)
