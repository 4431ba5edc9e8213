"""torch.func (vmap, grad, jacrev, jacfwd, jvp and their compositions) and torch.compile(fullgraph=True) over
batched_inverse(_ex) and batched_solve(_ex), against torch.linalg's results."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import forward_ad
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

import neuinv
from neuinv.testing import conditioned_matrices, warm_start

TOL = dict(rtol=1e-10, atol=1e-12)


def matrices(batch=4, n=3, seed=0):
    return conditioned_matrices(batch, n, 10.0, torch.float64, seed=seed)


def vectors(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_vmap_inverse():
    A = matrices()
    assert torch.allclose(vmap(neuinv.batched_inverse)(A), torch.linalg.inv(A), **TOL)
    stacked = torch.stack([A, 2 * A])  # vmapped dimension inside the batch, and nested vmap
    assert torch.allclose(vmap(neuinv.batched_inverse, in_dims=1)(stacked.movedim(0, 1)),
                          torch.linalg.inv(stacked), **TOL)
    assert torch.allclose(vmap(vmap(neuinv.batched_inverse))(stacked), torch.linalg.inv(stacked), **TOL)
    X, info = vmap(neuinv.batched_inverse_ex)(A)
    assert torch.allclose(X, torch.linalg.inv(A), **TOL) and info.certified.shape == (4,) and info.certified.all()


def test_vmap_inverse_with_a_warm_start():
    A = matrices()
    init = warm_start(A, 1e-3)
    X, info = vmap(lambda M, X0: neuinv.batched_inverse_ex(M, init=X0))(A, init)
    assert torch.allclose(X, torch.linalg.inv(A), **TOL) and (info.iterations > 0).all()
    X, info = vmap(lambda X0: neuinv.batched_inverse_ex(A[0], init=X0))(init[:1].expand(3, 3, 3))
    assert torch.allclose(X, torch.linalg.inv(A[0]).expand(3, 3, 3), **TOL) and X.shape == (3, 3, 3)


def test_vmap_raises_for_a_singular_member():
    A = matrices()
    A[2] = 0.0
    with pytest.raises(torch.linalg.LinAlgError, match="singular"):
        vmap(neuinv.batched_inverse)(A)
    with pytest.raises(torch.linalg.LinAlgError, match="singular"):
        vmap(neuinv.batched_solve)(A, vectors(4, 3))
    X, info = vmap(neuinv.batched_inverse_ex)(A)
    assert not info.certified[2] and torch.isnan(X[2]).all() and info.certified[[0, 1, 3]].all()


def test_grad_jacrev_jacfwd_jvp_hessian_of_the_inverse():
    A = matrices()
    G = vectors(4, 3, 3)

    def loss(inverse):
        return lambda M: (inverse(M) * G).sum() + inverse(M).pow(2).sum()

    assert torch.allclose(grad(loss(neuinv.batched_inverse))(A), grad(loss(torch.linalg.inv))(A), **TOL)
    for transform in (jacrev, jacfwd):
        assert torch.allclose(transform(neuinv.batched_inverse)(A[0]), transform(torch.linalg.inv)(A[0]), **TOL)
    tangent = vectors(4, 3, 3, seed=2)
    mine, theirs = jvp(neuinv.batched_inverse, (A,), (tangent,)), jvp(torch.linalg.inv, (A,), (tangent,))
    assert all(torch.allclose(a, b, **TOL) for a, b in zip(mine, theirs))
    assert torch.allclose(vmap(jacrev(neuinv.batched_inverse))(A), vmap(jacrev(torch.linalg.inv))(A), **TOL)
    one = loss(neuinv.batched_inverse)
    assert torch.allclose(hessian(lambda M: one(M[None]))(A[0]),
                          hessian(lambda M: loss(torch.linalg.inv)(M[None]))(A[0]), rtol=1e-8, atol=1e-9)


def test_grad_jacrev_jvp_vmap_of_the_solve():
    A = matrices()
    B = vectors(4, 3, 2)

    def loss(solve):
        return lambda M, C: solve(M, C).pow(2).sum()

    for mine, theirs in zip(grad(loss(neuinv.batched_solve), argnums=(0, 1))(A, B),
                            grad(loss(torch.linalg.solve), argnums=(0, 1))(A, B)):
        assert torch.allclose(mine, theirs, **TOL)
    for transform in (jacrev, jacfwd):
        for argnums in (0, 1):
            assert torch.allclose(transform(neuinv.batched_solve, argnums=argnums)(A[0], B[0, :, 0]),
                                  transform(torch.linalg.solve, argnums=argnums)(A[0], B[0, :, 0]), **TOL)
    tangents = vectors(4, 3, 3, seed=2), vectors(4, 3, 2, seed=3)
    mine, theirs = jvp(neuinv.batched_solve, (A, B), tangents), jvp(torch.linalg.solve, (A, B), tangents)
    assert all(torch.allclose(a, b, **TOL) for a, b in zip(mine, theirs))
    for in_dims, args in (((0, 0), (A, B)), ((None, 0), (A[0], B)), ((0, None), (A, B[0])), ((0, 0), (A, B[..., 0])),
                          ((0, 1), (A, B.movedim(0, 1)))):
        assert torch.allclose(vmap(neuinv.batched_solve, in_dims=in_dims)(*args),
                              vmap(torch.linalg.solve, in_dims=in_dims)(*args), **TOL), in_dims
    # a vmapped matrix against a batch of right-hand sides with more batch dimensions than A
    B_more = vectors(2, 4, 3, 1)
    assert torch.allclose(vmap(neuinv.batched_solve, in_dims=(0, 1))(A, B_more),
                          vmap(torch.linalg.solve, in_dims=(0, 1))(A, B_more), **TOL)
    X, info = vmap(neuinv.batched_solve_ex, in_dims=(None, 0))(A[0], B)
    assert info.inverse.shape == (4, 3, 3) and info.certified.shape == (4,)  # vmap expands unbatched outputs
    assert torch.allclose(info.inverse, torch.linalg.inv(A[0]).expand(4, 3, 3), **TOL)


def test_inverse_from_the_solve_is_differentiable():
    A = matrices()
    B = vectors(4, 3)
    mine = jacrev(lambda M: neuinv.batched_solve_ex(M, B)[1].inverse)(A)
    assert torch.allclose(mine, jacrev(torch.linalg.inv)(A), **TOL)


BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(not status.available, reason=f"{name}: {status.reason}"))
            for name, status in neuinv.available_backends().items() if name in ("torch", "cpp", "triton")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_mode_dual_tensors_carry_their_tangents(backend):
    """A tangent attached with torch.autograd.forward_ad.make_dual reaches the result (it was silently dropped: the
    call took the path without the autograd.Function), for A, for B, and for both, as torch.linalg's does."""
    A, B = matrices(), vectors(4, 3, 2)
    tangent_A, tangent_B = vectors(4, 3, 3, seed=2), vectors(4, 3, 2, seed=3)
    with forward_ad.dual_level():
        dual_A, dual_B = forward_ad.make_dual(A, tangent_A), forward_ad.make_dual(B, tangent_B)
        cases = [(neuinv.batched_inverse(dual_A, backend=backend), torch.linalg.inv(dual_A)),
                 (neuinv.batched_inverse_ex(dual_A, backend=backend)[0], torch.linalg.inv(dual_A))]
        for a, b in ((dual_A, B), (A, dual_B), (dual_A, dual_B)):
            cases.append((neuinv.batched_solve(a, b, backend=backend), torch.linalg.solve(a, b)))
            cases.append((neuinv.batched_solve_ex(a, b, backend=backend)[0], torch.linalg.solve(a, b)))
        for mine, theirs in cases:
            mine, theirs = forward_ad.unpack_dual(mine), forward_ad.unpack_dual(theirs)
            assert mine.tangent is not None
            assert torch.allclose(mine.primal, theirs.primal, **TOL)
            assert torch.allclose(mine.tangent, theirs.tangent, **TOL)


