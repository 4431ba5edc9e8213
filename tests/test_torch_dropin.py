"""neuinv as a drop-in for torch.linalg.inv / inv_ex / solve / solve_ex (issue #23, items 2 and 8).

- PyTorch's own OpInfo samples of the four functions (``op_db``), each also as the views torch's tests apply
  (noncontiguous, transposed in memory, negative bit, conjugate bit, both bits), through neuinv on the torch backend
  and the default one: the shape, dtype and result names of torch's, values within 4x of torch's error against a
  float64 / complex128 truth, the certificate never below the error, gradients within 4x of torch's; float16 and
  bfloat16 (which torch refuses) on the same shapes, n = 0 included; ``left=False``.
- Bad arguments raise an instance of the class torch raises for the same call (RuntimeError) and of neuinv's
  documented one (ValueError / TypeError); ``left`` and ``check_errors`` as torch's.
- out= that overlaps an input or another output through another storage (two tensors over one numpy buffer) is
  refused before anything is written.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import neuinv
from neuinv.errors import ArgumentDtypeError, ArgumentError, ArgumentValueError

try:  # not part of torch's API: needs expecttest, and may change between releases
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_utils import noncontiguous_like
except Exception as unavailable:  # noqa: BLE001 (any failure to import means: no OpInfo samples here)
    op_db, OPINFO_MISSING = None, f"torch.testing._internal is unavailable: {unavailable!r}"
else:
    OPINFO_MISSING = None

pytestmark = [pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

NEUINV = {"linalg.inv": neuinv.batched_inverse, "linalg.inv_ex": neuinv.batched_inverse_ex,
          "linalg.solve": neuinv.batched_solve, "linalg.solve_ex": neuinv.batched_solve_ex}
RESULT_NAMES = {"linalg.inv_ex": ("inverse", "info"), "linalg.solve_ex": ("result", "info")}
DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)
WIDE = {torch.float32: torch.float64, torch.float64: torch.float64, torch.complex64: torch.complex128,
        torch.complex128: torch.complex128, torch.float16: torch.float64, torch.bfloat16: torch.float64}
BACKENDS = ("torch", "auto")
"""The reference backend and the default one (on the CPU: the compiled kernels)."""


def opinfo(name):
    if op_db is None:
        pytest.skip(OPINFO_MISSING)
    return next(op for op in op_db if op.name == name and op.variant_test_name == "")


def opinfo_samples(name, dtype):
    """(A, B or None, kwargs) of torch's OpInfo samples of `name` (the same seed every run)."""
    torch.manual_seed(0)
    samples = []
    for sample in opinfo(name).sample_inputs("cpu", dtype, requires_grad=False):
        B = sample.args[0] if sample.args else None
        samples.append((sample.input.detach(), None if B is None else B.detach(), dict(sample.kwargs)))
    return samples


def views(dtype):
    """name -> make(t) = (leaf, view): view(leaf) holds t's values; a fresh leaf so gradients can be taken."""
    kinds = {"plain": lambda t: (t.clone(), lambda leaf: leaf),
             "noncontiguous": lambda t: (noncontiguous_like(t), lambda leaf: leaf),
             "transposed": lambda t: ((t.mT.contiguous(), lambda leaf: leaf.mT) if t.dim() >= 2 else
                                      (t.clone(), lambda leaf: leaf)),
             "negative": lambda t: (-t, torch._neg_view)}
    if dtype.is_complex:
        kinds["conjugate"] = lambda t: (t.conj().resolve_conj(), torch.conj)
        kinds["negative_conjugate"] = lambda t: ((-t).conj().resolve_conj(),
                                                 lambda leaf: torch._neg_view(leaf.conj()))
    return kinds


def relative_errors(X, truth, matrix_dims):
    """||X - truth|| / ||truth|| (Frobenius) of each system: the last `matrix_dims` dimensions together."""
    difference = (X.detach().to(truth.dtype) - truth).flatten(-matrix_dims)
    return torch.linalg.vector_norm(difference, dim=-1) / torch.linalg.vector_norm(truth.flatten(-matrix_dims), dim=-1)


