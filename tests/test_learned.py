"""Learned initializers: datasets, InverseMLP, training, checkpoints, the guard around them."""
import pickle

import pytest
import torch

import neuinv
from neuinv.learned.data import PAPER_CENTERS, BoxSampler, MatrixSampler, paper_sampler
from neuinv.learned.models import InverseMLP, TaylorInitializer
from neuinv.learned.training import PRETRAINED, average_absolute_error, fit, load_pretrained


@pytest.mark.parametrize("name", sorted(PAPER_CENTERS))
def test_paper_datasets(name):
    sampler = paper_sampler(name, seed=3)
    A, inverse = sampler.sample(64)
    n = {"paper-2x2-1st": 2, "paper-2x2-2nd": 2, "paper-3x3": 3, "paper-16x16": 16}[name]
    assert A.shape == (64, n, n) and A.dtype == torch.float64
    assert ((A - sampler.center).abs() <= 0.01).all()
    assert torch.allclose(A @ inverse, torch.eye(n, dtype=torch.float64).expand(64, n, n), atol=1e-10)
    again = paper_sampler(name, seed=3).sample(64).A
    assert torch.equal(A, again)  # deterministic for a seed
    assert not torch.equal(A, paper_sampler(name, seed=4).sample(64).A)


def test_paper_16x16_centre_is_an_integer_draw_and_invertible():
    A0 = PAPER_CENTERS["paper-16x16"]()
    assert set(A0.unique().tolist()) <= {-2.0, -1.0, 0.0, 1.0, 2.0}
    assert torch.linalg.matrix_rank(A0) == 16


def test_matrix_sampler_box_holds_the_users_matrices():
    matrices = torch.eye(3, dtype=torch.float64) * 2 + 0.1 * torch.randn(50, 3, 3, dtype=torch.float64)
    sampler = MatrixSampler(matrices)
    A, inverse = sampler.sample(10)
    assert ((A - sampler.center).abs() <= sampler.radius + 1e-15).all()
    assert torch.allclose(A @ inverse, torch.eye(3, dtype=torch.float64).expand(10, 3, 3), atol=1e-12)
    with pytest.raises(ValueError, match="singular"):
        MatrixSampler(torch.zeros(2, 3, 3))


@pytest.mark.parametrize("depth, head", [(2, "direct"), (3, "direct"), (2, "taylor")])
def test_inverse_mlp_shapes_and_domain(depth, head):
    center = torch.tensor([[2.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    model = InverseMLP(2, 16, depth, center=center, radius=0.01, head=head)
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == depth
    A = center + 0.01 * (2 * torch.rand(5, 7, 2, 2, dtype=torch.float64) - 1)
    assert model(A).shape == A.shape
    assert model.in_domain(A).all()
    assert not model.in_domain(A + 0.02).any()


def test_taylor_head_with_zero_network_is_the_taylor_map():
    center = torch.tensor([[1.0, 1, 1], [1, 2, 3], [1, 2, 4]], dtype=torch.float64)
    model = InverseMLP(3, 8, 2, center=center, radius=0.01, head="taylor")
    for layer in model.layers:
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    A = center + 0.01 * (2 * torch.rand(20, 3, 3, dtype=torch.float64) - 1)
    assert torch.allclose(model(A), TaylorInitializer(center, 0.01)(A), rtol=1e-12, atol=1e-12)


def test_short_training_lowers_the_loss_and_the_taylor_head_wins():
    sampler = paper_sampler("paper-2x2-1st", seed=0)
    test = paper_sampler("paper-2x2-1st", seed=1).sample(2000)
    _, direct = fit(sampler, hidden=16, steps=600, epoch_steps=100, lr=1e-3, test=test, progress=False)
    assert direct.losses[-1] < direct.losses[0] / 2
    _, taylor = fit(paper_sampler("paper-2x2-1st", seed=0), hidden=16, steps=600, epoch_steps=100, lr=1e-3,
                    head="taylor", test=test, progress=False)
    assert taylor.test_error < direct.test_error


def test_runs_trained_together_are_independent_trainings():
    """Run 0 of a stacked training sees the same batches as a lone run with its seed (fixed training set,
    per-run shuffles): the stacked Adam must give it the same network; run 1 is a different network."""
    options = dict(hidden=8, depth=3, steps=60, train_size=640, epoch_steps=10, lr=1e-3, progress=False)
    (alone, alone_history), = neuinv.learned.training.fit_runs(paper_sampler("paper-2x2-1st", seed=0), runs=1, **options)
    together = neuinv.learned.training.fit_runs(paper_sampler("paper-2x2-1st", seed=0), runs=2, **options)
    for mine, theirs in zip(alone.parameters(), together[0][0].parameters()):
        assert torch.allclose(mine, theirs, rtol=1e-9, atol=1e-12)
    assert together[0][1].losses == pytest.approx(alone_history.losses, rel=1e-9)
    assert not torch.allclose(together[0][0].layers[0].weight, together[1][0].layers[0].weight)
    assert together[1][1].losses[-1] < together[1][1].losses[0]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_round_trip_and_safe_loading(tmp_path):
    sampler = BoxSampler(torch.eye(2, dtype=torch.float64) * 3, 0.05)
    model, _ = fit(sampler, hidden=8, steps=20, progress=False)
    path = tmp_path / "model.pt"
    model.save(path, note="round trip")
    loaded = InverseMLP.load(path)
    assert loaded.config() == model.config() and loaded.metadata["note"] == "round trip"
    A = sampler.sample(9).A
    assert torch.equal(loaded(A), model(A))

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "neuinv-inverse-mlp-1", "payload": Payload()}))
    with pytest.raises(pickle.UnpicklingError):
        InverseMLP.load(evil)
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a neuinv InverseMLP checkpoint"):
        InverseMLP.load(tmp_path / "other.pt")


