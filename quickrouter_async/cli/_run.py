"""``quickrouter-async run``: one prediction, its files downloaded, their paths printed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import PredictionError, QuickRouterError
from . import _lines

if TYPE_CHECKING:
    from .._client import QuickRouter

__all__ = ["build_input", "run_one"]


def build_input(model: str, prompt: str, settings: list[str]) -> dict[str, Any]:
    """The input ``--prompt`` and ``--set KEY=VALUE`` describe, validated for ``model``.

    A ``--set`` value that starts with ``@`` names a local file (relative to the current
    folder), checked here and sent as a ``data:`` URI; a single file given to a field
    that takes a list of images is a list of one. ``--prompt`` is always text.

    Raises:
        InputError: a setting or the input is invalid, or a file is unreadable.
    """
    settings_payload: dict[str, Any] = {}
    for text in settings:
        key, value = _lines.parse_setting(text)
        settings_payload[key] = value
    files = _lines.local_files(settings_payload, Path(), check=True)
    payload: dict[str, Any] = {"prompt": prompt, **_lines.image_lists(model, files)}
    _lines.validate(model, payload)
    return payload


async def run_one(client: QuickRouter, model: str, payload: dict[str, Any], out: Path) -> int:
    """Run one prediction and download its files into ``out``; return the exit code."""
    try:
        prediction = await client.run(model, payload)
        paths = await client.download(prediction, out)
    except PredictionError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 (the command's output)
        return 1
    except QuickRouterError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    for path in paths:
        print(path)  # noqa: T201
    return 0