def is_vector(A, B):
    """torch.linalg.solve's rule: B is a batch of vectors when it is 1-D or has shape A.shape[:-1]."""
    return B.dim() == 1 or (B.dim() == A.dim() - 1 and B.shape == A.shape[:-1])


def condition(A):
    """The 2-norm condition number of each matrix of A, in float64 / complex128."""
    return torch.linalg.cond(A.detach().to(WIDE[A.dtype]))


def check_call(name, A, B, kwargs, view, backend, with_gradients):
    """One sample as one view through torch and neuinv: see the module docstring. Returns nothing; asserts."""
    dtype, n = A.dtype, A.shape[-1]
    where = (f"{name} {view} {dtype} backend={backend} A{tuple(A.shape)} "
             f"B{None if B is None else tuple(B.shape)} {kwargs}")
    make = views(dtype)[view]
    operands = [A] if B is None else [A, B]
    leaves, viewers = zip(*(make(t) for t in operands))
    leaves = [leaf.detach().requires_grad_(with_gradients) for leaf in leaves]
    inputs = [viewer(leaf) for viewer, leaf in zip(viewers, leaves)]
    for given, original in zip(inputs, operands):
        assert torch.equal(given.detach().resolve_conj().resolve_neg(), original), where
    if view in ("negative", "conjugate", "negative_conjugate"):
        assert inputs[0].is_neg() or inputs[0].is_conj(), where
    bits = [(given.is_conj(), given.is_neg()) for given in inputs]

    expected = opinfo(name).op(*inputs, **kwargs)
    got = NEUINV[name](*inputs, backend=backend, **kwargs)
    assert [(given.is_conj(), given.is_neg()) for given in inputs] == bits, where  # the user's views untouched
    assert all(torch.equal(leaf.detach(), make(t)[0]) for leaf, t in zip(leaves, operands)), where

    if name in RESULT_NAMES:
        result_name, info_name = RESULT_NAMES[name]
        assert isinstance(got, tuple) and len(got) == 2, where
        assert getattr(got, result_name) is got[0] and getattr(got, info_name) is got[1], where
        X, info = got
        X_expected, torch_info = expected
        assert info.certified.shape == torch_info.shape, where
        assert bool(info.certified[torch_info == 0].all()), where
        bound = info.error_bound
    else:
        X, X_expected, bound = got, expected, None
    assert isinstance(X, torch.Tensor), where
    assert (X.shape, X.dtype, X.device) == (X_expected.shape, X_expected.dtype, X_expected.device), where
    assert not X.is_conj() and not X.is_neg(), where

    wide = [t.to(WIDE[dtype]) for t in operands]
    truth = torch.linalg.inv(wide[0]) if B is None else torch.linalg.solve(*wide, **kwargs)
    matrix_dims = 1 if B is not None and is_vector(A, B) else 2
    if X.numel():
        error = relative_errors(X, truth, matrix_dims)
        torch_error = relative_errors(X_expected, truth, matrix_dims)
        kappa = torch.broadcast_to(condition(A), error.shape)
        floor = n * torch.finfo(dtype).eps * kappa  # where torch is the truth (float64 input), its error is 0
        limit = 4 * torch.maximum(torch_error, floor)
        assert bool((error <= limit).all()), (where, error.max().item(), limit.min().item())
        if bound is not None:
            truth_error = 4 * n * torch.finfo(torch.float64).eps * kappa  # the float64 truth's own error
            assert bool((error <= bound.expand(error.shape) + truth_error).all()), (where, error, bound)

    if not with_gradients:
        return
    weights = torch.randn(X.shape, dtype=dtype, generator=torch.Generator().manual_seed(7))

    def gradients(output, wrt):
        loss = (output * weights.to(output.dtype)).real.sum()
        return torch.autograd.grad(loss, wrt, allow_unused=True)

    got_grads = gradients(X, leaves)
    expected_grads = gradients(X_expected, leaves)
    wide_leaves = [leaf.detach().to(WIDE[dtype]).requires_grad_() for leaf in leaves]
    wide_output = opinfo(name).op(*[viewer(leaf) for viewer, leaf in zip(viewers, wide_leaves)], **kwargs)
    truth_grads = gradients(wide_output[0] if name in RESULT_NAMES else wide_output, wide_leaves)
    for k, (g, g_torch, g_truth) in enumerate(zip(got_grads, expected_grads, truth_grads)):
        assert g.shape == leaves[k].shape and g.dtype == leaves[k].dtype, where
        if not g.numel():
            continue
        scale = torch.linalg.vector_norm(g_truth)
        if scale == 0:
            assert bool((g == 0).all()), where
            continue
        error = torch.linalg.vector_norm(g.to(g_truth.dtype) - g_truth) / scale
        torch_error = torch.linalg.vector_norm(g_torch.to(g_truth.dtype) - g_truth) / scale
        floor = n * torch.finfo(dtype).eps * float(condition(A).max()) ** 2
        assert error <= 4 * max(float(torch_error), floor), (where, f"gradient {k}", float(error), float(torch_error))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(NEUINV))
