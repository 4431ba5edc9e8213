"""``batched_inverse`` over a Dask array: lazy, chunk by chunk, for batches larger than memory.

A Dask array (..., n, n) chunked on its batch dimensions only (each chunk holds whole matrices) is inverted
chunk by chunk with :func:`neuinv.batched_inverse_ex` when it is computed: each chunk is one task of Dask's
scheduler (threads, processes, or a ``dask.distributed`` cluster), so chunks stream from and to storage
(zarr, HDF5, a numpy memmap) through ``dask.array.store`` or ``to_zarr`` without the whole batch in memory.

Errors follow :func:`neuinv.batched_inverse`, raised when a chunk holding a failed matrix is computed, naming
the global index of the first failed matrix of that chunk (``ValueError`` if one of the chunk's failed matrices
holds NaN or Inf, else ``torch.linalg.LinAlgError``). A chunk does not wait for the others, or the whole
result would have to stay in memory until the last chunk is done: when several chunks fail, the error is the
one the scheduler meets first (Dask's task order, not the chunks' order). For the whole batch's verdict,
compute ``batched_inverse_ex``'s ``info`` (Dask arrays too), e.g. ``(~info.certified).sum()``.

(This module is ``neuinv.dask``; inside it, ``import dask`` is the Dask package: imports are absolute.)
"""
from __future__ import annotations

import functools
import operator
import warnings

import dask.array as da
import numpy as np
import torch

from .arguments import CallOptions, check_arguments
from .errors import ArgumentDtypeError, ArgumentValueError
from .failures import raise_first_failure
from .inverse import InverseInfo
from .inverse import batched_inverse_ex as _local_batched_inverse_ex

__all__ = ["batched_inverse", "batched_inverse_ex"]

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                 np.dtype(np.complex64): torch.complex64, np.dtype(np.complex128): torch.complex128}

_INFO_DTYPES = (np.dtype(bool), np.dtype(np.float64), np.dtype(np.int32), np.dtype(bool))
"""numpy dtypes of InverseInfo's fields: certified, error_bound, iterations, fallback."""


def batched_inverse(A, *, init=None, **options):
    """Lazy inverse of each matrix of a Dask array A (..., n, n); raises, when computed, as
    :func:`neuinv.batched_inverse` does, for the first failed matrix of a failing chunk (see the module docstring).

    Returns a Dask array of A's shape, chunks and dtype. Arguments and eager errors: :func:`batched_inverse_ex`.
    """
    dtype, init_arg = _check(A, init, options)
    return da.map_blocks(functools.partial(_invert_chunk, options=options, raise_failure=True), A, *init_arg,
                         dtype=dtype, meta=np.empty((0,) * A.ndim, dtype=dtype))


def batched_inverse_ex(A, *, init=None, **options):
    """Lazy inverse of each matrix of a Dask array A (..., n, n) and its :class:`neuinv.InverseInfo` as Dask arrays.

    Args:
        A: dask.array.Array (..., n, n) of float32, float64, complex64 or complex128, with known chunk sizes,
            chunked on the batch dimensions only: each chunk holds whole matrices (``A.rechunk({-2: -1, -1: -1})``).
        init: None, or a Dask array of approximate inverses of A's shape and dtype (rechunked like A).
        options: ``model``, ``tol``, ``max_iter``, ``max_error``, ``method``, ``backend``: as for
            :func:`neuinv.batched_inverse_ex`, applied to each chunk (on the workers: ``backend`` is resolved
            there).

    Returns ``(X, info)``: X a Dask array like A (NaN where not certified), ``info`` an ``InverseInfo`` of Dask
    arrays of A's batch shape and chunks. Nothing is computed, and nothing raises for singular matrices.
    Raises at once ``TypeError`` for an A that is not a Dask array or has another dtype, an init that is not a
    Dask array, and an unknown option; ``ValueError`` for a chunk that splits a matrix, unknown chunk sizes, a
    non-square A, and an init of another shape or dtype; for a bad option value, what
    :func:`neuinv.batched_inverse_ex` raises (``ValueError`` for ``tol``, ``max_iter``, ``max_error`` out of
    range or an unknown ``method``; ``TypeError`` for a ``model`` without ``in_domain``). Each ``ValueError`` is a
    :class:`neuinv.errors.ArgumentValueError` and the ``TypeError`` for a dtype a
    :class:`neuinv.errors.ArgumentDtypeError`: a ``RuntimeError`` too, as torch's argument errors.
    """
    dtype, init_arg = _check(A, init, options)
    ndim = A.ndim
    matrix_axes = [ndim - 2, ndim - 1]
    # One task per chunk returns (X, *info); its array has A's batch shape, so no axis is ever concatenated.
    results = da.map_blocks(functools.partial(_invert_chunk, options=options, raise_failure=False), A, *init_arg,
                            drop_axis=matrix_axes, dtype=object, meta=np.empty((0,) * (ndim - 2), dtype=object))
    X = results.map_blocks(operator.itemgetter(0), new_axis=matrix_axes, chunks=A.chunks, dtype=dtype,
                           meta=np.empty((0,) * ndim, dtype=dtype))
    info = InverseInfo(*(results.map_blocks(operator.itemgetter(1 + k), dtype=field_dtype,
                                            meta=np.empty((0,) * (ndim - 2), dtype=field_dtype))
                         for k, field_dtype in enumerate(_INFO_DTYPES)))
    return X, info


