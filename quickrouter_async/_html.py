"""The one HTML renderer: a grid of cards, one per prediction, for notebooks and pages.

`qr.gallery`, the ``_repr_html_`` of `Prediction`, `Outcome` and `PredictionPage`, and
the command line's ``index.html`` all build `Card` objects and render them here. Styles
are inline, so a notebook's output keeps its look wherever it is shown; every text is
escaped, cleaned of what cannot be encoded, and cut short; ``data:`` images count
against a `Budget`, so a page never grows past a known size.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import attrs

from ._text import clean, error_text, short_repr, shorten

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ._models import Outcome, Prediction

__all__ = [
    "DEFAULT_MAX_EMBED_BYTES",
    "Budget",
    "Card",
    "Image",
    "outcome_card",
    "prediction_card",
    "render_grid",
    "render_page",
]

#: The most ``data:`` image bytes one rendering embeds (a saved notebook keeps them).
DEFAULT_MAX_EMBED_BYTES: Final = 20_000_000
_PROMPT_CHARS: Final = 300
_ALT_CHARS: Final = 200
_ERROR_CHARS: Final = 500
_ID_CHARS: Final = 80
_WEB_SCHEMES: Final = ("https://", "http://")
_BAD_STATUSES: Final = frozenset({"failed", "canceled", "aborted"})

_GRID: Final = (
    "display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:12px;"
    "font-family:system-ui,sans-serif;font-size:13px;line-height:1.35"
)
_CARD: Final = "margin:0;padding:8px;border:1px solid #ddd;border-radius:8px;background:#fff;"
_IMAGES: Final = (
    "display:flex;gap:4px;justify-content:center;align-items:center;min-height:60px;"
    "margin-bottom:6px"
)
_IMG: Final = "max-width:100%;max-height:220px;display:block;margin:0 auto"


class Budget:
    """How many more bytes of ``data:`` images a rendering may embed."""

    def __init__(self, limit: int = DEFAULT_MAX_EMBED_BYTES) -> None:
        self.left = limit
        self.refused = 0

    def take(self, size: int) -> bool:
        """Spend ``size`` bytes if that many are left."""
        if size > self.left:
            self.refused += 1
            return False
        self.left -= size
        return True


@attrs.frozen
class Image:
    """One picture: where it is (a URL, a relative path, a ``data:`` URI) and its link."""

    src: str
    href: str | None = None


@attrs.frozen(kw_only=True)
class Card:
    """What a card shows: everything optional but the status."""

    status: str
    label: str | None = None
    title: str | None = None
    prompt: str | None = None
    model: str | None = None
    prediction_id: str | None = None
    error: str | None = None
    images: tuple[Image, ...] = ()
    notes: tuple[str, ...] = ()


def path_src(path: str) -> str:
    """A relative file path as a URL (``#``, ``?``, spaces and the like quoted)."""
    return quote(clean(path), safe="/")


def output_images(output: object, budget: Budget) -> tuple[list[Image], list[str]]:
    """The images of a prediction's output, and notes on what it holds besides."""
    values = output if isinstance(output, list | tuple) else [output]
    images: list[Image] = []
    notes: list[str] = []
    for value in values:
        if isinstance(value, str) and value.startswith(_WEB_SCHEMES):
            images.append(Image(value, value))
        elif isinstance(value, str) and value.startswith("data:image/"):
            if budget.take(len(value)):
                images.append(Image(value))
            else:
                notes.append(f"image not shown: a data: URI of {len(value):,} characters")
        elif value is not None:
            notes.append(f"output: {short_repr(value)}")
    return images, notes


def _prompt_of(value: object) -> str | None:
    prompt = value.get("prompt") if isinstance(value, dict) else getattr(value, "prompt", None)
    if prompt is None:
        return None
    return prompt if isinstance(prompt, str) else short_repr(prompt)


def prediction_card(prediction: Prediction, budget: Budget, *, label: str | None = None) -> Card:
    """The card of a prediction, its output images shown from their URLs."""
    images, notes = output_images(prediction.output, budget)
    if prediction.data_removed:
        notes.append("input and output removed by the server (data_removed)")
    return Card(
        status=prediction.status.value,
        label=label,
        prompt=_prompt_of(prediction.input),
        model=prediction.model,
        prediction_id=prediction.id,
        error=prediction.error,
        images=tuple(images),
        notes=tuple(notes),
    )


def outcome_card(outcome: Outcome[Any], budget: Budget) -> Card:
    """The card of an outcome: its prediction's, labelled with the input's index."""
    label = f"index {outcome.index}"
    prediction = outcome.prediction
    if prediction is not None:
        card = prediction_card(prediction, budget, label=label)
    else:
        model = outcome.input[0] if isinstance(outcome.input, tuple) else None
        card = Card(
            status="not created",
            label=label,
            model=model if isinstance(model, str) else getattr(outcome.input, "model", None),
        )
    prompt = card.prompt
    if prompt is None:
        item = outcome.input
        prompt = _prompt_of(item[1] if isinstance(item, tuple) and len(item) == 2 else item)
    error = error_text(outcome.error, _ERROR_CHARS) if outcome.error is not None else card.error
    return attrs.evolve(card, prompt=prompt, error=error)


def _escape(text: str, limit: int) -> str:
    return html.escape(shorten(text, limit), quote=True)


def _card_html(card: Card) -> str:
    alt = _escape(card.prompt or f"output of prediction {card.prediction_id or ''}", _ALT_CHARS)
    pictures = []
    for image in card.images:
        img = f'<img src="{html.escape(image.src)}" alt="{alt}" loading="lazy" style="{_IMG}">'
        if image.href is not None:
            img = f'<a href="{html.escape(image.href)}" target="_blank" rel="noopener">{img}</a>'
        pictures.append(img)
    color = "#c33" if card.status in _BAD_STATUSES or card.error else "#2a7"
    lines = []
    head = f"<b>{_escape(card.label, 40)}</b> " if card.label else ""
    title = f' title="{_escape(card.title, 200)}"' if card.title else ""
    lines.append(
        f'<div{title}>{head}<span style="color:{color}">{_escape(card.status, 40)}</span></div>'
    )
    if card.prompt:
        lines.append(f"<div>{_escape(card.prompt, _PROMPT_CHARS)}</div>")
    about = [_escape(card.model, 100)] if card.model else []
    if card.prediction_id:
        about.append(f"<code>{_escape(card.prediction_id, _ID_CHARS)}</code>")
    if about:
        lines.append(f'<div style="color:#666">{" · ".join(about)}</div>')
    if card.error:
        lines.append(f'<div style="color:#c33">{_escape(card.error, _ERROR_CHARS)}</div>')
    lines.extend(f'<div style="color:#666"><i>{_escape(n, 300)}</i></div>' for n in card.notes)
    border = "outline:2px solid #c33;" if color == "#c33" else ""
    return (
        f'<figure style="{_CARD}{border}"><div style="{_IMAGES}">{"".join(pictures)}</div>'
        f"<figcaption>{''.join(lines)}</figcaption></figure>"
    )


def render_grid(cards: Iterable[Card], *, footer: str | None = None) -> str:
    """An HTML fragment: the cards in a grid (for a notebook's output)."""
    body = "\n".join(_card_html(card) for card in cards)
    tail = f'<p style="color:#666;font-size:12px">{html.escape(footer)}</p>' if footer else ""
    return f'<div class="quickrouter-gallery"><div style="{_GRID}">\n{body}\n</div>{tail}</div>'


def render_page(cards: Sequence[Card], *, title: str, links: Sequence[tuple[str, str]] = ()) -> str:
    """A whole HTML page: ``lang``, a viewport, a title, links, then the grid."""
    escaped = _escape(title, 200)
    anchors = " · ".join(
        f'<a href="{html.escape(path_src(href))}">{_escape(text, 100)}</a>' for text, href in links
    )
    nav = f"<p>{anchors}</p>\n" if anchors else ""
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escaped}</title>\n</head>\n"
        '<body style="margin:1.5em;background:#fafafa;font-family:system-ui,sans-serif">\n'
        f"<h1>{escaped}</h1>\n{nav}"
        f"{render_grid(cards, footer=f'{len(cards):,} inputs')}\n</body>\n</html>\n"
    )
