"""out= written in place: the operators ``neuinv::invert.out`` (cpp, cuda) and ``neuinv_triton::invert_out`` write
into the caller's tensors exactly what ``invert`` returns, refuse outputs they cannot write (named), and
``batched_inverse(_ex)(..., out=)`` hands contiguous outputs to them, on every backend, with the same results as
a call without out (second stage, chunks, raises and non-contiguous outputs included)."""
from __future__ import annotations

import math

import pytest
import torch

import neuinv
from neuinv import backends, pipeline
from neuinv.inverse import INFO_DTYPES, InverseInfo
from neuinv.rules import NEWTON_SCHULZ_ACCEPT, NewtonSchulzRules, default_tol
from neuinv.testing import conditioned_matrices, warm_start

AVAILABLE = [name for name, status in neuinv.available_backends().items() if status.available]
DEVICE = {"cpp": "cpu", "cuda": "cuda", "torch": "cpu", "triton": "cuda" if torch.cuda.is_available() else "cpu"}
OUT_OPERATORS = [name for name in ("cpp", "cuda", "triton") if name in AVAILABLE]
GARBAGE = {torch.bool: True, torch.float64: -7.0, torch.int32: -7}


def _arguments(A, X0, use_guess, refine, positive_definite=False, max_error=1.0):
    rules = NewtonSchulzRules(default_tol(A.dtype), NEWTON_SCHULZ_ACCEPT[A.dtype], 10, X0 is not None)
    return (A, X0, use_guess, refine, rules.tol, rules.accept, rules.max_iter, rules.guard, max_error,
            positive_definite)


def _garbage_outputs(A):
    """Outputs for A filled with values no result has (so that an element left unwritten shows)."""
    batch = A.shape[:-2]
    return (torch.full_like(A, 7.0, memory_format=torch.contiguous_format),
            *(torch.full(batch, GARBAGE[dtype], dtype=dtype, device=A.device) for dtype in INFO_DTYPES))


def _invert_out(backend, args, outputs):
    if backend == "triton":
        from neuinv.kernels import invert
        return invert.invert_out(*args, *outputs)
    X, certified, bound, iterations, fallback = outputs
    return torch.ops.neuinv.invert.out(*args, X=X, certified=certified, error_bound=bound, iterations=iterations,
                                       fallback=fallback)


def _invert(backend, args):
    if backend == "triton":
        from neuinv.kernels import invert
        return invert.invert(*args)
    return torch.ops.neuinv.invert(*args)


def _same(results, expected):
    return all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(results, expected))


@pytest.mark.parametrize("backend", OUT_OPERATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [1, 3, 4, 8, 13])
def test_out_operator_writes_what_invert_returns(backend, dtype, n):
    """Every element of every output written, bit for bit what invert returns: exact path, Cholesky, scaled
    transpose, guesses and masked guesses, a singular and a NaN member, a strided A; the inputs unchanged."""
    A = conditioned_matrices(11, n, 100.0, dtype, seed=n).to(DEVICE[backend])
    A[3] = 0.0
    A[7, 0, 0] = math.nan
    spd = conditioned_matrices(11, n, 100.0, dtype, symmetric=True, seed=n).to(A.device)
    X0 = warm_start(A, 1e-3)
    mask = torch.arange(11, device=A.device) % 2 == 0
    cases = [(A, None, None, False, False), (A.mT, None, None, False, False), (spd, None, None, False, True),
             (A, None, None, True, False), (A, X0, None, True, False), (A, X0, mask, True, False)]
    for matrices, guess, use_guess, refine, positive_definite in cases:
        args = _arguments(matrices, guess, use_guess, refine, positive_definite)
        kept = [t.clone() for t in (matrices, guess) if t is not None]
        expected = _invert(backend, args)
        outputs = _garbage_outputs(matrices)
        pointers = [t.data_ptr() for t in outputs]
        assert _invert_out(backend, args, outputs) is None
        assert [t.data_ptr() for t in outputs] == pointers
        assert _same(outputs, expected), (backend, refine, positive_definite)
        assert all(torch.equal(k.nan_to_num(), t.nan_to_num())
                   for k, t in zip(kept, [t for t in (matrices, guess) if t is not None]))


