"""``batched_inverse`` for a batch sharded over a ``torch.distributed`` process group.

Each rank inverts its own shard with :func:`neuinv.batched_inverse_ex` (the local fast path, any backend); no
matrix moves between ranks. One all-gather of 10 int64 per rank per call combines the verdicts, so every rank
learns the global outcome: :func:`batched_inverse` raises the same exception on every rank, naming the global
index of the first failing matrix, or raises on none. (A rank that raised alone would leave the others blocked
in their next collective.) Bad input on any rank is handled the same way: every rank raises; so do ranks that
pass A in different ways (a DTensor on one, a local tensor on another), or different options (``tol``,
``max_iter``, ``max_error``, ``method``, ``backend``, ``assume_a``, ``dim``), which the all-gather compares.

The batch is given in one of two ways:

- a local tensor (*, n, n) on each rank, and a process group: the global batch is the shards concatenated
  along ``dim`` in rank order (``torch.cat`` semantics). Shards may differ in size along ``dim``, or be
  empty; they must agree in every other dimension and in dtype.
- a ``DTensor`` whose placements are all ``Shard(d)``, d a batch dimension: the result is a DTensor with the
  same mesh and placements. A ``Replicate`` or ``Partial`` placement, or a shard of the matrix dimensions,
  is refused: each matrix must live whole on exactly one rank. The collective runs on the default group when
  the mesh spans all ranks (the group a local-tensor call uses by default), else on the 1-D mesh's group.

Every rank of the group must call with the same group (for a DTensor: the same mesh); ranks that call on
different groups cannot meet in one collective, and block until the group's timeout.

The collective runs on the CPU for gloo (and mpi) groups, on the current CUDA device for NCCL groups.
"""
from __future__ import annotations

import numbers
import struct
import zlib
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist

from . import errors
from .errors import ArgumentValueError
from .failures import failure_error
from .inverse import InverseInfo, batched_inverse_ex as _local_batched_inverse_ex

if not dist.is_available():
    raise ImportError("neuinv.distributed needs a torch build with torch.distributed "
                      "(torch.distributed.is_available() is False)")

from torch.distributed.tensor import DTensor, Shard  # noqa: E402
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset  # noqa: E402

__all__ = ["DistributedInverseInfo", "batched_inverse", "batched_inverse_ex", "block_jacobi"]


class DistributedInverseInfo(NamedTuple):
    """What :func:`batched_inverse_ex` reports: per matrix and the offset of this rank's shard, and global
    summaries (the same on every rank).

    per_matrix: the :class:`neuinv.InverseInfo` of this rank's shard (local tensors of the shard's batch shape),
        or, for a DTensor A, of DTensors with A's mesh and placements over the global batch shape.
    batch_shape: the global batch shape.
    offset: global index of the shard's first matrix.
    failed: how many matrices of the global batch are not certified.
    first_failed: global index of the first of them in row-major order; None when failed == 0.
    fallbacks: matrices that took the exact path after Newton–Schulz.
    max_iterations: most Newton–Schulz steps taken by any matrix.
    max_error_bound: the largest ``error_bound`` (+inf when a matrix failed; 0.0 for an empty batch).
    """

    per_matrix: InverseInfo
    batch_shape: torch.Size
    offset: tuple
    failed: int
    first_failed: tuple | None
    fallbacks: int
    max_iterations: int
    max_error_bound: float


def batched_inverse(A, group=None, *, dim: int | None = None, **options):
    """Inverse of each matrix of a batch sharded over a process group; every rank raises or none does.

    Args: as :func:`batched_inverse_ex`.
    Returns: this rank's part of the inverse: a tensor of A's local shape, or a DTensor like A.
    Raises, on every rank alike: ``ValueError`` naming the global index of the first failed matrix that holds
    NaN or Inf if any failed matrix does, else ``torch.linalg.LinAlgError`` naming the first failed matrix
    (the messages of :func:`neuinv.batched_inverse` on the concatenated batch); for bad input on any rank,
    that rank's error (of its class where that is ``TypeError``, ``ValueError`` or one of
    :mod:`neuinv.errors`, else ``RuntimeError``) prefixed by its rank.
    """
    X, info, verdict = _sharded(_local_batched_inverse_ex, A, group, dim, options)
    if info.failed:
        raise verdict.error(options.get("max_error"))
    return X


