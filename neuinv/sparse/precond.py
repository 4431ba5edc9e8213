"""Block-Jacobi preconditioning on ``batched_inverse``.

M = blockdiag(A_11, ..., A_kk), the diagonal blocks of a sparse A; M^-1 r is one batched block
matvec with the inverted blocks. Blocks of unequal size are padded with the identity to the
largest size, diag(B, I)^-1 = diag(B^-1, I), so all blocks invert in one ``batched_inverse`` call.
Complex matrices keep their complex dtype: their blocks are inverted as complex matrices.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse
import torch

from ..inverse import INFO_DTYPES, batched_inverse_ex
from .solvers import _complex_of

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64,
                 torch.complex64: np.complex64, torch.complex128: np.complex128}


class UpdateReport(NamedTuple):
    """What :meth:`BlockJacobi.update` did: Newton–Schulz steps per block and exact-path blocks."""

    max_iterations: int
    mean_iterations: float
    fallbacks: int


class BlockJacobi:
    """Block-Jacobi preconditioner of a sparse matrix, inverted with :func:`neuinv.batched_inverse`.

    Args:
        A: scipy.sparse matrix, or torch sparse (COO or CSR) or dense tensor, CPU or CUDA, square
            (N, N). Its dtype is the preconditioner's (``self.dtype``) when float32, float64, complex64
            or complex128; other real dtypes (integers, bool, half) become float64 and complex32
            becomes complex128. A complex A gives complex blocks and a complex M^-1.
        block_size: fixed block size; the last block holds what is left.
        blocks: block boundaries [0, b1, ..., N] for blocks of varying sizes (instead of block_size).
        model, backend: passed to ``batched_inverse`` for the first inversion.
        on_singular: "raise" (default): a block that is singular or cannot be certified raises
            ``torch.linalg.LinAlgError`` naming the block and its rows; "identity": such a block is
            left unpreconditioned (its part of M^-1 is the identity), counted in ``singular_blocks``.

    Attributes: ``inverse``, the inverted blocks (num_blocks, width, width) of ``dtype``;
    ``boundaries``, ``sizes``; ``singular_blocks``, the blocks of ``inverse`` that are the identity
    in place of a failed inverse (always those of the current inverses).
    Raises ``TypeError`` for an A of another type, ``ValueError`` for bad shapes or blocks.
    """

    def __init__(self, A, block_size: int | None = None, blocks=None, *, model=None, backend: str = "auto",
                 on_singular: str = "raise"):
        if on_singular not in ("raise", "identity"):
            raise ValueError(f"on_singular must be 'raise' or 'identity', got {on_singular!r}")
        rows, cols, values, self.shape, self.device = _coordinates(A)
        self.dtype = values.dtype
        N = self.shape[0]
        self.boundaries = _boundaries(N, block_size, blocks)
        self.sizes = np.diff(self.boundaries)
        self.block_width = int(self.sizes.max()) if len(self.sizes) else 0
        self.on_singular, self.backend = on_singular, backend
        # Position of every unknown inside the padded (blocks, width) layout.
        block_of_row = np.repeat(np.arange(len(self.sizes)), self.sizes)
        offset = np.arange(N) - self.boundaries[block_of_row]
        self._block_of_row = torch.as_tensor(block_of_row, device=self.device)
        self._offset = torch.as_tensor(offset, device=self.device)
        blocks_dense = self._extract(rows, cols, values, self.dtype)
        X, info = batched_inverse_ex(blocks_dense, model=model, backend=backend)
        self.inverse, self.singular_blocks = self._handle_singular(X, info, self.dtype)

    @property
    def num_blocks(self) -> int:
        return len(self.sizes)

    def _extract(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
        """The diagonal blocks as a (blocks, width, width) tensor of `dtype`, padded with the identity."""
        same_block = self._block_of_row[rows] == self._block_of_row[cols]
        rows, cols, values = rows[same_block], cols[same_block], values[same_block]
        dense = torch.zeros(self.num_blocks, self.block_width, self.block_width, dtype=dtype, device=self.device)
        dense.index_put_((self._block_of_row[rows], self._offset[rows], self._offset[cols]), values, accumulate=True)
        padding = torch.arange(self.block_width, device=self.device)[None, :] >= torch.as_tensor(
            self.sizes, device=self.device)[:, None]
        dense.diagonal(dim1=-2, dim2=-1)[padding] = 1.0
        return dense

    def _handle_singular(self, X: torch.Tensor, info, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(inverses, singular blocks): X, or a copy of it with the identity in its failed blocks; for
        on_singular="raise", ``LinAlgError`` if a block failed. Changes no attribute."""
        bad = (~info.certified).nonzero().squeeze(1)
        if bad.numel() == 0:
            return X, bad.cpu()
        if self.on_singular == "raise":
            k = int(bad[0])
            raise torch.linalg.LinAlgError(
                f"block {k} (rows {self.boundaries[k]}..{self.boundaries[k + 1] - 1}) is singular or too "
                f"ill-conditioned to invert in {dtype} (error bound ||X - B^-1||_F / ||B^-1||_F = "
                f"{float(info.error_bound[k]):.3g}); "
                f"{bad.numel()} of {self.num_blocks} blocks failed. Use on_singular='identity' to leave them "
                f"unpreconditioned.")
        X = X.clone()
        X[bad] = torch.eye(self.block_width, dtype=X.dtype, device=X.device)
        return X, bad.cpu()

    def update(self, A_new) -> UpdateReport:
        """Refresh the block inverses for a matrix with the same pattern of blocks whose entries
        drifted: Newton–Schulz warm-started from the current inverses (``init=``), exact path per
        block where the old inverse is no longer a good guess.

        A_new: any input ``BlockJacobi`` accepts, of shape ``self.shape``; its entries are taken in
        ``self.dtype``'s precision. A complex A_new for a real preconditioner promotes it to the
        complex dtype of that precision (float32 -> complex64, float64 -> complex128): ``self.dtype``
        and ``self.inverse`` become complex. Raises ``ValueError`` for another shape, and, as the
        constructor, ``LinAlgError`` for a failed block with on_singular="raise".

        The update is all or nothing: one that raises leaves ``inverse`` (the same tensor, the same values),
        ``dtype``, ``singular_blocks`` and the buffers as they were; a successful one sets all of them,
        ``singular_blocks`` to the blocks that failed in this update.

        The new inverses are written (``out=``) into the tensor that held them before the previous update (a
        failed update writes there too), so that repeated updates allocate no new inverse: copy ``self.inverse``
        to keep it across two updates."""
        rows, cols, values, shape, _ = _coordinates(A_new, device=self.device)
        if shape != self.shape:
            raise ValueError(f"update needs a matrix of shape {self.shape}, got {shape}")
        dtype = _complex_of(self.dtype) if values.is_complex() else self.dtype
        blocks_dense = self._extract(rows, cols, values.to(dtype), dtype)
        init = self.inverse.to(dtype)
        spare, info_buffers = self._buffers(dtype)
        X, info = batched_inverse_ex(blocks_dense, init=init, backend=self.backend, out=(spare, info_buffers))
        inverse, singular = self._handle_singular(X, info, dtype)
        self.dtype, self.inverse, self.singular_blocks = dtype, inverse, singular
        self._spare, self._info = init, info_buffers
        return UpdateReport(int(info.iterations.max()) if self.num_blocks else 0,
                            float(info.iterations.float().mean()) if self.num_blocks else 0.0,
                            int(info.fallback.sum()))

    def _buffers(self, dtype: torch.dtype):
        """(X, info) for ``batched_inverse_ex``'s out=: the spare inverse of the previous update (or a new one where
        there is none of `dtype`) and the per-block fields, kept between updates (by ``update``, once it succeeds)."""
        spare = getattr(self, "_spare", None)
        if spare is None or spare.dtype != dtype:
            spare = torch.empty_like(self.inverse, dtype=dtype)
        info = getattr(self, "_info", None)
        if info is None:
            info = tuple(torch.empty(self.num_blocks, dtype=field, device=self.device) for field in INFO_DTYPES)
        return spare, info

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """M^-1 r for a tensor r of shape (N,) or (N, k) (k right-hand sides at once); same shape.

        Computed in ``self.dtype``'s precision; complex when r or the preconditioner is complex (a
        complex r with a real preconditioner has its real and imaginary parts both preconditioned).
        Raises ``ValueError`` for another shape."""
        if r.shape[0] != self.shape[0] or r.dim() not in (1, 2):
            raise ValueError(f"r must have shape ({self.shape[0]},) or ({self.shape[0]}, k); got {tuple(r.shape)}")
        vector = r.dim() == 1
        dtype = _complex_of(self.dtype) if r.is_complex() else self.dtype
        r2 = r.reshape(self.shape[0], -1).to(dtype)
        padded = torch.zeros(self.num_blocks, self.block_width, r2.shape[1], dtype=dtype, device=r2.device)
        padded[self._block_of_row, self._offset] = r2
        y = torch.bmm(self.inverse.to(dtype), padded)[self._block_of_row, self._offset]
        return y.reshape(-1) if vector else y

    def as_linear_operator(self) -> scipy.sparse.linalg.LinearOperator:
        """M^-1 as a ``scipy.sparse.linalg.LinearOperator`` (for scipy's cg, gmres, ...) of
        ``self.dtype``; applied to complex vectors it returns complex ones (see :meth:`__call__`)."""
        dtype = _NUMPY_DTYPES[self.dtype]

        def apply(v):
            return self(torch.as_tensor(np.asarray(v), device=self.device)).cpu().numpy()

        return scipy.sparse.linalg.LinearOperator(self.shape, matvec=apply, matmat=apply, dtype=dtype)


