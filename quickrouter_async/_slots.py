"""`Slots`: a resizable count of things under way, first come first served.

It does what an anyio `CapacityLimiter` does for the transport and `run_many`, at a
fraction of the cost per use: taking a free slot is a comparison and an addition, with
no trip through the event loop, no task lookup and no cancel-scope check. That matters
on the path every request takes. A waiter is an asyncio future, so a cancelled task
(anyio cancels through `asyncio.Task.cancel`) stops waiting at once; a slot granted to a
task cancelled in the same moment is passed on, never lost.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Slots"]


class Slots:
    """At most `total` holders at once; the others wait in arrival order.

    Attributes:
        total: how many may hold a slot at once (may be raised or lowered at any time).
        used: how many hold one now.
    """

    __slots__ = ("_total", "_waiters", "used")

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"total must be at least 1, got {total}")
        self._total = total
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        return f"<Slots {self.used}/{self._total}, {len(self._waiters)} waiting>"

    @property
    def total(self) -> int:
        """How many may hold a slot at once."""
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"total must be at least 1, got {value}")
        self._total = value
        self._wake()

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits for one; never waits."""
        if self.used < self._total and not self._waiters:
            self.used += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting for one if none is free."""
        if self.try_acquire():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted as the wait was cancelled: pass it on
            else:
                waiter.cancel()
                if waiter in self._waiters:  # `_wake` may have dropped it already
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back; the longest waiter gets it."""
        if self.used <= 0:
            raise RuntimeError("release() without a slot held")
        self.used -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used < self._total:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.used += 1
                waiter.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
