"""The token bucket behind :class:`RateLimit`, and the ``ratelimit-*`` headers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._options import RateLimit

# What Replicate was seen answering when nowhere near its limits (600 creates and 3000
# other requests a minute; polls apparently count against a far larger budget).
UNLIMITED_REMAINING = {"create": 599, "get": 59999}
DEFAULT_REMAINING = 2999


class TokenBucket:
    """A bucket of ``burst`` tokens refilled at ``rate`` per second.

    Time is passed in (``time.monotonic()`` values) so that the arithmetic is exact and
    the bucket never needs a task of its own.
    """

    def __init__(self, limit: RateLimit, now: float) -> None:
        """Start full at time ``now``."""
        self.limit = limit
        self._tokens = float(limit.burst)
        self._updated = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.limit.burst), self._tokens + elapsed * self.limit.rate)
        self._updated = now

    def take(self, now: float) -> int | None:
        """Take a token; return ``None`` if granted, else whole seconds until one is free."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - self._tokens) / self.limit.rate))

    def remaining(self, now: float) -> int:
        """Whole tokens left: the ``ratelimit-remaining`` header."""
        self._refill(now)
        return math.floor(self._tokens)

    def reset(self, now: float) -> int:
        """Whole seconds (at least 1) until the bucket is full: ``ratelimit-reset``."""
        self._refill(now)
        missing = float(self.limit.burst) - self._tokens
        return max(1, math.ceil(missing / self.limit.rate))


def throttled_body(seconds: int) -> dict[str, object]:
    """Replicate's body for a throttled request, with the wait in whole seconds."""
    return {
        "detail": f"Request was throttled. Your rate limit resets in ~{seconds}s.",
        "status": 429,
        "title": "Too Many Requests",
        "retry_after": seconds,
    }
