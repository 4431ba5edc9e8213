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

from . import __version__
from .data import Batch
from .models import InverseMLP

PRETRAINED = ("paper-2x2-1st", "paper-2x2-2nd", "paper-3x3", "paper-16x16")


class TrainingHistory(NamedTuple):
    losses: list          # mean training loss per epoch
    test_error: float     # average absolute error on the test batch (NaN without one)


def average_absolute_error(model, batch: Batch) -> float:
    """The paper's metric: mean |F(A) - A^-1| over all entries of the test set."""
    with torch.no_grad():
        prediction = model(batch.A.to(model.center.device)).double().cpu()
    return float((prediction - batch.inverse.double()).abs().mean())


def fit(sampler, *, hidden: int, depth: int = 2, head: str = "direct", steps: int | None = None,
        epochs: int | None = None, train_size: int | None = None, epoch_steps: int = 1000,
        batch_size: int = 128, lr: float = 5e-5, weight_decay: float = 1e-7, seed: int = 0,
        device: str = "cpu", dtype=torch.float64, test: Batch | None = None, progress: bool = True):
    """Train an :class:`InverseMLP` on matrices from ``sampler`` (a BoxSampler or MatrixSampler).

    With ``train_size``, one fixed training set of that many matrices is drawn and an epoch is a
    shuffled pass over it; otherwise every batch is fresh and an epoch is ``epoch_steps`` steps.
    Give ``steps`` or ``epochs``. Returns (model, TrainingHistory).
    """
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps or epochs")
    torch.manual_seed(seed)
    model = InverseMLP(sampler.n, hidden, depth, center=sampler.center, radius=sampler.radius, head=head,
                       dtype=dtype).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=3, T_mult=2, eta_min=1e-6)
    fixed = sampler.sample(train_size) if train_size else None
    steps_per_epoch = math.ceil(train_size / batch_size) if train_size else epoch_steps
    total = steps if steps is not None else epochs * steps_per_epoch
    bar = _progress(total, progress, f"training {depth}-FC h={hidden} n={sampler.n} ({head})")
    losses, epoch_loss, step = [], 0.0, 0
    order = None
    while step < total:
        if fixed is not None and (order is None or step % steps_per_epoch == 0):
            order = torch.randperm(train_size)
        if fixed is not None:
            index = order[(step % steps_per_epoch) * batch_size:(step % steps_per_epoch + 1) * batch_size]
            A, target = fixed.A[index], fixed.inverse[index]
        else:
            A, target = sampler.sample(batch_size)
        A, target = A.to(device=device, dtype=dtype), target.to(device=device, dtype=dtype)
        loss = torch.nn.functional.mse_loss(model(A), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        epoch_loss += loss.item()
        step += 1
        bar.update(1)
        if step % steps_per_epoch == 0 or step == total:
            losses.append(epoch_loss / (step - steps_per_epoch * len(losses)))
            epoch_loss = 0.0
            scheduler.step()
            bar.set_postfix(loss=f"{losses[-1]:.2e}")
    bar.close()
    model.eval()
    test_error = average_absolute_error(model, test) if test is not None else float("nan")
    model.metadata = dict(neuinv_version=__version__, seed=seed, test_error=test_error,
                          training=dict(steps=total, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                        train_size=train_size, epoch_steps=steps_per_epoch,
                                        scheduler="CosineAnnealingWarmRestarts(T_0=3, T_mult=2, eta_min=1e-6)"))
    return model, TrainingHistory(losses, test_error)


def load_pretrained(name: str, map_location="cpu") -> InverseMLP:
    """One of the shipped 2-FC checkpoints: "paper-2x2-1st", "paper-2x2-2nd", "paper-3x3", "paper-16x16"."""
    if name not in PRETRAINED:
        raise ValueError(f"no pretrained model {name!r}; available: {PRETRAINED}")
    with resources.as_file(resources.files("neuinv") / "pretrained" / f"{name}.pt") as path:
        if not path.exists():
            raise FileNotFoundError(f"the checkpoint {name} is not installed at {path}")
        return InverseMLP.load(path, map_location=map_location)


def _progress(total: int, enabled: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=description, mininterval=1.0)