def test_opinfo_samples_and_their_views(name, dtype):
    """Every OpInfo sample of `name`, as every view, through both backends; gradients on the default backend
    (and on every view of float64 / complex128 on both)."""
    for A, B, kwargs in opinfo_samples(name, dtype):
        for view in views(dtype):
            for backend in BACKENDS:
                with_gradients = backend == "auto" or dtype in (torch.float64, torch.complex128)
                check_call(name, A, B, kwargs, view, backend, with_gradients)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["linalg.solve", "linalg.solve_ex"])
def test_opinfo_solve_samples_with_left_false(name, dtype):
    """The OpInfo samples of solve with B's matrices transposed, solved from the right (X A = B), as every view."""
    for A, B, kwargs in opinfo_samples(name, dtype):
        if is_vector(A, B):
            continue  # refused with left=False, as by torch (test_left_false_refuses_vectors_as_torch_does)
        for view in views(dtype):
            check_call(name, A, B.mT.contiguous(), dict(kwargs, left=False), view, "auto", with_gradients=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["linalg.inv_ex", "linalg.solve_ex"])
def test_opinfo_shapes_in_half_precision(name, dtype):
    """float16 / bfloat16, which torch.linalg refuses: the OpInfo samples rounded to them, n = 0 included, give
    X of torch's shape in float32 (the shape rule) and the input dtype, certified, within the bound of the truth."""
    for A32, B32, kwargs in opinfo_samples(name, torch.float32):
        A = A32.to(dtype)
        B = None if B32 is None else B32.to(dtype)
        for view in ("plain", "negative", "transposed"):
            leaves = [views(dtype)[view](t) for t in ([A] if B is None else [A, B])]
            inputs = [viewer(leaf) for leaf, viewer in leaves]
            X, info = NEUINV[name](*inputs, **kwargs)
            shape = opinfo(name).op(*[t.float() for t in inputs], **kwargs)[0].shape
            assert (X.shape, X.dtype) == (shape, dtype), (name, view, A.shape)
            assert bool(info.certified.all()), (name, view, A.shape)
            if not X.numel():
                continue
            wide = [t.double() for t in ([A] if B is None else [A, B])]
            truth = torch.linalg.inv(wide[0]) if B is None else torch.linalg.solve(*wide)
            matrix_dims = 1 if B is not None and is_vector(A, B) else 2
            error = relative_errors(X, truth, matrix_dims)
            truth_error = 4 * A.shape[-1] * torch.finfo(torch.float64).eps * torch.broadcast_to(condition(A),
                                                                                                 error.shape)
            assert bool((error <= info.error_bound.expand(error.shape) + truth_error).all()), (name, view, error)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_empty_matrices_in_every_dtype(dtype):
    """n = 0 (the half-precision path used to reshape 0 elements to (-1, 0, 0)), batches of them, solves."""
    for batch in ((), (3,), (2, 0)):
        A = torch.empty(*batch, 0, 0, dtype=dtype)
        X, info = neuinv.batched_inverse_ex(A)
        assert X.shape == A.shape and X.dtype == dtype and info.certified.shape == batch
        assert bool(info.certified.all()) and bool((info.error_bound == 0).all())
        assert neuinv.batched_inverse(A).shape == A.shape
        assert neuinv.batched_solve(A, torch.empty(*batch, 0, 2, dtype=dtype)).shape == (*batch, 0, 2)
        assert neuinv.batched_solve(A, torch.empty(*batch, 2, 0, dtype=dtype), left=False).shape == (*batch, 2, 0)


