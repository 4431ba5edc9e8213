"""A griffe extension for the API reference. neuinv's docstrings are plain text with Sphinx roles; Markdown would
print the roles (:func:`x`, :class:`x`, :mod:`x`, :data:`x`, :meth:`x`, :attr:`x`) literally, so they become code
spans, and it would read the asterisks of shapes such as (*, n, n) as emphasis, so those are escaped (outside
code spans)."""
from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|data|meth|attr|obj|exc):`~?([^`]+)`")
_CODE = re.compile(r"(``?[^`]+``?)")
_SHAPE_STAR = re.compile(r"(?<=[(\[,])\s*\*(?=\s*[,)\]])")


def _escape_shape_stars(text: str) -> str:
    """(*, n, n) -> (\\*, n, n) outside code spans."""
    parts = _CODE.split(text)
    return "".join(part if i % 2 else _SHAPE_STAR.sub(lambda m: m.group(0).replace("*", "\\*"), part)
                   for i, part in enumerate(parts))


class RolesToCode(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:  # griffe >= 1.0 calls this once per loaded object
        if obj.docstring is not None:
            obj.docstring.value = _escape_shape_stars(_ROLE.sub(r"`\1`", obj.docstring.value))
