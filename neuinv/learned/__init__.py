"""Learned initial guesses and the paper (Ji, Wu & Xi, AISTATS 2025).

- :mod:`neuinv.learned.models`: ``InverseMLP`` (2-FC/3-FC networks) and ``TaylorInitializer``;
- :mod:`neuinv.learned.data`: the paper's four datasets and general matrix samplers;
- :mod:`neuinv.learned.training`: ``fit``, ``fit_runs``, ``load_pretrained`` (checkpoints in ``pretrained/``);
- :mod:`neuinv.learned.paper`, :mod:`neuinv.learned.analysis`, :mod:`neuinv.learned.whycant`: the paper's
  tables, the linear-region analysis and the near-singular experiment (``neuinv reproduce``, ``regions``,
  ``why-cant``).

Nothing here is imported by ``import neuinv``; ``neuinv.fit`` and ``neuinv.load_pretrained`` load
:mod:`neuinv.learned.training` on first use.
"""