def _check(A, init, options) -> tuple[np.dtype, tuple]:
    """X's dtype (A's, in native byte order) and the extra map_blocks argument for init; raises for bad input
    before any graph is built."""
    if not isinstance(A, da.Array):
        raise TypeError(f"A must be a dask.array.Array, got {type(A).__name__} (for a tensor: neuinv.batched_inverse)")
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ArgumentValueError(f"A must hold square matrices (..., n, n); got shape {A.shape}")
    if len(A.chunks[-2]) != 1 or len(A.chunks[-1]) != 1:
        raise ArgumentValueError(f"a chunk of A splits its matrices: the matrix dimensions are chunked as "
                                 f"{A.chunks[-2]} x {A.chunks[-1]}; chunk the batch dimensions only: "
                                 f"A.rechunk({{-2: -1, -1: -1}})")
    if any(np.isnan(size) for sizes in A.chunks for size in sizes):
        raise ArgumentValueError("A has unknown chunk sizes (the global index of a matrix needs them): call "
                                 "A.compute_chunk_sizes() first")
    if init is not None:
        if not isinstance(init, da.Array):
            raise TypeError(f"init must be a dask.array.Array like A, got {type(init).__name__}")
        if init.shape != A.shape or init.dtype != A.dtype:
            raise ArgumentValueError(f"init must have A's shape {A.shape} and dtype {A.dtype}; got {init.shape}, "
                                     f"{init.dtype}")
    unknown = set(options) - {"model", "tol", "max_iter", "max_error", "method", "backend"}
    if unknown:
        raise TypeError(f"unexpected option(s) {sorted(unknown)}")
    dtype = A.dtype.newbyteorder("=")
    if dtype not in _TORCH_DTYPES:
        raise ArgumentDtypeError(f"A must be float32, float64, complex64 or complex128; got {A.dtype}")
    empty = torch.empty((0, A.shape[-1], A.shape[-1]), dtype=_TORCH_DTYPES[dtype])  # the chunks' checks, no data
    check_arguments(empty, None if init is None else empty, CallOptions(**options))
    return dtype, () if init is None else (init.rechunk(A.chunks),)


def _invert_chunk(chunk, init_chunk=None, *, options, raise_failure, block_info=None):
    """batched_inverse_ex on one chunk, (X, *info) as numpy arrays; with ``raise_failure`` only X, raising for
    the chunk's first failed matrix by its global index (the chunk's position: block_info)."""
    A = _as_tensor(chunk)
    init = None if init_chunk is None else _as_tensor(init_chunk)
    X, info = _local_batched_inverse_ex(A, init=init, **options)
    if not raise_failure:
        return (X.numpy(), *(field.numpy() for field in info))
    if info.certified.numel() and not bool(info.certified.all()):
        offset = tuple(start for start, _ in block_info[0]["array-location"][:-2])
        raise_first_failure("batched_inverse", A, info.certified, info.error_bound, options.get("max_error"),
                            options.get("assume_a", "gen"), offset=offset, scope="its chunk")
    return X.numpy()


def _as_tensor(chunk) -> torch.Tensor:
    """A chunk as a tensor sharing its memory: neuinv never modifies its input, so a read-only chunk (a numpy
    memmap opened "r") is passed as it is."""
    chunk = np.asarray(chunk)
    if not chunk.dtype.isnative or any(stride < 0 for stride in chunk.strides):
        chunk = np.ascontiguousarray(chunk, dtype=chunk.dtype.newbyteorder("="))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(chunk)
