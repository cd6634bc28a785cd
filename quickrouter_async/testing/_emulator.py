"""``Emulator``: QuickRouter's Replicate-compatible API on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import datetime
import random
import time
from typing import TYPE_CHECKING, Final, Literal, Self

import yarl
from aiohttp import web

from ._options import Faults, RateLimit, probability, seconds
from ._ratelimit import TokenBucket
from ._records import FileRequestRecord, Predictions, RequestRecord
from ._render import RenderContext
from ._runtime import Runtime
from ._server import build_app

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from ._webhooks import WebhookDelivery

#: A duration in seconds, as a number or a ``timedelta``.
Duration = float | datetime.timedelta
#: A fixed duration, or a ``(minimum, maximum)`` range drawn from uniformly.
DurationRange = Duration | tuple[Duration, Duration]

# Aiohttp waits this long for unfinished handlers when the emulator stops.
_SHUTDOWN_TIMEOUT = 1.0
#: The servers the emulator can play.
Profile = Literal["replicate", "gateway"]
_PROFILES: Final = ("replicate", "gateway")
_ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 (compared with, not bound)


def _range(value: DurationRange, name: str) -> tuple[float, float]:
    if isinstance(value, tuple):
        low, high = (seconds(part) for part in value)
        if low > high:
            raise ValueError(f"{name} range must be (minimum, maximum), got {value!r}")
        return low, high
    fixed = seconds(value)
    return fixed, fixed


def _count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return value


class Emulator:
    """A real HTTP server on loopback that speaks QuickRouter's Replicate-compatible API.

    Point any client at ``base_url`` with ``api_key``: predictions are created, polled,
    canceled and listed as on the real service, Imagen 4 and Seedream 4 inputs are
    validated, and output URLs serve real images. Statuses are computed from each
    prediction's timeline when read, so many thousands can run at once cheaply.

    Use it as an async context manager (or ``await start()`` / ``await aclose()``)::

        async with Emulator(duration=0.1) as emulator:
            ...  # emulator.base_url, emulator.api_key, emulator.predictions

    Every knob below is also an attribute that can be changed while it runs (for
    example ``emulator.faults = Faults(reset=0.5)`` or
    ``emulator.honor_prefer_wait = False``); new values apply to later requests.

    Two profiles set the defaults of what the server offers. ``"replicate"`` (the
    default) is Replicate's API in full. ``"gateway"`` is a gateway that relays create
    and get only, as QuickRouter documents: it ignores ``Prefer: wait``, sends no
    ``ratelimit-*`` headers, delivers no webhooks, passes Replicate's own
    ``https://api.replicate.com/...`` URLs through in ``urls``, and answers every other
    route (list, cancel, the webhook secret, deployments) with a gateway's 404,
    ``{"error": {"message": "Invalid URL (GET /replicate/v1/predictions)", ...}}``.
    ``list_route``, ``cancel_route``, ``honor_prefer_wait``, ``rate_limit_headers`` and
    ``webhooks`` override a profile's choice one by one.

    Args:
        profile: ``"replicate"`` or ``"gateway"``, as above.
        list_route: serve ``GET /v1/predictions`` (default: the profile's).
        cancel_route: serve ``POST /v1/predictions/{id}/cancel`` (default: the
            profile's).
        rate_limit_headers: send ``ratelimit-remaining`` and ``ratelimit-reset``
            (default: the profile's).
        webhooks: deliver webhooks and serve their signing secret (default: the
            profile's).
        accept_any_model: run any well-formed model name; by default only the models
            the emulator knows (Imagen 4, Seedream 4 and the other models QuickRouter
            lists) run, and any other answers 404 as the API does.
        duration: seconds from creation to the end of a prediction, or a
            ``(minimum, maximum)`` range drawn uniformly for each prediction.
        api_key: the bearer token every API request must carry.
        host: the address to listen on.
        port: the port to listen on; 0 picks a free one.
        honor_prefer_wait: hold creates that send ``Prefer: wait[=N]`` until the
            prediction is done or N seconds pass, answering with ``Preference-Applied``.
            False ignores the header, like a gateway that does not forward it (default:
            the profile's).
        start_delay: seconds spent ``starting`` before ``processing`` (or a range);
            ``None`` spends 10% of each prediction's duration. Capped at the duration.
        fail_prompts: substrings; a prompt containing one makes its prediction fail
            with a "flagged as sensitive (E005)" error.
        failure_rate: the chance that any other prediction fails.
        image_size: the long edge, in pixels, of output images.
        page_size: predictions per page of ``GET /v1/predictions``.
        rate_limit: a token bucket on the create endpoints, or ``None``.
        faults: misbehaviour to inject: a `Faults`, several (a list or tuple, each drawn
            on its own, e.g. 429s on polls only and 5xx everywhere), or ``None``.
        seed: seeds the random generator (durations, failures, ids, faults) so runs
            repeat; ``None`` seeds from the system.
        latency: seconds added before every answer.
        passthrough_urls: make ``urls.get`` and ``urls.cancel`` point at
            api.replicate.com as gateways passing Replicate's JSON through do; False
            points them at the emulator.
        early_output: show output files while still ``processing`` (90% through), as
            Replicate may for file outputs.
        min_cancel_after: the smallest ``Cancel-After`` accepted (Replicate's is 5 s;
            lower it to test deadlines quickly).
        data_retention: seconds after completion when a prediction's input, output,
            logs and files are removed (``data_removed: true``); ``None`` keeps them.
        webhook_duplicate_rate: the chance that a webhook is delivered twice (same
            ``webhook-id``).
        webhook_reorder_rate: the chance that a webhook other than ``completed`` is
            held back and delivered after the next one (so possibly after completion).
        webhook_retries: how many times a refused or failed ``completed`` webhook is
            sent again (other webhooks are never retried).
        webhook_retry_delay: seconds before the first retry; each next one waits twice
            as long.

    Predictions created with a ``webhook`` get signed webhooks (see
    ``webhook_deliveries`` and ``drain_webhooks``).
    """

    def __init__(
        self,
        *,
        profile: Profile = "replicate",
        duration: DurationRange = 1.0,
        api_key: str = "test-key",
        host: str = "127.0.0.1",
        port: int = 0,
        list_route: bool | None = None,
        cancel_route: bool | None = None,
        honor_prefer_wait: bool | None = None,
        rate_limit_headers: bool | None = None,
        webhooks: bool | None = None,
        accept_any_model: bool = False,
        start_delay: DurationRange | None = None,
        fail_prompts: Iterable[str] = (),
        failure_rate: float = 0.0,
        image_size: int = 256,
        page_size: int = 100,
        rate_limit: RateLimit | None = None,
        faults: Faults | Iterable[Faults] | None = None,
        seed: int | None = None,
        latency: Duration = 0.0,
        passthrough_urls: bool = True,
        early_output: bool = False,
        min_cancel_after: Duration = 5.0,
        data_retention: Duration | None = None,
        webhook_duplicate_rate: float = 0.0,
        webhook_reorder_rate: float = 0.0,
        webhook_retries: int = 6,
        webhook_retry_delay: Duration = 1.0,
    ) -> None:
        """Configure the emulator; nothing listens until it is started."""
        if profile not in _PROFILES:
            raise ValueError(f"profile must be one of {_PROFILES}, got {profile!r}")
        full = profile == "replicate"
        self.profile: Profile = profile
        self.list_route = full if list_route is None else list_route
        self.cancel_route = full if cancel_route is None else cancel_route
        self.rate_limit_headers = full if rate_limit_headers is None else rate_limit_headers
        self.webhooks = full if webhooks is None else webhooks
        self.accept_any_model = accept_any_model
        self.seed = seed
        self._runtime = Runtime(random.Random(seed))
        self.duration = duration
        self.start_delay = start_delay
        self.api_key = api_key
        self.host = host
        self._port = _count(port, "port", 0)
        self.honor_prefer_wait = full if honor_prefer_wait is None else honor_prefer_wait
        self.fail_prompts = fail_prompts
        self.failure_rate = failure_rate
        self.image_size = image_size
        self.page_size = page_size
        self.rate_limit = rate_limit
        self.faults = faults
        self.latency = latency
        self.passthrough_urls = passthrough_urls
        self.early_output = early_output
        self.min_cancel_after = min_cancel_after
        self.data_retention = data_retention
        self.webhook_duplicate_rate = webhook_duplicate_rate
        self.webhook_reorder_rate = webhook_reorder_rate
        self.webhook_retries = webhook_retries
        self.webhook_retry_delay = webhook_retry_delay
        #: Every webhook delivery attempt (retries and duplicates included), in order.
        self.webhook_deliveries: list[WebhookDelivery] = []
        #: The predictions created, oldest first (also looked up by id with ``get``).
        self.predictions = Predictions()
        #: Every API request answered, in arrival order (file downloads are separate).
        self.requests: list[RequestRecord] = []
        #: Every output-file download.
        self.file_requests: list[FileRequestRecord] = []
        #: The ``whsec_...`` secret ``GET /v1/webhooks/default/secret`` returns.
        self.webhook_secret = "whsec_" + base64.b64encode(self._runtime.rng.randbytes(24)).decode()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # -- knobs ---------------------------------------------------------------------------

    def relays(self, kind: str) -> bool:
        """Whether an API request of this kind (see `count`) reaches its handler."""
        if kind == "list":
            return self.list_route
        if kind == "cancel":
            return self.cancel_route
        if kind == "webhook_secret":
            return self.webhooks
        return kind != "unknown" or self.profile != "gateway"

    @property
    def duration(self) -> tuple[float, float]:
        """The range of prediction durations, in seconds."""
        return self._duration

    @duration.setter
    def duration(self, value: DurationRange) -> None:
        self._duration = _range(value, "duration")

    @property
    def start_delay(self) -> tuple[float, float] | None:
        """The range of time spent ``starting``, or ``None`` for 10% of the duration."""
        return self._start_delay

    @start_delay.setter
    def start_delay(self, value: DurationRange | None) -> None:
        self._start_delay = None if value is None else _range(value, "start_delay")

    @property
    def fail_prompts(self) -> tuple[str, ...]:
        """Substrings of prompts whose predictions fail."""
        return self._fail_prompts

    @fail_prompts.setter
    def fail_prompts(self, value: Iterable[str]) -> None:
        self._fail_prompts = (value,) if isinstance(value, str) else tuple(value)

    @property
    def failure_rate(self) -> float:
        """The chance that a prediction fails."""
        return self._failure_rate

    @failure_rate.setter
    def failure_rate(self, value: float) -> None:
        self._failure_rate = probability(value, "failure_rate")

    @property
    def image_size(self) -> int:
        """The long edge of output images, in pixels."""
        return self._image_size

    @image_size.setter
    def image_size(self, value: int) -> None:
        self._image_size = _count(value, "image_size", 1)

    @property
    def page_size(self) -> int:
        """Predictions per list page."""
        return self._page_size

    @page_size.setter
    def page_size(self, value: int) -> None:
        self._page_size = _count(value, "page_size", 1)

    @property
    def rate_limit(self) -> RateLimit | None:
        """The create rate limit; setting it starts a new, full bucket."""
        return self._rate_limit

    @rate_limit.setter
    def rate_limit(self, value: RateLimit | None) -> None:
        if value is not None and not isinstance(value, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit or None, got {value!r}")
        self._rate_limit = value
        self._runtime.bucket = None if value is None else TokenBucket(value, time.monotonic())

    @property
    def faults(self) -> Faults | tuple[Faults, ...] | None:
        """The faults injected: one `Faults`, several (each drawn on its own), or ``None``."""
        return self._faults

    @faults.setter
    def faults(self, value: Faults | Iterable[Faults] | None) -> None:
        sets: tuple[Faults, ...]
        if value is None or isinstance(value, Faults):
            sets = () if value is None else (value,)
            self._faults: Faults | tuple[Faults, ...] | None = value
        else:
            sets = tuple(value) if isinstance(value, list | tuple) else ()
            if not sets or not all(isinstance(item, Faults) for item in sets):
                raise TypeError(f"faults must be a Faults, several, or None, got {value!r}")
            self._faults = sets
        self._fault_sets = sets

    def faults_for(self, kind: str) -> tuple[Faults, ...]:
        """The fault sets that apply to a request of this kind (see `count`)."""
        return tuple(faults for faults in self._fault_sets if kind in faults.endpoints)

    @property
    def latency(self) -> float:
        """Seconds added before every answer."""
        return self._latency

    @latency.setter
    def latency(self, value: Duration) -> None:
        self._latency = seconds(value)

    @property
    def min_cancel_after(self) -> float:
        """The smallest ``Cancel-After`` accepted, in seconds."""
        return self._min_cancel_after

    @min_cancel_after.setter
    def min_cancel_after(self, value: Duration) -> None:
        self._min_cancel_after = seconds(value)

    @property
    def data_retention(self) -> float | None:
        """Seconds after completion when data is removed, or ``None``."""
        return self._data_retention

    @data_retention.setter
    def data_retention(self, value: Duration | None) -> None:
        self._data_retention = None if value is None else seconds(value)

    @property
    def webhook_duplicate_rate(self) -> float:
        """The chance that a webhook is delivered twice."""
        return self._webhook_duplicate_rate

    @webhook_duplicate_rate.setter
    def webhook_duplicate_rate(self, value: float) -> None:
        self._webhook_duplicate_rate = probability(value, "webhook_duplicate_rate")

    @property
    def webhook_reorder_rate(self) -> float:
        """The chance that a webhook is delivered after the next one."""
        return self._webhook_reorder_rate

    @webhook_reorder_rate.setter
    def webhook_reorder_rate(self, value: float) -> None:
        self._webhook_reorder_rate = probability(value, "webhook_reorder_rate")

    @property
    def webhook_retries(self) -> int:
        """How many times a failed ``completed`` webhook is sent again."""
        return self._webhook_retries

    @webhook_retries.setter
    def webhook_retries(self, value: int) -> None:
        self._webhook_retries = _count(value, "webhook_retries", 0)

    @property
    def webhook_retry_delay(self) -> float:
        """Seconds before the first retry of a ``completed`` webhook (then doubling)."""
        return self._webhook_retry_delay

    @webhook_retry_delay.setter
    def webhook_retry_delay(self, value: Duration) -> None:
        self._webhook_retry_delay = seconds(value)

    # -- addresses -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._runner is not None

    @property
    def port(self) -> int:
        """The port listened on (the one picked, once started with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """The server's origin, ``http://127.0.0.1:PORT``; output files live under it.

        Raises:
            RuntimeError: the emulator was never started.
        """
        if self._url is None:
            raise RuntimeError("the emulator is not running: use `async with` or start()")
        return self._url

    @property
    def base_url(self) -> str:
        """The API base a client is given: ``http://127.0.0.1:PORT/replicate``."""
        return f"{self.url}/replicate"

    def render_context(self) -> RenderContext:
        """How predictions are shown, from the current knobs."""
        return RenderContext(
            api_base=self.base_url,
            files_origin=self.url,
            passthrough_urls=self.passthrough_urls,
            early_output=self.early_output,
            data_retention=self.data_retention,
        )

    # -- records -------------------------------------------------------------------------

    def count(
        self,
        kind: str | None = None,
        *,
        method: str | None = None,
        path_prefix: str | None = None,
        status: int | None = None,
    ) -> int:
        """How many API requests match every filter given.

        ``emulator.count("create")`` counts creates, ``emulator.count("get")`` polls of
        one prediction; ``kind`` is one of ``"create"``, ``"get"``, ``"cancel"``,
        ``"list"``, ``"webhook_secret"``, ``"unknown"``.
        """
        return sum(
            1
            for record in self.requests
            if (kind is None or record.kind == kind)
            and (method is None or record.method == method.upper())
            and (path_prefix is None or record.path.startswith(path_prefix))
            and (status is None or record.status == status)
        )

    def clear(self) -> None:
        """Forget every prediction, request, file download and webhook seen so far."""
        self.predictions.clear()
        self.requests.clear()
        self.file_requests.clear()
        self.webhook_deliveries.clear()
        self._runtime.images.clear()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening.

        Raises:
            RuntimeError: it is already running.
        """
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        runner = web.AppRunner(
            build_app(self, self._runtime),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        try:
            # A deep backlog: thousands of clients may connect in the same instant.
            site = web.TCPSite(runner, self.host, self._port, backlog=4096)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = int(runner.addresses[0][1])
        host = "127.0.0.1" if self.host in _ANY_ADDRESS else self.host
        self._url = str(yarl.URL.build(scheme="http", host=host, port=self._port))
        # A fresh event: the previous one may belong to another event loop.
        self._runtime.closing = asyncio.Event()
        self._runner = runner

    async def drain_webhooks(self) -> None:
        """Wait until every webhook delivery started so far has ended.

        A prediction's deliveries end after its ``completed`` webhook was answered 2xx
        or ran out of retries.
        """
        await self._runtime.webhooks.drain()

    async def aclose(self) -> None:
        """Stop listening; held requests are answered first, pending webhooks dropped."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._runtime.release()
            await self._runtime.webhooks.aclose()
            await runner.cleanup()

    async def serve_forever(self) -> None:
        """Start if needed and serve until cancelled, then stop."""
        if self._runner is None:
            await self.start()
        try:
            await self._runtime.closing.wait()
        finally:
            await self.aclose()

    async def __aenter__(self) -> Self:
        """Start listening."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop listening."""
        await self.aclose()

    def __repr__(self) -> str:
        """Where it listens and how much it has seen."""
        where = self.base_url if self._runner is not None else "not running"
        return f"<Emulator {self.profile} {where} predictions={len(self.predictions)}>"
