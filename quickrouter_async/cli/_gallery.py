"""The files a batch job leaves beside its images: ``results.jsonl`` and ``index.html``.

Both are rewritten from the journal at the end of every run (into a temporary file,
renamed into place), so after any number of interrupted and resumed runs each holds
exactly one entry per input, in input order.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .._journal import Entry

__all__ = ["GALLERY_NAME", "RESULTS_NAME", "write_gallery", "write_results"]

RESULTS_NAME: Final = "results.jsonl"
GALLERY_NAME: Final = "index.html"

_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;margin:2em;background:#fafafa}"
    "main{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1em}"
    "figure{margin:0;padding:.6em;background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002}"
    ".images{display:flex;gap:4px;justify-content:center;align-items:center;"
    "height:220px;margin-bottom:.4em}"
    ".images a{flex:1 1 0;min-width:0;height:100%;display:flex;align-items:center}"
    "img{max-width:100%;max-height:100%;display:block;margin:0 auto}"
    ".failed,.canceled,.aborted,.pending,.submitting,.submitted,.terminal"
    "{outline:2px solid #c33}"
)


def _atomic(target: Path, write: Callable[[TextIO], int]) -> int:
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            count = write(handle)
        Path(name).replace(target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return count


def write_results(target: Path, entries: Iterable[Entry]) -> int:
    """Write one JSON line per entry into ``target``; return how many."""

    def write(handle: TextIO) -> int:
        count = 0
        for entry in entries:
            handle.write(json.dumps(entry.result()) + "\n")
            count += 1
        return count

    return _atomic(target, write)


def _card(entry: Entry) -> str:
    status = str(entry.result()["status"])
    images = "".join(
        f'<a href="{html.escape(name)}"><img src="{html.escape(name)}" loading="lazy" alt=""></a>'
        for name in entry.files
    )
    prompt = str(entry.input.get("prompt", ""))
    error = f"<br><small>{html.escape(entry.error)}</small>" if entry.error else ""
    return (
        f'<figure class="{html.escape(status)}"><div class="images">{images}</div><figcaption>'
        f"<b>#{entry.index}</b> {html.escape(prompt)}<br><small>{html.escape(entry.model)} · "
        f"{html.escape(status)}</small>{error}</figcaption></figure>\n"
    )


def write_gallery(target: Path, entries: Iterable[Entry]) -> int:
    """Write an HTML page with a thumbnail card per entry into ``target``; return how many."""

    def write(handle: TextIO) -> int:
        handle.write(
            "<!doctype html><meta charset=utf-8><title>quickrouter-async gallery</title>"
            f"<style>{_STYLE}</style><h1>quickrouter-async gallery</h1><main>\n"
        )
        count = 0
        for entry in entries:
            handle.write(_card(entry))
            count += 1
        handle.write(f"</main><p>{count} inputs</p>\n")
        return count

    return _atomic(target, write)
