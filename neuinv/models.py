"""Initializers for ``batched_inverse(A, model=...)``: modules mapping A to a guess X0 of A^-1,
each with ``in_domain(A)``, the guard of where the guess may be trusted."""
from __future__ import annotations

import torch


class TaylorInitializer(torch.nn.Module):
    """First-order Taylor map around a non-singular centre A0, trusted on a box:

        X0 = B - B (A - A0) B,  B = A0^-1,  for max |A - A0| <= radius (entrywise).

    Its residual is I - A X0 = ((A - A0) B)^2, so on the box ||I - A X0|| <= (n radius ||B||)^2 -- the
    map that Ji, Wu & Xi (AISTATS 2025) show a trained 2-layer ReLU network approximates.
    """

    def __init__(self, center: torch.Tensor, radius: float):
        super().__init__()
        if center.dim() != 2 or center.shape[0] != center.shape[1]:
            raise ValueError(f"center must be one square matrix, got shape {tuple(center.shape)}")
        if not radius > 0:
            raise ValueError(f"radius must be positive, got {radius}")
        inverse, pivot_info = torch.linalg.inv_ex(center.double())
        if pivot_info.item() != 0:
            raise ValueError("center is singular: the Taylor map needs an invertible A0")
        self.n = center.shape[0]
        self.radius = float(radius)
        self.register_buffer("center", center.clone())
        self.register_buffer("center_inverse", inverse.to(center.dtype))

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        B = self.center_inverse.to(A.dtype)
        return B - B @ (A - self.center.to(A.dtype)) @ B

    def in_domain(self, A: torch.Tensor) -> torch.Tensor:
        return ((A - self.center.to(A.dtype)).abs() <= self.radius).flatten(-2).all(-1)