@pytest.mark.parametrize("backend", [name for name in OUT_OPERATORS if name != "triton"])
def test_out_operator_opcheck_and_any_batch_shape(backend):
    """opcheck's schema, fake-tensor and AOT checks on neuinv::invert.out; outputs of A's batch shape (3, 4)."""
    A = conditioned_matrices(12, 5, 10.0, torch.float64).to(DEVICE[backend]).view(3, 4, 5, 5)
    X0 = warm_start(A, 1e-3)
    for guess, refine in ((None, False), (X0, True)):
        args = _arguments(A, guess, None, refine)
        X, certified, bound, iterations, fallback = _garbage_outputs(A)
        torch.library.opcheck(torch.ops.neuinv.invert.out, args,
                              dict(X=X, certified=certified, error_bound=bound, iterations=iterations,
                                   fallback=fallback))
        outputs = _garbage_outputs(A)
        _invert_out(backend, args, outputs)
        assert _same(outputs, _invert(backend, args))


@pytest.mark.parametrize("backend", OUT_OPERATORS)
def test_out_operator_refuses_outputs_it_cannot_write(backend):
    """A wrong dtype, shape or device, a non-contiguous output, and (compiled operator) an output that overlaps A
    or another output: a RuntimeError naming what is wrong, nothing written."""
    A = conditioned_matrices(4, 3, 10.0, torch.float64).to(DEVICE[backend])
    args = _arguments(A, None, None, False)
    bad = {"X float32": (0, lambda outputs: outputs[0].float(), "X must"),
           "certified int": (1, lambda outputs: outputs[1].int(), "certified must"),
           "bound of shape (3,)": (2, lambda outputs: outputs[2][:3], "error_bound must"),
           "X not contiguous": (0, lambda outputs: torch.empty_like(outputs[0]).mT, "X must")}
    if backend != "triton":
        bad.update({"X is A": (0, lambda outputs: A, "X must not share memory with A"),
                    "fallback is certified": (4, lambda outputs: outputs[1],
                                              "fallback must not share memory with certified")})
    for label, (index, replacement, message) in bad.items():
        outputs = list(_garbage_outputs(A))
        outputs[index] = replacement(outputs)
        kept = [t.clone() for t in outputs]
        with pytest.raises(RuntimeError, match=message):
            _invert_out(backend, args, outputs)
        assert all(torch.equal(k, t) for k, t in zip(kept, outputs)), label


class _OutputsSpy:
    """Records the outputs each backend's invert_into receives, and how often invert (fresh outputs) runs."""

    def __init__(self, monkeypatch):
        self.into, self.fresh = [], 0
        for cls in (backends.TorchBackend, backends.CompiledBackend, backends.CudaBackend, backends.TritonBackend):
            if "invert_into" in vars(cls):
                monkeypatch.setattr(cls, "invert_into", self._wrap(vars(cls)["invert_into"], into=True))
            if "invert" in vars(cls):
                monkeypatch.setattr(cls, "invert", self._wrap(vars(cls)["invert"], into=False))

    def _wrap(self, method, into):
        def recorded(backend_self, *args):
            if into:
                self.into.append(args[-1])
            else:
                self.fresh += 1
            return method(backend_self, *args)
        return recorded


def _batch(backend, dtype=torch.float64):
    """Six 5 x 5 matrices in a (2, 3) batch: good ones, a singular one and one with a NaN."""
    A = conditioned_matrices(6, 5, 100.0, dtype, seed=1).to(DEVICE[backend]).view(2, 3, 5, 5)
    A[0, 1] = 0.0
    A[1, 2, 0, 0] = math.nan
    return A


