"""Creating a prediction exactly once.

A create whose fate is unknown (a 5xx, a broken answer, a timeout or a reset after the
request was sent) is never sent again blindly. The recent predictions are listed, newest
first, and matched on model, input and creation time; a match is attached to. Only when
the prediction is certainly absent (two lookups a moment apart found nothing) is the
input sent once more; when the lookup itself fails, `CreateInDoubt` carries the input.

Two submissions of the same input never attach to one prediction. Each client keeps a
ledger: the ids its creates were answered with or attached to are claimed and never
matched again, and a lookup for an input first waits until no other create of that same
input is under way (and holds new ones back), so every prediction the lookup can see
belongs either to a claimed create or to one whose fate is in doubt.

Creation times are compared on the server's clock, learned from its ``Date`` headers,
so a client whose clock is wrong still finds its predictions; without a ``Date`` header
the local clock is used with a generous allowance.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Final

import anyio

from ._errors import CreateInDoubt, QuickRouterError
from ._request import CreateRequest, build_create, input_key
from ._serde import parse_page, parse_prediction
from ._transport import create_in_doubt

if TYPE_CHECKING:
    from collections.abc import Set as AbstractSet

    from ._models import Prediction
    from ._transport import Transport

__all__ = [
    "CLOCK_SKEW",
    "CreateRequest",
    "Ledger",
    "build_create",
    "input_key",
    "is_claimed",
    "matches_request",
    "send_create",
]

logger = logging.getLogger(__name__)

# Without a Date header the local clock may be this far off the server's: a prediction
# stamped this much before its create was sent may still be the one it made.
CLOCK_SKEW: Final = dt.timedelta(seconds=120)
# With one: its whole-second resolution, the network's delay and a clock per server.
_DATE_MARGIN: Final = dt.timedelta(seconds=10)
_LOOKUP_PAGES: Final = 10
# A create the server is still working on when its connection broke may appear a
# moment later: an empty lookup is repeated once after this share of a back-off.
_SETTLE_LOOKUPS: Final = 2
# Claimed ids are kept this long; lookups only consider younger predictions.
_CLAIM_SECONDS: Final = 3600.0


def matches_request(prediction: Prediction, request: CreateRequest) -> bool:
    """Whether ``prediction`` may be the one ``request`` made: same model and input.

    The model is ``owner/name`` or ``owner/name:version``; whatever the prediction
    leaves out (or hides, as ``"hidden"``) is not held against it. Inputs are compared
    as JSON values, as the server echoes them (API.md: defaults are not filled in).
    """
    name, _, version = request.model.partition(":")
    if prediction.model is not None and prediction.model != name:
        return False
    if version and prediction.version not in {None, "hidden", version}:
        return False
    return prediction.input == request.input


def _matches(prediction: Prediction, request: CreateRequest, since: dt.datetime) -> bool:
    """`matches_request`, and created no earlier than ``since`` less the clock allowance."""
    if prediction.created_at is not None and prediction.created_at < since - CLOCK_SKEW:
        return False
    return matches_request(prediction, request)


class _Input:
    """The creates of one input: how many are under way, and the gate lookups hold.

    The lock and the event are made only when a lookup needs them: a create that meets
    no lookup costs no synchronization object and no trip through the event loop.
    """

    __slots__ = ("_gate", "_idle", "sending", "users")

    def __init__(self) -> None:
        self.users = 0
        self.sending = 0
        self._gate: anyio.Lock | None = None
        self._idle: anyio.Event | None = None

    @property
    def gate(self) -> anyio.Lock:
        """Held by a lookup for this input: no create of it starts meanwhile."""
        if self._gate is None:
            self._gate = anyio.Lock()
        return self._gate

    def begin_nowait(self) -> bool:
        """Count a create as under way unless a lookup for this input runs (False)."""
        if self._gate is not None and self._gate.locked():
            return False
        self.sending += 1
        return True

    async def begin(self) -> None:
        if self._gate is not None and self._gate.locked():
            async with self._gate:  # waits while a lookup for this input runs
                self.sending += 1
        else:
            self.sending += 1

    def end(self) -> None:
        self.sending -= 1
        if self.sending == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def settle(self) -> None:
        """Wait until no create of this input is under way (the gate is held)."""
        while self.sending:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()


class Ledger:
    """One client's claimed prediction ids and its creates under way, by input (kept
    on the client's transport).
    """

    def __init__(self) -> None:
        self.claimed: dict[str, float] = {}
        self.inputs: dict[str, _Input] = {}

    def claim(self, prediction_id: str) -> None:
        now = time.monotonic()
        claimed = self.claimed
        if claimed and now - next(iter(claimed.values())) >= _CLAIM_SECONDS:
            self._forget(now)
        claimed.pop(prediction_id, None)
        claimed[prediction_id] = now

    def _forget(self, now: float) -> None:
        """Forget, oldest first (insertion order), the ids no lookup can match any more."""
        stale = []
        for old, claimed_at in self.claimed.items():
            if now - claimed_at < _CLAIM_SECONDS:
                break
            stale.append(old)
        for old in stale:
            del self.claimed[old]

    def enter(self, key: str) -> _Input:
        entry = self.inputs.get(key)
        if entry is None:
            entry = self.inputs[key] = _Input()
        entry.users += 1
        return entry

    def leave(self, key: str, entry: _Input) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self.inputs[key]


def _ledger(transport: Transport) -> Ledger:
    ledger = transport.ledger
    if ledger is None:
        ledger = transport.ledger = Ledger()
    return ledger


def is_claimed(transport: Transport, prediction_id: str) -> bool:
    """Whether a create of this client was answered with, or attached to, this id."""
    return prediction_id in _ledger(transport).claimed


def _window_start(transport: Transport, sent_at: float) -> dt.datetime:
    """The earliest server time the prediction of a create sent at ``sent_at`` may carry."""
    if transport.clock_offset is None:
        return dt.datetime.fromtimestamp(sent_at, dt.UTC) - CLOCK_SKEW
    server = sent_at + transport.clock_offset
    return dt.datetime.fromtimestamp(server, dt.UTC) - _DATE_MARGIN


async def _look_up(
    transport: Transport, request: CreateRequest, sent_at: float, taken: AbstractSet[str]
) -> Prediction | None:
    """Find the prediction a create in doubt made, newest first; None if certainly absent.

    Raises:
        CreateInDoubt: too many predictions were created since to look through.
        QuickRouterError: listing failed (after the retries a GET is allowed).
    """
    url: str | None = transport.url("/v1/predictions")
    for _ in range(_LOOKUP_PAGES):
        if url is None:
            return None
        page = parse_page((await transport.request("GET", url)).data)
        # The listing's own Date header has just set the clock offset, if it was unknown.
        since = _window_start(transport, sent_at)
        for prediction in page.results:
            if prediction.id in taken or is_claimed(transport, prediction.id):
                continue
            if prediction.created_at is not None and prediction.created_at < since:
                continue
            if matches_request(prediction, request):
                return prediction
        oldest = page.results[-1].created_at if page.results else None
        if oldest is None or oldest < since:
            return None
        url = transport.cursor_url(page.next)
    raise CreateInDoubt(
        "could not tell whether the prediction was created: too many predictions were "
        "created since to look through; it may exist",
        model=request.model,
        input=request.input,
    )


async def _resolve(
    transport: Transport,
    request: CreateRequest,
    *,
    entry: _Input,
    sent_at: float,
    taken: AbstractSet[str],
    error: QuickRouterError,
) -> Prediction | None:
    """The prediction a create in doubt made, or None when it certainly made none."""
    logger.info("create of %s in doubt (%s); looking it up", request.model, error)
    async with entry.gate:
        await entry.settle()
        for lookup in range(_SETTLE_LOOKUPS):
            if lookup:
                await transport.sleep(transport.retry.backoff_ceiling(1))
            try:
                found = await _look_up(transport, request, sent_at, taken)
            except CreateInDoubt as doubt:
                raise doubt from error
            except QuickRouterError as lookup_error:
                raise CreateInDoubt(
                    f"the create failed ({error}) and looking the prediction up failed too "
                    f"({lookup_error}); it may exist",
                    model=request.model,
                    input=request.input,
                ) from error
            if found is not None:
                _ledger(transport).claim(found.id)
                logger.info("attached to prediction %s after a create in doubt", found.id)
                return found
    return None


async def send_create(
    transport: Transport, request: CreateRequest, *, taken: AbstractSet[str] = frozenset()
) -> Prediction:
    """Create the prediction once, resolving any doubt about its fate by looking it up.

    Args:
        transport: the transport.
        request: the validated create.
        taken: more ids that must not be attached to (predictions already watched).

    Raises:
        APIError: the server refused the create (after the retries a 429 is allowed),
            or kept failing while the prediction was certainly never made.
        TransportError: no answer, and the prediction was certainly never made.
        CreateInDoubt: the prediction may exist and could not be looked up.
        ProtocolError: the answers were broken and no prediction could be found.
    """
    ledger = _ledger(transport)
    key = request.key
    entry = ledger.enter(key)
    try:
        sent_at = time.time()
        extra = 0.0 if request.sync_wait is None else request.sync_wait + 5.0
        for round_ in range(1, transport.retry.attempts + 1):
            if not entry.begin_nowait():
                await entry.begin()
            try:
                try:
                    answer = await transport.request(
                        "POST",
                        transport.url(request.path),
                        json_body=request.body,
                        headers=request.headers,
                        create=True,
                        read_extra=extra,
                    )
                    prediction = parse_prediction(answer.data)
                    ledger.claim(prediction.id)
                finally:
                    entry.end()
            except QuickRouterError as exc:
                if not create_in_doubt(exc):
                    raise
                error = exc
            else:
                return prediction
            found = await _resolve(
                transport, request, entry=entry, sent_at=sent_at, taken=taken, error=error
            )
            if found is not None:
                return found
            if round_ == transport.retry.attempts:
                raise error
            delay = transport.retry.delay(round_)
            logger.info(
                "prediction of %s certainly not created; sending again in %.2fs",
                request.model,
                delay,
            )
            await transport.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        ledger.leave(key, entry)
