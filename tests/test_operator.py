"""The compiled operator neuinv::invert: its registration (opcheck), agreement with its specification
reference.invert, and the structure of batched_inverse_ex around it: one operator call per chunk, no host
synchronisation, no data-dependent shapes (so CUDA graphs and torch.compile can take it)."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import neuinv
from neuinv import reference
from neuinv.rules import NEWTON_SCHULZ_ACCEPT, NewtonSchulzRules, default_tol
from neuinv.testing import conditioned_matrices, warm_start
from conftest import TRUTH_SLACK, accurate_inverse, assert_no_host_synchronisation

COMPILED = [name for name in ("cpp", "cuda") if neuinv.available_backends()[name].available]
pytestmark = pytest.mark.skipif(not COMPILED, reason="the compiled operator is not built")
DEVICE = {"cpp": "cpu", "cuda": "cuda"}

SYNCING_OPERATORS = {"nonzero", "_local_scalar_dense", "item", "masked_select", "unique", "argwhere"}
"""aten operators whose output shape depends on the data, or that copy a value to the host."""


def _arguments(A, X0, use_guess, refine, max_iter=10, max_error=1.0, positive_definite=False):
    rules = NewtonSchulzRules(default_tol(A.dtype), NEWTON_SCHULZ_ACCEPT[A.dtype], max_iter, X0 is not None)
    return (A, X0, use_guess, refine, rules.tol, rules.accept, rules.max_iter, rules.guard, max_error,
            positive_definite), rules


def _variants(A):
    X0 = warm_start(A, 1e-3)
    mask = torch.arange(A.shape[0], device=A.device) % 2 == 0
    return {"exact": (None, None, False), "scaled transpose": (None, None, True),
            "guess": (X0, None, True), "guess where masked": (X0, mask, True)}


@pytest.mark.parametrize("backend", COMPILED)
def test_opcheck(backend):
    """All of opcheck's checks, on contiguous and transposed input (the fake must give the kernels' contiguous
    strides). With a singular member X holds NaN, which opcheck's eager-against-AOT comparison counts as a
    difference (NaN != NaN), so that input runs the other checks."""
    A = conditioned_matrices(5, 3, 10.0, torch.float64).to(DEVICE[backend])
    spd = conditioned_matrices(5, 3, 10.0, torch.float64, symmetric=True).to(DEVICE[backend])
    for matrices, positive_definite in ((A, False), (A.mT, False), (spd, True), (spd.mT, True)):
        for X0, use_guess, refine in _variants(matrices).values():
            args, _ = _arguments(matrices, X0, use_guess, refine, positive_definite=positive_definite)
            torch.library.opcheck(torch.ops.neuinv.invert.default, args)
    singular = A.clone()
    singular[2] = 0.0
    args, _ = _arguments(singular, None, None, False)
    torch.library.opcheck(torch.ops.neuinv.invert.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("backend", COMPILED)
def test_operator_takes_any_batch_shape(backend):
    """A (*, n, n): outputs of A's shape and batch shape, the same results as on the flattened batch."""
    A = conditioned_matrices(12, 5, 100.0, torch.float32).to(DEVICE[backend])
    X0 = warm_start(A, 1e-3)
    mask = torch.arange(12, device=A.device) % 3 > 0
    flat = torch.ops.neuinv.invert(*_arguments(A, X0, mask, True)[0])
    shaped = torch.ops.neuinv.invert(*_arguments(A.view(3, 4, 5, 5), X0.view(3, 4, 5, 5), mask.view(3, 4), True)[0])
    assert shaped[0].shape == (3, 4, 5, 5) and all(field.shape == (3, 4) for field in shaped[1:])
    for f, g in zip(flat, shaped):
        assert torch.equal(f.reshape(g.shape).nan_to_num(), g.nan_to_num())


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 13, 16, 33, 64])
def test_operator_matches_its_specification(backend, dtype, n):
    """Same verdict and path per matrix as reference.invert (singular and NaN members among good ones); the
    iteration counts may differ by rounding, by at most 2 steps; every certified bound holds."""
    A = conditioned_matrices(19, n, 1e3, dtype, seed=n).to(DEVICE[backend])
    A[3] = 0.0
    A[7, 0, 0] = float("nan")
    for name, (X0, use_guess, refine) in _variants(A).items():
        args, rules = _arguments(A, X0, use_guess, refine, max_iter=10 if X0 is not None else 64)
        X, certified, bound, iterations, fallback = torch.ops.neuinv.invert(*args)
        X_ref, certified_ref, bound_ref, iterations_ref, fallback_ref = reference.invert(
            A, X0, use_guess, refine, rules, 1.0)
        label = f"{backend} {dtype} n={n} {name}"
        assert torch.equal(certified, certified_ref), label
        assert torch.equal(fallback, fallback_ref), label
        assert (iterations - iterations_ref).abs().max() <= 2, label
        assert not certified[3] and not certified[7] and torch.isnan(X[[3, 7]]).all(), label
        truth = accurate_inverse(A[certified])
        error = torch.linalg.matrix_norm(X[certified].double() - truth) / torch.linalg.matrix_norm(truth)
        assert (error <= bound[certified] + TRUTH_SLACK).all(), label


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 13, 16, 33, 64])
def test_positive_definite_operator_matches_its_specification(backend, dtype, n):
    """positive_definite=True: the same verdict and path per matrix as reference.invert on symmetric positive
    definite batches with a zero, a NaN and a negative definite member (refused by the Cholesky pivot rule, not
    inverted by the general path), iteration counts within 2; every certified bound holds."""
    A = conditioned_matrices(19, n, 1e3, dtype, seed=n, symmetric=True).to(DEVICE[backend])
    A[3] = 0.0
    A[7, 0, 0] = float("nan")
    A[9] = -A[9]
    for name, (X0, use_guess, refine) in _variants(A).items():
        args, rules = _arguments(A, X0, use_guess, refine, max_iter=10 if X0 is not None else 64,
                                 positive_definite=True)
        X, certified, bound, iterations, fallback = torch.ops.neuinv.invert(*args)
        X_ref, certified_ref, bound_ref, iterations_ref, fallback_ref = reference.invert(
            A, X0, use_guess, refine, rules, 1.0, positive_definite=True)
        label = f"{backend} {dtype} n={n} {name}"
        assert torch.equal(certified, certified_ref), label
        assert torch.equal(fallback, fallback_ref), label
        assert (iterations - iterations_ref).abs().max() <= 2, label
        assert not certified[[3, 7]].any() and torch.isnan(X[[3, 7]]).all(), label
        assert certified[9] == (name in ("guess", "scaled transpose")), label  # by Newton–Schulz; Cholesky refuses it
        truth = accurate_inverse(A[certified])
        error = torch.linalg.matrix_norm(X[certified].double() - truth) / torch.linalg.matrix_norm(truth)
        assert (error <= bound[certified] + TRUTH_SLACK).all(), label


