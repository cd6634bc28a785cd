"""Shared fixtures: every test talks HTTP to a real emulator on 127.0.0.1."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import pytest
import quickrouter_async as qr
from quickrouter_async.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every coroutine test under anyio (asyncio backend) without marking each one."""
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and inspect.iscoroutinefunction(function):
            item.add_marker(pytest.mark.anyio)


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp is asyncio-only."""
    return "asyncio"


# Fast polls and no real back-off: tests must not sleep for seconds.
FAST_POLL = qr.PollPolicy(sync_wait=None, interval=0.01)
FAST_RETRY = qr.RetryPolicy(attempts=4, initial=0.001, maximum=0.01, max_retry_after=0.05)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """An emulator whose predictions take 50 ms."""
    async with Emulator(duration=0.05, seed=1234) as emu:
        yield emu


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[qr.QuickRouter]:
    """A client pointed at the emulator, polling fast."""
    async with qr.QuickRouter(
        emulator.api_key, base_url=emulator.base_url, poll=FAST_POLL, retry=FAST_RETRY
    ) as c:
        yield c