# ------------------------------------------------------------------------------------- views and gradients

def complex_systems(seed=0):
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(2, 3, 3, dtype=torch.complex128, generator=generator) + 3 * torch.eye(3)
    B = torch.randn(2, 3, 2, dtype=torch.complex128, generator=generator)
    return A, B


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_through_negative_and_conjugate_views(backend):
    """Gradients of solve and inverse through neg / conj views of A and B (of their own, or both) are the true
    derivatives (finite differences), from the left and from the right."""
    A, B = complex_systems()
    A, B = A.requires_grad_(), B.requires_grad_()

    def solve(A, B):
        return neuinv.batched_solve(torch._neg_view(A.conj()), B.conj(), backend=backend)

    def solve_right(A, B):
        return neuinv.batched_solve(A.conj(), torch._neg_view(B.mT), left=False, backend=backend)

    def solve_ex_inverse(A, B):
        X, info = neuinv.batched_solve_ex(torch._neg_view(A), B, backend=backend, return_inverse=True)
        return X, info.inverse

    def inverse(A):
        return neuinv.batched_inverse(torch._neg_view(A.conj()), backend=backend)

    for function in (solve, solve_right, solve_ex_inverse):
        assert torch.autograd.gradcheck(function, (A, B))
    assert torch.autograd.gradcheck(inverse, (A,))


def test_views_are_resolved_once_without_touching_the_users_tensors():
    """A neg/conj view in gives the same bits out as the resolved tensor in; the view keeps its bits and values."""
    A, B = complex_systems(1)
    A_view, B_view = torch._neg_view((-A).conj().resolve_conj().conj()), B.conj().resolve_conj().conj()
    assert A_view.is_neg() and A_view.is_conj() and B_view.is_conj()
    for function, args in ((neuinv.batched_solve, (A_view, B_view)), (neuinv.batched_inverse, (A_view,))):
        resolved = [t.resolve_conj().resolve_neg() for t in args]
        assert torch.equal(function(*args), function(*resolved))
    assert A_view.is_neg() and A_view.is_conj() and B_view.is_conj()
    assert torch.equal(A_view.resolve_conj().resolve_neg(), A) and torch.equal(B_view.resolve_conj(), B)
    init = neuinv.batched_inverse(A).conj().resolve_conj().conj()  # a conjugate view of A^-1 as the warm start
    X, info = neuinv.batched_inverse_ex(A, init=init)
    assert torch.equal(init.resolve_conj(), neuinv.batched_inverse(A)) and bool(info.certified.all())


# -------------------------------------------------------------------------------------------- left=False

def test_left_false_solves_from_the_right_with_broadcasting_out_and_warm_start():
    A, B = complex_systems(2)
    B_right = torch.randn(4, 1, 5, 3, dtype=torch.complex128, generator=torch.Generator().manual_seed(3))
    X, info = neuinv.batched_solve_ex(A, B_right, left=False, return_inverse=True)
    expected = torch.linalg.solve(A, B_right, left=False)
    assert X.shape == expected.shape == (4, 2, 5, 3)
    assert torch.allclose(X @ A, B_right.expand(4, 2, 5, 3), atol=1e-12)
    assert bool(info.certified.all()) and info.certified.shape == (4, 2)
    assert torch.allclose(info.inverse, torch.linalg.inv(A), atol=1e-13)  # A's inverse, not A^T's
    assert relative_errors(X, expected, 2).max() <= 4 * relative_errors(expected, expected, 2).max() + 1e-14
    warm, warm_info = neuinv.batched_solve_ex(A, B_right, left=False, init=info.inverse, method="newton_schulz")
    assert bool(warm_info.certified.all()) and int(warm_info.iterations.max()) <= 2
    out = (torch.empty_like(X), neuinv.SolveInfo(*(torch.empty_like(field) for field in info)))
    result = neuinv.batched_solve_ex(A, B_right, left=False, out=out, return_inverse=True)
    assert result.result is out[0] and torch.equal(out[0], X)
    single = torch.empty(4, 2, 5, 3, dtype=torch.complex128)
    assert neuinv.batched_solve(A, B_right, left=False, out=single) is single and torch.equal(single, X)