@pytest.mark.parametrize("backend", AVAILABLE)
def test_batched_inverse_ex_writes_into_out_in_place(backend, monkeypatch):
    """Contiguous outputs are handed to the operator itself (cpp, cuda, triton write them; torch copies), and
    hold what a call without out returns, bit for bit, with and without a warm start."""
    A = _batch(backend)
    for options in (dict(), dict(init=warm_start(A, 1e-3))):
        X_expected, info_expected = neuinv.batched_inverse_ex(A, backend=backend, **options)
        spy = _OutputsSpy(monkeypatch)
        outputs = _garbage_outputs(A)
        X, info = neuinv.batched_inverse_ex(A, backend=backend, out=(outputs[0], InverseInfo(*outputs[1:])),
                                            **options)
        assert X is outputs[0] and all(a is b for a, b in zip(info, outputs[1:]))
        assert len(spy.into) == 1 and spy.fresh == (backend == "torch"), (spy.into, spy.fresh)  # (torch copies)
        assert all(given is own for given, own in zip(spy.into[0], outputs))
        assert _same((X, *info), (X_expected, *info_expected))
        monkeypatch.undo()


@pytest.mark.parametrize("backend", AVAILABLE)
def test_batched_inverse_writes_into_out_then_raises(backend):
    """batched_inverse(A, out=X) and batched_inverse_ex(..., check_errors=True): out holds the results (NaN where
    not certified) when the call raises for the singular member, as torch.linalg.inv(A, out=X) writes X before it
    raises."""
    A = _batch(backend)
    X_expected, info_expected = neuinv.batched_inverse_ex(A, backend=backend)
    X_out = torch.full_like(A, 7.0)
    with pytest.raises(torch.linalg.LinAlgError, match=r"A\[0, 1\]"):
        neuinv.batched_inverse(A[:1], backend=backend, out=X_out[:1])
    assert torch.equal(X_out[:1].nan_to_num(), X_expected[:1].nan_to_num())
    outputs = _garbage_outputs(A)
    with pytest.raises(ValueError, match="NaN"):
        neuinv.batched_inverse_ex(A, backend=backend, check_errors=True,
                                  out=(outputs[0], InverseInfo(*outputs[1:])))
    assert _same(outputs, (X_expected, *info_expected))
    good = A[:, 0]
    X_out = torch.full_like(good, 7.0)
    assert neuinv.batched_inverse(good, backend=backend, out=X_out) is X_out
    assert torch.equal(X_out, neuinv.batched_inverse(good, backend=backend))


@pytest.mark.parametrize("backend", AVAILABLE)
def test_out_in_place_through_chunks_and_the_second_stage(backend, monkeypatch):
    """A batch split into chunks writes each chunk into its slice of out; matrices that take the second stage
    (graded, max_error below their first bound) get the stage's X and bound in out; non-contiguous outputs
    (transposed X, strided fields) are filled by a copy. Every case equals the call without out."""
    A = _batch(backend)
    graded = torch.diag(torch.tensor([1.0, 1e-3, 1e-6, 1e-9, 1e-12], dtype=torch.float64, device=A.device))
    A[1, 0] = graded @ A[1, 0] @ graded
    chunked = dict(max_error=1e-9)
    workspace_matrices = backends.resolve_backend(backend, A).workspace_matrices
    monkeypatch.setattr(pipeline, "WORKSPACE_BYTES", 2 * 5 * 5 * 8 * workspace_matrices)  # chunks of 2 matrices
    expected = neuinv.batched_inverse_ex(A, backend=backend, **chunked)
    assert expected.info.certified[1, 0]
    outputs = _garbage_outputs(A)
    X, info = neuinv.batched_inverse_ex(A, backend=backend, out=(outputs[0], InverseInfo(*outputs[1:])), **chunked)
    assert _same((X, *info), (expected.inverse, *expected.info))
    X_strided = torch.full((2, 3, 5, 5), 7.0, dtype=A.dtype, device=A.device).mT
    fields = [torch.full((2, 6), GARBAGE[dtype], dtype=dtype, device=A.device)[:, ::2] for dtype in INFO_DTYPES]
    X, info = neuinv.batched_inverse_ex(A, backend=backend, out=(X_strided, InverseInfo(*fields)), **chunked)
    assert X is X_strided and _same((X, *info), (expected.inverse, *expected.info))