def batched_inverse_ex(A, group=None, *, dim: int | None = None, **options):
    """Inverse of each matrix of a batch sharded over a process group, and a :class:`DistributedInverseInfo`.

    Args:
        A: this rank's shard, a (*, n, n) tensor with at least one batch dimension (float32, float64,
            complex64 or complex128, any device), or a DTensor sharded on batch dimensions only.
        group: the process group the batch is sharded over (default: the default group); None for a DTensor,
            whose mesh gives it.
        dim: for a local tensor, the batch dimension along which the shards are concatenated (default 0); not
            for a DTensor, whose placements say where it is sharded.
        options: ``model``, ``init`` (this rank's shard of the guesses, or, for a DTensor A, a DTensor with A's
            shape, mesh and placements), ``tol``, ``max_iter``, ``max_error``, ``method``, ``backend``,
            ``assume_a``: as for :func:`neuinv.batched_inverse_ex`; all of these but ``model`` and ``init``, and
            ``dim``, must be the same on every rank (the all-gather compares them; ``model`` and ``init`` it
            does not compare).

    Returns ``(X, info)``; X has A's local shape, dtype and device (a DTensor like A), NaN where not certified.
    Never raises for singular matrices; raises on every rank for bad input on any rank (see
    :func:`batched_inverse`), :class:`neuinv.errors.ArgumentValueError` (a ``ValueError``) on every rank when the
    ranks disagree in how A is given (DTensor or local tensor), its dtype, its shape but along the sharded
    dimension, or the options above (naming what differs and each rank's value), and ``RuntimeError`` when
    torch.distributed is not initialized.
    """
    X, info, _ = _sharded(_local_batched_inverse_ex, A, group, dim, options)
    return X, info


# Layout of the int64 row each rank contributes to the all-gather.
_STATUS, _SIGNATURE, _SIZE, _FAILED, _FALLBACKS, _MAX_ITERATIONS, _MAX_BOUND, _FIRST_FAILED, _FIRST_BOUND, \
    _FIRST_NON_FINITE = range(10)
_ROW = 10
_NONE = -1


def _sharded(local_call: Callable, A, group, dim: int, options: dict):
    """Run ``local_call(A_local, **options) -> (X, InverseInfo)`` on this rank's shard, then combine the
    verdicts with one all-gather. Returns (X, DistributedInverseInfo, _Verdict)."""
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call torch.distributed.init_process_group first "
                           "(or use neuinv.batched_inverse for a batch held by one process)")
    is_dtensor = isinstance(A, DTensor)
    given_group, group = group, _mesh_group(A.device_mesh) if is_dtensor else group
    row, error, local, agreed = [0] * _ROW, None, None, None
    try:
        if is_dtensor and given_group is not None:
            raise ArgumentValueError("a DTensor A brings its process group in its device mesh: pass group=None")
        layout = _DTensorLayout(A, dim) if is_dtensor else _ShardLayout(A, dim)
        agreed = {**layout.agreed, **_agreed_options(options)}
        local_options = {key: layout.local_option(key, value) for key, value in options.items()}
        X, info = local_call(layout.local, **local_options)
        row = layout.summary(info, _signature(agreed))
        local = (layout, X, info)
    except Exception as caught:  # raised on every rank below, after the collective
        row[_STATUS], error = 1, caught
    rows = _all_gather_ints(row, group)
    if any(r[_STATUS] for r in rows) or len({r[_SIGNATURE] for r in rows}) > 1:
        _raise_on_every_rank(error, agreed, group)
    layout, X, info = local
    layout.resolve(rows, dist.get_rank(group))
    verdict = _Verdict(rows, layout)
    X, per_matrix = layout.wrap(X, info)
    return X, verdict.info(per_matrix), verdict


