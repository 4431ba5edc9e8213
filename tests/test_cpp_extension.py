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
from conftest import TRUTH_SLACK, accurate_inverse, conditioned_matrices, invert_operator, residual_bound, true_residual, warm_start

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
def test_exact_path_certifies_what_it_returns(n, dtype, device):
    """The exact path of neuinv::invert (Gauss-Jordan in double, certified before the rounding to A's dtype, the
    contract in neuinv.rules): a singular member gets NaN and +inf alone; the others are as accurate as
    torch.linalg.inv, their bounds hold against the float64 truth and, for float32, stay at a few eps32 (cond 100)."""
    A = conditioned_matrices(37, n, 100.0, dtype, seed=n)
    A[5] = 0.0  # singular for every n
    X, certified, bound, iterations, fallback = invert_operator(A.to(device))
    X, certified, bound = X.cpu(), certified.cpu(), bound.cpu()
    good = torch.arange(37) != 5
    assert torch.isnan(X[5]).all() and torch.isinf(bound[5]) and not certified[5]
    assert certified[good].all() and fallback.all() and (iterations == 0).all()
    assert true_residual(A[good], X[good]).max().item() <= residual_bound(A[good])
    truth = accurate_inverse(A[good])
    error = torch.linalg.matrix_norm(X[good].double() - truth) / torch.linalg.matrix_norm(truth)
    assert (error <= bound[good] + TRUTH_SLACK).all()
    if dtype == torch.float32:
        assert bound[good].max().item() <= 2 * torch.finfo(torch.float32).eps


@pytest.mark.parametrize("n", [2, 3, 4])
def test_closed_forms_are_as_accurate_as_lu_when_ill_conditioned(n):
    """float32 n <= 4 take the closed forms (adjugate / determinant in double), whose error grows like
    eps64 cond^(n-1); up to cond 1e6 their certified results (a result not certified to float32 accuracy is
    redone by Gauss-Jordan) stay within the bar set by torch.linalg.inv and its LU."""
    for cond in (1e4, 1e6):
        A = conditioned_matrices(203, n, cond, torch.float32, seed=n)
        X, certified, bound, _, _ = invert_operator(A)
        assert certified.all() and torch.isfinite(bound).all()
        truth = true_residual(A, X)
        assert truth.max().item() <= residual_bound(A)
        assert truth.max().item() <= 2 * true_residual(A, torch.linalg.inv(A)).max().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, dtype", cases())
def test_newton_schulz_matches_reference(n, dtype, device):
    """Newton-Schulz inside neuinv::invert against reference.newton_schulz_refine. Above the rounding floor
    (tol = 64 eps) the stopping step is set by quadratic convergence, so kernel and reference stop at the same
    step, or one apart where a residual lands within rounding of the threshold; the refined X is kept (no
    fallback) and meets tol. At tol = eps/4 matrices stop at the floor (r > r_prev / 2) after a number of extra
    steps decided by rounding noise, so only accuracy is compared, and that the floor is not hit early."""
    A = conditioned_matrices(37, n, 100.0, dtype, seed=n).to(device)
    X0 = warm_start(A, 0.05, seed=2)
    eps = torch.finfo(dtype).eps
    stopping_steps = {}
    for tol in (64 * eps, eps / 4):
        rules = NewtonSchulzRules(tol, 1e-3, 10, True, 0.5)
        _, _, done_ref, steps_ref = reference.newton_schulz_refine(A, X0, rules)
        X, certified, _, steps, fallback = invert_operator(A, X0, tol=tol)
        assert done_ref.all() and certified.all() and not fallback.any()
        rounding = working_precision_rounding(A, X).cpu().double()
        if tol > eps:
            norms = (torch.linalg.matrix_norm(A) * torch.linalg.matrix_norm(X)).cpu().double()
            assert (true_residual(A, X) <= tol * norms + rounding).all()
            assert (steps.cpu() - steps_ref.cpu()).abs().max() <= 1
        else:
            assert true_residual(A, X).max().item() <= residual_bound(A.cpu())
        stopping_steps[tol] = steps
    assert (stopping_steps[eps / 4] >= stopping_steps[64 * eps]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [3, 5, 12])
