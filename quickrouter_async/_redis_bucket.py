"""The Redis side of `RedisRateLimiter`: the shared bucket, its script, the connection.

One bucket is one hash (and a sorted set counting the processes that use it), changed
only by ``_redis_bucket.lua`` in one atomic call: a take, or a report of 429s. This
module runs that script through redis-py's asyncio client, made on first use in the
running event loop, every call bounded by ``timeout`` and shielded from the caller's
cancellation (a take the caller no longer waits for still returns its tokens, which go
to the next caller, and a reply is never cut in half). It reports Redis' failures as
they come: the limiter decides what to do about them.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["SharedBucket", "Take", "redact_url"]

_SCRIPT: Final = (resources.files("quickrouter_async") / "_redis_bucket.lua").read_text("utf-8")


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part or the query) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*/")
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


class Take(NamedTuple):
    """What a take got: ``tokens``, the ``n``-th (from 0) due ``(n + 1 - before) / rate``
    seconds from now (at once if not positive), unless the bucket is paused for ``pause``
    seconds (then ``tokens`` is 0); the processes counted, and the bucket's count of
    tokens ever granted.
    """

    tokens: int
    before: float
    rate: float
    pause: float
    processes: int
    granted: int


class SharedBucket:
    """The bucket ``name`` on the Redis server at ``url``.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://``.
        name: the bucket's name (its keys share it as a hash tag).
        timeout: the longest wait for one call, connecting included, in seconds.
        clock: when given, the time sent with every call instead of Redis' own (tests).

    Attributes:
        url: the URL without its password.
        calls: script calls made.
    """

    def __init__(
        self, url: str, name: str, *, timeout: float, clock: Callable[[], float] | None
    ) -> None:
        self._url = url
        self.url = redact_url(url)
        self._keys = (f"{{{name}}}:create-rate", f"{{{name}}}:create-rate:processes")
        self._timeout = timeout
        self._clock = clock
        self._redis: Redis | None = None
        self._script: AsyncScript | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.calls = 0

    def _connection(self) -> AsyncScript:
        """The script on a client of the running event loop, made when needed."""
        loop = asyncio.get_running_loop()
        if self._script is None or self._loop is not loop:
            from redis.asyncio import Redis  # noqa: PLC0415 (an optional extra)
            from redis.asyncio.retry import Retry  # noqa: PLC0415
            from redis.backoff import NoBackoff  # noqa: PLC0415

            # No retries of its own: the limiter falls back at once, and comes back later.
            self._redis = Redis.from_url(
                self._url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._script = self._redis.register_script(_SCRIPT)
            self._loop = loop
        return self._script

    async def _call(self, op: str, rate: float | None, *args: str | float) -> list[Any]:
        script = self._connection()
        now = "" if self._clock is None else str(self._clock())
        fixed = "" if rate is None else str(rate)
        self.calls += 1
        with anyio.CancelScope(shield=True), anyio.fail_after(self._timeout):
            reply = await script(keys=self._keys, args=(op, now, fixed, *args))
        return list(reply)

    async def take(
        self,
        want: int,
        *,
        rate: float | None,
        remaining: float | None,
        known: int,
        answers: int,
        member: str,
    ) -> Take:
        """Take up to ``want`` tokens (at least one, reserved ahead if none is there).

        Args:
            want: callers waiting.
            rate: the fixed rate, or None to adapt.
            remaining: the latest ``ratelimit-remaining``, if any came since the last take.
            known: the bucket's count of grants as known when it came.
            answers: answers since the last take.
            member: this process's id, to count it ("" when counted lately).
        """
        reply = await self._call(
            "take", rate, want, "" if remaining is None else remaining, known, answers, member
        )
        count, before, shared_rate, pause = int(reply[0]), *map(float, reply[1:4])
        return Take(count, before, shared_rate, pause, int(reply[4]), int(reply[5]))

    async def throttle(
        self, *, rate: float | None, empty: int, other: int, asked: float | None, max_pause: float
    ) -> float:
        """Report 429s: ``empty`` said the server's bucket was empty (they pause every
        process for ``asked`` seconds, at most ``max_pause``), ``other`` did not. Returns
        the shared rate.
        """
        reply = await self._call(
            "throttle", rate, empty, other, "" if asked is None else asked, max_pause
        )
        return float(reply[0])

    async def aclose(self) -> None:
        """Close the connections (the next call opens new ones)."""
        client, self._redis, self._script, self._loop = self._redis, None, None, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    def describe(self, error: BaseException) -> str:
        """An error of a call, for a log line, without the URL's password."""
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        parts = urlsplit(self._url)
        secrets = [parts.password, *(v for k, v in parse_qsl(parts.query) if k == "password")]
        for secret in secrets:
            if secret:
                text = text.replace(secret, "***")
        return text
