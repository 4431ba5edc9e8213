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


def taylor_affine_map(center: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """T(u) = vec(B) - radius (B kron B^T) u, B = A0^-1: the first-order Taylor map of A^-1 at A0 in
    the normalised perturbation u = vec(A - A0) / radius (row-major vec). Returns (weight, offset)."""
    B, pivot_info = torch.linalg.inv_ex(center.double())
    if pivot_info.item() != 0:
        raise ValueError("center is singular: the Taylor map needs an invertible A0")
    return -radius * torch.kron(B.contiguous(), B.T.contiguous()), B.reshape(-1)


class InverseMLP(torch.nn.Module):
    """A learned initializer: an MLP from the normalised perturbation U = (A - A0) / radius to A^-1,
    trusted on the box max |A - A0| <= radius (Ji, Wu & Xi, AISTATS 2025: 2-FC is
    Linear(n^2, h) -> ReLU -> Linear(h, n^2); 3-FC has two hidden layers).

    head="direct": the paper's network, output = MLP(U).
    head="taylor": output = B - B (A - A0) B + MLP(U), B = A0^-1: the network learns only the
    correction to the first-order Taylor map (folded in as a bias and a linear skip term).
    The forward pass is :func:`neuinv.reference.mlp_initializer` on :meth:`initializer_parameters`;
    ``batched_inverse`` hands those parameters to its backend, which may run a fused kernel instead.
    """

    HEADS = ("direct", "taylor")

    def __init__(self, n: int, hidden: int, depth: int = 2, center: torch.Tensor | None = None,
                 radius: float = 0.01, head: str = "direct", dtype=torch.float64):
        super().__init__()
        if depth not in (2, 3):
            raise ValueError(f"depth must be 2 (2-FC) or 3 (3-FC), got {depth}")
        if head not in self.HEADS:
            raise ValueError(f"head must be one of {self.HEADS}, got {head!r}")
        center = torch.eye(n, dtype=dtype) if center is None else center.to(dtype)
        if center.shape != (n, n):
            raise ValueError(f"center must be {n}x{n}, got shape {tuple(center.shape)}")
        if not radius > 0:
            raise ValueError(f"radius must be positive, got {radius}")
        self.n, self.hidden, self.depth, self.radius, self.head = n, hidden, depth, float(radius), head
        self.metadata: dict = {}
        dims = [n * n] + [hidden] * (depth - 1) + [n * n]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(dims[i], dims[i + 1], dtype=dtype) for i in range(depth))
        self.register_buffer("center", center.clone())
        if head == "taylor":
            skip, offset = taylor_affine_map(center, self.radius)
            # The correction starts at zero, so an untrained model is exactly the Taylor map.
            torch.nn.init.zeros_(self.layers[-1].weight)
            torch.nn.init.zeros_(self.layers[-1].bias)
            self.register_buffer("taylor_offset", offset.to(dtype))
            self.register_buffer("taylor_skip", skip.to(dtype))

    @property
    def dtype(self) -> torch.dtype:
        return self.center.dtype

    def initializer_parameters(self) -> dict:
        """The arguments of :func:`neuinv.reference.mlp_initializer` besides the flattened matrices: center,
        inv_radius, weights, biases (the Taylor head's offset folded into the last bias) and skip."""
        weights = [layer.weight for layer in self.layers]
        biases = [layer.bias for layer in self.layers]
        skip = None
        if self.head == "taylor":
            biases[-1] = biases[-1] + self.taylor_offset
            skip = self.taylor_skip
        return dict(center=self.center.reshape(-1), inv_radius=1.0 / self.radius, weights=weights, biases=biases,
                    skip=skip)

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        from .. import reference

        a = A.reshape(-1, self.n * self.n).to(self.dtype)
        return reference.mlp_initializer(a, **self.initializer_parameters()).reshape(A.shape).to(A.dtype)

    def in_domain(self, A: torch.Tensor) -> torch.Tensor:
        """max |A - A0| <= radius, per matrix (a relative slack of 1e-12 for rounding)."""
        distance = (A - self.center.to(A.dtype)).abs().flatten(-2).amax(-1)
        return distance <= self.radius * (1 + 1e-12)

    def config(self) -> dict:
        return dict(n=self.n, hidden=self.hidden, depth=self.depth, radius=self.radius, head=self.head,
                    dtype=str(self.dtype).replace("torch.", ""))

    def save(self, path, **metadata) -> None:
        """Weights plus metadata; loads with :meth:`load` without executing pickled code."""
        torch.save({"format": CHECKPOINT_FORMAT, "config": self.config(), "metadata": metadata,
                    "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path, map_location="cpu") -> "InverseMLP":
        """A model saved by :meth:`save`; ``torch.load(weights_only=True)`` refuses anything but
        tensors and plain containers, so a checkpoint cannot run code."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a neuinv InverseMLP checkpoint ({CHECKPOINT_FORMAT})")
        config = dict(checkpoint["config"])
        config["dtype"] = getattr(torch, config["dtype"])
        model = cls(center=checkpoint["state_dict"]["center"], **config)
        model.load_state_dict(checkpoint["state_dict"])
        model.metadata = checkpoint["metadata"]
        return model


CHECKPOINT_FORMAT = "neuinv-inverse-mlp-1"