def test_left_false_refuses_vectors_as_torch_does():
    """torch refuses a batch of vectors B with left=False (for n = 1 too); a row (1, n) is a matrix and solves."""
    for A, b in ((torch.eye(1), torch.ones(1)), (torch.eye(3), torch.ones(3)), (torch.eye(3).expand(2, 3, 3),
                                                                               torch.ones(2, 3))):
        with pytest.raises(RuntimeError):
            torch.linalg.solve(A, b, left=False)
        with pytest.raises(ArgumentValueError, match=r"not a batch of vectors.*left=False"):
            neuinv.batched_solve(A, b, left=False)
    A, row = 2 * torch.eye(3), torch.ones(1, 3)
    assert torch.equal(neuinv.batched_solve(A, row, left=False), torch.linalg.solve(A, row, left=False))
    with pytest.raises(ArgumentValueError, match=r"\(\*, k, 3\).*left=False"):
        neuinv.batched_solve_ex(A, torch.ones(3, 2), left=False)


# ------------------------------------------------------------------------------- check_errors, result names

def test_check_errors_raises_what_the_function_without_ex_raises():
    A = torch.eye(3).repeat(3, 1, 1)
    A[1] = 0
    B = torch.ones(3, 3, 2)
    for ex, plain, args in ((neuinv.batched_inverse_ex, neuinv.batched_inverse, (A,)),
                            (neuinv.batched_solve_ex, neuinv.batched_solve, (A, B))):
        with pytest.raises(torch.linalg.LinAlgError) as from_plain:
            plain(*args)
        with pytest.raises(torch.linalg.LinAlgError) as from_ex:
            ex(*args, check_errors=True)
        assert str(from_ex.value) == str(from_plain.value) and "A[1]" in str(from_ex.value)
        X, info = ex(*args, check_errors=False)
        assert info.certified.tolist() == [True, False, True]
        assert ex(*(t[::2] for t in args), check_errors=True).info.certified.all()
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.inv_ex(A, check_errors=True)  # torch raises there too
    poisoned = A.clone()
    poisoned[1] = math.nan
    with pytest.raises(ValueError, match=r"A\[1\] contains NaN"):
        neuinv.batched_inverse_ex(poisoned, check_errors=True)
    out = (torch.zeros(3, 3, 3), inverse_info_out(3))
    with pytest.raises(torch.linalg.LinAlgError):
        neuinv.batched_inverse_ex(A, check_errors=True, out=out)
    assert out[1].certified.tolist() == [True, False, True] and out[0][1].isnan().all()  # written, then raised


def test_results_have_torchs_names_and_still_unpack():
    A, B = complex_systems(4)
    result = neuinv.batched_inverse_ex(A)
    torch_result = torch.linalg.inv_ex(A)
    assert isinstance(result, neuinv.InverseResult) and result._fields == ("inverse", "info")
    assert torch_result.inverse is torch_result[0] and torch_result.info is torch_result[1]
    X, info = result
    assert X is result.inverse and info is result.info and isinstance(info, neuinv.InverseInfo)
    assert (info.certified == (torch_result.info == 0)).all()
    solved = neuinv.batched_solve_ex(A, B)
    torch_solved = torch.linalg.solve_ex(A, B)
    assert isinstance(solved, neuinv.SolveResult) and solved._fields == ("result", "info")
    assert torch_solved.result is torch_solved[0] and torch_solved.info is torch_solved[1]
    assert solved.result is solved[0] and isinstance(solved.info, neuinv.SolveInfo)
    assert solved.info.inverse is None and neuinv.batched_solve_ex(A, B, return_inverse=True).info.inverse.shape == A.shape


# ----------------------------------------------------------------------------------------- argument errors

