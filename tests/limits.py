"""A fake clock and a server's create limit on it, for the rate limiters' tests."""

from __future__ import annotations

import math

import anyio


class FakeClock:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


class TokenBucketServer:
    """A server's create limit: ``rate`` per second, ``burst`` at once, as the emulator's.

    ``whole_seconds``: Retry-After rounded up to whole seconds (as HTTP sends it);
    ``headers``: the count left is sent (`remaining`) as ``ratelimit-remaining``.
    """

    def __init__(
        self,
        clock: FakeClock,
        *,
        rate: float,
        burst: int,
        whole_seconds: bool = True,
        headers: bool = False,
    ) -> None:
        self.clock, self.rate, self.burst = clock, rate, burst
        self.whole_seconds, self.headers = whole_seconds, headers
        self.tokens, self.stamp = float(burst), clock.now
        self.accepted = self.throttled = 0

    def create(self) -> float | None:
        """None if accepted, else the Retry-After the server sends."""
        now = self.clock.now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.accepted += 1
            return None
        self.throttled += 1
        wait = (1 - self.tokens) / self.rate
        return float(math.ceil(wait)) if self.whole_seconds else wait

    @property
    def remaining(self) -> float | None:
        """What ``ratelimit-remaining`` says after the last create (None: not sent)."""
        return float(math.floor(self.tokens)) if self.headers else None
