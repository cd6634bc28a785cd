"""`WebhookReceiver`: verified webhooks that complete `wait`, `run` and `watch` by push.

A receiver checks each webhook's signature (`verify_webhook`), drops duplicates by their
``webhook-id`` and anything that arrives for a prediction after its terminal webhook,
and hands each new snapshot to the waits of its client. A client with a receiver
attached waits for predictions created with a ``webhook`` without polling: each wait
sleeps on the receiver until a webhook arrives, and polls once only after a quiet
period (``fallback_interval``), so a lost webhook never hangs a wait. When no webhook
arrives at all (the API cannot reach the webhook URL), the receiver says so once, with a
WARNING naming the URL, and the waits poll as if there were no receiver until a webhook
comes again.

A webhook request is checked in full before anything else happens: a request without
the three signature headers, with malformed ones, a stale timestamp or a body that is
not JSON is refused without the signing secret, so it never makes the receiver call the
API. A secret that could not be fetched is not asked for again for a few seconds.

Memory is bounded: the ids of recent webhooks and the latest snapshot of recent
predictions are kept in LRU tables of a fixed size.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import anyio
from aiohttp import web

from ._errors import InputError, ProtocolError, QuickRouterError, WebhookVerificationError
from ._models import Status
from ._webhooks import DEFAULT_TOLERANCE, check_signature, check_webhook

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._client import QuickRouter
    from ._models import Prediction

__all__ = ["PushHub", "WebhookReceiver"]

logger = logging.getLogger(__name__)

DEFAULT_FALLBACK_INTERVAL: Final = 10.0
DEFAULT_REMEMBER: Final = 10_000
# How long a failed fetch of the signing secret answers for the next webhooks, so an
# endpoint that fails is asked once per period, not once (with retries) per webhook.
SECRET_RETRY_AFTER: Final = 5.0
_SECRET_PATH: Final = "/v1/webhooks/default/secret"  # noqa: S105 (a path, not a secret)

K = TypeVar("K")
V = TypeVar("V")


class _Bounded(Generic[K, V]):
    """A mapping that forgets its least recently written entries beyond ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: collections.OrderedDict[K, V] = collections.OrderedDict()

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def _rank(prediction: Prediction) -> int:
    """How far along a prediction is: starting, processing, terminal."""
    if prediction.status.terminal:
        return 2
    return 1 if prediction.started_at is not None or prediction.status is Status.PROCESSING else 0


def _behind(new: Prediction, stored: Prediction) -> bool:
    """Whether ``new`` is older news than ``stored``: an earlier stage, or fewer logs."""
    if stored.status.terminal or _rank(new) < _rank(stored):
        return True
    return _rank(new) == _rank(stored) and len(new.logs or "") < len(stored.logs or "")


def _newer(stored: Prediction, current: Prediction) -> bool:
    """Whether ``stored`` tells a wait that has seen ``current`` something new."""
    if current.status.terminal or _rank(stored) < _rank(current):
        return False
    return (
        stored.status != current.status
        or stored.output != current.output
        or stored.logs != current.logs
        or stored.error != current.error
    )


