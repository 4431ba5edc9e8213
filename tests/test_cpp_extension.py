"""The compiled kernels (CPU, and CUDA where a GPU is present) against the torch reference and a float64
truth. Needs `neuinv build-ext`; the CUDA cases are marked `cuda` and skipped without a GPU."""
import subprocess
import sys

import pytest
import torch

import neuinv
from neuinv import extension, reference
from neuinv.rules import NewtonSchulzRules
from neuinv.backends import available_backends, resolve_backend
from conftest import conditioned_matrices, residual_bound, true_residual, warm_start

pytestmark = pytest.mark.skipif(not extension.ensure(), reason="the C++ kernels are not built and cannot be built here")
SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 31, 32, 33, 64]
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not available_backends()["cuda"].available, reason=available_backends()["cuda"].reason)])
DEVICES = ["cpu", CUDA]


def working_precision_rounding(A, X):
    """gamma_n ||A||_F ||X||_F, gamma_n = (n + 2) eps: how far a residual computed in A's precision may be
    from the exact one."""
    return (A.shape[-1] + 2) * torch.finfo(A.dtype).eps * torch.linalg.matrix_norm(A) * torch.linalg.matrix_norm(X)


def cases():
    return [pytest.param(n, dtype, id=f"n{n}-{str(dtype)[6:]}") for n in SIZES for dtype in (torch.float32, torch.float64)]


def test_build_holds_the_cuda_kernels_whenever_the_toolchain_can_compile_them():
    """A CUDA build of torch plus a toolkit means the CUDA part compiles (csrc/cuda/*.cu, sm_90 without a GPU;
    built here if `neuinv build-ext` has not): a broken .cu file fails here, on machines with no GPU to run it."""
    problem = extension.build_problem("cuda")
    if problem is not None:
        pytest.skip(f"the CUDA part cannot be compiled here: {problem}")
    assert extension.ensure("cuda"), extension.status("cuda")
    assert extension.has_cuda_kernels() and extension.status("cuda")[1].startswith("compiled CUDA kernels")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, dtype", cases())
def test_exact_kernel_matches_torch(n, dtype, device):
    A = conditioned_matrices(37, n, 100.0, dtype, seed=n).to(device)
    X, pivots = torch.ops.neuinv.exact_inverse(A)
    assert X.device == A.device and (pivots == 0).all()
    assert true_residual(A, X).max().item() <= residual_bound(A.cpu())
    # Both compute I - A X in working precision, in different orders; each is within
    # gamma_n ||A||_F ||X||_F (gamma_n ~ n eps) of the exact residual (Higham, Accuracy and Stability, 3.5).
    rounding = working_precision_rounding(A, X)
    assert ((torch.ops.neuinv.residual_norm(A, X) - reference.residual_norm(A, X)).abs() <= 2 * rounding).all()


@pytest.mark.parametrize("n, dtype", cases())
def test_fused_exact_path_kernel_certifies_what_it_returns(n, dtype):
    """neuinv::inverse_and_error_bound (CPU): Gauss-Jordan in double, certified before the rounding to A's dtype.
    The bound holds against the float64 truth and, for float32, stays at a few eps32 (cond 100)."""
    A = conditioned_matrices(37, n, 100.0, dtype, seed=n)
    A[5] = 0.0  # singular for every n
    X, bound = torch.ops.neuinv.inverse_and_error_bound(A)
    good = torch.arange(37) != 5
    assert torch.isnan(X[5]).all() and torch.isinf(bound[5])
    assert true_residual(A[good], X[good]).max().item() <= residual_bound(A[good])
    truth = torch.linalg.inv(A[good].double())
    error = torch.linalg.matrix_norm(X[good].double() - truth) / torch.linalg.matrix_norm(truth)
    assert (error <= bound[good]).all()
    if dtype == torch.float32:
        assert bound[good].max().item() <= 2 * torch.finfo(torch.float32).eps


