"""``quickrouter-async get ID [--out DIR]``: show a prediction, download its files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._errors import InputError, NotFoundError, QuickRouterError
from ._run import check_out, save
from ._status import EXIT_FAILED, EXIT_OK, EXIT_USAGE, clip, say

if TYPE_CHECKING:
    import datetime as dt
    from pathlib import Path

    from .._client import QuickRouter
    from .._models import Prediction

__all__ = ["describe", "show"]

# A data: URI output is shown by its start only: it may be megabytes long.
_URL_SHOWN: Final = 100


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.isoformat()


def describe(prediction: Prediction) -> list[str]:
    """The lines ``get`` prints for ``prediction``."""
    lines = [
        f"id:        {prediction.id}",
        f"model:     {prediction.model or '-'}",
        f"status:    {prediction.status.value}",
        f"created:   {_when(prediction.created_at)}",
        f"started:   {_when(prediction.started_at)}",
        f"completed: {_when(prediction.completed_at)}",
    ]
    if prediction.predict_time is not None:
        lines.append(f"predict:   {prediction.predict_time:.2f}s")
    if prediction.error:
        lines.append(f"error:     {prediction.error}")
    urls = prediction.output_urls
    lines.extend(
        f"{'output:' if n == 0 else '':<11}{clip(url, _URL_SHOWN)}" for n, url in enumerate(urls)
    )
    if prediction.data_removed:
        lines.append("output:    removed by the server (it keeps files for an hour)")
    return lines


async def show(client: QuickRouter, prediction_id: str, out: Path | None) -> int:
    """Print the prediction ``prediction_id`` and, with ``out``, download its files there."""
    if out is not None and (problem := await check_out(out)) is not None:
        say(f"error: {problem}")
        return EXIT_USAGE
    try:
        prediction = await client.get(prediction_id)
    except InputError as exc:  # not an id at all: nothing was sent
        say(f"error: {exc}")
        return EXIT_USAGE
    except NotFoundError:
        say(f"error: no prediction {prediction_id!r} on this account")
        return EXIT_FAILED
    except QuickRouterError as exc:
        say(f"error: {exc}")
        return EXIT_FAILED
    for line in describe(prediction):
        say(line, error=False)
    if out is None:
        return EXIT_OK
    if not prediction.output_urls:
        why = "its files were removed" if prediction.data_removed else "it has no output"
        say(f"error: nothing to download: {why} (status {prediction.status.value})")
        return EXIT_FAILED
    return await save(client, prediction, out)
