"""Webhook delivery: signed POSTs to each prediction's ``webhook`` URL as it progresses.

Each prediction created with a ``webhook`` gets one background task that sleeps until
the next moment of its timeline worth telling (``start``, early ``output``, ``logs``
steps, ``completed``), honouring ``webhook_events_filter``, and POSTs the prediction as
it was at that moment, signed like Replicate's (Standard Webhooks) with the emulator's
``webhook_secret``. Only the ``completed`` webhook is retried, with exponential
back-off, on a connection error or a non-2xx answer. Duplicates and out-of-order
deliveries are injected at the emulator's rates. Tasks end when the emulator stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import attrs

from .._webhooks import sign_webhook
from ._protocol import new_id
from ._render import output_at, render

if TYPE_CHECKING:
    import random

    from ._emulator import Emulator
    from ._records import PredictionRecord

logger = logging.getLogger(__name__)

#: Every webhook event, in timeline order.
WEBHOOK_EVENTS: Final = ("start", "output", "logs", "completed")
# Replicate sends `logs` (and `output`) webhooks at most once per 500 ms.
LOGS_THROTTLE: Final = 0.5
_LOG_STEPS: Final = 4
_TIMEOUT: Final = aiohttp.ClientTimeout(total=10.0)


@attrs.frozen(kw_only=True)
class WebhookDelivery:
    """One attempt to deliver a webhook.

    Attributes:
        prediction_id: the prediction it is about.
        event: ``"start"``, ``"output"``, ``"logs"`` or ``"completed"``.
        webhook_id: the ``webhook-id`` header (the same for a retry or a duplicate).
        url: where it was sent.
        prediction_status: the ``status`` of the prediction in the body.
        attempt: 1 for the first try, 2 for the first retry, and so on.
        status: the HTTP status answered, or ``None`` if the request failed.
        error: why the request failed, if it did.
        time: ``time.monotonic()`` when it was sent.
        duplicate: an extra copy injected by ``webhook_duplicate_rate``.
        late: held back and sent after a later event by ``webhook_reorder_rate``.
    """

    prediction_id: str
    event: str
    webhook_id: str
    url: str
    prediction_status: str
    attempt: int
    status: int | None
    error: str | None
    time: float
    duplicate: bool = False
    late: bool = False

    @property
    def ok(self) -> bool:
        """Whether the receiver answered 2xx."""
        return self.status is not None and 200 <= self.status < 300


@attrs.frozen
class _Message:
    event: str
    webhook_id: str
    body: bytes
    prediction_status: str


class WebhookSender:
    """The background tasks delivering one emulator's webhooks."""

    def __init__(self, rng: random.Random) -> None:
        """Deliver nothing yet."""
        self.rng = rng
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def schedule(self, emulator: Emulator, record: PredictionRecord) -> None:
        """Start delivering ``record``'s webhooks in the background."""
        task = asyncio.get_running_loop().create_task(self._follow(emulator, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until every delivery scheduled so far has ended."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel the deliveries still running and close the HTTP session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
        return self._session

    def _due(
        self, record: PredictionRecord, emulator: Emulator, sent: dict[str, int], last_logs: float
    ) -> tuple[float, str]:
        """The next event of the timeline and its moment."""
        status, end = record.outcome()
        candidates = [(end, "completed")]
        if not sent.get("start") and status != "aborted" and record.starts <= end:
            candidates.append((record.starts, "start"))
        visible = output_at(record, early=emulator.early_output)
        if not sent.get("output") and visible is not None and visible < end:
            candidates.append((visible, "output"))
        step = sent.get("logs", 0) + 1
        running = record.ends - record.starts
        if step < _LOG_STEPS and status != "aborted":
            moment = max(record.starts + running * step / _LOG_STEPS, last_logs + LOGS_THROTTLE)
            if moment < end:
                candidates.append((moment, "logs"))
        return min(candidates, key=lambda pair: (pair[0], WEBHOOK_EVENTS.index(pair[1])))

    async def _follow(self, emulator: Emulator, record: PredictionRecord) -> None:
        url = record.webhook
        assert url is not None  # noqa: S101 (scheduled only for records with a webhook)
        wanted = set(record.webhook_events_filter or WEBHOOK_EVENTS)
        sent: dict[str, int] = {}
        last_logs = -math.inf
        held: list[_Message] = []
        changed = record.changed_event()
        while True:
            moment, event = self._due(record, emulator, sent, last_logs)
            wait = moment - time.monotonic()
            if wait > 0:
                # A cancel changes the timeline: wake up and look again.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), wait)
                continue
            sent[event] = sent.get(event, 0) + 1
            if event == "logs":
                last_logs = moment
            if event not in wanted:
                if event == "completed":
                    break
                continue
            message = self._message(emulator, record, event, moment)
            if event != "completed" and self.rng.random() < emulator.webhook_reorder_rate:
                held.append(message)  # sent after the next one: out of order
                continue
            await self._deliver(emulator, url, record.id, message)
            for late in held:
                await self._deliver(emulator, url, record.id, late, late=True)
            held.clear()
            if event == "completed":
                break
        for late in held:  # held past a completion that was filtered out
            await self._deliver(emulator, url, record.id, late, late=True)

    def _message(
        self, emulator: Emulator, record: PredictionRecord, event: str, moment: float
    ) -> _Message:
        body: dict[str, Any] = render(record, moment, emulator.render_context())
        return _Message(
            event=event,
            webhook_id="msg_" + new_id(self.rng),
            body=json.dumps(body, separators=(",", ":")).encode(),
            prediction_status=body["status"],
        )

    async def _deliver(
        self,
        emulator: Emulator,
        url: str,
        prediction_id: str,
        message: _Message,
        *,
        late: bool = False,
    ) -> None:
        """Send one message (again, while a ``completed`` one is refused), maybe twice."""
        attempts = 1 + (emulator.webhook_retries if message.event == "completed" else 0)
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                await asyncio.sleep(emulator.webhook_retry_delay * 2 ** (attempt - 2))
            delivery = await self._post(emulator, url, prediction_id, message, attempt, late=late)
            if delivery.ok:
                break
        if self.rng.random() < emulator.webhook_duplicate_rate:
            await self._post(emulator, url, prediction_id, message, 1, late=late, duplicate=True)

    async def _post(
        self,
        emulator: Emulator,
        url: str,
        prediction_id: str,
        message: _Message,
        attempt: int,
        *,
        late: bool,
        duplicate: bool = False,
    ) -> WebhookDelivery:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_webhook(
                emulator.webhook_secret, message.webhook_id, timestamp, message.body
            ),
        }
        sent_at = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            async with self._client().post(
                url, data=message.body, headers=headers, allow_redirects=False
            ) as answer:
                await answer.read()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.debug("webhook %s to %s failed: %s", message.webhook_id, url, error)
        delivery = WebhookDelivery(
            prediction_id=prediction_id,
            event=message.event,
            webhook_id=message.webhook_id,
            url=url,
            prediction_status=message.prediction_status,
            attempt=attempt,
            status=status,
            error=error,
            time=sent_at,
            duplicate=duplicate,
            late=late,
        )
        emulator.webhook_deliveries.append(delivery)
        return delivery
