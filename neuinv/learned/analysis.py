"""Linear-region analysis of a trained 2-FC initializer (Ji, Wu & Xi, AISTATS 2025, §5.3, App. D).

A 2-FC ReLU network is affine on each region where its activation pattern m (which hidden units
are active) is fixed: F(u) = W2 diag(m) W1 u + (W2 diag(m) b1 + b2). The paper finds that a small
network on the 2x2 (1st) dataset uses essentially two patterns, each close to the first-order
Taylor map T(u) = vec(B) - radius (B kron B^T) u, B = A0^-1.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .models import InverseMLP, taylor_affine_map


class Region(NamedTuple):
    pattern: tuple         # 1 for an active hidden unit, 0 for an inactive one
    share: float           # fraction of the sampled inputs in this region
    weight: torch.Tensor   # (n^2, n^2): the region's affine map in u = (A - A0) / radius
    bias: torch.Tensor     # (n^2,)
    taylor_distance: float  # largest |coefficient - Taylor coefficient| over weight and bias


def activation_regions(model: InverseMLP, U: torch.Tensor) -> list[Region]:
    """The activation patterns of a direct-head 2-FC model over inputs U (m, n, n) in [-1, 1],
    most frequent first, with each region's affine map and its distance to the Taylor map."""
    if model.depth != 2 or model.head != "direct":
        raise ValueError("region analysis is defined here for the paper's 2-FC direct-head networks")
    first, second = model.layers
    W1, b1 = first.weight.detach().double(), first.bias.detach().double()
    W2, b2 = second.weight.detach().double(), second.bias.detach().double()
    u = U.reshape(U.shape[0], -1).double()
    active = (u @ W1.T + b1) > 0
    patterns, counts = torch.unique(active, dim=0, return_counts=True)
    taylor_weight, taylor_bias = taylor_affine_map(model.center, model.radius)
    regions = []
    for pattern, count in sorted(zip(patterns, counts.tolist()), key=lambda item: -item[1]):
        mask = pattern.double()
        weight = W2 @ (mask[:, None] * W1)
        bias = W2 @ (mask * b1) + b2
        distance = max(float((weight - taylor_weight).abs().max()), float((bias - taylor_bias).abs().max()))
        regions.append(Region(tuple(int(x) for x in pattern), count / U.shape[0], weight, bias, distance))
    return regions


def markdown(regions: list[Region], top: int = 6) -> str:
    lines = ["| pattern | share of inputs | largest coefficient distance to the Taylor map |", "|---|---:|---:|"]
    for region in regions[:top]:
        lines.append(f"| {''.join(map(str, region.pattern))} | {100 * region.share:.3g}% | {region.taylor_distance:.3g} |")
    rest = sum(r.share for r in regions[top:])
    if rest:
        lines.append(f"| {len(regions) - top} other patterns | {100 * rest:.2f}% | |")
    return "\n".join(lines)
