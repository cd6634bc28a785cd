"""`Channel`: finished outcomes on their way from `run_many`'s workers to its consumer.

An anyio memory object stream does the same job, but it looks up the current task and
makes an event and a checkpoint on every receive; at thousands of outcomes a second that
is a noticeable share of the client's CPU. This one is a bounded deque and asyncio
futures: handing over an outcome when there is room, or taking one when one is ready,
costs no trip through the event loop. Waiting senders and receivers are served in order,
and a cancelled waiter (anyio cancels through `asyncio.Task.cancel`) leaves at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

import anyio

__all__ = ["Channel"]

T = TypeVar("T")


class Channel(Generic[T]):
    """A bounded first-in first-out channel with one end for senders, one for receivers.

    `end` is called by the sending side when nothing more will come: receivers get what
    is left, then `anyio.EndOfStream`. `abandon` is called by the receiving side when it
    goes away: what is queued is dropped and senders no longer wait (nor keep anything).
    """

    __slots__ = ("_abandoned", "_ended", "_getters", "_items", "_putters", "_size")

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._items: deque[T] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._ended = False
        self._abandoned = False

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T) -> bool:
        """Queue ``item`` if there is room (or drop it if abandoned); False if full."""
        if self._abandoned:
            return True
        if len(self._items) >= self._size:
            return False
        self._items.append(item)
        if self._getters:
            _wake_one(self._getters)
        return True

    async def put(self, item: T) -> None:
        """Queue ``item``, waiting for room; dropped if the receiving side has gone."""
        while not self.put_nowait(item):
            await _wait(self._putters)

    @property
    def ready(self) -> bool:
        """Whether an item is queued (`pop` may be called)."""
        return bool(self._items)

    def pop(self) -> T:
        """The next queued item (check `ready` first)."""
        item = self._items.popleft()
        if self._putters:
            _wake_one(self._putters)
        return item

    async def get(self) -> T:
        """The next item, waiting for one.

        Raises:
            anyio.EndOfStream: none is queued and none will come.
        """
        while not self._items:
            if self._ended:
                raise anyio.EndOfStream
            await _wait(self._getters)
        return self.pop()

    def end(self) -> None:
        """Nothing more will be sent: receivers drain what is queued, then stop."""
        self._ended = True
        _wake_all(self._getters)

    def abandon(self) -> None:
        """Nobody will receive any more: drop what is queued and let senders go."""
        self._abandoned = True
        self._items.clear()
        _wake_all(self._putters)


async def _wait(waiters: deque[asyncio.Future[None]]) -> None:
    """Wait in line in ``waiters`` until woken; a woken waiter that is cancelled
    passes its turn to the next.
    """
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    except BaseException:
        if waiter.done() and not waiter.cancelled():
            _wake_one(waiters)
        else:
            waiter.cancel()
            if waiter in waiters:
                waiters.remove(waiter)
        raise


def _wake_one(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


def _wake_all(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