@pytest.mark.parametrize("compiler", ["eager", "aot_eager"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_torch_compile_fullgraph(compiler, backend):
    """Every public function compiles without a graph break, on the default backend and on the torch path (whose
    Newton-Schulz loop and exact-path subset depend on the data: the graph calls neuinv::reference_invert); the
    raising forms keep their check in the graph (a singular member still raises), for inputs with and without
    gradients."""
    A = matrices()
    B = vectors(4, 3, 2)
    functions = {
        "inverse": (lambda M, C: neuinv.batched_inverse(M, backend=backend), lambda M, C: torch.linalg.inv(M)),
        "inverse_ex": (lambda M, C: neuinv.batched_inverse_ex(M, backend=backend)[0],
                       lambda M, C: torch.linalg.inv(M)),
        "solve": (lambda M, C: neuinv.batched_solve(M, C, backend=backend), torch.linalg.solve),
        "solve_ex": (lambda M, C: neuinv.batched_solve_ex(M, C, backend=backend)[0], torch.linalg.solve),
        "pos": (lambda M, C: neuinv.batched_inverse(M @ M.mT, assume_a="pos", backend=backend),
                lambda M, C: torch.linalg.inv(M @ M.mT)),
    }
    for name, (function, truth) in functions.items():
        compiled = torch.compile(function, backend=compiler, fullgraph=True)
        assert torch.allclose(compiled(A, B), truth(A, B), **TOL), name
        A_g = A.clone().requires_grad_()
        compiled(A_g, B).pow(2).sum().backward()
        A_t = A.clone().requires_grad_()
        truth(A_t, B).pow(2).sum().backward()
        assert torch.allclose(A_g.grad, A_t.grad, rtol=1e-9, atol=1e-10), name
        torch._dynamo.reset()
    singular = A.clone()
    singular[1] = 0.0
    for name in ("inverse", "solve"):
        compiled = torch.compile(functions[name][0], backend=compiler, fullgraph=True)
        with pytest.raises(torch.linalg.LinAlgError, match=r"A\[1\] is singular"):
            compiled(singular, B)
    compiled = torch.compile(lambda M: vmap(lambda one: neuinv.batched_inverse(one, backend=backend))(M),
                             backend=compiler, fullgraph=True)
    assert torch.allclose(compiled(A), torch.linalg.inv(A), **TOL)


def test_reference_invert_operator_passes_opcheck():
    """neuinv::reference_invert (what a torch.compile graph calls on the torch backend): schema, fake implementation
    and its outputs' shapes and dtypes, checked by torch.library.opcheck; with a guess and a mask, and without (no
    singular member: opcheck compares outputs without equating NaNs)."""
    from neuinv.rules import newton_schulz_rules
    A = matrices(6, 4)
    rules = newton_schulz_rules(A.dtype, None, None, True)
    guess = torch.linalg.inv(A + 1e-3 * torch.eye(4, dtype=A.dtype))
    for X0, use_guess, refine in ((None, None, False), (guess, torch.tensor([True, False] * 3), True)):
        arguments = (A, X0, use_guess, refine, rules.tol, rules.accept, rules.max_iter, rules.guard, 1.0, False)
        torch.library.opcheck(torch.ops.neuinv.reference_invert.default, arguments)


def test_torch_compile_fullgraph_of_complex_input():
    """Complex input runs on the torch path by default: its four public functions compile without a graph break
    and agree with eager."""
    A = torch.complex(matrices(), matrices(seed=5) * 0.1)
    B = torch.complex(vectors(4, 3, 2), vectors(4, 3, 2, seed=6))
    for function in (neuinv.batched_inverse, lambda M, C: neuinv.batched_inverse_ex(M)[0], neuinv.batched_solve,
                     lambda M, C: neuinv.batched_solve_ex(M, C)[0]):
        call = (lambda M, C: function(M)) if function is neuinv.batched_inverse else function
        compiled = torch.compile(call, backend="eager", fullgraph=True)
        assert torch.equal(compiled(A, B), call(A, B))
        torch._dynamo.reset()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_capture():
    """batched_inverse_ex (float32, float64) and batched_solve_ex (float32: no data-dependent Dot2 branch) are
    captured in a CUDA graph on static tensors and replayed on new values."""
    A = conditioned_matrices(256, 8, 100.0, torch.float64).cuda()
    B = torch.randn(256, 8, 2, dtype=torch.float64, device="cuda")
    for dtype in (torch.float32, torch.float64):
        static_A = A.to(dtype).clone()
        neuinv.batched_inverse_ex(static_A)  # warm-up outside the capture (loads, allocator)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            X, info = neuinv.batched_inverse_ex(static_A)
        static_A.copy_((2 * A).to(dtype))
        graph.replay()
        torch.cuda.synchronize()
        truth = torch.linalg.inv(2 * A)
        assert info.certified.all()
        error = torch.linalg.matrix_norm(X.double() - truth) / torch.linalg.matrix_norm(truth)
        assert (error <= info.error_bound).all()
    static_A, static_B = A.float().clone(), B.float().clone()
    neuinv.batched_solve_ex(static_A, static_B)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        X, info = neuinv.batched_solve_ex(static_A, static_B)
    static_B.mul_(3)
    graph.replay()
    torch.cuda.synchronize()
    truth = torch.linalg.solve(A, 3 * B)
    assert info.certified.all()
    assert (torch.linalg.matrix_norm(X.double() - truth) / torch.linalg.matrix_norm(truth) <= info.error_bound).all()