def test_out_is_not_handed_to_the_operator_where_it_cannot_be():
    """Half dtypes (computed in float32), a non-contiguous X and torch.compile get no operator outputs: the
    results are copied into out (pipeline.operator_outputs)."""
    A = conditioned_matrices(3, 4, 10.0, torch.float64)
    X_out = torch.empty_like(A)
    assert pipeline.operator_outputs(X_out, A)[0] is X_out
    assert pipeline.operator_outputs(None, A) is None
    assert pipeline.operator_outputs(torch.empty_like(A).mT, A) is None
    assert pipeline.operator_outputs(torch.empty(3, 4, 4, dtype=torch.float16), A.half()) is None
    info = InverseInfo(*(torch.empty(6, dtype=dtype)[::2] for dtype in INFO_DTYPES))
    assert pipeline.operator_outputs((X_out, info), A) is None


# ------------------------------------------------------------------- the review's attacks on out= in place

@pytest.mark.parametrize("backend", AVAILABLE)
def test_written_outputs_bump_their_version_for_autograd(backend):
    """A tensor saved for backward and then overwritten through out= makes backward raise, as after any in-place
    write (the operators bump the version counters of the outputs they write); before, the cpp operator left the
    version at 0 and backward silently used the new values."""
    A = 2 * torch.eye(2, dtype=torch.float64, device=DEVICE[backend]).repeat(3, 1, 1)
    X = torch.ones(3, 2, 2, dtype=torch.float64, device=A.device)
    w = torch.ones(3, 2, 2, dtype=torch.float64, device=A.device, requires_grad=True)
    loss = (w * X).sum()
    version = X._version
    neuinv.batched_inverse(A, backend=backend, out=X)
    assert X._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("backend", AVAILABLE)
def test_outputs_that_cannot_be_written_are_refused_alike_on_every_backend(backend):
    """An out that requires grad, one holding an element twice (as_strided), a sparse one, and out= inside vmap:
    the same named error on every backend, nothing computed; an inference tensor outside inference mode is refused
    by torch's in-place check."""
    A = conditioned_matrices(4, 3, 10.0, torch.float64).to(DEVICE[backend])
    with pytest.raises(RuntimeError, match="out= cannot be combined with gradients"):
        neuinv.batched_inverse(A, backend=backend, out=torch.zeros_like(A, requires_grad=True))
    twice = torch.zeros(100, dtype=torch.float64, device=A.device).as_strided((4, 3, 3), (1, 3, 1))
    with pytest.raises(neuinv.ArgumentValueError, match="may address one element twice"):
        neuinv.batched_inverse(A, backend=backend, out=twice)
    outputs = _garbage_outputs(A.view(2, 2, 3, 3))
    overlapping = torch.zeros(3, dtype=torch.bool, device=A.device).as_strided((2, 2), (1, 1))
    with pytest.raises(neuinv.ArgumentValueError, match=r"out\[1\].certified must not share memory with itself"):
        neuinv.batched_inverse_ex(A.view(2, 2, 3, 3), backend=backend,
                                  out=(outputs[0], InverseInfo(overlapping, *outputs[2:])))
    if A.device.type == "cpu":
        with pytest.raises(neuinv.ArgumentValueError, match="must be a dense"):
            neuinv.batched_inverse(A, backend=backend, out=torch.zeros_like(A).to_sparse())
    with pytest.raises(RuntimeError, match="out= cannot be combined with gradients or torch.func transforms"):
        torch.func.vmap(lambda a: neuinv.batched_inverse(a, backend=backend, out=torch.empty_like(A)))(A[None])
    with torch.inference_mode():
        X_inference = torch.empty_like(A)
    with pytest.raises(RuntimeError, match="[Ii]nference tensor"):
        neuinv.batched_inverse(A, backend=backend, out=X_inference)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_a_model_whose_guess_is_the_out_buffer(backend):
    """A model that returns the caller's out tensor as its guess (a warm start from the last result): the same
    results as without out=, no error about X0 sharing memory."""
    A = conditioned_matrices(6, 4, 10.0, torch.float64).to(DEVICE[backend])
    X_out = torch.linalg.inv(A)

    class LastResult(torch.nn.Module):
        def forward(self, matrices):
            return X_out

        def in_domain(self, matrices):
            return torch.ones(matrices.shape[0], dtype=torch.bool, device=matrices.device)

    expected = neuinv.batched_inverse_ex(A, model=LastResult(), backend=backend)
    fields = _garbage_outputs(A)[1:]
    X, info = neuinv.batched_inverse_ex(A, model=LastResult(), backend=backend, out=(X_out, InverseInfo(*fields)))
    assert X is X_out and _same((X, *info), (expected.inverse, *expected.info))