def bad_calls():
    """(id, torch call, neuinv call, the builtin class neuinv documents): the same bad arguments to both."""
    A, B = torch.eye(3), torch.ones(3, 2)
    integer = torch.eye(3, dtype=torch.int64)
    meta = torch.ones(3, 2, device="meta")
    return [
        ("A 1-D", lambda: torch.linalg.inv(torch.ones(3)), lambda: neuinv.batched_inverse(torch.ones(3)), ValueError),
        ("A not square", lambda: torch.linalg.inv_ex(torch.ones(3, 4)),
         lambda: neuinv.batched_inverse_ex(torch.ones(3, 4)), ValueError),
        ("A integer", lambda: torch.linalg.inv(integer), lambda: neuinv.batched_inverse(integer), TypeError),
        ("A not a tensor", lambda: torch.linalg.inv([[1.0]]), lambda: neuinv.batched_inverse([[1.0]]), TypeError),
        ("B of another size", lambda: torch.linalg.solve(A, torch.ones(4)),
         lambda: neuinv.batched_solve(A, torch.ones(4)), ValueError),
        ("B of another dtype", lambda: torch.linalg.solve(A, B.double()),
         lambda: neuinv.batched_solve(A, B.double()), TypeError),
        # torch hands a meta B's pointer to LAPACK (an assertion, or no error at all: undefined); on two real
        # devices it raises RuntimeError ("Expected all tensors to be on the same device"), the class used here.
        ("B on another device", None, lambda: neuinv.batched_solve(A, meta), ValueError),
        ("batch not broadcasting", lambda: torch.linalg.solve_ex(A.expand(2, 3, 3), torch.ones(3, 3, 2)),
         lambda: neuinv.batched_solve_ex(A.expand(2, 3, 3), torch.ones(3, 3, 2)), ValueError),
        ("B not a tensor", lambda: torch.linalg.solve(A, [1.0, 2.0, 3.0]),
         lambda: neuinv.batched_solve(A, [1.0, 2.0, 3.0]), TypeError),
        ("left not a bool", lambda: torch.linalg.solve(A, B, left=1), lambda: neuinv.batched_solve(A, B, left=1),
         TypeError),
        ("check_errors not a bool", lambda: torch.linalg.inv_ex(A, check_errors=1),
         lambda: neuinv.batched_inverse_ex(A, check_errors=1), TypeError),
        ("out of another dtype", lambda: torch.linalg.inv(A, out=torch.empty(3, 3, dtype=torch.float64)),
         lambda: neuinv.batched_inverse(A, out=torch.empty(3, 3, dtype=torch.float64)), TypeError),
        ("out on another device", lambda: torch.linalg.inv(A, out=torch.empty(3, 3, device="meta")),
         lambda: neuinv.batched_inverse(A, out=torch.empty(3, 3, device="meta")), ValueError),
        ("out expanded", lambda: torch.linalg.solve(A, B, out=torch.zeros(3, 1).expand(3, 2)),
         lambda: neuinv.batched_solve(A, B, out=torch.zeros(3, 1).expand(3, 2)), ValueError),
    ]


@pytest.mark.parametrize("case", range(len(bad_calls())), ids=[case[0] for case in bad_calls()])
def test_argument_errors_are_instances_of_torchs_class(case):
    _, torch_call, neuinv_call, documented = bad_calls()[case]
    torch_class = RuntimeError
    if torch_call is not None:
        with pytest.raises((TypeError, RuntimeError)) as from_torch:
            torch_call()
        torch_class = TypeError if isinstance(from_torch.value, TypeError) else RuntimeError
    with pytest.raises(Exception) as from_neuinv:
        neuinv_call()
    assert isinstance(from_neuinv.value, torch_class), (from_torch.value, from_neuinv.value)
    assert isinstance(from_neuinv.value, documented)
    if torch_class is RuntimeError:
        assert isinstance(from_neuinv.value, ArgumentError)
        assert isinstance(from_neuinv.value, ArgumentValueError if documented is ValueError else ArgumentDtypeError)
    assert "neuinv" in type(from_neuinv.value).__module__ or type(from_neuinv.value) is TypeError