def block_jacobi(A_rows, row_start: int, block_size: int | None = None, blocks=None, *, group=None, model=None,
                 backend: str = "auto", on_singular: str = "raise"):
    """Block-Jacobi preconditioner of this rank's rows of a row-partitioned (N, N) matrix A.

    The rank owns rows [row_start, row_start + m) of A, given as ``A_rows`` (m, N): a scipy.sparse matrix, or a
    torch sparse (COO, CSR) or dense tensor. Its blocks lie inside those rows, so they are the diagonal blocks
    of the rank's diagonal part D = A[row_start:row_start + m, row_start:row_start + m]: each rank inverts its
    own blocks with :func:`neuinv.batched_inverse` and no matrix data moves. The result, a
    :class:`neuinv.sparse.precond.BlockJacobi` of D, applies M^-1 to the rank's part, (m,) or (m, k), of a
    residual inside a distributed Krylov solver, with no communication either.

    Args:
        block_size, blocks: as for ``BlockJacobi``, within the rank's rows (blocks: boundaries [0, ..., m]).
        group: the process group the rows are partitioned over (default: the default group).
        model, backend: passed to ``batched_inverse``.
        on_singular: "raise" (default): a block that is singular or cannot be certified, on any rank, raises the
            same ``torch.linalg.LinAlgError`` on every rank (one all-gather of 6 int64 per rank), naming its rank
            and global rows; "identity": such blocks are left unpreconditioned, as in ``BlockJacobi``.
    Raises on every rank for bad input on any rank (as :func:`batched_inverse`).
    """
    from .sparse.precond import BlockJacobi

    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call torch.distributed.init_process_group first")
    row, error, preconditioner = [0, 0, 0, _NONE, 0, 0], None, None
    try:
        if on_singular not in ("raise", "identity"):
            raise ArgumentValueError(f"on_singular must be 'raise' or 'identity', got {on_singular!r}")
        preconditioner = BlockJacobi(_diagonal_part(A_rows, row_start), block_size, blocks, model=model,
                                     backend=backend, on_singular="identity")
        singular = preconditioner.singular_blocks
        row[1:3] = len(singular), preconditioner.num_blocks
        if len(singular):
            k = int(singular[0])
            first_row, end_row = (row_start + int(b) for b in preconditioner.boundaries[k:k + 2])
            row[3:] = k, first_row, end_row - 1
    except Exception as caught:
        row[0], error = 1, caught
    rows = _all_gather_ints(row, group)
    if any(r[0] for r in rows):
        _raise_on_every_rank(error, None, group)
    singular = sum(r[1] for r in rows)
    if singular and on_singular == "raise":
        rank, r = next((rank, r) for rank, r in enumerate(rows) if r[1])
        raise torch.linalg.LinAlgError(
            f"block {r[3]} of rank {rank} (rows {r[4]}..{r[5]} of A) is singular or too ill-conditioned to invert "
            f"in {preconditioner.dtype}; {singular} of {sum(r[2] for r in rows)} blocks failed. Use "
            f"on_singular='identity' to leave them unpreconditioned.")
    return preconditioner


def _diagonal_part(A_rows, row_start: int):
    """A_rows[:, row_start:row_start + m] for the (m, N) rows of a rank (scipy.sparse or torch tensor)."""
    import scipy.sparse

    shape = tuple(A_rows.shape) if scipy.sparse.issparse(A_rows) or isinstance(A_rows, torch.Tensor) else None
    if shape is None or len(shape) != 2:
        raise TypeError(f"A_rows must be a scipy.sparse matrix or a 2-D torch tensor (sparse or dense) holding "
                        f"this rank's rows of A, got {type(A_rows).__name__}")
    m, N = shape
    if not (isinstance(row_start, int) and not isinstance(row_start, bool) and 0 <= row_start <= N - m):
        raise ArgumentValueError(f"row_start must be an int in [0, {N - m}] for {m} rows of a matrix with {N} "
                                 f"columns, got {row_start!r}")
    if scipy.sparse.issparse(A_rows):
        return scipy.sparse.csr_matrix(A_rows)[:, row_start:row_start + m]
    if A_rows.layout == torch.strided:
        return A_rows[:, row_start:row_start + m]
    columns = torch.arange(row_start, row_start + m, device=A_rows.device)
    return A_rows.to_sparse_coo().coalesce().index_select(1, columns)


