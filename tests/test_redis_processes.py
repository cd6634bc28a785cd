"""RedisRateLimiter across real processes: ``tests/redis_worker.py`` runs in each.

The emulator runs in this process, Redis in its own; the workers talk to both. What is
checked is counted, not timed: the bucket's count of grants against the creates the
emulator saw, the pause the bucket asks of a process, the predictions made.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from quickrouter_async._redis import RedisRateLimiter
from quickrouter_async.testing import Emulator, RateLimit

from .redis_server import RedisServer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anyio.abc import Process

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKER = Path(__file__).with_name("redis_worker.py")
KEY = "{k}:create-rate"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


class Worker:
    """A worker process, read line by line."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._lines = BufferedByteReceiveStream(process.stdout)

    async def line(self) -> str:
        return (await self._lines.receive_until(b"\n", 1 << 16)).decode()

    async def go_on(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(b"\n")

    async def result(self) -> dict[str, Any]:
        while not (line := await self.line()).startswith("{"):
            pass
        await self.process.wait()
        return dict(json.loads(line))


async def start(emulator: Emulator, redis: RedisServer, **options: Any) -> Worker:
    options = {
        "base_url": emulator.base_url,
        "api_key": emulator.api_key,
        "redis": redis.url,
        "mode": "run_many",
        "offset": 0,
        **options,
    }
    process = await anyio.open_process([sys.executable, str(WORKER), json.dumps(options)])
    return Worker(process)


async def test_processes_take_from_one_bucket(redis_server: RedisServer) -> None:
    async with Emulator(duration=0.05) as emulator:
        workers = [
            await start(emulator, redis_server, offset=n, count=10, rate_limit=200.0)
            for n in range(3)
        ]
        results = [await worker.result() for worker in workers]
        creates = emulator.count("create")
        predictions = len(emulator.predictions)
    assert [r["succeeded"] for r in results] == [10, 10, 10]
    assert predictions == creates == 30
    with redis_server.client() as client:
        state = client.hgetall(KEY)
    assert float(state[b"granted"]) == 30  # every create of every process
    assert float(state[b"processes"]) == 3
    assert float(state[b"rate"]) == 200.0


async def test_a_429_in_one_process_pauses_another(redis_server: RedisServer) -> None:
    # One create at once, then one every 50 s: the second create is told to wait 50 s.
    async with Emulator(duration=0.05, rate_limit=RateLimit(rate=0.02, burst=1)) as emulator:
        worker = await start(emulator, redis_server, mode="create", count=2, attempts=1)
        result = await worker.result()
    assert (result["succeeded"], result["throttled"]) == (1, 1)

    asked: list[float] = []
    with anyio.CancelScope() as scope:

        async def sleep(seconds: float) -> None:
            asked.append(seconds)
            scope.cancel()
            await anyio.lowlevel.checkpoint()

        limiter = RedisRateLimiter(redis_server.url, name="k", sleep=sleep)
        await limiter.acquire()
    await limiter.aclose()
    assert limiter.granted == 0
    assert asked[0] > 30  # the rest of the 50 s, however long the worker took to exit
    assert limiter.paused_for > 30


async def test_redis_stopped_and_started_again_while_processes_run(
    redis_server: RedisServer,
) -> None:
    # A worker waiting at "at N" has made at most N + 10 creates (5 outcomes queue, 5 are
    # under way): creates 21-40 come after the stop, 31-40 after the restart.
    async with Emulator(duration=0.05) as emulator:
        workers = [
            await start(
                emulator, redis_server, offset=n, count=40, stops=[10, 20], retry_interval=0.001
            )
            for n in range(2)
        ]
        for worker in workers:
            assert await worker.line() == "at 10"
        redis_server.stop()
        for worker in workers:
            await worker.go_on()
        for worker in workers:
            assert await worker.line() == "at 20"
        redis_server.start()
        for worker in workers:
            await worker.go_on()
        results = [await worker.result() for worker in workers]
        predictions = len(emulator.predictions)
    assert [r["succeeded"] for r in results] == [40, 40]
    assert predictions == 80  # none lost, none created twice
    assert [r["warnings"] for r in results] == [1, 1]  # one each, for the whole outage
    assert all(r["shared"] for r in results)  # back on the bucket
    with redis_server.client() as client:
        assert float(client.hget(KEY, "granted") or 0) >= 2  # the last creates shared it