def test_model_in_batched_inverse_guard_catches_outside_and_near_singular():
    center = torch.tensor([[1.0, 2.0], [2.0, 4.0 + 1e-3]], dtype=torch.float64)  # near-singular centre
    sampler = BoxSampler(torch.tensor([[2.0, 2.0], [2.0, 3.0]], dtype=torch.float64), 0.01)
    model, _ = fit(sampler, hidden=16, steps=300, lr=1e-3, head="taylor", progress=False)
    A = sampler.sample(8).A
    A[2] = center  # far outside the box and nearly singular
    A[5] = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)  # singular
    X, info = neuinv.batched_inverse_ex(A, model=model)
    assert info.fallback[[2, 5]].all() and not info.fallback[[0, 1, 3, 4, 6, 7]].any()
    assert info.certified.tolist() == [i != 5 for i in range(8)]
    good = torch.arange(8) != 5
    assert torch.allclose(X[good], torch.linalg.inv(A[good]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", PRETRAINED)
def test_shipped_checkpoints_meet_their_recorded_error(name):
    model = load_pretrained(name)
    sampler = paper_sampler(name, seed=77)
    batch = sampler.sample(2000)
    error = average_absolute_error(model, batch)
    assert error <= 1.5 * model.metadata["test_error"]
    X, info = neuinv.batched_inverse_ex(batch.A.to(model.dtype), model=model)
    assert info.certified.all() and not info.fallback.any()
    assert (info.iterations <= 4).all()
    outside = batch.A[:3].clone().to(model.dtype)
    outside[:, 0, 0] += 1.0
    _, info = neuinv.batched_inverse_ex(outside, model=model)
    assert info.fallback.all() and info.certified.all()


def test_unknown_pretrained_name():
    with pytest.raises(ValueError, match="available"):
        load_pretrained("paper-5x5")


def test_region_analysis_on_a_hand_built_network():
    from neuinv.learned.analysis import activation_regions
    from neuinv.learned.models import taylor_affine_map

    model = InverseMLP(1, 2, 2, center=torch.tensor([[2.0]], dtype=torch.float64), radius=0.5)
    first, second = model.layers
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        first.bias.zero_()
        second.weight.copy_(torch.tensor([[-0.125, 0.125]]))  # u > 0: -0.125 u; u < 0: -0.125 u as well
        second.bias.fill_(0.5)
    weight, bias = taylor_affine_map(model.center, model.radius)  # 1/A near A0 = 2: 0.5 - 0.5 * 0.25 u
    assert torch.allclose(weight, torch.tensor([[-0.125]], dtype=torch.float64)) and bias.item() == 0.5
    U = (torch.arange(-500, 501, dtype=torch.float64) / 500)[:, None, None]
    regions = activation_regions(model, U)
    assert [r.pattern for r in regions] == [(0, 1), (1, 0), (0, 0)]  # 500 below, 500 above, u = 0 alone
    assert abs(regions[0].share - 500 / 1001) < 1e-12 and abs(regions[2].share - 1 / 1001) < 1e-12
    assert regions[0].taylor_distance == 0.0 and regions[1].taylor_distance == 0.0
    with torch.no_grad():
        second.weight.copy_(torch.tensor([[-0.125, 0.2]], dtype=torch.float64))  # the u < 0 region now has slope -0.2
    regions = {r.pattern: r for r in activation_regions(model, U)}
    assert abs(regions[(0, 1)].taylor_distance - 0.075) < 1e-12 and regions[(1, 0)].taylor_distance == 0.0


def test_why_cant_error_grows_near_singular_while_the_guard_stays_exact(tmp_path):
    from neuinv.learned.whycant import box_experiment, near_singular_figures, singular_threshold

    far, near = box_experiment(offsets=(6.0, 0.0), steps=300, test_size=2000, progress=False)
    assert far.offset > singular_threshold() > near.offset
    assert near.min_sigma < 1e-2 < far.min_sigma
    assert near.error_moments[2] > 100 * far.error_moments[2]
    for result in (far, near):
        assert result.guarded_uncertified == 0 and result.guarded_worst_residual < 1e-9
    for path in near_singular_figures(tmp_path):
        assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"


def test_16x16_recipe_ends_as_a_cosine_cycle_reaches_its_minimum():
    """The last epoch of the paper's 16x16 run must not fall just after a warm restart."""
    from neuinv.learned.paper import recipe

    plan = recipe("paper-16x16", quick=False)
    epochs = -(-plan.steps // plan.epoch_steps)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=5e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=3, T_mult=2, eta_min=1e-6)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert rates[-1] < 1.05e-6
    assert rates[-1] < rates[-2] < rates[-3]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-5)  # the next epoch would restart


def test_validation_keeps_each_runs_best_epoch():
    """With a validation batch, each run ends with the network of its best epoch, and says which."""
    sampler = paper_sampler("paper-2x2-1st", seed=0)
    validation = paper_sampler("paper-2x2-1st", seed=3).sample(500)
    trained = neuinv.learned.training.fit_runs(sampler, runs=2, hidden=8, steps=300, epoch_steps=30, lr=3e-2,
                                       validation=validation, progress=False)
    for model, history in trained:
        assert len(history.validation_errors) == 10
        assert history.validation_errors[history.best_epoch] == min(history.validation_errors)
        assert average_absolute_error(model, validation) == pytest.approx(min(history.validation_errors), rel=1e-9)
        assert model.metadata["training"]["selection"] == "best of 10 epochs on 500 validation matrices"
    _, last = fit(sampler, hidden=8, steps=30, epoch_steps=30, progress=False)
    assert last.best_epoch is None and last.validation_errors == ()