class _ShardLayout:
    """A local tensor shard: the global batch is the shards concatenated along batch dimension ``dim``."""

    def __init__(self, A, dim: int | None):
        if dim is None:
            dim = 0
        if not isinstance(A, torch.Tensor):
            raise TypeError(f"A must be a torch.Tensor or a DTensor, got {type(A).__name__}")
        if A.dim() < 3:
            raise ArgumentValueError(f"A must have shape (*, n, n) with at least one batch dimension to shard; "
                                     f"got shape {tuple(A.shape)}")
        if not (isinstance(dim, int) and -A.dim() <= dim < A.dim() and dim % A.dim() < A.dim() - 2):
            raise ArgumentValueError(f"dim must be a batch dimension of A (shape {tuple(A.shape)}): "
                                     f"0..{A.dim() - 3} or {-A.dim()}..-3; got {dim!r}")
        self.local, self.dim = A, dim % A.dim()
        self.local_batch_shape = tuple(A.shape[:-2])
        shape = ", ".join("*" if d == self.dim else str(size) for d, size in enumerate(A.shape))
        self.agreed = {"A": "a local tensor shard", "dtype": str(A.dtype), "dim": self.dim, "shape": f"({shape})"}

    def local_option(self, name: str, value):
        if isinstance(value, DTensor):
            raise ArgumentValueError(f"{name} is a DTensor but A is this rank's local shard: pass {name} as this "
                                     f"rank's shard too ({name}.to_local() if it is sharded like A), or A as a "
                                     f"DTensor")
        return value

    def summary(self, info: InverseInfo, signature: int) -> list[int]:
        return _summary_row(self.local, info, signature, self.local_batch_shape[self.dim],
                            lambda index: _ravel(index, self.local_batch_shape))

    def resolve(self, rows, rank: int):
        """The global batch shape and every rank's start along dim, from the gathered sizes."""
        self.sizes = [r[_SIZE] for r in rows]
        self.starts = [sum(self.sizes[:k]) for k in range(len(self.sizes))]
        self.batch_shape = torch.Size(self.local_batch_shape[:self.dim] + (sum(self.sizes),)
                                      + self.local_batch_shape[self.dim + 1:])
        self.offset = tuple(self.starts[rank] if d == self.dim else 0 for d in range(len(self.batch_shape)))

    def global_index(self, rank: int, code: int) -> tuple:
        shape = self.local_batch_shape[:self.dim] + (self.sizes[rank],) + self.local_batch_shape[self.dim + 1:]
        index = list(_unravel(code, shape))
        index[self.dim] += self.starts[rank]
        return tuple(index)

    def wrap(self, X, info):
        return X, info


class _DTensorLayout:
    """A DTensor sharded on batch dimensions: the local shard's global offset comes from its placements."""

    def __init__(self, A: DTensor, dim: int | None):
        if dim is not None:
            raise ArgumentValueError(f"dim applies to a local shard; a DTensor A is sharded as its placements say "
                                     f"({_layout(A)}): drop dim={dim!r}")
        batch_dims = A.dim() - 2
        if batch_dims < 1 or A.shape[-1] != A.shape[-2]:
            raise ArgumentValueError(f"A must have shape (*, n, n) with at least one batch dimension; "
                                     f"got {tuple(A.shape)}")
        for mesh_dim, placement in enumerate(A.placements):
            if not isinstance(placement, Shard):
                raise ArgumentValueError(
                    f"A is {placement!r} on mesh dimension {mesh_dim}: neuinv.distributed needs every matrix on "
                    f"exactly one rank, i.e. A sharded on a batch dimension on every mesh dimension, e.g. "
                    f"A.redistribute(placements=[Shard(0)] * mesh.ndim)")
            if not 0 <= placement.dim % A.dim() < batch_dims:
                raise ArgumentValueError(
                    f"A is sharded on dimension {placement.dim} (mesh dimension {mesh_dim}), a matrix dimension "
                    f"of shape {tuple(A.shape)}: each matrix must stay whole; shard a batch dimension "
                    f"(0..{batch_dims - 1}) instead")
        self.dtensor, self.local = A, A.to_local()
        self.batch_shape = torch.Size(A.shape[:-2])
        _, offset = compute_local_shape_and_global_offset(A.shape, A.device_mesh, A.placements)
        self.offset = tuple(offset[:-2])
        self.agreed = {"A": "a DTensor", "dtype": str(A.dtype), "dim": None, "shape": str(tuple(A.shape)),
                       "layout": _layout(A)}

    def local_option(self, name: str, value):
        """This rank's part of an option: the local shard of a DTensor laid out like A, else the value itself."""
        if not isinstance(value, DTensor):
            return value
        A = self.dtensor
        if (value.shape, value.device_mesh, tuple(value.placements)) != (A.shape, A.device_mesh, tuple(A.placements)):
            hint = (f"{name}.redistribute(placements=A.placements)" if value.device_mesh == A.device_mesh else
                    f"distribute {name} on A's mesh")
            raise ArgumentValueError(f"{name} must be laid out like A, shard for shard: A has shape "
                                     f"{tuple(A.shape)}, {_layout(A)}; {name} has shape {tuple(value.shape)}, "
                                     f"{_layout(value)} ({hint})")
        return value.to_local()

    def summary(self, info: InverseInfo, signature: int) -> list[int]:
        return _summary_row(self.local, info, signature, 0,
                            lambda index: _ravel(tuple(i + o for i, o in zip(index, self.offset)), self.batch_shape))

    def resolve(self, rows, rank: int):
        """Nothing to learn from the other ranks: the placements gave the offset."""

    def global_index(self, rank: int, code: int) -> tuple:
        return _unravel(code, self.batch_shape)

    def wrap(self, X, info):
        """X (batch dimensions, then its own trailing ones) and the per-matrix info as DTensors with A's mesh
        and placements."""
        A = self.dtensor

        def like_A(local):
            shape = self.batch_shape + local.shape[len(self.batch_shape):]
            return DTensor.from_local(local, A.device_mesh, A.placements, run_check=False, shape=shape,
                                      stride=_contiguous_strides(shape))

        return like_A(X), InverseInfo(*(like_A(field) for field in info))


