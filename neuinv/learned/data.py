"""Matrix families for learned initializers: the paper's four datasets and general samplers.

The paper's recipe (Ji, Wu & Xi, AISTATS 2025, and the authors' code): A = A0 + eps U with U
uniform in [-1, 1]^(n x n), eps = 0.01; the network sees U, the target is A^-1, in float64.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

PAPER_EPS = 0.01
PAPER_16X16_SEED = 2025


def paper_16x16_center(seed: int = PAPER_16X16_SEED) -> torch.Tensor:
    """neuinv's own draw of the paper's 16x16 centre: entries uniform in {-2, -1, 0, 1, 2},
    redrawn until non-singular (cond_2 < 1e6)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        A0 = torch.randint(-2, 3, (16, 16), generator=g).double()
        if torch.linalg.cond(A0) < 1e6:
            return A0


PAPER_CENTERS = {
    "paper-2x2-1st": lambda: torch.tensor([[2.0, 2.0], [2.0, 3.0]], dtype=torch.float64),
    "paper-2x2-2nd": lambda: torch.tensor([[2.0, 1.0], [0.0, -1.0]], dtype=torch.float64),
    "paper-3x3": lambda: torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0], [1.0, 2.0, 4.0]], dtype=torch.float64),
    "paper-16x16": paper_16x16_center,
}


class Batch(NamedTuple):
    A: torch.Tensor        # (b, n, n) matrices
    inverse: torch.Tensor  # (b, n, n) their inverses (float64 LU)


class BoxSampler:
    """A = center + radius U, U uniform in [-1, 1]^(n x n): the box a learned initializer is trained on
    and trusted in. Deterministic for a given seed."""

    def __init__(self, center: torch.Tensor, radius: float, *, seed: int = 0, dtype=torch.float64, device="cpu"):
        if center.dim() != 2 or center.shape[0] != center.shape[1]:
            raise ValueError(f"center must be one square matrix, got shape {tuple(center.shape)}")
        if not radius > 0:
            raise ValueError(f"radius must be positive, got {radius}")
        self.center = center.to(dtype=dtype, device=device)
        self.radius = float(radius)
        self.n = center.shape[0]
        self.dtype = dtype
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def sample(self, batch: int) -> Batch:
        U = 2 * torch.rand(batch, self.n, self.n, generator=self.generator, dtype=self.dtype,
                           device=self.center.device) - 1
        A = self.center + self.radius * U
        return Batch(A, torch.linalg.inv(A.double()).to(self.dtype))


class MatrixSampler:
    """Samples (with replacement) from a user's own tensor of matrices (m, n, n); its box is the
    smallest one around the entrywise mean that holds them all."""

    def __init__(self, matrices: torch.Tensor, *, seed: int = 0):
        if matrices.dim() != 3 or matrices.shape[1] != matrices.shape[2] or matrices.shape[0] == 0:
            raise ValueError(f"matrices must be a non-empty (m, n, n) tensor, got shape {tuple(matrices.shape)}")
        self.matrices = matrices.double()
        self.inverses, info = torch.linalg.inv_ex(self.matrices)
        if bool((info != 0).any()):
            raise ValueError(f"matrices[{int((info != 0).nonzero()[0])}] is singular")
        self.center = self.matrices.mean(0)
        self.radius = float((self.matrices - self.center).abs().max().clamp_min(1e-12))
        self.n = matrices.shape[1]
        self.dtype = torch.float64
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch: int) -> Batch:
        index = torch.randint(0, self.matrices.shape[0], (batch,), generator=self.generator)
        return Batch(self.matrices[index], self.inverses[index])


def paper_sampler(name: str, *, seed: int = 0, base_matrix: str | Path | None = None, device="cpu") -> BoxSampler:
    """The sampler of one of the paper's datasets ("paper-2x2-1st", "paper-2x2-2nd", "paper-3x3",
    "paper-16x16"); ``base_matrix`` (a .npy file) replaces the centre, e.g. the authors' own 16x16 A0.
    ``device``: where the matrices are drawn and inverted (a CUDA sampler keeps GPU training off the host)."""
    if name not in PAPER_CENTERS:
        raise ValueError(f"unknown dataset {name!r}; the paper's are {sorted(PAPER_CENTERS)}")
    center = PAPER_CENTERS[name]() if base_matrix is None else torch.as_tensor(np.load(base_matrix), dtype=torch.float64)
    return BoxSampler(center, PAPER_EPS, seed=seed, device=device)


def paper_test_set(path: str | Path, center: torch.Tensor) -> Batch:
    """The authors' test or validation set: an array (m, n, n, 2) with [..., 0] = U, [..., 1] = A^-1."""
    data = torch.as_tensor(np.load(path), dtype=torch.float64)
    return Batch(center + PAPER_EPS * data[..., 0], data[..., 1])
