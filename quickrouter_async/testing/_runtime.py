"""The emulator's moving parts: random draws, new predictions, held requests, pauses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, Final

from ._catalog import KNOWN_VERSIONS, plan_output
from ._images import ImageCache
from ._protocol import new_id
from ._records import PredictionRecord
from ._render import ready_at
from ._webhooks import WebhookSender

if TYPE_CHECKING:
    import random

    from ._emulator import Emulator
    from ._ratelimit import TokenBucket

# Without an explicit start delay, predictions spend this share of their time starting.
DEFAULT_START_SHARE: Final = 0.1
FLAGGED: Final = "Prediction failed: the prompt was flagged as sensitive (E005)"
RANDOM_FAILURE: Final = "Prediction failed: unexpected error handling prediction (E6716)"
# Headers worth keeping on a record; credentials never are.
_SECRET_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})


class Runtime:
    """State shared by the request handlers of one emulator.

    Attributes:
        rng: the random generator (seeded from the emulator's ``seed``).
        bucket: the create rate limiter, or ``None``.
        images: the cache of encoded output images.
        versions: version id to model, for creates by bare version id.
        closing: set when the emulator stops, to release held requests.
        webhooks: the background delivery of webhooks.
    """

    def __init__(self, rng: random.Random) -> None:
        """Start with nothing created."""
        self.rng = rng
        self.bucket: TokenBucket | None = None
        self.images = ImageCache()
        self.versions: dict[str, str] = dict(KNOWN_VERSIONS)
        self.closing = asyncio.Event()
        self.webhooks = WebhookSender(rng)
        self._held: set[asyncio.Event] = set()
        self._sequence = 0

    def release(self) -> None:
        """Answer every held request now and cut pauses short: the server is stopping."""
        self.closing.set()
        for event in self._held:
            event.set()

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the emulator stops meanwhile."""
        if seconds > 0 and not self.closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), seconds)

    async def hold(self, record: PredictionRecord, seconds: float, *, early: bool) -> None:
        """Wait until ``record`` is done (or shows its output), at most ``seconds``.

        No task and no polling: the wait sleeps until the moment the record's timeline
        says it will be ready, waking early only if it is canceled or the server stops.
        """
        limit = time.monotonic() + seconds
        event = record.changed_event()
        self._held.add(event)
        try:
            while not self.closing.is_set():
                now = time.monotonic()
                target = min(limit, ready_at(record, early=early))
                if now >= target:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), target - now)
        finally:
            self._held.discard(event)

    def create(
        self,
        emulator: Emulator,
        *,
        model: str,
        version: str,
        values: dict[str, Any],
        headers: dict[str, str],
        cancel_after: float | None = None,
        deployment: str | None = None,
        webhook: str | None = None,
        webhook_events_filter: list[str] | None = None,
    ) -> PredictionRecord:
        """Commit a new prediction and its whole timeline, drawn from the emulator's knobs."""
        rng = self.rng
        now = time.monotonic()
        low, high = emulator.duration
        duration = rng.uniform(low, high)
        if emulator.start_delay is None:
            starting = duration * DEFAULT_START_SHARE
        else:
            starting = rng.uniform(*emulator.start_delay)
        prompt = values.get("prompt")
        failure = None
        if isinstance(prompt, str) and any(text in prompt for text in emulator.fail_prompts):
            failure = FLAGGED
        elif emulator.failure_rate > 0 and rng.random() < emulator.failure_rate:
            failure = RANDOM_FAILURE
        self._sequence += 1
        record = PredictionRecord(
            id=new_id(rng),
            sequence=self._sequence,
            model=model,
            version=version,
            input=values,
            plan=plan_output(model, values, emulator.image_size),
            created_ns=time.time_ns(),
            created=now,
            starts=now + min(starting, duration),
            ends=now + duration,
            seed=rng.randrange(1 << 16),
            failure=failure,
            deadline=None if cancel_after is None else now + cancel_after,
            deployment=deployment,
            webhook=webhook,
            webhook_events_filter=webhook_events_filter,
            create_headers={
                name.lower(): value
                for name, value in headers.items()
                if name.lower() not in _SECRET_HEADERS
            },
        )
        emulator.predictions.add(record)
        return record
