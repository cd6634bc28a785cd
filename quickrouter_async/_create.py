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
import functools
import json
import logging
import math
import time
import weakref
from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs

from ._errors import CreateInDoubt, InputError, QuickRouterError
from ._inputs import ModelInput, validate_model_name
from ._serde import input_payload, parse_page, parse_prediction
from ._transport import create_in_doubt

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._models import Prediction
    from ._transport import Transport

__all__ = [
    "CLOCK_SKEW",
    "CreateRequest",
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


@attrs.frozen(kw_only=True)
class CreateRequest:
    """A validated create: where it goes and what it sends.

    Attributes:
        model: ``owner/name`` or ``owner/name:version`` (or a bare version id).
        path: the API path the create is posted to.
        input_json: the ``input`` object as sent: JSON, keys sorted, no spaces.
        body: the whole request body, encoded once.
        headers: the extra headers (``Prefer``, ``Cancel-After``).
        sync_wait: the ``Prefer: wait`` seconds, if any.
    """

    model: str
    path: str
    input_json: str
    body: bytes
    headers: dict[str, str]
    sync_wait: int | None

    @functools.cached_property
    def input(self) -> dict[str, Any]:
        """The ``input`` object sent (as JSON would give it back)."""
        payload: dict[str, Any] = json.loads(self.input_json)
        return payload

    @property
    def key(self) -> str:
        """Model (version aside) and input as one string: equal for two submissions
        that one lookup could take for each other.
        """
        return self.model.partition(":")[0] + "\n" + self.input_json


# One encoder each, made once (json.dumps with options makes a new one on every call).
_SORTED: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_SORTED_STRICT: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _encode(payload: object, *, strict: bool = False) -> str:
    """``payload`` as JSON with its keys sorted: one text for one value."""
    return (_SORTED_STRICT if strict else _SORTED).encode(payload)


def input_key(model: str | None, payload: object) -> str:
    """Model (version aside) and input as one string: equal for a create and the
    prediction it made (``model`` None for a prediction that does not name it).
    """
    return (model or "").partition(":")[0] + "\n" + _encode(payload)


def _sync_wait(wait: bool | float | None) -> int | None:  # noqa: FBT001 (mirrors create(wait=))
    if wait is None or wait is False:
        return None
    if wait is True:
        return 60
    value: object = wait
    if isinstance(value, int | float) and 1 <= value <= 60:
        return math.ceil(value)
    raise InputError(f"wait must be True, False or 1-60 seconds, got {wait!r}", field="wait")


def _cancel_after(value: float | dt.timedelta | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    if not seconds >= 5:
        raise InputError("cancel_after must be at least 5 seconds", field="cancel_after")
    return f"{round(seconds)}s"


def _input_json(payload: dict[str, Any]) -> str:
    """The input as JSON, checked before sending: JSON types only, no NaN or infinity."""
    try:
        try:
            return _encode(payload, strict=True)
        except TypeError:
            # Keys of several types cannot be sorted; as JSON they are all strings.
            return _encode(json.loads(json.dumps(payload, allow_nan=False)), strict=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"input is not JSON: {exc}", field="input") from None


def _body(input_json: str, fields: dict[str, Any]) -> bytes:
    """The create's body: the input as already encoded, then the other fields."""
    parts = ['{"input":', input_json]
    for name, value in fields.items():
        parts += [',"', name, '":', json.dumps(value, ensure_ascii=False)]
    parts.append("}")
    try:
        return "".join(parts).encode()
    except UnicodeEncodeError as exc:  # a lone surrogate in a string
        raise InputError(f"input is not valid Unicode: {exc.reason}", field="input") from None


# Model names already validated (a bulk job names a few models many times over).
_VALID_MODELS: set[str] = set()
_VALID_MODELS_KEPT: Final = 1024


def _model_name(model: object) -> str:
    if isinstance(model, str) and model in _VALID_MODELS:
        return model
    name = validate_model_name(model)
    if len(_VALID_MODELS) < _VALID_MODELS_KEPT:
        _VALID_MODELS.add(name)
    return name


def build_create(
    model_or_input: str | ModelInput,
    input: Mapping[str, Any] | ModelInput | None,  # noqa: A002
    *,
    wait: bool | float | None,
    webhook: str | None,
    webhook_events_filter: list[str] | tuple[str, ...] | None,
    cancel_after: float | dt.timedelta | str | None,
) -> CreateRequest:
    """Validate the arguments of `QuickRouter.create` and build the request."""
    if isinstance(model_or_input, str):
        model = _model_name(model_or_input)
        if input is None:
            raise InputError(f"create({model!r}, ...) needs an input", field="input")
        payload = input_payload(input)
    elif isinstance(model_or_input, ModelInput):
        if input is not None:
            raise InputError("pass either a typed input or a model and an input", field="input")
        model = _model_name(model_or_input.model)
        payload = input_payload(model_or_input)
    else:
        raise InputError(
            f"expected a model name or a typed input, not {type(model_or_input).__name__}",
            field="model",
        )
    input_json = _input_json(payload)
    fields: dict[str, Any] = {}
    if ":" in model or "/" not in model:
        path = "/v1/predictions"
        fields["version"] = model
    else:
        owner, name = model.split("/")
        path = f"/v1/models/{owner}/{name}/predictions"
    if webhook is not None:
        if not webhook.startswith(("https://", "http://")):
            raise InputError("webhook must be an http(s) URL", field="webhook")
        fields["webhook"] = webhook
    if webhook_events_filter is not None:
        allowed = {"start", "output", "logs", "completed"}
        events = list(webhook_events_filter)
        if not events or not set(events) <= allowed:
            raise InputError(
                f"webhook_events_filter takes some of {sorted(allowed)}, got {events!r}",
                field="webhook_events_filter",
            )
        fields["webhook_events_filter"] = events
    headers: dict[str, str] = {}
    sync = _sync_wait(wait)
    if sync is not None:
        headers["Prefer"] = f"wait={sync}"
    if (deadline := _cancel_after(cancel_after)) is not None:
        headers["Cancel-After"] = deadline
    return CreateRequest(
        model=model,
        path=path,
        input_json=input_json,
        body=_body(input_json, fields),
        headers=headers,
        sync_wait=sync,
    )


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


class _Ledger:
    """One client's claimed prediction ids and its creates under way, by input."""

    def __init__(self) -> None:
        self.claimed: dict[str, float] = {}
        self.inputs: dict[str, _Input] = {}

    def claim(self, prediction_id: str) -> None:
        now = time.monotonic()
        # Oldest first (insertion order): forget what no lookup can match any more.
        stale = []
        for old, claimed_at in self.claimed.items():
            if now - claimed_at < _CLAIM_SECONDS:
                break
            stale.append(old)
        for old in stale:
            del self.claimed[old]
        self.claimed.pop(prediction_id, None)
        self.claimed[prediction_id] = now

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


_LEDGERS: weakref.WeakKeyDictionary[Transport, _Ledger] = weakref.WeakKeyDictionary()


def _ledger(transport: Transport) -> _Ledger:
    ledger = _LEDGERS.get(transport)
    if ledger is None:
        ledger = _LEDGERS[transport] = _Ledger()
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
    transport: Transport, request: CreateRequest, sent_at: float, taken: set[str]
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
    taken: set[str],
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
    transport: Transport, request: CreateRequest, *, taken: set[str] | None = None
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
    taken = set() if taken is None else taken
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