def _boundaries(N: int, block_size, blocks) -> np.ndarray:
    if (block_size is None) == (blocks is None):
        raise ValueError("give exactly one of block_size (fixed) or blocks (boundaries)")
    if block_size is not None:
        if not isinstance(block_size, (int, np.integer)) or not 1 <= block_size <= 64:
            raise ValueError(f"block_size must be an int from 1 to 64, got {block_size!r}")
        return np.append(np.arange(0, N, block_size), N)
    boundaries = np.asarray(blocks, dtype=np.int64)
    sizes = np.diff(boundaries)
    if boundaries.ndim != 1 or len(boundaries) < 2 or boundaries[0] != 0 or boundaries[-1] != N or (sizes <= 0).any():
        raise ValueError(f"blocks must be increasing boundaries from 0 to {N}, e.g. [0, 3, 5, {N}]")
    if sizes.max() > 64:
        raise ValueError(f"blocks may be at most 64 wide; the largest is {sizes.max()}")
    return boundaries


def _coordinates(A, device=None):
    """(rows, cols, values, shape, device) of a scipy.sparse, torch sparse or dense matrix; values are
    float32, float64, complex64 or complex128 (other real dtypes become float64, complex32 complex128)."""
    if scipy.sparse.issparse(A):
        csr = scipy.sparse.csr_matrix(A)  # no copy for CSR input
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        device = device or torch.device("cpu")
        values = torch.as_tensor(csr.data, device=device)
        rows = torch.as_tensor(np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr)), device=device)
        cols = torch.as_tensor(csr.indices.astype(np.int64), device=device)
        shape = csr.shape
    elif isinstance(A, torch.Tensor) and A.dim() == 2:
        coo = (A.to_sparse_coo() if A.layout != torch.sparse_coo else A).coalesce()
        rows, cols = coo.indices()
        values, shape, device = coo.values(), tuple(A.shape), device or A.device
        rows, cols, values = rows.to(device), cols.to(device), values.to(device)
    else:
        raise TypeError(f"A must be a scipy.sparse matrix or a 2-D torch tensor (sparse or dense), got {type(A).__name__}")
    if shape[0] != shape[1]:
        raise ValueError(f"A must be square, got shape {shape}")
    if values.dtype not in _NUMPY_DTYPES:
        values = values.to(torch.complex128 if values.is_complex() else torch.float64)
    return rows, cols, values, tuple(shape), torch.device(device)
