"""Waiting for predictions: `watch`, `wait_for` and the create-then-wait of ``run``.

`watch` yields a prediction each time it changes and ends after a terminal one; the gap
between two polls comes from the client's `Schedule` (a learned plan per model, or a
fixed interval), stretched to honour a server's ``Retry-After``. `wait_for` adds a
deadline, polls once more just before it so that a `WaitTimeout` carries a fresh
prediction, and, when told to, cancels the prediction on the server if the wait ends
without a terminal one: shielded from the caller's cancellation and bounded in time.

Given a create request instead of a prediction, `wait_for` first sends it with
``Prefer: wait`` (capped by the deadline), so a prediction that finishes within it costs
one request. While that create is in flight the prediction's id is unknown: if the caller
gives up then, the create is abandoned and the prediction it made is found in the list
of recent predictions (same model and input, created since the request was sent, still
running) and canceled, so nothing is left running.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import logging
import math
import time
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import urlencode

import anyio
import attrs

from ._create import CLOCK_SKEW, CreateRequest, _matches, is_claimed, send_create
from ._errors import PredictionCanceled, PredictionFailed, QuickRouterError, WaitTimeout
from ._models import Prediction, Status
from ._schedule import Schedule
from ._serde import parse_page

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping

    from ._transport import Transport

    Fetch = Callable[[str], Awaitable[tuple[Prediction, Mapping[str, str]]]]
    GiveUp = Callable[[str], Awaitable[Prediction | None]]


class Push(Protocol):
    """Snapshots pushed by webhooks (a `WebhookReceiver`'s hub), waited on instead of polls."""

    fallback_interval: float

    def covers(self, prediction: Prediction) -> bool:
        """Whether webhooks are expected for ``prediction``."""

    async def next(self, current: Prediction, timeout: float) -> Prediction | None:
        """A snapshot newer than ``current`` within ``timeout`` seconds, else None."""


__all__ = [
    "CANCEL_GRACE",
    "Push",
    "Schedule",
    "cancel_quietly",
    "raise_for_outcome",
    "retry_after",
    "wait_for",
    "watch",
]

logger = logging.getLogger(__name__)

# How long a shielded cancel (with the lookup of a create cut short) may take.
CANCEL_GRACE: Final = 5.0
# The longest server hint honoured between two polls.
MAX_HINT: Final = 60.0
# A sync create must answer before the deadline: it holds the request this much less.
_SYNC_MARGIN: Final = 0.5
# The last poll before a deadline is sent this long (or two round trips) before it.
_FINAL_MARGIN: Final = 0.05
# A create cut short may reach the server after the first lookup: look twice.
_LOOKUPS: Final = 2
_LOOKUP_PAUSE: Final = 0.5
# What a wait without a deadline enters instead of a cancel scope.
_NO_SCOPE: Final = contextlib.nullcontext()
_LOOKUP_PAGES: Final = 3


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The server's ``Retry-After`` hint in seconds (number or HTTP date), capped."""
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_HINT)


def _changed(old: Prediction, new: Prediction) -> bool:
    return (
        old.status != new.status
        or old.output != new.output
        or old.logs != new.logs
        or old.error != new.error
    )


async def _follow(
    first: Prediction | str,
    fetch: Fetch,
    schedule: Schedule,
    *,
    deadline: float = math.inf,
    watched_from: float | None = None,
    push: Push | None = None,
) -> AsyncGenerator[Prediction, None]:
    """Yield ``first`` (fetched, for an id), then each change, ending after a terminal one.

    With ``push``, a prediction created with a webhook is not polled while webhooks
    arrive: the loop waits on ``push`` and polls only after its quiet period.
    """
    hint: float | None = None
    if isinstance(first, str):
        first, headers = await fetch(first)
        hint = retry_after(headers)
    track = schedule.track(first, watched_from=watched_from)
    current = first
    yield current
    latency, final = 0.0, False
    while not current.status.terminal:
        pushed = push is not None and push.covers(current)
        delay = push.fallback_interval if push and pushed else track.next_delay(hint=hint)
        now = time.monotonic()
        margin = max(_FINAL_MARGIN, 2 * latency)
        if not final and now + delay + margin >= deadline:
            # One last look just before the deadline, so a timeout reports what is true.
            delay, final = max(0.0, deadline - margin - now), True
        news = await push.next(current, delay) if push and pushed else None
        if news is not None:
            latest, hint = news, None
        else:
            if not pushed:
                await anyio.sleep(delay)
            sent = time.monotonic()
            latest, headers = await fetch(current.id)
            latency = time.monotonic() - sent
            hint = retry_after(headers)
        track.update(latest)
        if not latest.status.known:
            logger.debug("prediction %s has unknown status %r", latest.id, latest.status.value)
        previous, current = current, latest
        if _changed(previous, current):
            yield current


