"""Training learned initializers with the paper's recipe, evaluating them, and loading the
shipped checkpoints.

Recipe (Ji, Wu & Xi, AISTATS 2025, App. B): Adam, lr 5e-5, weight decay 1e-7; MSE loss against
A^-1; batch 128; CosineAnnealingWarmRestarts(T_0=3, T_mult=2, eta_min=1e-6) stepped once per epoch.
"""
from __future__ import annotations

import math
from importlib import resources
from typing import NamedTuple

import torch

from .. import __version__
from .data import Batch
from .models import InverseMLP

PRETRAINED = ("paper-2x2-1st", "paper-2x2-2nd", "paper-3x3", "paper-16x16")
FRESH_DRAW_STEPS = 100
"""With fresh matrices every batch, the sampler is called once per this many steps (fewer launches on a GPU)."""


class TrainingHistory(NamedTuple):
    losses: list                     # mean training loss per epoch
    test_error: float                # average absolute error on the test batch (NaN without one)
    validation_errors: tuple = ()    # average absolute error on the validation batch after each epoch
    best_epoch: int | None = None    # the epoch (0-based) whose network was kept; None: the last one


def average_absolute_error(model, batch: Batch) -> float:
    """The paper's metric: mean |F(A) - A^-1| over all entries of the test set."""
    with torch.no_grad():
        prediction = model(batch.A.to(model.center.device)).double().cpu()
    return float((prediction - batch.inverse.double()).abs().mean())


VALIDATION_CHUNK = 2048


def _stacked_errors(forward, parameters, buffers, batch: Batch, runs: int) -> torch.Tensor:
    """average_absolute_error of every stacked run at once, in chunks (a 16x16 h=2048 network's hidden
    layer for 10,000 matrices would take 160 MB per run)."""
    total = torch.zeros(runs, dtype=torch.float64, device=batch.A.device)
    with torch.no_grad():
        for start in range(0, batch.A.shape[0], VALIDATION_CHUNK):
            A = batch.A[start:start + VALIDATION_CHUNK]
            prediction = forward(parameters, buffers, A.expand(runs, *A.shape)).double()
            total += (prediction - batch.inverse[start:start + VALIDATION_CHUNK].double()).abs().sum((1, 2, 3))
    return total / batch.inverse.numel()


def fit(sampler, **options):
    """Train one :class:`InverseMLP`: :func:`fit_runs` with ``runs=1``. Returns (model, TrainingHistory)."""
    return fit_runs(sampler, runs=1, **options)[0]