def test_the_error_classes():
    assert issubclass(ArgumentValueError, ValueError) and issubclass(ArgumentValueError, RuntimeError)
    assert issubclass(ArgumentDtypeError, TypeError) and issubclass(ArgumentDtypeError, RuntimeError)
    assert not issubclass(ArgumentValueError, TypeError) and not issubclass(ArgumentDtypeError, ValueError)
    for bad in (dict(method="nonsense"), dict(tol=-1.0), dict(max_iter=-1), dict(max_error=2.0),
                dict(assume_a="sym"), dict(backend="tpu"), dict(init=torch.eye(2))):
        with pytest.raises(ArgumentValueError):
            neuinv.batched_inverse(torch.eye(3), **bad)
    with pytest.raises(ArgumentDtypeError):
        neuinv.batched_solve(torch.eye(3), torch.ones(3), init=torch.eye(3, dtype=torch.float64))


# --------------------------------------------------------------------------- out= overlap through storages

def over(buffer, start, shape):
    """A tensor over the elements of a numpy buffer from `start` on, of `shape`: a torch storage of its own."""
    return torch.from_numpy(buffer[start:start + math.prod(shape)].reshape(shape))


def invertible_into(tensor):
    """Writes a well-conditioned batch into `tensor` (in place) and returns a copy of it."""
    n = tensor.shape[-1]
    tensor.copy_(2 * torch.eye(n, dtype=tensor.dtype) + 0.1 * torch.ones(n, n, dtype=tensor.dtype))
    return tensor.clone()


def test_issue_reproducer_out_overlapping_A_through_another_storage():
    buffer = np.zeros(19)
    A = torch.from_numpy(buffer[:18].reshape(2, 3, 3))
    X = torch.from_numpy(buffer[1:19].reshape(2, 3, 3))
    assert A.untyped_storage().data_ptr() != X.untyped_storage().data_ptr()  # what the old check compared
    kept = invertible_into(A)
    for call in (lambda: neuinv.batched_inverse(A, out=X),
                 lambda: neuinv.batched_inverse_ex(A, out=(X, inverse_info_out(2))),
                 lambda: neuinv.batched_solve(A, torch.ones(2, 3, 3, dtype=torch.float64), out=X),
                 lambda: neuinv.batched_solve_ex(A, torch.ones(2, 3, 3, dtype=torch.float64),
                                                 out=(X, solve_info_out(A)))):
        with pytest.raises(ArgumentValueError, match="must not share memory"):
            call()
        assert torch.equal(A, kept)


def inverse_info_out(batch):
    return neuinv.InverseInfo(torch.zeros(batch, dtype=torch.bool), torch.zeros(batch, dtype=torch.float64),
                              torch.zeros(batch, dtype=torch.int32), torch.zeros(batch, dtype=torch.bool))


def solve_info_out(A, batch=None):
    """A SolveInfo to write into, without the inverse (as batched_solve_ex returns it by default)."""
    batch = A.shape[:-2] if batch is None else batch
    return neuinv.SolveInfo(torch.zeros(batch, dtype=torch.bool), torch.zeros(batch, dtype=torch.float64),
                            torch.zeros(A.shape[:-2], dtype=torch.int32), torch.zeros(A.shape[:-2], dtype=torch.bool),
                            None)


