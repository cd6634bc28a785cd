"""A create-rate limit shared by every process through Redis: `RedisRateLimiter`.

Several processes with one API key share one account-wide create limit. Each one's own
`RateLimiter` finds that limit by being throttled, in turn; this limiter keeps one token
bucket in Redis for every process that uses the same server and ``name`` instead, and
takes from it atomically with a Lua script (``_redis_bucket.lua``), one round trip each:

- the bucket and the state that adapts it (the rate, a pause, the counts a 429 measures
  the accepted rate from) live in one hash (``_redis_bucket.py`` runs the script); the
  time is the Redis server's, so the processes' own clocks need not agree;
- without ``rate_limit=`` it adapts as the local limiter does: a 429 that any process
  sees pauses every process until its ``Retry-After`` has passed and sets the shared rate
  a little below the rate the server accepted; it probes back up while callers wait. The
  ``ratelimit-remaining`` count of accepted answers, which every process reports, steers
  the rate between 429s (up while the server's bucket holds spare creates, down when it
  is empty) and lets what the server holds go out at once;
- callers queue in their own process: one of them, the pump, takes tokens for the queue
  (as many as the bucket holds, or one reserved ahead, so no caller asks twice) and lets
  the others through as their times come. A create costs at most one Redis command.

When Redis cannot be reached or fails (every call is bounded by ``timeout``), the process
logs one WARNING and paces its creates with its own `RateLimiter` (adaptive, or its share
of a fixed rate) until a call after ``retry_interval`` succeeds again. No caller waits on
Redis for longer than ``timeout``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
import uuid
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import anyio

from ._errors import InputError
from ._ratelimit import RateLimiter, WaitingLine
from ._redis_bucket import SharedBucket

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._ratelimit import Ticket

__all__ = ["RedisRateLimiter"]

logger = logging.getLogger(__name__)

_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
# A process says it is alive at most this often (the bucket counts processes with it).
_REGISTER_SECONDS: Final = 5.0
# The pause when a 429 gave no hint (as the local limiter and the script assume).
_DEFAULT_PAUSE: Final = 1.0


class RedisRateLimiter:
    """A create-rate limit shared by every process using the same Redis and ``name``.

    Pass it to the client: ``qr.QuickRouter(rate_limiter=qr.RedisRateLimiter(url))``.
    With ``rate_limit=`` the processes together keep to that many creates per second;
    without, they find the server's limit together. Needs the ``redis`` extra
    (``pip install 'quickrouter-async[redis]'``).

    Args:
        url: the Redis server, ``redis://``, ``rediss://`` or ``unix://`` (a password
            in it never appears in a repr, a log or an error).
        name: processes with the same name (and Redis) share one bucket.
        timeout: the longest wait for one Redis call, in seconds.
        retry_interval: seconds after a failure before Redis is tried again.
        clock: a monotonic clock (tests pass a fake one, which then stands in for the
            Redis server's clock too).
        sleep: how to wait that many seconds (tests pass one that moves the fake clock).

    Attributes:
        granted: creates this process let through.
        throttled: creates of this process the server answered 429.
        accepted: creates of this process the server did not throttle.
        processes: processes that used the bucket lately, as last counted.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "quickrouter",
        timeout: float = 0.5,
        retry_interval: float = 5.0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        try:
            import redis.asyncio  # noqa: F401, PLC0415 (an optional extra)
        except ImportError as exc:
            raise ImportError(
                "RedisRateLimiter needs redis-py: pip install 'quickrouter-async[redis]'"
            ) from exc
        if urlsplit(url).scheme not in _SCHEMES:
            raise InputError("url must start with redis://, rediss:// or unix://", field="url")
        if not name:
            raise InputError("name must not be empty", field="name")
        for field, value in (("timeout", timeout), ("retry_interval", retry_interval)):
            if not value > 0:
                raise InputError(f"{field} must be positive seconds", field=field)
        self._bucket = SharedBucket(url, name, timeout=timeout, clock=clock)
        self.url = self._bucket.url
        self.name = name
        self._retry_interval = retry_interval
        self._clock = clock or time.monotonic
        self._sleep = sleep
        self._member = uuid.uuid4().hex[:16]
        self._rate: float | None = None
        self._configured = False
        self._max_pause = 60.0
        self._line = WaitingLine()
        self._nap: anyio.CancelScope | None = None
        # Local times at which the tokens this process holds may be used.
        self._slots: collections.deque[float] = collections.deque()
        self._paused_until = -math.inf
        # The latest ratelimit-remaining, and the bucket's count of grants known then.
        self._remaining: tuple[float, int] | None = None
        self._granted_seen = 0
        self._answers = 0
        self._registered_at = -math.inf
        # 429s not yet told: [with an empty bucket, others], and the longest wait asked.
        self._unreported = [0, 0]
        self._asked: float | None = None
        self._reporter: asyncio.Task[None] | None = None
        # Paces this process while Redis is down (made anew for each outage).
        self._local = RateLimiter(clock=self._clock, sleep=self._sleep)
        self._down = False
        self._retry_at = -math.inf
        self._shared_rate: float | None = None
        self.granted = 0
        self.throttled = 0
        self.accepted = 0
        self.processes = 1

    def __repr__(self) -> str:
        state = "local fallback" if self._down else "shared"
        return f"<RedisRateLimiter {self.url!r} name={self.name!r} {state}>"

    def configure(self, *, rate: float | None, max_pause: float) -> None:
        """Called by the client: its ``rate_limit`` (None adapts) and longest 429 pause.

        Raises:
            InputError: the limiter already serves a client with another ``rate_limit``.
        """
        if self._configured and rate != self._rate:
            raise InputError(
                f"this RedisRateLimiter already serves a client with rate_limit={self._rate}",
                field="rate_limiter",
            )
        self._configured = True
        self._rate = rate
        self._max_pause = max_pause

    @property
    def shared(self) -> bool:
        """Whether creates are paced by the shared bucket (False while Redis is down)."""
        return not self._down

    @property
    def paused_for(self) -> float:
        """Seconds until this process may create again after a 429 (0 when not paused)."""
        if self._down:
            return self._local.paused_for
        return max(0.0, self._paused_until - self._clock())

    @property
    def rate(self) -> float | None:
        """The shared rate as last seen, in creates per second (None before any)."""
        return self._shared_rate

    @property
    def commands(self) -> int:
        """Redis calls this process made."""
        return self._bucket.calls

    # -- when Redis fails ----------------------------------------------------------------

    def _failed(self, error: Exception) -> None:
        """Redis failed: pace this process alone until ``retry_interval`` has passed."""
        self._retry_at = self._clock() + self._retry_interval
        self._slots.clear()
        self._unreported = [0, 0]
        self._asked = None
        if not self._down:
            self._down = True
            share = None if self._rate is None else self._rate / max(1, self.processes)
            self._local = RateLimiter(
                share, max_pause=self._max_pause, clock=self._clock, sleep=self._sleep
            )
            logger.warning(
                "the shared create-rate limit in Redis (%s, name %r) failed: %s; pacing "
                "this process's creates alone (%s) until it is back",
                self.url,
                self.name,
                self._bucket.describe(error),
                "adaptive" if share is None else f"{share:g}/s",
            )
        self._line.divert_all()
        if self._nap is not None:
            self._nap.cancel()  # the pump's own ticket falls back too

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            logger.info("the shared create-rate limit in Redis (%s) is back", self.url)

    # -- acquiring ---------------------------------------------------------------------

    async def acquire(self) -> None:
        """Wait until a create may be sent, first come first served within the process."""
        if self._down and self._clock() < self._retry_at:
            await self._acquire_local()
            return
        now = self._clock()
        slots = self._slots
        if not self._line.tickets and slots and slots[0] <= now and now >= self._paused_until:
            self._slots.popleft()
            self.granted += 1
            return
        ticket = await self._line.wait(self._pump, self._give_back)
        if ticket.diverted:
            await self._acquire_local()

    def _give_back(self) -> None:
        """A caller granted, then cancelled before it could send: its slot is kept."""
        self._slots.appendleft(self._clock())
        self.granted -= 1

    async def _acquire_local(self) -> None:
        await self._local.acquire()
        self.granted += 1

    async def _pump(self, ticket: Ticket) -> None:
        """Take tokens for the queue and let callers through, in order, until ``ticket``."""
        while not (ticket.granted or ticket.diverted):
            now = self._clock()
            if now < self._paused_until:
                self._slots.clear()  # reserved for a time the server asked to wait through
                await self._doze(self._paused_until - now)
            elif self._slots:
                if self._slots[0] > now:
                    await self._doze(self._slots[0] - now)
                    continue
                while self._line.tickets and self._slots and self._slots[0] <= now:
                    self._slots.popleft()
                    self.granted += 1
                    self._line.grant_next()
            else:
                await self._take(len(self._line))

    async def _doze(self, seconds: float) -> None:
        """Sleep, cut short by a 429 (the pause changes what the pump waits for)."""
        with anyio.CancelScope() as self._nap:
            await self._sleep(seconds)
        self._nap = None

    async def _take(self, want: int) -> None:
        """Take up to ``want`` tokens from the shared bucket (one reserved ahead if empty)."""
        now = self._clock()
        remaining, known = (None, 0) if self._remaining is None else self._remaining
        answers, self._answers, self._remaining = self._answers, 0, None
        member = ""
        if now - self._registered_at >= _REGISTER_SECONDS:
            member = self._member
        try:
            took = await self._bucket.take(
                want,
                rate=self._rate,
                remaining=remaining,
                known=known,
                answers=answers,
                member=member,
            )
        except Exception as exc:  # noqa: BLE001 (any failure of Redis falls back)
            self._failed(exc)
            return
        self._recovered()
        if member:
            self._registered_at = now
        self._shared_rate, self.processes, self._granted_seen = (
            took.rate,
            took.processes,
            took.granted,
        )
        now = self._clock()
        if took.pause > 0:
            self._paused_until = max(self._paused_until, now + took.pause)
            return
        self._slots.extend(
            now + max(0.0, (n + 1 - took.before) / took.rate) for n in range(took.tokens)
        )

    # -- answers -----------------------------------------------------------------------

    def on_accepted(self, remaining: float | None = None) -> None:
        """A create was not throttled; ``remaining`` (``ratelimit-remaining``) goes to the
        bucket with the next take.
        """
        self.accepted += 1
        self._answers += 1
        if self._down:
            self._local.on_accepted(remaining)
        elif remaining is not None:
            self._remaining = (remaining, self._granted_seen)

    def on_unanswered(self) -> None:
        """A create got no answer."""
        self._answers += 1
        if self._down:
            self._local.on_unanswered()

    def on_throttled(self, retry_after: float | None, *, bucket_empty: bool = True) -> None:
        """A create was answered 429: pause this process at once, and every other one as
        soon as the bucket is told (in the background, right away).
        """
        self.throttled += 1
        self._answers += 1
        if self._down:
            self._local.on_throttled(retry_after, bucket_empty=bucket_empty)
            return
        if bucket_empty:
            asked = _DEFAULT_PAUSE if retry_after is None else max(0.0, retry_after)
            pause = min(asked, self._max_pause)
            self._paused_until = max(self._paused_until, self._clock() + pause)
            self._asked = asked if self._asked is None else max(self._asked, asked)
            if self._nap is not None:
                self._nap.cancel()
        self._unreported[0 if bucket_empty else 1] += 1
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.get_running_loop().create_task(self._report())

    async def _report(self) -> None:
        """Tell the bucket of the 429s seen, until none is left untold."""
        while any(self._unreported):
            (empty, other), asked = self._unreported, self._asked
            self._unreported, self._asked = [0, 0], None
            try:
                self._shared_rate = await self._bucket.throttle(
                    rate=self._rate,
                    empty=empty,
                    other=other,
                    asked=asked,
                    max_pause=self._max_pause,
                )
            except Exception as exc:  # noqa: BLE001 (any failure of Redis falls back)
                self._failed(exc)
                return

    async def aclose(self) -> None:
        """Tell the bucket of the last 429s and close the Redis connections (a later
        create opens them again). The client calls it when it closes.
        """
        reporter, self._reporter = self._reporter, None
        if reporter is not None:
            with anyio.CancelScope(shield=True):
                await reporter
        with contextlib.suppress(Exception):  # a connection Redis broke closes all the same
            await self._bucket.aclose()