class PushHub:
    """Where webhooks meet waits: the latest snapshot per prediction, and who waits for it.

    The poll loop of a client with a receiver calls `next` instead of sleeping; the
    receiver calls `publish` for each verified webhook. While no webhook arrives where
    one was due (`silent`), `covers` is False and the waits poll as without a hub.
    """

    def __init__(self, *, fallback_interval: float, remember: int) -> None:
        self.fallback_interval = fallback_interval
        self._latest: _Bounded[str, Prediction] = _Bounded(remember)
        self._waiters: dict[str, set[anyio.Event]] = {}
        self._heard_at = -math.inf  # when the last webhook was published
        self._warned = False
        #: No webhook arrives where one was due: waits poll until one comes.
        self.silent = False

    def covers(self, prediction: Prediction) -> bool:
        """Whether webhooks are expected for ``prediction``: created with one, and arriving."""
        return prediction.webhook is not None and not self.silent

    def publish(self, prediction: Prediction) -> bool:
        """Record a snapshot and wake its waits; False if it came after a terminal one."""
        self._heard_at = time.monotonic()
        if self.silent:
            self.silent = False
            logger.info("webhooks arrive again: waits wait for them instead of polling")
        stored = self._latest.get(prediction.id)
        if stored is not None and _behind(prediction, stored):
            return False
        self._latest.put(prediction.id, prediction)
        for event in self._waiters.get(prediction.id, ()):
            event.set()
        return True

    def latest(self, prediction_id: str) -> Prediction | None:
        """The latest snapshot pushed for a prediction, if remembered."""
        return self._latest.get(prediction_id)

    async def next(self, current: Prediction, timeout: float) -> Prediction | None:
        """A snapshot newer than ``current``, waiting at most ``timeout``; None if none came."""
        began = time.monotonic()
        waiters = self._waiters.setdefault(current.id, set())
        event = anyio.Event()
        waiters.add(event)
        try:
            with anyio.move_on_after(timeout):
                while True:
                    stored = self._latest.get(current.id)
                    if stored is not None and _newer(stored, current):
                        return stored
                    if self.silent:
                        return None  # webhooks stopped arriving: poll now
                    await event.wait()
                    waiters.discard(event)
                    event = anyio.Event()
                    waiters.add(event)
        finally:
            waiters.discard(event)
            if not waiters:
                self._waiters.pop(current.id, None)
        if self._heard_at < began and self._due(current):
            self._fall_silent(current, time.monotonic() - began)
        return None

    def _due(self, prediction: Prediction) -> bool:
        """Whether a webhook for ``prediction`` should have come by now.

        The API sends ``start`` as soon as a prediction starts, so a prediction that
        asked for it (the default) and has sent nothing at all during a quiet period
        points at a webhook URL the API cannot reach.
        """
        events = prediction.webhook_events_filter
        return self._latest.get(prediction.id) is None and (events is None or "start" in events)

    def _fall_silent(self, prediction: Prediction, quiet: float) -> None:
        """Stop waiting for webhooks that do not come: every wait polls until one does."""
        self.silent = True
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()
        if not self._warned:
            self._warned = True
            logger.warning(
                "no webhook arrived in %.0fs at %s (prediction %s expected them there): "
                "waits poll instead until one does; check that the API can reach that URL",
                quiet,
                prediction.webhook,
                prediction.id,
            )


