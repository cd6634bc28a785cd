"""``quickrouter-async run``: one prediction, its files downloaded, their paths printed."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio

from .._errors import QuickRouterError
from .._polling import cancel_quietly
from . import _lines
from ._status import EXIT_FAILED, EXIT_OK, EXIT_USAGE, say

if TYPE_CHECKING:
    from .._client import QuickRouter
    from .._models import Prediction

__all__ = ["build_input", "check_out", "run_one", "save"]

# As in a batch: how long a create is shielded from Ctrl-C.
_CREATE_GRACE: Final = 30.0


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


def _check_out(out: Path) -> str | None:
    """Why files could not be written into ``out`` (blocking); None when they can."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder"
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Tried, not asked: access() says yes to root and no to some network mounts.
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        return f"cannot write into --out {out}: {exc.strerror or exc}"
    return None


async def check_out(out: Path) -> str | None:
    """Why files could not be written into ``out`` (made if missing); None when they can."""
    return await anyio.to_thread.run_sync(_check_out, out)


async def save(client: QuickRouter, prediction: Prediction, out: Path) -> int:
    """Download the files of ``prediction`` into ``out`` and print their paths."""
    try:
        paths = await client.download(prediction, out)
    except (QuickRouterError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        say(
            f"error: could not download the files of prediction {prediction.id}: {reason}; "
            f"try again with: quickrouter-async get {prediction.id} --out {out} "
            "(the server keeps them for an hour)"
        )
        return EXIT_FAILED
    for path in paths:
        say(str(path), error=False)
    return EXIT_OK


async def run_one(client: QuickRouter, model: str, payload: dict[str, Any], out: Path) -> int:
    """Run one prediction and download its files into ``out``; return the exit status.

    ``out`` is checked before the create, so that nothing is paid for that could not be
    saved. The prediction's id is printed (on standard error) as soon as it is known;
    Ctrl-C from then on cancels it on the server.
    """
    problem = await check_out(out)
    if problem is not None:
        say(f"error: {problem}")
        return EXIT_USAGE
    created: Prediction | None = None
    try:
        # Shielded for a while, as in a batch: a create cut short would leave a
        # prediction running that nobody knows of.
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CREATE_GRACE):
            created = await client.create(model, payload)
            say(f"prediction {created.id} created ({model}); waiting for it")
        if created is None:
            say(f"error: the create was not answered within {_CREATE_GRACE:.0f}s")
            return EXIT_FAILED
        prediction = await _wait(client, created)
    except QuickRouterError as exc:
        say(f"error: {exc}")
        return EXIT_FAILED
    if not prediction.succeeded:
        why = f": {prediction.error}" if prediction.error else ""
        say(f"error: prediction {prediction.id} {prediction.status.value}{why}")
        return EXIT_FAILED
    return await save(client, prediction, out)


async def _wait(client: QuickRouter, prediction: Prediction) -> Prediction:
    """Wait for ``prediction``; when the wait is cancelled (Ctrl-C), cancel it on the server."""
    try:
        return await client.wait(prediction)
    except anyio.get_cancelled_exc_class():
        await cancel_quietly(client.cancel, prediction.id)
        raise
