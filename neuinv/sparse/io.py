"""Loading sparse problems."""
from __future__ import annotations

import os

import scipy.io
import scipy.sparse


def read_matrix_market(path: str | os.PathLike) -> scipy.sparse.csr_matrix:
    """A Matrix Market file (.mtx, optionally gzipped) as a scipy CSR matrix; symmetric files,
    which store one triangle, come back whole (scipy.io.mmread expands them)."""
    matrix = scipy.io.mmread(os.fspath(path))
    if not scipy.sparse.issparse(matrix):
        raise ValueError(f"{path} holds a dense array, not a sparse matrix")
    return scipy.sparse.csr_matrix(matrix)