class WebhookReceiver:
    """Receives the API's webhooks, verifies them, and completes the client's waits.

    Give it a client (the signing secret is then fetched once, through the client, from
    ``GET /v1/webhooks/default/secret``) or a secret, or both. Attached to a client,
    its `wait`, `run` and `watch` of predictions created with a ``webhook`` learn
    about them from webhooks instead of polling::

        receiver = qr.WebhookReceiver(client)
        app.router.add_post("/webhooks/quickrouter", receiver.handle)  # aiohttp

    Other frameworks pass the raw request to `receive`.

    Args:
        client: the client whose waits webhooks complete; None for a receiver that
            only verifies (``secret`` is then required).
        secret: the ``whsec_...`` signing secret; None fetches it through ``client``.
        tolerance: the largest age of a webhook's timestamp, in seconds; None skips it.
        fallback_interval: seconds without a webhook after which a waiting call polls
            once, in case a webhook was lost (10 by default). A quiet period with no
            webhook at all logs one WARNING naming the webhook URL; the waits then poll
            on the client's schedule until a webhook arrives.
        remember: how many webhook ids (for duplicates) and predictions (for
            out-of-order webhooks) are remembered.

    Raises:
        InputError: neither a client nor a secret was given.
    """

    def __init__(
        self,
        client: QuickRouter | None = None,
        *,
        secret: str | bytes | None = None,
        tolerance: float | None = DEFAULT_TOLERANCE,
        fallback_interval: float = DEFAULT_FALLBACK_INTERVAL,
        remember: int = DEFAULT_REMEMBER,
    ) -> None:
        if client is None and secret is None:
            raise InputError("a WebhookReceiver needs a client or a secret", field="secret")
        if not fallback_interval > 0:
            raise InputError("fallback_interval must be positive", field="fallback_interval")
        size: object = remember
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputError("remember must be a positive integer", field="remember")
        self.client = client
        self.tolerance = tolerance
        self._secret = secret
        self._secret_lock = anyio.Lock()
        self._secret_failure: tuple[QuickRouterError, float] | None = None
        self._seen_ids: _Bounded[str, None] = _Bounded(remember)
        self.hub = PushHub(fallback_interval=fallback_interval, remember=remember)
        if client is not None:
            # The client's waits look for a hub; attaching replaces an earlier receiver.
            client._push = self.hub  # noqa: SLF001 (the receiver is the client's own part)

    def __repr__(self) -> str:
        attached = "attached" if self.client is not None else "detached"
        return f"<WebhookReceiver {attached} remembered={len(self._seen_ids)}>"

    async def secret(self) -> str | bytes:
        """The signing secret: as given, or fetched once through the client.

        One fetch at a time: webhooks that arrive meanwhile wait for its result. After a
        failed fetch, the webhooks of the next few seconds (`SECRET_RETRY_AFTER`) get
        the same failure without a request.

        Raises:
            QuickRouterError: the secret could not be fetched (now or moments ago).
        """
        if self._secret is not None:
            return self._secret
        async with self._secret_lock:
            if self._secret is None:
                self._raise_recent_failure()
                try:
                    self._secret = await self._fetch_secret()
                except QuickRouterError as exc:
                    self._secret_failure = exc, time.monotonic()
                    raise
        return self._secret

    def _raise_recent_failure(self) -> None:
        if self._secret_failure is None:
            return
        failure, at = self._secret_failure
        age = time.monotonic() - at
        if age < SECRET_RETRY_AFTER:
            raise QuickRouterError(
                f"the webhook secret could not be fetched {age:.1f}s ago ({failure}); "
                f"the next attempt is due in {SECRET_RETRY_AFTER - age:.1f}s"
            ) from failure

    async def _fetch_secret(self) -> str:
        assert self.client is not None  # noqa: S101 (checked in __init__)
        transport = self.client._transport  # noqa: SLF001 (every request goes through it)
        answer = await transport.request("GET", transport.url(_SECRET_PATH))
        data: Any = answer.data
        key = data.get("key") if isinstance(data, dict) else None
        if not isinstance(key, str) or not key:
            raise ProtocolError("the webhook secret answer has no key")
        return key

    async def receive(self, headers: Mapping[str, str], body: bytes | str) -> Prediction | None:
        """Verify one webhook request and deliver its prediction to waiting calls.

        Args:
            headers: the request headers (names in any case).
            body: the raw body, exactly as received.

        Returns:
            The prediction it carries, or None when it was a duplicate (a
            ``webhook-id`` seen before) or arrived after the prediction's terminal
            webhook; either way the sender should be answered 2xx.

        Raises:
            WebhookVerificationError: the headers, signature, timestamp or body are not
                valid. Everything that needs no secret is checked first, so a request
                that is not a webhook never makes the receiver fetch the secret.
            QuickRouterError: the secret could not be fetched through the client.
        """
        webhook = check_webhook(headers, body, tolerance=self.tolerance)
        prediction = check_signature(webhook, await self.secret())
        webhook_id = webhook.webhook_id
        if webhook_id in self._seen_ids:
            logger.debug("dropping duplicate webhook %s", webhook_id)
            return None
        self._seen_ids.put(webhook_id, None)
        if not self.hub.publish(prediction):
            logger.debug("dropping webhook %s for %s: out of order", webhook_id, prediction.id)
            return None
        return prediction

    async def handle(self, request: web.Request) -> web.Response:
        """An aiohttp handler: ``app.router.add_post(path, receiver.handle)``.

        Answers 200 for an accepted, duplicate or late webhook, 400 for one that
        fails verification (the sender may retry), 500 if the secret could not be had.
        """
        body = await request.read()
        try:
            await self.receive(request.headers, body)
        except WebhookVerificationError as exc:
            logger.warning("rejected a webhook: %s", exc)
            return web.Response(status=400, text="invalid webhook\n")
        except QuickRouterError as exc:
            logger.warning("could not check a webhook: %s", exc)
            return web.Response(status=500, text="webhook secret unavailable\n")
        return web.Response(status=200, text="ok\n")
