"""A griffe extension for the API reference: neuinv's docstrings use Sphinx roles (:func:`x`, :class:`x`,
:mod:`x`, :data:`x`, :meth:`x`, :attr:`x`), which Markdown would print literally; they become code spans."""
from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|data|meth|attr|obj|exc):`~?([^`]+)`")


class RolesToCode(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:  # griffe >= 1.0 calls this once per loaded object
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(r"`\1`", obj.docstring.value)
