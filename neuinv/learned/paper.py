"""Reproducing Ji, Wu & Xi (AISTATS 2025), Tables 1 and 2: average absolute test error of 2-FC and
3-FC networks trained on the paper's four datasets, beside the paper's own numbers."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import NamedTuple

import torch

from .data import PAPER_EPS, BoxSampler, paper_sampler, paper_test_set
from .models import TaylorInitializer
from .training import average_absolute_error, fit_runs

SHARED_PAPER = Path(__file__).resolve().parents[3] / "shared" / "paper"
TEST_SET_DIRS = {"paper-2x2-1st": "matrix_2_dataset", "paper-2x2-2nd": "matrix_2_dataset_2",
                 "paper-3x3": "matrix_3_dataset"}
HIDDEN = {"paper-2x2-1st": 32, "paper-2x2-2nd": 32, "paper-3x3": 72, "paper-16x16": 2048}

# Table 1 and Table 2 of the paper: average absolute error on the test set, mean of 3 runs.
PAPER_TABLE_1 = {
    ("2-FC", "paper-2x2-1st"): 2.05e-5, ("2-FC", "paper-2x2-2nd"): 6.39e-6, ("2-FC", "paper-3x3"): 8.77e-5,
    ("2-FC", "paper-16x16"): 1.68e-4,
    ("3-FC", "paper-2x2-1st"): 1.52e-5, ("3-FC", "paper-2x2-2nd"): 7.37e-6, ("3-FC", "paper-3x3"): 1.53e-4,
    ("3-FC", "paper-16x16"): 2.58e-4,
}
PAPER_TABLE_2 = {"first-order (linear) approximation": 1.97e-4, "2-FC small (h=8)": 6.82e-5,
                 "2-FC": 2.05e-5, "3-FC": 1.52e-5}


FRESH_SAMPLE_EPOCHS = 3 + 6 + 12 + 24 + 48 + 96
"""Epochs in the 16x16 run: the end of the sixth CosineAnnealingWarmRestarts(T_0=3, T_mult=2) cycle."""


class Recipe(NamedTuple):
    train_size: int | None  # None: fresh matrices every batch
    steps: int | None
    epochs: int | None
    epoch_steps: int = 1000  # the epoch of fresh-sample training (train_size None)


def recipe(dataset: str, quick: bool) -> Recipe:
    """The paper's training length per dataset (App. B); --quick shortens every run to 20,000 steps
    (300 for the 16x16 networks, whose h = 2048 steps cost far more).

    The paper fixes no epoch for the 16x16 network's fresh batches. neuinv makes its 200,000 steps
    189 epochs, so that the run ends as the sixth cosine cycle reaches eta_min: with 1,000-step
    epochs it ended 11 epochs after a warm restart, at a raised learning rate (training MSE 3.2e-9
    at step 173,000, 1.1e-7 at the end)."""
    if quick:
        if dataset == "paper-16x16":
            return Recipe(train_size=None, steps=300, epochs=None)
        return Recipe(train_size=100_000, steps=20_000, epochs=None)
    if dataset.startswith("paper-2x2"):
        return Recipe(train_size=1_000_000, steps=None, epochs=20)
    if dataset == "paper-3x3":
        return Recipe(train_size=100_000, steps=200_000, epochs=None)
    return Recipe(train_size=None, steps=200_000, epochs=None, epoch_steps=-(-200_000 // FRESH_SAMPLE_EPOCHS))


def evaluation_batch(dataset: str, center: torch.Tensor):
    """The authors' own test set where ../shared/paper has it, else 10,000 fresh matrices around `center`."""
    directory = TEST_SET_DIRS.get(dataset)
    if directory and (SHARED_PAPER / directory / "test_set.npy").exists():
        return paper_test_set(SHARED_PAPER / directory / "test_set.npy", center), "authors' test set"
    return BoxSampler(center, PAPER_EPS, seed=10_000).sample(10_000), "fresh test set (seed 10000)"


class Row(NamedTuple):
    table: str
    model: str
    dataset: str
    errors: list
    paper: float
    test_set: str
    seconds: float


def _train_and_score(sampler, dataset, hidden, depth, runs, quick, device, test):
    plan = recipe(dataset, quick)
    start = time.perf_counter()
    trained = fit_runs(sampler, runs=runs, hidden=hidden, depth=depth, steps=plan.steps, epochs=plan.epochs,
                       train_size=plan.train_size, epoch_steps=plan.epoch_steps, seed=0, device=device,
                       test=test)
    return [history.test_error for _, history in trained], time.perf_counter() - start


def reproduce(table: str = "all", runs: int = 3, quick: bool = False, device: str = "cpu",
              datasets: list[str] | None = None, models: list[str] | None = None,
              base_matrix: str | Path | None = None) -> list[Row]:
    """Train and score the paper's networks (runs r = 0..runs-1 seeded r, trained together) on
    ``datasets`` (default: all four); ``models`` picks Table 1's "2-FC" and/or "3-FC" (default both);
    ``base_matrix`` replaces the 16x16 centre (e.g. the authors' own)."""
    datasets = list(HIDDEN) if datasets is None else datasets
    models = ["2-FC", "3-FC"] if models is None else models
    rows = []

    def sampler_for(dataset):
        centre_file = base_matrix if dataset == "paper-16x16" else None
        return paper_sampler(dataset, base_matrix=centre_file, device=device)

    if table in ("1", "all"):
        for dataset in datasets:
            sampler = sampler_for(dataset)
            test, test_name = evaluation_batch(dataset, sampler.center.cpu())
            for depth, name in ((2, "2-FC"), (3, "3-FC")):
                if name not in models:
                    continue
                errors, seconds = _train_and_score(sampler, dataset, HIDDEN[dataset], depth, runs, quick, device, test)
                rows.append(Row("1", name, dataset, errors, PAPER_TABLE_1[(name, dataset)], test_name, seconds))
    if table in ("2", "all") and "paper-2x2-1st" in datasets:
        dataset = "paper-2x2-1st"
        sampler = sampler_for(dataset)
        test, test_name = evaluation_batch(dataset, sampler.center.cpu())
        linear = average_absolute_error(TaylorInitializer(sampler.center.cpu(), PAPER_EPS), test)
        rows.append(Row("2", "first-order (linear) approximation", dataset, [linear],
                        PAPER_TABLE_2["first-order (linear) approximation"], test_name, 0.0))
        for name, hidden, depth in (("2-FC small (h=8)", 8, 2), ("2-FC", 32, 2), ("3-FC", 32, 3)):
            errors, seconds = _train_and_score(sampler, dataset, hidden, depth, runs, quick, device, test)
            rows.append(Row("2", name, dataset, errors, PAPER_TABLE_2[name], test_name, seconds))
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| table | model | dataset | neuinv (mean ± std over runs) | paper | neuinv / paper | test set | train s |",
             "|---|---|---|---|---|---:|---|---:|"]
    for r in rows:
        mean = statistics.fmean(r.errors)
        spread = statistics.stdev(r.errors) if len(r.errors) > 1 else 0.0
        lines.append(f"| {r.table} | {r.model} | {r.dataset} | {mean:.3g} ± {spread:.2g} ({len(r.errors)}) | "
                     f"{r.paper:.3g} | {mean / r.paper:.2f} | {r.test_set} | {r.seconds:.0f} |")
    return "\n".join(lines)
