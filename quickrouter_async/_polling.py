"""Waiting for predictions: `watch`, `wait_for` and the create-then-wait of ``run``.

`watch` yields a prediction each time it changes and ends after a terminal one; the gap
between two polls comes from the client's `Schedule` (a learned plan per model, or a
fixed interval), stretched to honour a server's ``Retry-After``. `wait_for` adds a
deadline, polls once more just before it so that a `WaitTimeout` carries a fresh
prediction, and, when told to, cancels the prediction on the server if the wait ends
without a terminal one: shielded from the caller's cancellation and bounded in time.

Given a create request instead of a prediction, `wait_for` first sends it through the
client's `Creates` (with ``Prefer: wait`` as decided when it was built), so a prediction
that finishes within the wait costs one request. A caller that gives up while that
create is in flight leaves it to `Creates`, which cancels what it made.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING, Final, Protocol

import anyio
import attrs

from ._errors import (
    PredictionCanceled,
    PredictionFailed,
    QuickRouterError,
    RateLimitError,
    ServerError,
    TransportError,
    WaitTimeout,
)
from ._http import retry_after_seconds
from ._models import Prediction, Status
from ._request import CreateRequest
from ._schedule import Schedule

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping

    from ._create import Creates

    Fetch = Callable[[str], Awaitable[tuple[Prediction, float | None]]]
    GiveUp = Callable[[str], Awaitable[Prediction | str]]


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
# Polls that failed for a passing reason, after their own retries, tolerated in a row.
_POLL_FAILURES: Final = 3
# The last poll before a deadline is sent this long (or two round trips) before it.
_FINAL_MARGIN: Final = 0.05
# What a wait without a deadline enters instead of a cancel scope.
_NO_SCOPE: Final = contextlib.nullcontext()


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The server's ``Retry-After`` hint on a poll's answer, in seconds, capped."""
    hint = retry_after_seconds(headers, None, throttled=False)
    return None if hint is None else min(hint, MAX_HINT)


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
        first, hint = await fetch(first)
    track = schedule.track(first, watched_from=watched_from)
    current = first
    yield current
    latency, final, failures = 0.0, False, 0
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
            try:
                latest, hint = await fetch(current.id)
            except (ServerError, RateLimitError, TransportError) as exc:
                # The poll's own retries are spent, the prediction goes on: poll again
                # at the next turn, a few times, before the wait gives up on the server.
                failures += 1
                if failures > _POLL_FAILURES or final:
                    raise
                logger.info("poll of %s failed (%s); polling on", current.id, exc)
                continue
            failures = 0
            latency = time.monotonic() - sent
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
        fetch: gets a prediction by id, with the wait its answer asks for.
        schedule: the client's schedule.
        push: webhook snapshots to wait on instead of polling, if any.
    """
    async with contextlib.aclosing(_follow(first, fetch, schedule, push=push)) as snapshots:
        async for snapshot in snapshots:
            yield snapshot


@attrs.define
class _Wait:
    """What one `wait_for` has seen: the latest prediction, and how a cancel went."""

    prediction_id: str | None = None
    last: Prediction | None = None
    model: str | None = None
    cancel: str | None = None


async def _give_up(state: _Wait, give_up: GiveUp) -> None:
    """Cancel the prediction the wait leaves behind, if it is known and still running."""
    target: Prediction | str | None = state.last or state.prediction_id
    if target is None:
        return  # a create still in flight: its `Creates` cancels what it makes
    if isinstance(target, Prediction) and target.status.terminal:
        return
    prediction_id = target if isinstance(target, str) else target.id
    answer = await give_up(prediction_id)
    if isinstance(answer, str):
        state.cancel = answer
        return
    state.last = answer
    state.cancel = (
        "it was canceled on the server"
        if answer.status in {Status.CANCELED, Status.ABORTED}
        else f"it is now {answer.status.value}"
    )


async def wait_for(
    first: Prediction | str | CreateRequest,
    fetch: Fetch,
    schedule: Schedule,
    *,
    creates: Creates,
    deadline: float = math.inf,
    timeout: float | None = None,
    give_up: GiveUp | None = None,
    push: Push | None = None,
) -> Prediction:
    """Wait until the prediction is terminal and return it.

    Args:
        first: a prediction, its id, or a create request to send first.
        fetch: gets a prediction by id, with the wait its answer asks for.
        schedule: the client's schedule.
        creates: sends a create request.
        deadline: when to stop, on the `time.monotonic` clock (asyncio's loop clock).
        timeout: the seconds that deadline stands for, as the caller gave them.
        give_up: cancels a prediction by id, quietly, returning the prediction or why it
            could not; called (shielded, within `CANCEL_GRACE`) when the wait ends
            without a terminal prediction. None leaves it running.
        push: webhook snapshots to wait on instead of polling, if any.

    Raises:
        WaitTimeout: the deadline passed; it carries the last prediction seen.
    """
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
                state.model = first.model
                first = await creates.create(first, taken=schedule.watching)
                state.prediction_id, state.last = first.id, first
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
                await _give_up(state, give_up)
    if seen is not None and seen.status.terminal:
        return seen
    raise WaitTimeout(_timeout_message(state, seen, timeout), prediction=state.last)


def _timeout_message(state: _Wait, seen: Prediction | None, timeout: float | None) -> str:
    limit = "the deadline" if timeout is None else f"the {timeout:g}s deadline"
    if seen is None:
        subject = f"a prediction of {state.model}" if state.model else "the prediction"
        message = f"{subject} was not created before {limit} passed"
    else:
        message = f"prediction {seen.id} was still {seen.status.value} when {limit} passed"
    if state.cancel is not None:
        message += f"; {state.cancel}"
    elif seen is not None:
        message += "; it was left running"
    return message


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