@pytest.mark.parametrize("n", [2, 3, 4])
def test_closed_forms_are_as_accurate_as_gauss_jordan_when_ill_conditioned(n):
    """float32 n <= 4 take the closed forms (adjugate / determinant in double), whose error grows like
    eps64 cond^(n-1); up to cond 1e6 their certified results stay at Gauss-Jordan's accuracy (a result that
    is not certified to float32 accuracy is redone by Gauss-Jordan) and within the bar set by torch.linalg.inv."""
    for cond in (1e4, 1e6):
        A = conditioned_matrices(203, n, cond, torch.float32, seed=n)
        X, bound = torch.ops.neuinv.inverse_and_error_bound(A)
        X_gauss_jordan, _ = torch.ops.neuinv.exact_inverse(A)
        assert torch.isfinite(bound).all()
        truth = true_residual(A, X)
        assert truth.max().item() <= residual_bound(A)
        assert truth.max().item() <= 2 * true_residual(A, X_gauss_jordan).max().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, dtype", cases())
def test_newton_schulz_kernel_matches_reference(n, dtype, device):
    """Above the rounding floor (tol = 64 eps) the stopping step is set by quadratic convergence, so kernel
    and reference stop at the same step, or one apart where a residual lands within rounding of the
    threshold. At tol = eps/4 matrices stop at the floor (r > r_prev / 2), after a number of extra steps
    decided by rounding noise: there the kernel and reference on the same CPU differ by 2 steps for 5-10% of
    seeds at n <= 5 (37 matrices each), so only accuracy is compared, and that the floor is not hit early."""
    A = conditioned_matrices(37, n, 100.0, dtype, seed=n).to(device)
    X0 = warm_start(A, 0.05, seed=2)
    eps = torch.finfo(dtype).eps
    stopping_steps = {}
    for tol in (64 * eps, eps / 4):
        args = (A, X0, tol, 1e-3, 10, True, 0.5)
        rules = NewtonSchulzRules(tol, 1e-3, 10, True, 0.5)
        X_ref, r_ref, done_ref, steps_ref = reference.newton_schulz_refine(A, X0, rules)
        X, r, done, steps = torch.ops.neuinv.newton_schulz(*args)
        assert done.all() and done_ref.all()
        rounding = working_precision_rounding(A, X).cpu().double()
        assert ((r.cpu().double() - true_residual(A, X)).abs() <= rounding).all()
        if tol > eps:
            norms = (torch.linalg.matrix_norm(A) * torch.linalg.matrix_norm(X)).cpu().double()
            assert (true_residual(A, X) <= tol * norms + rounding).all()
            assert (steps - steps_ref).abs().max() <= 1
        else:
            assert true_residual(A, X).max().item() <= residual_bound(A.cpu())
        stopping_steps[tol] = steps
    assert (stopping_steps[eps / 4] >= stopping_steps[64 * eps]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_singular_and_nan_members_are_flagged_alone(device):
    A = conditioned_matrices(9, 5, 10.0, torch.float64)
    A[2] = 1.0  # rank one
    A[6, 0, 0] = float("nan")
    A = A.to(device)
    X, pivots = torch.ops.neuinv.exact_inverse(A)
    assert pivots[2] > 0 and torch.isnan(X[2]).all()
    good = torch.tensor([i not in (2, 6) for i in range(9)])
    assert (pivots[good] == 0).all() and torch.allclose(X[good], torch.linalg.inv(A[good]), atol=1e-10)
    guess = torch.nan_to_num(warm_start(A, 1e-3))
    X_ns, r, done, _ = torch.ops.neuinv.newton_schulz(A, guess, 1e-16, 1e-6, 10, True, 0.5)
    assert not done[6] and not done[2] and done[good].all()
    backend = "cpp" if device == "cpu" else "cuda"
    Xb, info = neuinv.batched_inverse_ex(A, init=guess, backend=backend)
    assert info.certified.tolist() == good.tolist()


BAD_INPUT_SCRIPT = """
import sys, torch
from neuinv import extension
device, route = sys.argv[1:]
assert extension.load("cuda" if route == "cuda-implementation" else "cpu")
call = torch.ops.neuinv.exact_inverse
if route == "cuda-implementation":  # the CUDA operator's own checks, reached with CPU tensors
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    call = lambda A: torch.ops.neuinv.exact_inverse.default.redispatch(keys, A)
too_large = "must be on CUDA" if route == "cuda-implementation" else "n <= 64"
for bad, expected in ((torch.eye(65, device=device)[None], too_large),
                      (torch.eye(3, dtype=torch.complex64, device=device)[None], "float32 or float64"),
                      (torch.eye(3, device=device), "shape (b, n, n)")):
    try:
        call(bad)
    except RuntimeError as error:
        assert expected in str(error), str(error)
    else:
        raise AssertionError(f"no error for {expected}")
print("raised as expected")
"""


def raises_in_child(device, route):
    child = subprocess.run([sys.executable, "-c", BAD_INPUT_SCRIPT, device, route], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0 and "raised as expected" in child.stdout, (child.returncode, child.stderr[-2000:])


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input_and_bad_shapes(device):
    A = conditioned_matrices(6, 4, 10.0, torch.float64).to(device).mT
    X, _ = torch.ops.neuinv.exact_inverse(A)
    assert torch.allclose(X, torch.linalg.inv(A), atol=1e-12)
    X_empty, info_empty = torch.ops.neuinv.exact_inverse(torch.empty(0, 5, 5, device=device))
    assert X_empty.shape == (0, 5, 5) and info_empty.shape == (0,)
    # In a child process: on the H100 (torch 2.11) the CUDA operator's argument errors crashed the process
    # (SIGSEGV) instead of raising; isolated, the crash fails this test instead of the whole run.
    raises_in_child(device, "dispatcher")


def test_cuda_operators_raise_clear_errors_without_a_gpu():
    """The CUDA operators' argument checks run in host code before any launch, so CI (a CUDA build of torch,
    no GPU) can call them with CPU tensors by dispatching to their CUDA implementation directly."""
    if not extension.has_cuda_kernels():
        pytest.skip("the extension was built without its CUDA part")
    raises_in_child("cpu", "cuda-implementation")


def test_cpp_backend_end_to_end_and_auto_dispatch():
    for n in (2, 6, 16, 40):  # closed form, compact and one-matrix kernels
        A = conditioned_matrices(50, n, 100.0, torch.float32)
        assert resolve_backend("auto", A).name == "cpp"
        for kwargs in ({}, {"init": warm_start(A, 1e-2)}, {"backend": "cpp"}):
            X, info = neuinv.batched_inverse_ex(A, **kwargs)
            assert info.certified.all()
            assert true_residual(A, X).max().item() <= residual_bound(A)
    A = conditioned_matrices(5, 65, 100.0, torch.float64)
    assert resolve_backend("auto", A).name == "torch"  # above the kernels' n <= 64
    with pytest.raises(RuntimeError, match="backend 'cpp' was requested but cannot run this input: .*n <= 64"):
        neuinv.batched_inverse(A, backend="cpp")


@pytest.mark.cuda
@pytest.mark.skipif(not available_backends()["cuda"].available, reason=available_backends()["cuda"].reason)
@pytest.mark.parametrize("n", [3, 16, 40])
def test_cuda_backend_end_to_end_over_many_blocks(n):
    """A batch spanning many blocks with a partial last one; auto takes the CUDA kernels on CUDA input."""
    A = conditioned_matrices(1000 + 13, n, 100.0, torch.float32, seed=7).cuda()
    assert resolve_backend("auto", A).name == "cuda"
    for kwargs in ({}, {"init": warm_start(A, 1e-2)}, {"backend": "cuda"}):
        X, info = neuinv.batched_inverse_ex(A, **kwargs)
        assert info.certified.all()
        assert true_residual(A, X).max().item() <= residual_bound(A.cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op, args", [
    ("exact_inverse", lambda A: (A,)),
    ("residual_norm", lambda A: (A, torch.linalg.inv(A))),
    ("inverse_and_error_bound", lambda A: (A,)),
    ("error_bound", lambda A: (A, torch.linalg.inv(A))),
    ("newton_schulz", lambda A: (A, torch.linalg.inv(A), 1e-7, 1e-3, 5, True, 0.5)),
])
def test_opcheck(op, args, device):
    A = conditioned_matrices(4, 3, 10.0, torch.float64).to(device)
    torch.library.opcheck(getattr(torch.ops.neuinv, op).default, args(A), test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_traces_batched_inverse():
    A = conditioned_matrices(8, 4, 10.0, torch.float64)
    init = warm_start(A, 1e-2)
    compiled = torch.compile(lambda M, X0: torch.ops.neuinv.newton_schulz(M, X0, 1e-16, 1e-6, 10, True, 0.5)[0],
                             backend="eager", fullgraph=True)
    assert torch.allclose(compiled(A, init), torch.linalg.inv(A), atol=1e-12)
