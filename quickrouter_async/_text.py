"""Bounded text for people: reprs and captions never grow with the data they show.

An input may carry images as multi-megabyte ``data:`` URIs, an output may be one, and a
prompt may hold a lone surrogate that no encoder accepts. Everything shown to a person
(a repr, a caption, a gallery page) goes through these helpers, which cut long values
short, say how long they were, and replace what cannot be encoded.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any, Final

import attrs

__all__ = ["clean", "error_text", "short_repr", "shorten"]

# A lone surrogate cannot be written as UTF-8 (a file, a Jupyter message).
_SURROGATES: Final = re.compile("[\ud800-\udfff]")


def clean(text: str) -> str:
    """``text`` with every surrogate code point replaced by U+FFFD."""
    return _SURROGATES.sub("\ufffd", text)


def shorten(text: str, limit: int) -> str:
    """``text`` (cleaned), cut to ``limit`` characters with its full length said."""
    if len(text) <= limit:
        return clean(text)
    return f"{clean(text[:limit])}… ({len(text):,} characters)"


def error_text(error: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception, cut short."""
    message = str(error)
    name = type(error).__name__
    return f"{name}: {shorten(message, limit)}" if message else name


class _Bounded(reprlib.Repr):
    """`reprlib.Repr` that never builds the full repr of a long string, bytes or attrs object."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = 60
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 4
        self.maxdict = 6

    def repr_str(self, x: str, _level: int) -> str:
        if len(x) <= self.maxstring:
            return repr(clean(x))
        return f"{clean(x[: self.maxstring])!r}…({len(x):,} characters)"

    def repr_bytes(self, x: bytes, _level: int) -> str:
        if len(x) <= self.maxstring:
            return repr(x)
        return f"{x[: self.maxstring]!r}…({len(x):,} bytes)"

    def repr_instance(self, x: Any, level: int) -> str:
        if not attrs.has(type(x)):
            return super().repr_instance(x, level)
        # attrs classes (typed inputs): the fields that differ from their defaults.
        if level <= 0:
            return f"{type(x).__name__}(…)"
        shown = []
        for field in attrs.fields(type(x)):
            value, default = getattr(x, field.name), field.default
            if not field.repr or (
                default is not attrs.NOTHING
                and not isinstance(default, attrs.Factory)  # type: ignore[arg-type]
                and value == default
            ):
                continue
            shown.append(f"{field.name}={self.repr1(value, level - 1)}")
        return f"{type(x).__name__}({', '.join(shown)})"


_BOUNDED: Final = _Bounded()


def short_repr(value: object) -> str:
    """A repr of ``value`` a few hundred characters long at most."""
    return _BOUNDED.repr(value)