def test_singular_and_nan_members_are_flagged_alone(device, n):
    """Exact path, Newton-Schulz from a guess, and a guess used for some matrices only (use_guess): a rank-one
    member and one with a NaN entry are refused alone, in packs (n <= 8) and one matrix at a time."""
    A = conditioned_matrices(19, n, 10.0, torch.float64)
    A[2] = 1.0  # rank one
    A[6, 0, 0] = float("nan")
    A = A.to(device)
    good = torch.tensor([i not in (2, 6) for i in range(19)], device=device)
    guess = torch.nan_to_num(warm_start(A, 1e-3))
    use_guess = torch.arange(19, device=device) % 3 != 0
    for X0, use in ((None, None), (guess, None), (guess, use_guess)):
        X, certified, bound, iterations, fallback = invert_operator(A, X0, use)
        assert certified.tolist() == good.tolist()
        assert torch.isnan(X[~good]).all() and torch.isinf(bound[~good]).all()
        assert torch.allclose(X[good], torch.linalg.inv(A[good]), atol=1e-10)
        if X0 is not None:
            refined = good if use is None else good & use
            assert not fallback[refined].any() and (iterations[refined] > 0).all()
            assert fallback[~refined].all()
    backend = "cpp" if device == "cpu" else "cuda"
    Xb, info = neuinv.batched_inverse_ex(A, init=guess, backend=backend)
    assert info.certified.tolist() == good.tolist()


@pytest.mark.parametrize("n", [3, 8, 16])
def test_pack_lanes_are_independent(n):
    """A matrix gets the same bits wherever it sits in the batch: in a full pack, a partial last pack, or next to
    singular, NaN and badly conditioned neighbours."""
    A = conditioned_matrices(21, n, 1e6, torch.float64, seed=n)
    A[3] = 0.0
    A[4, 1, 1] = float("nan")
    for X0 in (None, warm_start(A, 1e-3)):
        whole = invert_operator(A, X0)
        for m in range(A.shape[0]):
            alone = invert_operator(A[m:m + 1], None if X0 is None else X0[m:m + 1])
            for together, single in zip(whole, alone):
                assert torch.equal(together[m:m + 1].nan_to_num(7.0), single.nan_to_num(7.0)), (n, m)


BAD_INPUT_SCRIPT = """
import sys, torch
from neuinv import extension
device, route = sys.argv[1:]
assert extension.load("cuda" if route == "cuda-implementation" else "cpu")
arguments = (None, None, False, 1e-16, 1e-3, 10, 0.5, 1.0, False)
call = lambda A: torch.ops.neuinv.invert(A, *arguments)
if route == "cuda-implementation":  # the CUDA operator's own checks, reached with CPU tensors
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    call = lambda A: torch.ops.neuinv.invert.default.redispatch(keys, A, *arguments)
too_large = "must be on CUDA" if route == "cuda-implementation" else "1 <= n <= 64"
for bad, expected in ((torch.eye(65, device=device)[None], too_large),
                      (torch.eye(3, dtype=torch.complex64, device=device)[None], "float32 or float64"),
                      (torch.ones(3, device=device), "shape (*, n, n)")):
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
    X = invert_operator(A)[0]
    assert torch.allclose(X, torch.linalg.inv(A), atol=1e-12)
    X_empty, certified_empty, *_ = invert_operator(torch.empty(0, 5, 5, device=device))
    assert X_empty.shape == (0, 5, 5) and certified_empty.shape == (0,)
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
    for n in (2, 6, 16, 40):  # closed form, packs and one matrix at a time
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
@pytest.mark.parametrize("arguments", [
    lambda A: (A, None, None, False, 1e-16, 1e-3, 10, 0.5, 1.0, False),
    lambda A: (A, torch.linalg.inv(A), None, True, 1e-7, 1e-3, 5, 0.5, 1.0, False),
    lambda A: (A, torch.linalg.inv(A), torch.tensor([True, False, True, True], device=A.device), True, 1e-7, 1e-3,
               5, 0.5, 1e-6, True),
], ids=["exact", "newton-schulz", "use-guess-positive-definite"])
def test_opcheck(arguments, device):
    A = conditioned_matrices(4, 3, 10.0, torch.float64).to(device)
    A = A @ A.mT
    torch.library.opcheck(torch.ops.neuinv.invert.default, arguments(A), test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_traces_the_operator():
    A = conditioned_matrices(8, 4, 10.0, torch.float64)
    init = warm_start(A, 1e-2)
    compiled = torch.compile(lambda M, X0: invert_operator(M, X0)[0], backend="eager", fullgraph=True)
    assert torch.allclose(compiled(A, init), torch.linalg.inv(A), atol=1e-12)
