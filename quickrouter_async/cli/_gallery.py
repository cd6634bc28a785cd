"""The gallery a batch job leaves beside its images and ``results.jsonl``: ``index.html``.

Like ``results.jsonl`` it is rewritten from the journal at the end of every run (into a
temporary file, renamed into place, with the mode the umask gives: `atomic_write`), so
after any number of interrupted and resumed runs it holds exactly one card per input,
in input order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, TextIO

from .._html import Card, Image, path_src, render_page
from .._text import short_repr
from ._output import atomic_write

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from .._journal import Entry

__all__ = ["GALLERY_NAME", "RESULTS_NAME", "write_gallery"]

RESULTS_NAME: Final = "results.jsonl"
GALLERY_NAME: Final = "index.html"
_TITLE: Final = "quickrouter-async gallery"


def _card(entry: Entry) -> Card:
    """An entry's card, labelled with the numbers its line of ``results.jsonl`` carries."""
    result = entry.result()
    prompt = entry.input.get("prompt")
    images = tuple(Image(path_src(name), path_src(name)) for name in entry.files)
    return Card(
        status=str(result["status"]),
        label=f"line {entry.line} · index {entry.index}",
        title=f"{RESULTS_NAME}: index {entry.index} (from 0), line {entry.line} of the input file",
        prompt=prompt if prompt is None or isinstance(prompt, str) else short_repr(prompt),
        model=entry.model,
        prediction_id=entry.prediction_id,
        error=entry.error,
        images=images,
    )


def write_gallery(target: Path, entries: Iterable[Entry]) -> int:
    """Write an HTML page with a card per entry into ``target``; return how many.

    The page is rendered as `qr.gallery` renders a notebook's grid; each card is
    labelled with the ``line`` (in the input file, from 1) and ``index`` (from 0) of its
    line in ``results.jsonl``, which the page links to.
    """
    cards = [_card(entry) for entry in entries]
    page = render_page(cards, title=_TITLE, links=[(RESULTS_NAME, RESULTS_NAME)])

    def write(handle: TextIO) -> int:
        handle.write(page)
        return len(cards)

    return atomic_write(target, write)
