"""Waiting for predictions: `watch`, `wait` and `run`.

`watch` yields a prediction each time it changes and ends after a terminal one. The gap
between two polls comes from a `Schedule`; `wait` and `run` add a deadline, and `run`
cancels its prediction on the server (shielded, bounded in time) when its caller gives up.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Final

import anyio

from ._errors import PredictionCanceled, PredictionFailed, QuickRouterError, WaitTimeout
from ._models import Prediction, Status

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from ._config import PollPolicy

__all__ = ["CANCEL_GRACE", "Schedule", "raise_for_outcome", "wait_for", "watch"]

logger = logging.getLogger(__name__)

# How long a shielded cancel may take when the caller has given up.
CANCEL_GRACE: Final = 5.0


class Schedule:
    """The gap before the next poll of a prediction."""

    def __init__(self, policy: PollPolicy) -> None:
        self.policy = policy

    def next_delay(self, prediction: Prediction, polls: int) -> float:
        """Seconds to wait before poll number ``polls + 1`` of ``prediction``."""
        del prediction
        if self.policy.interval is not None:
            return self.policy.interval
        delay = self.policy.min_interval * 1.5**polls
        return min(self.policy.max_interval, max(self.policy.min_interval, delay))


def _changed(old: Prediction | None, new: Prediction) -> bool:
    return (
        old is None
        or old.status != new.status
        or old.output != new.output
        or old.logs != new.logs
        or old.error != new.error
    )


async def watch(
    first: Prediction,
    fetch: Callable[[str], Awaitable[Prediction]],
    schedule: Schedule,
) -> AsyncIterator[Prediction]:
    """Yield ``first``, then each changed version of it, ending after a terminal one."""
    current = first
    yield current
    polls = 0
    while not current.status.terminal:
        await anyio.sleep(schedule.next_delay(current, polls))
        polls += 1
        latest = await fetch(current.id)
        if not latest.status.known:
            logger.debug("prediction %s has unknown status %r", latest.id, latest.status.value)
        if _changed(current, latest):
            current = latest
            yield current
        else:
            current = latest


async def wait_for(
    first: Prediction,
    fetch: Callable[[str], Awaitable[Prediction]],
    schedule: Schedule,
    *,
    timeout: float | None,
) -> Prediction:
    """The terminal version of ``first``; `WaitTimeout` once ``timeout`` seconds pass."""
    last = first
    with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
        async for snapshot in watch(first, fetch, schedule):
            last = snapshot
    if scope.cancelled_caught and not last.status.terminal:
        raise WaitTimeout(
            f"prediction {last.id} was still {last.status.value} after {timeout:g}s",
            prediction=last,
        )
    return last


def raise_for_outcome(prediction: Prediction) -> Prediction:
    """Return a succeeded prediction; raise `PredictionFailed` / `PredictionCanceled`."""
    if prediction.status is Status.FAILED:
        raise PredictionFailed(
            f"prediction {prediction.id} failed: {prediction.error or 'no error message'}",
            prediction=prediction,
        )
    if prediction.status in {Status.CANCELED, Status.ABORTED}:
        raise PredictionCanceled(
            f"prediction {prediction.id} was {prediction.status.value}", prediction=prediction
        )
    return prediction


async def cancel_quietly(
    cancel: Callable[[str], Awaitable[Prediction]], prediction_id: str
) -> None:
    """Cancel on the server, shielded from the caller's cancellation and bounded in time."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_GRACE):
        try:
            await cancel(prediction_id)
        except QuickRouterError as exc:
            logger.warning("could not cancel prediction %s: %s", prediction_id, exc)
