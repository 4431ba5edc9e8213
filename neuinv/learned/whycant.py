"""The "why can't" of Ji, Wu & Xi (AISTATS 2025), shown: near singular matrices the inverse is
unbounded, so no ReLU network fits it there, while batched_inverse's guard stays exact.

1. Pictures of the near-singular set M_eps = {A : sigma_min(A) < eps} of 2x2 matrices (paper
   Fig. 1: slices a11 = 1, a12 = 2 and a11 = 1, a22 = 2; Fig. 2: the 3-D view with a11 = 1).
2. The same 2-FC network trained on boxes A0(d) + r U, A0(d) = [[1, 2], [2, 4 + d]], whose centre
   approaches the singular matrix [[1, 2], [2, 4]] as d shrinks, until the box contains it. The
   network's error E||A^-1 - F(A)||_F^K grows without bound; batched_inverse(A, model=F) stays exact.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from .. import reference
from ..inverse import batched_inverse_ex
from .data import BoxSampler
from .training import fit

SINGULAR_CENTER = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
RADIUS = 0.2


class BoxResult(NamedTuple):
    offset: float               # d: A0 = [[1, 2], [2, 4 + d]]
    min_sigma: float            # smallest sigma_min(A) among the test matrices
    error_moments: dict         # K -> E ||A^-1 - F(A)||_F^K
    error_by_sigma: list        # (sigma_min bin upper edge, mean error in the bin)
    guarded_worst_residual: float  # worst ||I - A X||_F of batched_inverse(A, model=F) on certified matrices
    guarded_uncertified: int    # matrices batched_inverse_ex did not certify (singular to working precision)
    fallbacks: int


SIGMA_EDGES = (1e-3, 1e-2, 1e-1, 1.0, float("inf"))


def singular_threshold(radius: float = RADIUS) -> float:
    """Offset d below which the box around [[1, 2], [2, 4 + d]] holds singular matrices, from
    det = d + r (u22 + 4 u11 + d u11 - 2 u21 - 2 u12) + r^2 (u11 u22 - u12 u21), |u| <= 1."""
    return (9 * radius + 2 * radius**2) / (1 - radius)


def box_experiment(offsets=(6.0, 4.0, 3.0, 2.0, 1.0, 0.0), steps: int = 4000, test_size: int = 20_000,
                   hidden: int = 32, seed: int = 0, progress: bool = True) -> list[BoxResult]:
    results = []
    for offset in offsets:
        center = SINGULAR_CENTER + torch.tensor([[0.0, 0.0], [0.0, offset]], dtype=torch.float64)
        model, _ = fit(BoxSampler(center, RADIUS, seed=seed), hidden=hidden, steps=steps, lr=1e-3, seed=seed,
                       progress=progress)
        A = BoxSampler(center, RADIUS, seed=seed + 1).sample(test_size).A
        truth, info = torch.linalg.inv_ex(A)
        keep = info == 0
        A, truth = A[keep], truth[keep]
        with torch.no_grad():
            error = torch.linalg.matrix_norm(model(A) - truth)
        sigma = torch.linalg.svdvals(A)[:, -1]
        by_sigma = []
        for low, high in zip((0.0,) + SIGMA_EDGES[:-1], SIGMA_EDGES):
            inside = (sigma >= low) & (sigma < high)
            if inside.any():
                by_sigma.append((high, float(error[inside].mean())))
        X, guarded = batched_inverse_ex(A, model=model)
        certified = guarded.certified
        residual = reference.residual_norm(A, X)
        results.append(BoxResult(offset, float(sigma.min()),
                                 {K: float((error**K).mean()) for K in (1, 2, 4)}, by_sigma,
                                 float(residual[certified].max()), int((~certified).sum()),
                                 int(guarded.fallback.sum())))
    return results


def markdown(results: list[BoxResult]) -> str:
    lines = [f"Boxes A0 + {RADIUS} U, A0 = [[1, 2], [2, 4 + d]]; the box holds singular matrices for "
             f"d <= {singular_threshold():.2f} (det = d + O(r) changes sign inside it).",
             "", "| d | min sigma_min | E err | E err^2 | E err^4 | batched_inverse worst residual | "
             "uncertified | fallbacks |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        m = r.error_moments
        lines.append(f"| {r.offset:g} | {r.min_sigma:.2e} | {m[1]:.3g} | {m[2]:.3g} | {m[4]:.3g} | "
                     f"{r.guarded_worst_residual:.1e} | {r.guarded_uncertified} | {r.fallbacks} |")
    lines += ["", "Mean network error ||A^-1 - F(A)||_F by sigma_min(A):", "",
              "| d | " + " | ".join(f"sigma < {edge:g}" for edge in SIGMA_EDGES) + " |",
              "|---:|" + "---:|" * len(SIGMA_EDGES)]
    for r in results:
        cells = dict(r.error_by_sigma)
        lines.append(f"| {r.offset:g} | " + " | ".join(
            f"{cells[e]:.3g}" if e in cells else "–" for e in SIGMA_EDGES) + " |")
    return "\n".join(lines)


def near_singular_figures(out_dir: str | Path, eps: float = 0.1) -> list[Path]:
    """PNG pictures of M_eps for 2x2 matrices (the paper's Fig. 1 slices and Fig. 2 3-D view).
    Raises ImportError naming the extra to install where matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("the figures are drawn with matplotlib, which is not installed: "
                          "pip install 'neuinv[plot]'") from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = torch.linspace(-4, 4, 401, dtype=torch.float64)
    X, Y = torch.meshgrid(grid, grid, indexing="xy")
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    slices = [("a11 = 1, a12 = 2", "a21", "a22", lambda x, y: torch.stack([torch.ones_like(x), 2 * torch.ones_like(x), x, y], -1)),
              ("a11 = 1, a22 = 2", "a12", "a21", lambda x, y: torch.stack([torch.ones_like(x), x, y, 2 * torch.ones_like(x)], -1))]
    for ax, (title, xlabel, ylabel, build) in zip(axes, slices):
        A = build(X, Y).reshape(*X.shape, 2, 2)
        sigma = torch.linalg.svdvals(A)[..., -1]
        image = ax.pcolormesh(X.numpy(), Y.numpy(), torch.log10(sigma.clamp_min(1e-6)).numpy(), cmap="viridis",
                              shading="auto")
        ax.contour(X.numpy(), Y.numpy(), sigma.numpy(), levels=[eps], colors="red")
        ax.set_title(f"{title}: log10 sigma_min; M_eps (eps={eps}) in red", fontsize=10)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    paths.append(out_dir / "near_singular_slices.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    cube = torch.linspace(-3, 3, 61, dtype=torch.float64)
    a12, a21, a22 = torch.meshgrid(cube, cube, cube, indexing="ij")
    A = torch.stack([torch.ones_like(a12), a12, a21, a22], -1).reshape(-1, 2, 2)
    near = torch.linalg.svdvals(A)[:, -1] < eps
    fig = plt.figure(figsize=(6, 5.5))
    ax = fig.add_subplot(projection="3d")
    points = A[near].reshape(-1, 4)
    ax.scatter(points[:, 1].numpy(), points[:, 2].numpy(), points[:, 3].numpy(), s=2, c=points[:, 3].numpy(),
               cmap="viridis")
    ax.set(title=f"M_eps for a11 = 1 (eps={eps}): near a22 = a12 a21", xlabel="a12", ylabel="a21", zlabel="a22")
    fig.tight_layout()
    paths.append(out_dir / "near_singular_3d.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