@pytest.mark.parametrize("backend", COMPILED)
def test_input_is_not_modified(backend):
    A = conditioned_matrices(9, 4, 10.0, torch.float32).to(DEVICE[backend])
    for X0, use_guess, refine in _variants(A).values():
        kept = [t.clone() for t in (A, X0, use_guess) if t is not None]
        torch.ops.neuinv.invert(*_arguments(A, X0, use_guess, refine)[0])
        assert all(torch.equal(k, t) for k, t in zip(kept, [t for t in (A, X0, use_guess) if t is not None]))


def test_bad_arguments_are_named():
    A = conditioned_matrices(3, 4, 10.0, torch.float64)
    X0 = warm_start(A, 1e-3)
    with pytest.raises(RuntimeError, match="X0 is given but refine is false"):
        torch.ops.neuinv.invert(*_arguments(A, X0, None, False)[0])
    with pytest.raises(RuntimeError, match="use_guess is given without X0"):
        torch.ops.neuinv.invert(*_arguments(A, None, torch.ones(3, dtype=torch.bool), True)[0])
    with pytest.raises(RuntimeError, match="use_guess must be a bool tensor of shape"):
        torch.ops.neuinv.invert(*_arguments(A, X0, torch.ones(2, dtype=torch.bool), True)[0])
    with pytest.raises(RuntimeError, match="must have the same shape and dtype"):
        torch.ops.neuinv.invert(*_arguments(A, X0.float(), None, True)[0])
    args = list(_arguments(A, X0, None, True)[0])
    for index, value, message in ((4, float("nan"), "tol must be finite"), (4, -1.0, "tol must be finite"),
                                  (5, float("inf"), "accept must be finite"), (6, -1, "max_iter must be in"),
                                  (6, 2**40, "max_iter must be in"), (7, 0.0, "guard must be"),
                                  (8, float("nan"), "max_error must be in"), (8, 1.5, "max_error must be in")):
        bad = list(args)
        bad[index] = value
        with pytest.raises(RuntimeError, match=message):
            torch.ops.neuinv.invert(*bad)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(func)
        return func(*args, **(kwargs or {}))


