"""Shared fixtures: every test talks HTTP to a real emulator on 127.0.0.1."""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import quickrouter_async as qr
from quickrouter_async.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from quickrouter_async.testing import PredictionRecord


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


# The key the emulator expects unless a test says otherwise. `QUICKROUTER_TEST_KEY=k
# python -m pytest` runs the suite with a one-letter key, as users' own tests often do:
# answers must then reach the client byte for byte all the same.
TEST_KEY = os.environ.get("QUICKROUTER_TEST_KEY", "test-key")
Emulator.__init__.__kwdefaults__["api_key"] = TEST_KEY

# Fast polls and no real back-off: tests must not sleep for seconds.
FAST_POLL = qr.PollPolicy(sync_wait=None, interval=0.01)
FAST_RETRY = qr.RetryPolicy(attempts=4, initial=0.001, maximum=0.01, max_retry_after=0.05)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """An emulator whose predictions take 50 ms, for any model name."""
    async with Emulator(duration=0.05, seed=1234, accept_any_model=True) as emu:
        yield emu


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[qr.QuickRouter]:
    """A client pointed at the emulator, polling fast."""
    async with qr.QuickRouter(
        emulator.api_key, base_url=emulator.base_url, poll=FAST_POLL, retry=FAST_RETRY
    ) as c:
        yield c


# The servers promises are tested against: Replicate's full API, and a gateway that
# relays create and get only (as QuickRouter documents) plus what a test needs of it.
PROFILES: dict[str, dict[str, Any]] = {
    "replicate": {},
    "gateway": {"profile": "gateway", "cancel_route": True, "honor_prefer_wait": True},
}


@pytest.fixture(params=list(PROFILES))
def server_profile(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The emulator options of each profile in turn."""
    options: dict[str, Any] = PROFILES[request.param]
    return options


def running(emulator: Emulator) -> list[PredictionRecord]:
    """The predictions on the server that are not terminal."""
    return [record for record in emulator.predictions if not record.terminal]


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition on the emulator's records (they have no event to wait on)."""
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 (the records have no event to wait on)
            await anyio.sleep(0.005)