class _Verdict:
    """The gathered rows of all ranks, read into global summaries and the exception batched_inverse raises."""

    def __init__(self, rows, layout):
        self.rows, self.layout = rows, layout
        self.failed = sum(r[_FAILED] for r in rows)

    def _first(self, field: int):
        """(global index, rank) of the earliest matrix over the ranks' ``field`` entries, or None."""
        candidates = [(self.layout.global_index(rank, r[field]), rank) for rank, r in enumerate(self.rows)
                      if r[field] != _NONE]
        return min(candidates) if candidates else None

    def info(self, per_matrix: InverseInfo) -> DistributedInverseInfo:
        first = self._first(_FIRST_FAILED)
        return DistributedInverseInfo(
            per_matrix, self.layout.batch_shape, self.layout.offset, self.failed, None if first is None else first[0],
            sum(r[_FALLBACKS] for r in self.rows), max(r[_MAX_ITERATIONS] for r in self.rows),
            max(_from_bits(r[_MAX_BOUND]) for r in self.rows))

    def error(self, max_error) -> Exception:
        non_finite = self._first(_FIRST_NON_FINITE)
        index, rank = non_finite or self._first(_FIRST_FAILED)
        return failure_error("batched_inverse", index, non_finite is not None,
                             _from_bits(self.rows[rank][_FIRST_BOUND]), self.failed, self.layout.local.dtype, max_error)


def _summary_row(A_local: torch.Tensor, info: InverseInfo, signature: int, size: int, encode) -> list[int]:
    """This rank's row: counts, maxima, and the first failed (and first failed non-finite) matrix as ``encode``
    makes its index into an int. One host synchronisation when every matrix is certified."""
    row = [0] * _ROW
    row[_SIGNATURE], row[_SIZE] = signature, size
    row[_FIRST_FAILED] = row[_FIRST_NON_FINITE] = _NONE
    row[_MAX_BOUND] = _to_bits(0.0)
    if info.certified.numel() == 0:
        return row
    failed, fallbacks, max_iterations, max_bound = torch.stack([
        (~info.certified).sum().double(), info.fallback.sum().double(), info.iterations.max().double(),
        info.error_bound.max()]).tolist()
    row[_FAILED], row[_FALLBACKS], row[_MAX_ITERATIONS] = int(failed), int(fallbacks), int(max_iterations)
    row[_MAX_BOUND] = _to_bits(max_bound)
    if failed:
        failed_mask = ~info.certified
        first = tuple(int(i) for i in failed_mask.nonzero()[0])
        row[_FIRST_FAILED], row[_FIRST_BOUND] = encode(first), _to_bits(float(info.error_bound[first]))
        non_finite = failed_mask & ~torch.isfinite(A_local).flatten(-2).all(dim=-1)
        if bool(non_finite.any()):
            row[_FIRST_NON_FINITE] = encode(tuple(int(i) for i in non_finite.nonzero()[0]))
    return row