def _names(calls):
    return [func._schema.name.split("::")[-1] for func in calls]


@pytest.mark.parametrize("backend", COMPILED)
def test_batched_inverse_ex_is_one_operator_call_without_synchronisation(backend):
    """What batched_inverse_ex dispatches on the compiled backends: one neuinv::invert per chunk, and, of the
    operators that synchronise with the host or have a data-dependent shape, only the one read of the largest bound
    that decides whether any matrix takes the second stage (neuinv.pipeline.all_below_second_stage; none of these
    well-conditioned ones does, so no nonzero selects them and nothing is indexed) -- a model's forward pass
    included."""
    from neuinv.learned.models import TaylorInitializer

    A = conditioned_matrices(40, 6, 10.0, torch.float64).to(DEVICE[backend]).view(4, 10, 6, 6)
    model = TaylorInitializer(A[0, 0].cpu(), radius=0.5).to(A.device)
    for options in (dict(), dict(init=warm_start(A, 1e-3)), dict(model=model), dict(method="newton_schulz"),
                    dict(max_error=1e-12)):
        with _Recorder() as recorder:
            neuinv.batched_inverse_ex(A, backend=backend, **options)
        names = _names(recorder.calls)
        assert names.count("invert") == 1, (options, names)
        assert [name for name in names if name in SYNCING_OPERATORS] == ["_local_scalar_dense"], (options, names)
        assert not any(name == "index" or name.startswith("index_put") for name in names), (options, names)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_synchronisation_on_cuda():
    assert_no_host_synchronisation("auto")


def test_torch_compile_fullgraph_in_a_fresh_process():
    """The first call of neuinv in a process may be a compiled one: the backend checks are constants to
    torch.compile (they load the extension from disk), so nothing breaks the graph."""
    import subprocess
    import sys

    code = ("import torch, neuinv\n"
            "f = torch.compile(lambda A: neuinv.batched_inverse_ex(A)[0], backend='eager', fullgraph=True)\n"
            "A = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1) * 2\n"
            "assert torch.allclose(f(A), A / 4) and torch.allclose(f(A.mT.contiguous().mT), A / 4)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("backend", COMPILED)
def test_torch_compile_fullgraph(backend):
    A = conditioned_matrices(8, 4, 10.0, torch.float64).to(DEVICE[backend])
    init = warm_start(A, 1e-2)

    def step(M, X0):
        X, info = neuinv.batched_inverse_ex(M, init=X0, backend=backend)
        return X, info.error_bound

    X, bound = torch.compile(step, backend="eager", fullgraph=True)(A, init)
    assert torch.allclose(X, torch.linalg.inv(A), atol=1e-12) and (bound < 1e-12).all()


def test_learned_initializer_runs_through_the_backend(monkeypatch):
    """An MLP initializer's forward pass is chosen at the dispatch point: batched_inverse hands its parameters
    to the chosen backend's mlp_initializer (the fused Triton kernel on CUDA) instead of calling the model."""
    from neuinv.backends import resolve_backend
    from neuinv.learned.models import InverseMLP

    A = conditioned_matrices(6, 3, 10.0, torch.float64)
    model = InverseMLP(3, 8, center=A[0], radius=1.0, head="taylor")
    backend = type(resolve_backend("auto", A))
    calls = []
    original = backend.mlp_initializer
    monkeypatch.setattr(backend, "mlp_initializer",
                        staticmethod(lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)))
    X, info = neuinv.batched_inverse_ex(A, model=model)
    assert calls == [1] and info.certified.all()
    assert torch.equal(original(A.reshape(6, 9), **model.initializer_parameters()).reshape(A.shape), model(A))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_learned_initializer_is_fused_on_cuda(monkeypatch):
    pytest.importorskip("triton")
    from neuinv.kernels import mlp
    from neuinv.learned.models import InverseMLP

    A = conditioned_matrices(64, 4, 10.0, torch.float32).cuda()
    model = InverseMLP(4, 32, center=A[0].cpu(), radius=1.0, head="taylor", dtype=torch.float32).cuda()
    calls = []
    fused = mlp.fused_mlp_initializer
    monkeypatch.setattr(mlp, "fused_mlp_initializer", lambda *args: calls.append(1) or fused(*args))
    X, info = neuinv.batched_inverse_ex(A, model=model)
    assert calls == [1] and info.certified.all()