def test_under_torch_compile_out_is_written_before_the_raise():
    """torch.compile's graph takes the Function path: there too out holds the results (NaN where not certified)
    when batched_inverse raises."""
    A = conditioned_matrices(3, 3, 10.0, torch.float64)
    A[2] = 0.0
    X_out = torch.full_like(A, 7.0)
    compiled = torch.compile(lambda A, X: neuinv.batched_inverse(A, out=X), backend="eager", fullgraph=False)
    with pytest.raises(torch.linalg.LinAlgError):
        compiled(A, X_out)
    assert X_out[2].isnan().all() and torch.equal(X_out[:2], neuinv.batched_inverse(A[:2]))


@pytest.mark.parametrize("backend", OUT_OPERATORS)
def test_out_operator_refuses_math_bits_and_aliasing_through_another_storage(backend):
    """A real output with the negative bit (c.conj().imag) is refused by name (the process lives on; it used to
    abort in torch's math-bit fallback), an A with the negative bit is read as its values, and outputs over one
    numpy buffer with A or with each other are refused though their storages differ."""
    np = pytest.importorskip("numpy")
    A = conditioned_matrices(4, 3, 10.0, torch.float64).to(DEVICE[backend])
    args = _arguments(A, None, None, False)
    outputs = list(_garbage_outputs(A))
    outputs[0] = torch.zeros(4, 3, 3, dtype=torch.complex128, device=A.device).conj().imag
    with pytest.raises(RuntimeError, match="X must not have the conjugate or negative bit"):
        _invert_out(backend, args, outputs)
    negated = torch._neg_view(-A)
    outputs = _garbage_outputs(A)
    if backend != "triton":  # (the Triton launch reads raw memory: its caller resolves views first)
        _invert_out(backend, _arguments(negated, None, None, False), outputs)
        assert _same(outputs, _invert(backend, args))
    if A.device.type != "cpu":
        return
    buffer = np.zeros(36 + 36, dtype=np.float64)
    shared_A = torch.from_numpy(buffer[:36]).view(4, 3, 3)
    shared_A.copy_(A)
    outputs = list(_garbage_outputs(A))
    outputs[0] = torch.from_numpy(buffer[:36]).view(4, 3, 3)
    with pytest.raises(RuntimeError, match="X must not share memory with A"):
        _invert_out(backend, _arguments(shared_A, None, None, False), outputs)
    raw = np.zeros(4, dtype=np.bool_)
    outputs = list(_garbage_outputs(A))
    outputs[1], outputs[4] = torch.from_numpy(raw), torch.from_numpy(raw)
    with pytest.raises(RuntimeError, match="fallback must not share memory with certified"):
        _invert_out(backend, args, outputs)