def _raise_on_every_rank(error, agreed, group):
    """Some rank failed before the verdict (``error`` on this one, or None), or the ranks' calls disagree: every
    rank raises the same exception, from what each rank tells of its error and of its call (``agreed``: what
    must be the same on every rank, or None)."""
    described = [None] * dist.get_world_size(group)
    dist.all_gather_object(described, (None if error is None else (type(error).__name__, str(error)), agreed),
                           group=group)
    failing = [(rank, d[0]) for rank, d in enumerate(described) if d[0] is not None]
    if failing:
        rank, (type_name, message) = failing[0]
        exception_type = errors.BY_NAME.get(type_name, RuntimeError)
        raise exception_type(f"neuinv.distributed: rank {rank}: {type_name}: {message}") from error
    calls = [d[1] for d in described]
    names = [name for name in dict.fromkeys(name for call in calls for name in call)
             if len({repr(call.get(name)) for call in calls}) > 1]
    got = "; ".join(f"rank {rank}: " + ", ".join(f"{name}={call.get(name)!r}" if name in _AGREED_OPTIONS else
                                                 f"{name}={call.get(name)}" for name in names)
                    for rank, call in enumerate(calls))
    raise ArgumentValueError(f"neuinv.distributed: the ranks must agree in {', '.join(names)}: {got} (every rank "
                             f"passes A the same way, a DTensor or a local shard along the same dim, of the same "
                             f"dtype and shape but along dim, with the same options)")


def _all_gather_ints(row: list[int], group) -> list[list[int]]:
    device = _collective_device(group)
    mine = torch.tensor(row, dtype=torch.int64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, mine, group=group)
    return torch.stack(gathered).tolist()


def _collective_device(group) -> torch.device:
    backend = str(dist.get_backend(group))
    if "gloo" in backend or "mpi" in backend or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _mesh_group(mesh):
    """The group a DTensor's call gathers on: the default group, as a local-tensor call's by default, when the
    mesh spans all ranks (so that a DTensor on one rank and a local tensor on another meet in the same
    collective and raise), else the 1-D mesh's own group."""
    if mesh.size() == dist.get_world_size():
        return None
    if mesh.ndim == 1:
        return mesh.get_group()
    raise ArgumentValueError(f"a DTensor on a {mesh.ndim}-D mesh must span the default group "
                             f"({dist.get_world_size()} ranks); this mesh has {mesh.size()}")


_AGREED_OPTIONS = {"tol": None, "max_iter": None, "max_error": None, "method": "auto", "backend": "auto",
                   "assume_a": "gen"}
"""The options every rank must give alike, and their defaults."""


def _agreed_options(options: dict) -> dict:
    """The options that must agree over the ranks, as plain Python values: tol and max_error as floats, other
    integers as ints, strings as str (so 1e-3 and numpy.float64(1e-3), or 0 and 0.0, agree)."""
    agreed = {}
    for name, default in _AGREED_OPTIONS.items():
        value = options.get(name, default)
        if isinstance(value, str):
            value = str(value)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = float(value) if name in ("tol", "max_error") or not isinstance(value, numbers.Integral) \
                else int(value)
        agreed[name] = value
    return agreed


def _layout(A: DTensor) -> str:
    return f"placements {tuple(A.placements)} on the mesh of ranks {A.device_mesh.mesh.tolist()}"


def _signature(agreed: dict) -> int:
    """What must be the same on every rank, as one int (CRC-32 of its repr)."""
    return zlib.crc32(repr(sorted(agreed.items())).encode())


def _ravel(index, shape) -> int:
    flat = 0
    for i, size in zip(index, shape):
        flat = flat * size + i
    return flat


def _unravel(flat: int, shape) -> tuple:
    index = []
    for size in reversed(tuple(shape)):
        flat, i = divmod(flat, size) if size else (flat, 0)
        index.append(i)
    return tuple(reversed(index))


def _contiguous_strides(shape) -> tuple:
    strides, step = [], 1
    for size in reversed(tuple(shape)):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _to_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


def _from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", bits))[0]
