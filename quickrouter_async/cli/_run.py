"""``quickrouter-async run``: one prediction, its files downloaded, their paths printed."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .._errors import PredictionError, QuickRouterError
from . import _lines

if TYPE_CHECKING:
    from pathlib import Path

    from .._client import QuickRouter

__all__ = ["build_input", "run_one"]


def build_input(model: str, prompt: str, settings: list[str]) -> dict[str, Any]:
    """The input ``--prompt`` and ``--set KEY=VALUE`` describe, validated for ``model``.

    Raises:
        InputError: a setting or the input is invalid.
    """
    payload: dict[str, Any] = {"prompt": prompt}
    for text in settings:
        key, value = _lines.parse_setting(text)
        payload[key] = value
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
