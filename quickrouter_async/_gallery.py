"""`qr.gallery`: predictions or outcomes as one HTML grid, in a notebook or saved as a page.

Output URLs expire an hour after a prediction ends, so a notebook saved with them shows
broken images later. Given the folder `QuickRouter.download` wrote into, the gallery
shows the downloaded files instead, and with ``embed=True`` puts them into the HTML as
``data:`` URIs, so the saved notebook (or page) keeps them; at most ``max_embed_bytes``
are embedded, and the files past that are linked.
"""

from __future__ import annotations

import base64
import mimetypes
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._errors import InputError
from ._files import file_name
from ._html import (
    DEFAULT_MAX_EMBED_BYTES,
    Budget,
    Card,
    Image,
    outcome_card,
    path_src,
    prediction_card,
    render_grid,
    render_page,
)
from ._models import Outcome, Prediction

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["Gallery", "gallery"]

_TITLE: Final = "quickrouter-async gallery"


def _local_files(folder: Path, prediction_id: str) -> list[Path]:
    """The files `download` wrote for a prediction, in output order."""
    stem = file_name(prediction_id, 0, "x")[: -len("-0.x")]
    pattern = re.compile(rf"{re.escape(stem)}-(\d+)\.\w+")
    found: list[tuple[int, Path]] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    for path in entries:
        match = pattern.fullmatch(path.name)
        if match is not None:
            found.append((int(match[1]), path))
    return [path for _, path in sorted(found)]


class Gallery:
    """Predictions or outcomes as one HTML grid: shows itself in Jupyter, saves as a page.

    Made by `gallery`. ``html`` is the fragment a notebook shows (`_repr_html_`); `save`
    writes a whole page whose links are relative to where it is written.
    """

    def __init__(
        self,
        items: Sequence[Prediction | Outcome[Any]],
        *,
        files: Path | None,
        embed: bool,
        max_embed_bytes: int,
        title: str,
    ) -> None:
        self.items = list(items)
        self.files = files
        self.embed = embed
        self.max_embed_bytes = max_embed_bytes
        self.title = title

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        where = f", files={str(self.files)!r}" if self.files is not None else ""
        return f"<Gallery {len(self.items)} items{where}, embed={self.embed}>"

    def _image(self, path: Path, budget: Budget, base: Path | None) -> Image:
        media = mimetypes.guess_type(path.name)[0] or ""
        if self.embed and media.startswith("image/"):
            try:
                size = path.stat().st_size
                # base64 makes 4 characters of 3 bytes.
                if budget.take(4 * -(-size // 3)):
                    data = base64.b64encode(path.read_bytes()).decode()
                    return Image(f"data:{media};base64,{data}")
            except OSError:
                pass  # gone since it was listed: linked, so the page says which
        shown = path if base is None else Path(os.path.relpath(path, base))
        src = path_src(shown.as_posix())
        return Image(src, src)

    def _card(self, item: Prediction | Outcome[Any], budget: Budget, base: Path | None) -> Card:
        prediction = item if isinstance(item, Prediction) else item.prediction
        local = []
        if self.files is not None and prediction is not None:
            local = _local_files(self.files, prediction.id)
        # Downloaded files stand for the output: its own images take nothing of the budget.
        spent = Budget(0) if local else budget
        if isinstance(item, Prediction):
            card = prediction_card(item, spent)
        else:
            card = outcome_card(item, spent)
        if not local:
            return card
        notes = tuple(note for note in card.notes if not note.startswith("image not shown"))
        images = tuple(self._image(path, budget, base) for path in local)
        return attrs.evolve(card, images=images, notes=notes)

    def _cards(self, base: Path | None) -> tuple[list[Card], Budget]:
        budget = Budget(self.max_embed_bytes)
        return [self._card(item, budget, base) for item in self.items], budget

    def _footer(self, budget: Budget) -> str:
        footer = f"{len(self.items):,} items"
        if budget.refused:
            footer += (
                f"; {budget.refused:,} images not embedded (past max_embed_bytes="
                f"{self.max_embed_bytes:,})"
            )
        return footer

    @property
    def html(self) -> str:
        """The HTML fragment of the grid; file paths as given (relative to the notebook)."""
        cards, budget = self._cards(None)
        return render_grid(cards, footer=self._footer(budget))

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the gallery as a whole HTML page (UTF-8); file links relative to it.

        Returns:
            The path written.
        """
        target = Path(path)
        cards, _ = self._cards(target.resolve().parent if self.files is not None else None)
        target.write_text(render_page(cards, title=self.title), encoding="utf-8")
        return target


def gallery(
    items: Prediction | Outcome[Any] | Iterable[Prediction | Outcome[Any]],
    *,
    files: str | os.PathLike[str] | None = None,
    embed: bool = False,
    max_embed_bytes: int = DEFAULT_MAX_EMBED_BYTES,
    title: str = _TITLE,
) -> Gallery:
    """Show predictions or outcomes as one HTML grid: a card each, with its images.

    In Jupyter the result renders itself; ``.html`` is the HTML, ``.save(path)`` writes
    a page. Each card shows the images, the prompt (also their alt text), the status,
    the model, the prediction id and any error; an outcome's card is labelled with its
    index among the inputs.

    Output URLs expire an hour after a prediction ends. To keep the images, download
    them (`QuickRouter.download`) and pass the folder as ``files``: the downloaded files
    are shown instead of the URLs, and with ``embed=True`` they are put into the HTML
    itself, so a saved notebook or page keeps them.

    Args:
        items: a `Prediction`, an `Outcome`, or an iterable of them.
        files: the folder `QuickRouter.download` wrote the files into.
        embed: put the downloaded files into the HTML as ``data:`` URIs (needs ``files``).
        max_embed_bytes: the most bytes of ``data:`` images embedded (the files' and
            any ``data:`` outputs'); past it, files are linked and the gallery says so.
        title: the title of a saved page.

    Raises:
        InputError: an item is neither a `Prediction` nor an `Outcome`, ``embed`` is
            asked without ``files``, or ``max_embed_bytes`` is negative.
    """
    listed = [items] if isinstance(items, Prediction | Outcome) else list(items)
    for item in listed:
        if not isinstance(item, Prediction | Outcome):
            raise InputError(
                f"gallery takes predictions and outcomes, not {type(item).__name__}",
                field="items",
            )
    if embed and files is None:
        raise InputError(
            "embed=True embeds downloaded files: download them first "
            "(await client.download(item, 'out')) and pass files='out'",
            field="files",
        )
    if isinstance(max_embed_bytes, bool) or not isinstance(max_embed_bytes, int):
        raise InputError("max_embed_bytes must be an integer", field="max_embed_bytes")
    if max_embed_bytes < 0:
        raise InputError("max_embed_bytes must not be negative", field="max_embed_bytes")
    return Gallery(
        listed,
        files=None if files is None else Path(files),
        embed=embed,
        max_embed_bytes=max_embed_bytes,
        title=title,
    )