def fit_runs(sampler, *, runs: int = 1, hidden: int, depth: int = 2, head: str = "direct", steps: int | None = None,
             epochs: int | None = None, train_size: int | None = None, epoch_steps: int = 1000,
             batch_size: int = 128, lr: float = 5e-5, weight_decay: float = 1e-7, seed: int = 0,
             device: str = "cpu", dtype=torch.float64, test: Batch | None = None,
             validation: Batch | None = None, progress: bool = True):
    """Train ``runs`` independent :class:`InverseMLP` networks on matrices from ``sampler`` (a BoxSampler
    or MatrixSampler), all at once; run r is seeded with ``seed + r``.

    With ``train_size``, one fixed training set of that many matrices is drawn and an epoch is a
    shuffled pass over it (each run its own shuffle); otherwise every batch is fresh (each run its own
    batches) and an epoch is ``epoch_steps`` steps. Give ``steps`` or ``epochs``.

    With a ``validation`` batch, every run is scored on it (the paper's metric) after each epoch and
    keeps the network of its best epoch (model selection; the test batch stays unseen); without one,
    each run ends with its last network.

    The runs' parameters are stacked and trained by one vectorised forward pass (torch.func.vmap) and
    one Adam: Adam and weight decay act elementwise and the summed loss's gradient for each run is that
    of its own MSE, so this is exactly ``runs`` separate trainings, at the cost of about one on a GPU.
    Returns a list of (model, TrainingHistory), one per run.
    """
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps or epochs")
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    models = []
    for run in range(runs):
        torch.manual_seed(seed + run)
        models.append(InverseMLP(sampler.n, hidden, depth, center=sampler.center.cpu(), radius=sampler.radius,
                                 head=head, dtype=dtype).to(device))
    parameters, buffers = torch.func.stack_module_state(models)
    forward = torch.func.vmap(lambda p, b, A: torch.func.functional_call(models[0], (p, b), (A,)))
    optimizer = torch.optim.Adam(parameters.values(), lr=lr, weight_decay=weight_decay,
                                 fused=torch.device(device).type == "cuda")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=3, T_mult=2, eta_min=1e-6)
    fixed = sampler.sample(train_size) if train_size else None
    if fixed is not None:
        fixed = Batch(fixed.A.to(device=device, dtype=dtype), fixed.inverse.to(device=device, dtype=dtype))
    steps_per_epoch = math.ceil(train_size / batch_size) if train_size else epoch_steps
    total = steps if steps is not None else epochs * steps_per_epoch
    label = f"training {depth}-FC h={hidden} n={sampler.n} ({head}){f' x {runs} runs' if runs > 1 else ''}"
    bar = _progress(total, progress, label)
    n = sampler.n
    losses = [[] for _ in range(runs)]
    epoch_loss = torch.zeros(runs, dtype=dtype, device=device)
    shufflers = [torch.Generator().manual_seed(seed + run) for run in range(runs)]
    orders = None
    if validation is not None:
        validation = Batch(validation.A.to(device=device, dtype=dtype), validation.inverse.to(device=device))
        validation_errors = []
        best_error = torch.full((runs,), float("inf"), dtype=torch.float64, device=device)
        best_epoch = torch.zeros(runs, dtype=torch.long)
        best_parameters = {name: value.detach().clone() for name, value in parameters.items()}
    for step in range(total):
        position = step % steps_per_epoch
        if fixed is not None:
            if position == 0:
                orders = torch.stack([torch.randperm(train_size, generator=g) for g in shufflers]).to(device)
            index = orders[:, position * batch_size:(position + 1) * batch_size]
            A, target = fixed.A[index], fixed.inverse[index]
        else:
            if step % FRESH_DRAW_STEPS == 0:  # one draw (and one batched inverse) for many steps
                draw = sampler.sample(runs * batch_size * min(FRESH_DRAW_STEPS, total - step))
                pool = (draw.A.to(device=device, dtype=dtype).reshape(-1, runs, batch_size, n, n),
                        draw.inverse.to(device=device, dtype=dtype).reshape(-1, runs, batch_size, n, n))
            A, target = pool[0][step % FRESH_DRAW_STEPS], pool[1][step % FRESH_DRAW_STEPS]
        run_losses = (forward(parameters, buffers, A) - target).square().flatten(1).mean(1)
        optimizer.zero_grad(set_to_none=True)
        run_losses.sum().backward()
        optimizer.step()
        epoch_loss += run_losses.detach()
        bar.update(1)
        if position == steps_per_epoch - 1 or step == total - 1:
            for run, value in enumerate((epoch_loss / (position + 1)).tolist()):
                losses[run].append(value)
            epoch_loss.zero_()
            if validation is not None:
                errors = _stacked_errors(forward, parameters, buffers, validation, runs)
                validation_errors.append(errors.tolist())
                better = errors < best_error
                best_error = torch.where(better, errors, best_error)
                best_epoch[better.cpu()] = len(validation_errors) - 1
                for name, value in parameters.items():
                    best_parameters[name][better] = value.detach()[better]
            scheduler.step()
            bar.set_postfix(loss=f"{min(history[-1] for history in losses):.2e}")
    bar.close()
    kept = best_parameters if validation is not None else parameters
    results = []
    for run, model in enumerate(models):
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                parameter.copy_(kept[name][run])
        model.eval()
        test_error = average_absolute_error(model, test) if test is not None else float("nan")
        selection = (f"best of {len(validation_errors)} epochs on {validation.A.shape[0]} validation matrices"
                     if validation is not None else "last epoch")
        model.metadata = dict(neuinv_version=__version__, seed=seed + run, test_error=test_error,
                              training=dict(steps=total, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                            train_size=train_size, epoch_steps=steps_per_epoch, selection=selection,
                                            scheduler="CosineAnnealingWarmRestarts(T_0=3, T_mult=2, eta_min=1e-6)"))
        if validation is not None:
            history = TrainingHistory(losses[run], test_error, tuple(errors[run] for errors in validation_errors),
                                      int(best_epoch[run]))
        else:
            history = TrainingHistory(losses[run], test_error)
        results.append((model, history))
    return results


def load_pretrained(name: str, map_location="cpu") -> InverseMLP:
    """One of the shipped 2-FC checkpoints: "paper-2x2-1st", "paper-2x2-2nd", "paper-3x3", "paper-16x16"."""
    if name not in PRETRAINED:
        raise ValueError(f"no pretrained model {name!r}; available: {PRETRAINED}")
    with resources.as_file(resources.files("neuinv.learned") / "pretrained" / f"{name}.pt") as path:
        if not path.exists():
            raise FileNotFoundError(f"the checkpoint {name} is not installed at {path}")
        return InverseMLP.load(path, map_location=map_location)


def _progress(total: int, enabled: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=description, mininterval=1.0)
