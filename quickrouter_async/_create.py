"""`Creates`: the one owner of creates. Exactly once, and nothing left running.

Every create of a client goes through here. The pieces:

- the create-rate limiter, awaited before each attempt and told of each answer;
- the `Ledger` of the predictions this client's creates made;
- what the server offers (`CapabilityBook`), learned from the creates' answers
  (``ratelimit-*`` headers, whether ``Prefer: wait`` is honoured);
- creates in doubt (a 5xx, a broken answer, a timeout or a reset after sending): the
  prediction is looked up with `find_created` where the server lists predictions and
  attached to; only when it is certainly absent is the create sent again. Where it
  cannot be looked up, ``RetryPolicy.in_doubt`` decides: `CreateInDoubt` (the default)
  or a resend;
- creates their caller gives up on: the request is sent by a task the client owns, so
  its answer is still awaited (bounded by its timeouts) when the caller leaves, and the
  prediction it made is then canceled by id. Where the server lists predictions, it is
  also looked up and canceled at once. `aclose` waits for these (bounded) and logs what
  it could not cancel.

Retries go through the transport's one retry loop: a create is sent again only when the
server certainly did not act on it (a 429, a connection never made, or a lookup that
found nothing).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Final

import anyio

from ._config import AUTO, SYNC_WAIT_LISTED, SYNC_WAIT_UNLISTED
from ._errors import (
    APIError,
    CreateInDoubt,
    ProtocolError,
    QuickRouterError,
    RateLimitError,
    TransportError,
)
from ._http import header, remaining_creates
from ._ledger import Ledger
from ._lookup import Found, Wanted, find_created, window_start
from ._request import MIN_CANCEL_AFTER
from ._serde import parse_prediction
from ._transport import in_doubt

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import (
        AsyncIterable,
        Awaitable,
        Callable,
        Collection,
        Coroutine,
        Sequence,
    )

    from ._capabilities import CapabilityBook
    from ._ledger import Creating
    from ._models import Prediction
    from ._ratelimit import CreateLimiter
    from ._request import CreateRequest
    from ._transport import Response, Transport

    Listing = Callable[[dt.datetime], AsyncIterable[Prediction]]
    Cancel = Callable[[str], Awaitable[Prediction | None]]

__all__ = ["Creates"]

logger = logging.getLogger(__name__)

# A held create must answer before the deadline: it is held this much less.
_ANSWER_MARGIN: Final = 0.5
# A held create must answer this long after its wait at most.
_HELD_EXTRA: Final = 5.0
# A create cut short may reach the server after the first lookup: an empty lookup is
# repeated once, this long later.
_SETTLE_PAUSE: Final = 0.5
# The longest `aclose` waits for the answers of creates given up on.
_CLOSE_GRACE: Final = 70.0
# A sync create answered this early (its wait unused) was not held.
_UNHELD_SHARE: Final = 0.5


class _NotCreated(QuickRouterError):
    """A create in doubt whose prediction a lookup found certainly absent (or that the
    policy sends again): worth another attempt. Carries the create's own error.
    """

    def __init__(self, error: QuickRouterError) -> None:
        super().__init__(f"the prediction was not created ({error})")
        self.error = error


class Creates:
    """Sends every create of one client, exactly once where the server allows it.

    Args:
        transport: the HTTP layer.
        limiter: paces the creates.
        capabilities: what the server offers, learned as it goes.
        listing: the account's predictions created after a moment, newest first.
        cancel: cancels a prediction by id, quietly (None when it could not).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        limiter: CreateLimiter,
        capabilities: CapabilityBook,
        listing: Listing,
        cancel: Cancel,
    ) -> None:
        self._transport = transport
        self.limiter = limiter
        self.capabilities = capabilities
        self._listing = listing
        self._cancel = cancel
        self.ledger = Ledger()
        # Tasks that settle creates given up on, and when each will be done at the latest.
        self._orphans: dict[asyncio.Task[Any], float] = {}

    def __repr__(self) -> str:
        return f"<Creates {len(self._orphans)} given up on>"

    # -- what to send ----------------------------------------------------------------------

    def sync_wait(self, policy: float | str | None, remaining: float | None) -> int | None:
        """The ``Prefer: wait`` seconds for a create: the policy's, resolved and capped.

        ``"auto"`` is long where the server is known to list predictions and short
        elsewhere; nothing is held where the server is known to ignore it, nor past the
        deadline (``remaining`` seconds, less a margin for the answer).
        """
        if policy is None or self.capabilities.sync_wait is False:
            return None
        if policy == AUTO:
            listed = self.capabilities.list_predictions
            wait = math.ceil(SYNC_WAIT_LISTED if listed else SYNC_WAIT_UNLISTED)
        else:
            wait = math.ceil(float(policy))
        if remaining is not None:
            wait = min(wait, math.floor(remaining - _ANSWER_MARGIN))
        return wait if wait >= 1 else None

    @staticmethod
    def cancel_after(remaining: float | None) -> float | None:
        """The ``Cancel-After`` for a create whose caller gives up in ``remaining``
        seconds (at least the API's 5), so a server that cannot be told stops it anyway.
        """
        if remaining is None or not math.isfinite(remaining):
            return None
        return max(float(MIN_CANCEL_AFTER), remaining)

    # -- sending ---------------------------------------------------------------------------

    async def create(
        self,
        request: CreateRequest,
        *,
        taken: Collection[str] = frozenset(),
    ) -> Prediction:
        """Create the prediction once, resolving any doubt about its fate.

        Args:
            request: the validated create.
            taken: more ids that must not be attached to (predictions being watched).

        Raises:
            APIError: the server refused the create (after the retries a 429 is allowed),
                or kept failing while the prediction was certainly never made.
            TransportError: no answer, and the prediction was certainly never made.
            CreateInDoubt: the prediction may exist and could not be looked up.
            ProtocolError: the answers were broken and no prediction could be found.
        """
        key = request.model.partition(":")[0] + "\n" + request.input_json
        entry = self.ledger.enter(key)
        sent_at = self._transport.clock.clock()
        try:
            return await self._transport.retrying(
                self._attempt,
                request,
                entry,
                sent_at,
                taken,
                retry_on=self._worth_again,
                what=f"create of {request.model}",
            )
        except _NotCreated as exc:
            raise exc.error from None
        finally:
            self.ledger.leave(key, entry)

    def _worth_again(self, exc: QuickRouterError) -> bool:
        """Whether a failed create may be sent again: the server certainly did not act."""
        if isinstance(exc, _NotCreated):
            return True
        if isinstance(exc, RateLimitError):
            return exc.status in self._transport.retry.retry_statuses
        return isinstance(exc, TransportError) and not exc.request_sent

    async def _attempt(
        self,
        request: CreateRequest,
        entry: Creating,
        sent_at: float,
        taken: Collection[str],
    ) -> Prediction:
        if not entry.begin_nowait():
            await entry.begin()
        try:
            try:
                return await self._send(request)
            finally:
                entry.end()
        except QuickRouterError as exc:
            if not in_doubt(exc):
                raise
            error = exc
        try:
            found = await self._resolve(request, entry, sent_at, taken, error)
        except anyio.get_cancelled_exc_class():
            # Given up on while its fate was being looked into: found and canceled later.
            self._keep(self._cancel_found(request, sent_at), time.monotonic() + _CLOSE_GRACE)
            raise
        if found is None:
            raise _NotCreated(error)
        return found

    async def _send(self, request: CreateRequest) -> Prediction:
        """One attempt: a token of the limiter, the request, the answer's lessons."""
        limiter = self.limiter
        await limiter.acquire()
        started = time.monotonic()
        try:
            response = await self._exchange(request)
        except RateLimitError as exc:
            limiter.on_throttled(
                exc.retry_after, bucket_empty=exc.remaining is None or exc.remaining < 1
            )
            raise
        except (APIError, ProtocolError):
            limiter.on_accepted()  # an answer, if not a useful one
            raise
        except BaseException:
            limiter.on_unanswered()
            raise
        limiter.on_accepted(remaining_creates(response.headers))
        return self._take(request, response, started)

    def _take(self, request: CreateRequest, response: Response, started: float) -> Prediction:
        """The prediction a create was answered with, claimed; what the answer says of
        the server learned.
        """
        prediction = parse_prediction(response.data)
        self.ledger.claim(prediction.id)
        capabilities = self.capabilities
        if capabilities.rate_limit_headers is None:
            remaining = remaining_creates(response.headers)
            capabilities.learn("rate_limit_headers", present=remaining is not None)
        wait = request.sync_wait
        if wait is not None and capabilities.sync_wait is None:
            if header(response.headers, "Preference-Applied") is not None:
                capabilities.learn("sync_wait", present=True)
            elif not prediction.terminal and time.monotonic() - started < wait * _UNHELD_SHARE:
                capabilities.learn(
                    "sync_wait",
                    present=False,
                    evidence=f"a create asking to wait {wait}s was answered at once",
                )
        return prediction

    async def _exchange(self, request: CreateRequest) -> Response:
        """Send the create from a task the client owns: a caller that leaves does not
        cut it short, and what it made is canceled when its answer comes.
        """
        extra = 0.0 if request.sync_wait is None else request.sync_wait + _HELD_EXTRA
        transport = self._transport
        sent_at, started = transport.clock.clock(), time.monotonic()
        sending = transport.send(
            "POST",
            transport.url(request.path),
            body=request.body,
            headers=request.headers,
            read_extra=extra,
        )
        task = asyncio.get_running_loop().create_task(sending)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._give_up(task, request, sent_at, started, extra)
            raise

    # -- creates in doubt ------------------------------------------------------------------

    async def _resolve(
        self,
        request: CreateRequest,
        entry: Creating,
        sent_at: float,
        taken: Collection[str],
        error: QuickRouterError,
    ) -> Prediction | None:
        """The prediction a create in doubt made, or None when it may be sent again."""
        if self.capabilities.list_predictions is False:
            self._cannot_look_up(request, error, "the server has no list route")
            return None
        logger.info("create of %s in doubt (%s); looking it up", request.model, error)
        async with entry.gate:
            await entry.settle()
            for lookup in range(2):
                if lookup:
                    await self._transport.sleep(_SETTLE_PAUSE)
                try:
                    found = await self.find([(request, sent_at)], taken=taken)
                except QuickRouterError as lookup_error:
                    absent = self.capabilities.snapshot().list_predictions is False
                    reason = (
                        "the server has no list route"
                        if absent
                        else f"looking it up failed too ({lookup_error})"
                    )
                    self._cannot_look_up(request, error, reason)
                    return None
                prediction = found.predictions[0]
                if prediction is not None:
                    self.ledger.claim(prediction.id)
                    logger.info("attached to prediction %s after a create in doubt", prediction.id)
                    return prediction
                if not found.complete:
                    reason = "too many predictions were created since to look through"
                    self._cannot_look_up(request, error, reason)
                    return None
        logger.info("prediction of %s certainly not created; sending it again", request.model)
        return None

    def _cannot_look_up(self, request: CreateRequest, error: QuickRouterError, reason: str) -> None:
        if self._transport.retry.in_doubt == "resend":
            logger.warning(
                "create of %s in doubt (%s) and %s; sending it again (in_doubt='resend'): "
                "its prediction may be made twice",
                request.model,
                str(error)[:200],
                reason,
            )
            return
        raise CreateInDoubt(
            f"the create failed ({error}) and {reason}; its prediction may exist",
            model=request.model,
            input=request.input,
        ) from error

    async def find(
        self, creates: Sequence[tuple[CreateRequest, float]], *, taken: Collection[str] = ()
    ) -> Found:
        """The predictions ``creates`` (each with its local send time) made, if any.

        Raises:
            QuickRouterError: listing failed (or the server has no list route).
        """
        offset = self._transport.clock.offset
        wanted = [
            Wanted(
                model=request.model,
                input_json=request.input_json,
                since=window_start(sent, offset),
            )
            for request, sent in creates
        ]
        earliest = min(want.since for want in wanted)
        claimed = self.ledger.claimed
        excluded = _Excluded(claimed, taken)
        return await find_created(self._listing(earliest), wanted, taken=excluded)

    # -- creates given up on ---------------------------------------------------------------

    def _give_up(
        self,
        task: asyncio.Task[Response],
        request: CreateRequest,
        sent_at: float,
        started: float,
        extra: float,
    ) -> None:
        read = self._transport.timeouts.read or 30.0
        self._keep(self._settle(task, request, sent_at, started), time.monotonic() + extra + read)

    def _keep(self, settling: Coroutine[Any, Any, object], done_by: float) -> None:
        """Run ``settling`` in a task of the client's, awaited (until ``done_by``) on close."""
        task = asyncio.get_running_loop().create_task(settling)
        self._orphans[task] = done_by
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._orphans.pop(task, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("could not settle a create given up on: %s", exc)

    async def _settle(
        self, task: asyncio.Task[Response], request: CreateRequest, sent_at: float, started: float
    ) -> None:
        """Cancel what a create its caller gave up on made, once that is known."""
        canceled: Prediction | None = None
        if self.capabilities.list_predictions is not False and request.sync_wait:
            # The create holds its answer up to its wait: the prediction is found sooner.
            canceled = await self._cancel_found(request, sent_at, until=task)
        try:
            prediction = self._take(request, await task, started)
        except QuickRouterError as exc:
            if in_doubt(exc) and canceled is None:
                await self._cancel_found(request, sent_at)
            return
        if not prediction.status.terminal and (canceled is None or canceled.id != prediction.id):
            await self._cancel_abandoned(prediction.id, request)

    async def _cancel_found(
        self, request: CreateRequest, sent_at: float, until: asyncio.Task[Response] | None = None
    ) -> Prediction | None:
        """Look up the prediction of a create given up on and cancel it; None if not found."""
        if self.capabilities.list_predictions is False:
            logger.warning(
                "a create of %s given up on may have made a prediction that cannot be "
                "looked up; it may keep running",
                request.model,
            )
            return None
        for _ in range(2):
            if until is not None and until.done():
                return None
            await self._transport.sleep(_SETTLE_PAUSE)
            try:
                found = (await self.find([(request, sent_at)])).predictions[0]
            except QuickRouterError as exc:
                if self.capabilities.snapshot().list_predictions is not False:  # else said once
                    logger.warning(
                        "could not look up the prediction of a create given up on: %s", exc
                    )
                return None
            if found is not None:
                self.ledger.claim(found.id)
                if not found.status.terminal:
                    logger.info("canceling prediction %s of a create given up on", found.id)
                    await self._cancel_abandoned(found.id, request)
                return found
        return None

    async def _cancel_abandoned(self, prediction_id: str, request: CreateRequest) -> None:
        if self.capabilities.cancel is not False:
            await self._cancel(prediction_id)
        if self.capabilities.cancel is False:
            if request.deadline_sent:
                logger.info(
                    "prediction %s of a create given up on stops at its Cancel-After deadline",
                    prediction_id,
                )
            else:
                logger.warning(
                    "prediction %s of a create given up on keeps running: the server cannot "
                    "cancel it",
                    prediction_id,
                )

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds until every create given up on is settled."""
        pending = list(self._orphans)
        if pending:
            with anyio.move_on_after(timeout):
                await asyncio.wait(pending)

    async def aclose(self) -> None:
        """Wait (bounded) for the creates given up on; say which could not be settled."""
        if not self._orphans:
            return
        latest = max(self._orphans.values()) - time.monotonic()
        with anyio.CancelScope(shield=True):
            await self.drain(min(_CLOSE_GRACE, max(0.0, latest)))
            left = list(self._orphans)
            if left:
                logger.warning(
                    "%d create(s) given up on had not answered when the client closed: "
                    "their predictions may keep running",
                    len(left),
                )
                for task in left:
                    task.cancel()
                await asyncio.wait(left)


class _Excluded:
    """Ids a lookup must not match: claimed ones and the caller's own."""

    __slots__ = ("_claimed", "_taken")

    def __init__(self, claimed: Collection[str], taken: Collection[str]) -> None:
        self._claimed = claimed
        self._taken = taken

    def __contains__(self, item: object) -> bool:
        return item in self._claimed or item in self._taken