async def watch(
    first: Prediction | str, fetch: Fetch, schedule: Schedule, *, push: Push | None = None
) -> AsyncIterator[Prediction]:
    """Yield ``first`` (fetched, for an id), then each change, ending after a terminal one.

    Args:
        first: the prediction, or its id.
        fetch: gets a prediction by id, with the answer's headers.
        schedule: the client's schedule.
        push: webhook snapshots to wait on instead of polling, if any.
    """
    async with contextlib.aclosing(_follow(first, fetch, schedule, push=push)) as snapshots:
        async for snapshot in snapshots:
            yield snapshot


@attrs.define
class _Wait:
    """What one `wait_for` has seen: the latest prediction, and the create in flight."""

    prediction_id: str | None = None
    last: Prediction | None = None
    model: str | None = None
    # A create abandoned before it answered, and when it was sent.
    abandoned: tuple[CreateRequest, dt.datetime] | None = None


async def _create(
    request: CreateRequest,
    transport: Transport,
    schedule: Schedule,
    deadline: float,
    state: _Wait,
) -> Prediction:
    """Send ``request`` with ``Prefer: wait`` as the policy says, capped by the deadline."""
    sync = schedule.policy.sync_wait
    wait = None if sync is None else math.ceil(sync)
    if wait is not None and deadline < math.inf:
        wait = min(wait, math.floor(deadline - time.monotonic() - _SYNC_MARGIN))
    headers = {k: v for k, v in request.headers.items() if k.lower() != "prefer"}
    if wait is not None and wait >= 1:
        headers["Prefer"] = f"wait={wait}"
    request = attrs.evolve(
        request, headers=headers, sync_wait=wait if wait is not None and wait >= 1 else None
    )
    state.model, sent_at = request.model, dt.datetime.now(dt.UTC)
    try:
        prediction = await send_create(transport, request, taken=set(schedule.watching))
    except anyio.get_cancelled_exc_class():
        state.abandoned = request, sent_at
        raise
    state.prediction_id, state.last = prediction.id, prediction
    return prediction


async def _find_abandoned(
    transport: Transport, request: CreateRequest, since: dt.datetime, taken: set[str]
) -> Prediction | None:
    """The running prediction an abandoned create made, from the newest predictions."""
    query = urlencode({"created_after": (since - CLOCK_SKEW).isoformat()})
    url = transport.url(f"/v1/predictions?{query}")
    for _ in range(_LOOKUP_PAGES):
        page = parse_page((await transport.request("GET", url)).data)
        for prediction in page.results:
            if (
                prediction.id not in taken
                and not is_claimed(transport, prediction.id)
                and not prediction.status.terminal
                and _matches(prediction, request, since)
            ):
                return prediction
        following = transport.cursor_url(page.next)
        if following is None:
            break
        url = following
    return None


async def _give_up(state: _Wait, give_up: GiveUp, transport: Transport, schedule: Schedule) -> None:
    """Cancel what the wait leaves behind: the prediction, or what an abandoned create made."""
    target: Prediction | str | None = state.last or state.prediction_id
    if target is None and state.abandoned is not None:
        request, sent_at = state.abandoned
        for attempt in range(_LOOKUPS):
            if attempt:
                await anyio.sleep(_LOOKUP_PAUSE)
            try:
                target = await _find_abandoned(transport, request, sent_at, schedule.watching)
            except QuickRouterError as exc:
                logger.warning("could not look up the prediction of an abandoned create: %s", exc)
                return
            if target is not None:
                logger.info("canceling prediction %s of an abandoned create", target.id)
                break
    if isinstance(target, str):
        state.last = await give_up(target) or state.last
    elif target is not None and not target.status.terminal:
        state.last = await give_up(target.id) or target


