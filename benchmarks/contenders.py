"""The three clients compared side by side, each driving one workload the same way.

Every contender takes the same arguments and returns one `Record` per input:

- ``bare aiohttp``: nothing but aiohttp, ``json`` and a semaphore: the floor. It sends the
  requests the others send (one create, then a GET every ``interval`` until terminal) and
  retries a throttled create after its ``Retry-After``, so that it loses nothing either;
- ``quickrouter_async``: ``client.run_many`` with default settings, apart from the
  fixed poll interval where a workload asks for one;
- ``replicate-python``: the official client pointed at the emulator through ``base_url``,
  ``async_run`` in sync mode, ``predictions.async_create`` + ``async_wait`` otherwise.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import attrs
import quickrouter_async as qr

from _common import TERMINAL

if TYPE_CHECKING:
    from collections.abc import Sequence

MODEL = "google/imagen-4"


@attrs.define
class Record:
    """What a contender saw of one input."""

    ok: bool
    error: str | None = None
    completed_at: str | None = None
    #: ``time.time()`` when the client knew the prediction was terminal.
    noticed: float = 0.0

    @property
    def delay(self) -> float | None:
        """Seconds from the server finishing to the client noticing."""
        if self.completed_at is None:
            return None
        return self.noticed - datetime.fromisoformat(self.completed_at).timestamp()


@attrs.frozen
class Workload:
    """How the predictions are driven: how many at a time, and how they are waited on."""

    concurrency: int
    #: ``Prefer: wait`` on the create (sync mode) or polling from the first answer.
    sync: bool = False
    #: A fixed poll interval in seconds; ``None`` is each client's default.
    interval: float | None = None


class Contender(Protocol):
    async def __call__(
        self, base_url: str, api_key: str, payloads: Sequence[dict[str, Any]], work: Workload
    ) -> list[Record]: ...


def payloads(count: int, offset: int = 0) -> list[dict[str, Any]]:
    """``count`` distinct imagen-4 inputs."""
    return [
        {"prompt": f"benchmark prompt {offset + number}", "aspect_ratio": "16:9"}
        for number in range(count)
    ]


def _failure(exc: BaseException) -> Record:
    return Record(ok=False, error=f"{type(exc).__name__}: {exc}"[:160], noticed=time.time())


async def bare_aiohttp(
    base_url: str, api_key: str, payloads: Sequence[dict[str, Any]], work: Workload
) -> list[Record]:
    """The same requests with nothing but aiohttp and json."""
    interval = 0.5 if work.interval is None else work.interval
    headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
    # The headers of quickrouter_async's creates with default settings: run_many's
    # 30-minute deadline as Cancel-After, and in sync mode the short held wait of a
    # server whose list route is not known yet.
    create_headers = {**headers, "Content-Type": "application/json", "Cancel-After": "1800s"}
    if work.sync:
        create_headers["Prefer"] = "wait=5"
    create_url = f"{base_url}/v1/models/{MODEL}/predictions"
    slots = asyncio.Semaphore(work.concurrency)

    async def one(payload: dict[str, Any], session: aiohttp.ClientSession) -> Record:
        async with slots:
            try:
                body = json.dumps({"input": payload})
                while True:
                    async with session.post(
                        create_url, data=body, headers=create_headers
                    ) as answer:
                        if answer.status == 429:
                            wait = float(answer.headers.get("Retry-After", "1"))
                            await answer.read()
                            await asyncio.sleep(wait)
                            continue
                        answer.raise_for_status()
                        prediction = json.loads(await answer.read())
                        break
                while prediction["status"] not in TERMINAL:
                    await asyncio.sleep(interval)
                    url = f"{base_url}/v1/predictions/{prediction['id']}"
                    async with session.get(url, headers=headers) as answer:
                        answer.raise_for_status()
                        prediction = json.loads(await answer.read())
            except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
                return _failure(exc)
            return Record(
                ok=prediction["status"] == "succeeded",
                completed_at=prediction.get("completed_at"),
                noticed=time.time(),
            )

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        return list(await asyncio.gather(*(one(payload, session) for payload in payloads)))


async def quickrouter_async(
    base_url: str, api_key: str, payloads: Sequence[dict[str, Any]], work: Workload
) -> list[Record]:
    """``client.run_many`` with default settings (and the workload's poll interval)."""
    sync_wait = qr.PollPolicy().sync_wait if work.sync else None
    poll = qr.PollPolicy(sync_wait=sync_wait, interval=work.interval)
    records: list[Record | None] = [None] * len(payloads)
    async with (
        qr.QuickRouter(api_key, base_url=base_url, poll=poll) as client,
        client.run_many(
            ((MODEL, payload) for payload in payloads), concurrency=work.concurrency
        ) as outcomes,
    ):
        async for outcome in outcomes:
            prediction = outcome.prediction
            completed = prediction.completed_at if prediction is not None else None
            records[outcome.index] = Record(
                ok=outcome.ok,
                error=None if outcome.error is None else repr(outcome.error)[:160],
                completed_at=None if completed is None else completed.isoformat(),
                noticed=time.time(),
            )
    return [record or Record(ok=False, error="no outcome") for record in records]


async def replicate_python(
    base_url: str, api_key: str, payloads: Sequence[dict[str, Any]], work: Workload
) -> list[Record]:
    """replicate-python: ``async_run`` (sync mode) or ``async_create`` + ``async_wait``."""
    import replicate  # noqa: PLC0415 (installed only for the benchmarks)

    client = replicate.Client(api_token=api_key, base_url=base_url)
    if work.interval is not None:
        client.poll_interval = work.interval
    slots = asyncio.Semaphore(work.concurrency)

    async def one(payload: dict[str, Any]) -> Record:
        async with slots:
            try:
                if work.sync:
                    await client.async_run(MODEL, input=payload)
                    return Record(ok=True, noticed=time.time())
                prediction = await client.predictions.async_create(model=MODEL, input=payload)
                await prediction.async_wait()
            except Exception as exc:  # noqa: BLE001 (an error is a result here)
                return _failure(exc)
            return Record(
                ok=prediction.status == "succeeded",
                completed_at=prediction.completed_at,
                noticed=time.time(),
            )

    return list(await asyncio.gather(*(one(payload) for payload in payloads)))


CONTENDERS: dict[str, Contender] = {
    "bare aiohttp": bare_aiohttp,
    "quickrouter_async": quickrouter_async,
    "replicate-python": replicate_python,
}
