"""Sparse systems on top of ``batched_inverse``, not imported by ``import neuinv``.

- :mod:`neuinv.sparse.precond`: the ``BlockJacobi`` preconditioner;
- :mod:`neuinv.sparse.solvers`: batched ``cg`` and restarted ``gmres``;
- :mod:`neuinv.sparse.io`: ``read_matrix_market``.
"""