async def wait_for(
    first: Prediction | str | CreateRequest,
    fetch: Fetch,
    schedule: Schedule,
    *,
    transport: Transport,
    deadline: float = math.inf,
    give_up: GiveUp | None = None,
    push: Push | None = None,
) -> Prediction:
    """Wait until the prediction is terminal and return it.

    Args:
        first: a prediction, its id, or a create request to send first.
        fetch: gets a prediction by id, with the answer's headers.
        schedule: the client's schedule.
        transport: sends a create request, and looks up what an abandoned one made.
        deadline: when to stop, on the `time.monotonic` clock (asyncio's loop clock).
        give_up: cancels a prediction by id; called (shielded, within `CANCEL_GRACE`)
            when the wait ends without a terminal prediction. None leaves it running.
        push: webhook snapshots to wait on instead of polling, if any.

    Raises:
        WaitTimeout: the deadline passed; it carries the last prediction seen.
    """
    started = time.monotonic()
    state = _Wait()
    if isinstance(first, Prediction):
        state.prediction_id, state.last = first.id, first
    elif isinstance(first, str):
        state.prediction_id = first
    watched_from: float | None = None
    finished = False  # the wait saw a terminal prediction
    try:
        # A scope with no deadline would cost more than all else a fast wait does.
        scope = anyio.CancelScope(deadline=deadline) if deadline < math.inf else _NO_SCOPE
        with scope:
            if isinstance(first, CreateRequest):
                first = await _create(first, transport, schedule, deadline, state)
                watched_from = 0.0
            schedule.watching.add(first if isinstance(first, str) else first.id)
            snapshots = _follow(
                first, fetch, schedule, deadline=deadline, watched_from=watched_from, push=push
            )
            async with contextlib.aclosing(snapshots):
                async for snapshot in snapshots:
                    state.last = snapshot
            finished = True
    finally:
        if state.prediction_id is not None:
            schedule.watching.discard(state.prediction_id)
        seen = state.last
        if give_up is not None and not finished:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_GRACE):
                await _give_up(state, give_up, transport, schedule)
    if seen is not None and seen.status.terminal:
        return seen
    waited = deadline - started
    if seen is None:
        message = f"no answer about {state.model or 'the prediction'} within {waited:g}s"
    else:
        message = f"prediction {seen.id} was still {seen.status.value} after {waited:g}s"
    if state.last is not None and state.last is not seen:
        message += f"; it is now {state.last.status.value}"
    raise WaitTimeout(message, prediction=state.last)


def raise_for_outcome(prediction: Prediction) -> Prediction:
    """Return a succeeded prediction; raise `PredictionFailed` / `PredictionCanceled`."""
    status = prediction.status
    if status is Status.SUCCEEDED:
        return prediction
    if status is Status.FAILED:
        raise PredictionFailed(
            f"prediction {prediction.id} failed: {prediction.error or 'no error message'}",
            prediction=prediction,
        )
    if status is Status.CANCELED or status is Status.ABORTED:
        raise PredictionCanceled(
            f"prediction {prediction.id} was {status.value}", prediction=prediction
        )
    return prediction


async def cancel_quietly(
    cancel: Callable[[str], Awaitable[Prediction]], prediction_id: str
) -> Prediction | None:
    """Cancel on the server, shielded from the caller's cancellation and bounded in time.

    Returns:
        The prediction as the cancel answered, or None if the cancel failed.
    """
    with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_GRACE):
        try:
            return await cancel(prediction_id)
        except QuickRouterError as exc:
            logger.warning("could not cancel prediction %s: %s", prediction_id, exc)
    return None