def overlap_cases():
    """(id, call(buffer) -> (A, call)): an output overlapping an input or another output, each a tensor over one
    numpy buffer of float64 with its own storage."""
    def inverse_X_over_init(buffer):
        A, init = torch.empty(2, 3, 3, dtype=torch.float64), over(buffer, 0, (2, 3, 3))
        invertible_into(A)
        init.copy_(torch.linalg.inv(A))
        X = over(buffer, 9, (2, 3, 3))
        return A, lambda: neuinv.batched_inverse(A, init=init, out=X)

    def inverse_error_bound_over_X(buffer):
        A = torch.empty(2, 3, 3, dtype=torch.float64)
        invertible_into(A)
        X = over(buffer, 0, (2, 3, 3))
        info = inverse_info_out(2)._replace(error_bound=over(buffer, 17, (2,)))
        return A, lambda: neuinv.batched_inverse_ex(A, out=(X, info))

    def inverse_fields_over_each_other(buffer):
        A = torch.empty(2, 3, 3, dtype=torch.float64)
        invertible_into(A)
        flags = buffer.view(np.bool_)
        info = inverse_info_out(2)._replace(certified=torch.from_numpy(flags[:2]),
                                            fallback=torch.from_numpy(flags[1:3]))
        return A, lambda: neuinv.batched_inverse_ex(A, out=(torch.empty_like(A), info))

    def solve_X_over_B(buffer):
        A, B = torch.empty(2, 3, 3, dtype=torch.float64), over(buffer, 0, (2, 3, 2))
        invertible_into(A)
        B.fill_(1.0)
        X = over(buffer, 1, (2, 3, 2))
        return A, lambda: neuinv.batched_solve(A, B, out=X)

    def solve_ex_X_over_A(buffer):
        A = over(buffer, 0, (2, 3, 3))
        invertible_into(A)
        X = over(buffer, 17, (2, 3))
        return A, lambda: neuinv.batched_solve_ex(A, torch.ones(2, 3, dtype=torch.float64),
                                                  out=(X, solve_info_out(A)))

    def solve_ex_inverse_over_X(buffer):
        A = torch.empty(2, 3, 3, dtype=torch.float64)
        invertible_into(A)
        X = over(buffer, 0, (2, 3, 2))
        info = solve_info_out(A)._replace(inverse=over(buffer, 11, (2, 3, 3)))
        return A, lambda: neuinv.batched_solve_ex(A, torch.ones(2, 3, 2, dtype=torch.float64), out=(X, info),
                                                  return_inverse=True)

    def solve_ex_error_bound_over_inverse(buffer):
        A = torch.empty(2, 3, 3, dtype=torch.float64)
        invertible_into(A)
        info = solve_info_out(A)._replace(inverse=over(buffer, 0, (2, 3, 3)),
                                          error_bound=over(buffer, 5, (2,)))
        return A, lambda: neuinv.batched_solve_ex(A, torch.ones(2, 3, 2, dtype=torch.float64), return_inverse=True,
                                                  out=(torch.empty(2, 3, 2, dtype=torch.float64), info))

    def solve_ex_X_over_init(buffer):
        A = torch.empty(2, 3, 3, dtype=torch.float64)
        invertible_into(A)
        init = over(buffer, 0, (2, 3, 3))
        init.copy_(torch.linalg.inv(A))
        X = over(buffer, 8, (2, 3, 2))
        return A, lambda: neuinv.batched_solve_ex(A, torch.ones(2, 3, 2, dtype=torch.float64), init=init,
                                                  out=(X, solve_info_out(A)))

    return {function.__name__: function for function in (
        inverse_X_over_init, inverse_error_bound_over_X, inverse_fields_over_each_other, solve_X_over_B,
        solve_ex_X_over_A, solve_ex_inverse_over_X, solve_ex_error_bound_over_inverse, solve_ex_X_over_init)}


@pytest.mark.parametrize("case", list(overlap_cases()))
def test_out_overlapping_through_another_storage_is_refused_before_writing(case):
    buffer = np.zeros(64)
    A, call = overlap_cases()[case](buffer)
    kept_A, kept_buffer = A.clone(), buffer.copy()
    with pytest.raises(ArgumentValueError, match="must not share memory"):
        call()
    assert torch.equal(A, kept_A) and np.array_equal(buffer, kept_buffer)


def test_adjacent_slices_of_one_buffer_are_accepted():
    """No false alarm: X right after A in the same numpy buffer (touching, not overlapping) is written."""
    buffer = np.zeros(36)
    A, X = torch.from_numpy(buffer[:18].reshape(2, 3, 3)), torch.from_numpy(buffer[18:].reshape(2, 3, 3))
    kept = invertible_into(A)
    assert neuinv.batched_inverse(A, out=X) is X
    assert torch.equal(A, kept) and torch.allclose(X, torch.linalg.inv(kept), atol=1e-15)
    interleaved = torch.zeros(2, 3, 6, dtype=torch.float64)
    A_even, X_odd = interleaved[..., ::2], interleaved[..., 1::2]
    invertible_into(A_even)
    with pytest.raises(ArgumentValueError, match="must not share memory"):  # conservative: byte ranges overlap
        neuinv.batched_inverse(A_even, out=X_odd)
