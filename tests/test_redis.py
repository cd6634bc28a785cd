"""RedisRateLimiter's shared bucket against a real redis-server, in this process.

Several limiters with one name stand for several processes (each limiter keeps its own
queue and tokens, as a process does; only Redis joins them). Most tests run them on a
fake clock that stands in for Redis' clock too, so no test waits for real; the tests in
``test_redis_processes.py`` use real processes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from quickrouter_async._redis import RedisRateLimiter

from .limits import FakeClock, TokenBucketServer
from .redis_server import RedisServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.anyio

KEY = "{k}:create-rate"


async def send(limiter: RedisRateLimiter, server: TokenBucketServer, clock: FakeClock) -> None:
    """One create as the transport sends it: acquire, answer, and after a 429 wait and retry."""
    while True:
        await limiter.acquire()
        retry_after = server.create()
        if retry_after is None:
            limiter.on_accepted(server.remaining)
            return
        limiter.on_throttled(retry_after)
        await clock.sleep(retry_after)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def limiters(redis_server: RedisServer, clock: FakeClock) -> AsyncIterator[Any]:
    """Makes limiters named "k" on the fake clock ("processes"), and closes them."""
    made: list[RedisRateLimiter] = []

    def make(rate: float | None = None, **options: Any) -> RedisRateLimiter:
        options.setdefault("sleep", clock.sleep)
        limiter = RedisRateLimiter(redis_server.url, name="k", clock=clock, **options)
        limiter.configure(rate=rate, max_pause=60.0)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


def bucket(server: RedisServer) -> dict[str, float]:
    with server.client() as client:
        return {k.decode(): float(v) for k, v in client.hgetall(KEY).items()}


async def settle(*limiters: RedisRateLimiter) -> None:
    """Wait until every limiter has told the bucket of its 429s."""
    for limiter in limiters:
        if limiter._reporter is not None:
            await limiter._reporter


# -- one bucket for every process ------------------------------------------------------------


async def test_a_fixed_rate_is_shared_by_every_limiter_of_the_name(
    limiters: Any, redis_server: RedisServer, clock: FakeClock
) -> None:
    one, two = limiters(10.0), limiters(10.0)
    start = clock.now
    for _ in range(20):
        await one.acquire()
        await two.acquire()
    # 40 creates at 10/s between them (one at once): each alone would have taken 1.9 s.
    assert clock.now - start == pytest.approx(3.9)
    assert (one.granted, two.granted) == (20, 20)
    state = bucket(redis_server)
    assert state["granted"] == 40
    assert state["processes"] == 2
    assert one.commands + two.commands == 40  # one Redis call per create


async def test_other_names_have_other_buckets(limiters: Any, redis_server: RedisServer) -> None:
    one = limiters(10.0)
    other = RedisRateLimiter(redis_server.url, name="other")
    other.configure(rate=10.0, max_pause=60.0)
    await one.acquire()
    await other.acquire()
    await other.aclose()
    assert bucket(redis_server)["granted"] == 1


async def test_a_429_seen_by_one_process_pauses_every_other(
    limiters: Any, redis_server: RedisServer, clock: FakeClock
) -> None:
    one, two = limiters(), limiters()
    await one.acquire()
    await two.acquire()
    one.on_throttled(30.0)
    assert one.paused_for == pytest.approx(30.0)  # itself at once, before Redis knows
    await settle(one)
    start = clock.now
    await two.acquire()
    assert clock.now - start == pytest.approx(30.0)
    assert two.paused_for == 0.0
    # Too little was sent to measure the accepted rate: the shared rate is halved.
    assert two.rate == pytest.approx(one.rate) == pytest.approx(5.0)
    assert bucket(redis_server)["throttled"] == 1


async def test_a_429_that_leaves_the_server_bucket_holding_creates_pauses_nobody(
    limiters: Any, clock: FakeClock
) -> None:
    one, two = limiters(), limiters()
    await one.acquire()
    one.on_throttled(30.0, bucket_empty=False)
    await settle(one)
    start = clock.now
    await two.acquire()
    assert clock.now == start
    assert one.rate == 10.0


async def test_a_pause_is_capped_by_the_clients_longest(limiters: Any, clock: FakeClock) -> None:
    one = limiters()
    one.configure(rate=None, max_pause=5.0)
    await one.acquire()
    one.on_throttled(None)  # no hint: a second
    one.on_throttled(600.0)  # more than the client honours
    await settle(one)
    start = clock.now
    await one.acquire()
    assert clock.now - start == pytest.approx(5.0)


@pytest.mark.parametrize("processes", [1, 4])
async def test_the_processes_find_the_servers_limit_together(
    limiters: Any, clock: FakeClock, processes: int
) -> None:
    server = TokenBucketServer(clock, rate=20, burst=10, headers=True)
    group = [limiters() for _ in range(processes)]
    start = clock.now
    for round_ in range(600 // processes):
        del round_
        for limiter in group:
            await send(limiter, server, clock)
    await settle(*group)
    elapsed = clock.now - start
    # The burst, then the server's rate: 29.5 s at best.
    assert server.accepted == 600
    assert (600 - 10) / elapsed >= 0.95 * 20
    assert server.throttled <= 0.02 * 600


async def test_without_headers_the_rate_is_found_from_429s(limiters: Any, clock: FakeClock) -> None:
    server = TokenBucketServer(clock, rate=20, burst=10, headers=False)
    one, two = limiters(), limiters()
    for _ in range(300):
        await send(one, server, clock)
        await send(two, server, clock)
    await settle(one, two)
    assert server.throttled >= 1  # found by being throttled, then kept below the limit
    assert server.throttled <= 0.05 * 600
    assert 0.5 * 20 <= one.rate <= 1.5 * 20


async def test_without_headers_the_rate_probes_upwards_once_answers_come(
    limiters: Any, clock: FakeClock
) -> None:
    server = TokenBucketServer(clock, rate=1000, burst=1000, headers=False)
    one = limiters()
    for _ in range(30):  # the bucket runs dry, but nothing has been answered
        await one.acquire()
    assert clock.now > 1001.0
    assert one.rate == 10.0
    for _ in range(100):
        await send(one, server, clock)
    assert one.rate > 10.0


async def test_the_servers_count_lets_what_it_holds_go_at_once(
    limiters: Any, clock: FakeClock
) -> None:
    one = limiters()
    for _ in range(10):  # the bucket's first ten, at once
        await one.acquire()
    assert clock.now == 1000.0
    # The server says it holds 9: beyond half of it (its reserve) and one on its way, 4 go.
    one.on_accepted(9.0)
    for _ in range(4):
        await one.acquire()
    assert clock.now == 1000.0
    await one.acquire()
    assert clock.now > 1000.0


async def test_a_count_from_before_other_grants_lets_only_the_difference_go(
    limiters: Any, clock: FakeClock
) -> None:
    one, two = limiters(), limiters()
    await one.acquire()
    one.on_accepted(9.0)  # known: 1 granted; the other process then takes 9 more
    for _ in range(9):
        await two.acquire()
    await one.acquire()  # 9 - 4 (reserve) - 1 (on its way) - 9 (granted since): nothing
    assert clock.now > 1000.0


async def test_a_caller_cancelled_in_the_queue_loses_nothing(
    limiters: Any, redis_server: RedisServer, clock: FakeClock
) -> None:
    one = limiters(1.0)
    await one.acquire()
    start = clock.now
    with anyio.move_on_after(0):  # cancelled while it waits for its token
        await one.acquire()
    assert one.granted == 1
    await one.acquire()  # the token reserved for the one that left goes to this one
    assert clock.now - start == pytest.approx(1.0)
    assert bucket(redis_server)["granted"] == 2


async def test_a_caller_granted_then_cancelled_passes_its_token_on(
    limiters: Any, clock: FakeClock
) -> None:
    gate = anyio.Event()

    async def held(seconds: float) -> None:  # a sleep that ends when the test says
        clock.now += seconds
        await gate.wait()

    one = limiters(1000.0, sleep=held)  # a bucket of five
    await one.acquire()
    one.on_throttled(1.0)
    await settle(one)
    tasks: dict[str, asyncio.Future[None]] = {}

    async def first() -> None:
        await one.acquire()
        assert one.granted == 3  # let through together with the second caller, which
        tasks["second"].cancel()  # is cancelled before it runs (as asyncio allows)

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await anyio.wait_all_tasks_blocked()  # the first waits out the pause
        tasks["second"] = asyncio.ensure_future(one.acquire())
        await anyio.wait_all_tasks_blocked()  # the second queues behind it
        gate.set()
    with pytest.raises(asyncio.CancelledError):
        await tasks["second"]
    assert one.granted == 2
    commands, now = one.commands, clock.now
    await one.acquire()  # the token the second caller left behind
    assert (one.commands, clock.now) == (commands, now)


async def test_a_429_wakes_a_caller_waiting_for_its_token(limiters: Any) -> None:
    gate = anyio.Event()
    asked: list[float] = []

    async def held(seconds: float) -> None:
        asked.append(seconds)
        await gate.wait()

    one = limiters(0.01, sleep=held)  # a token every 100 s
    await one.acquire()
    async with anyio.create_task_group() as group:
        group.start_soon(one.acquire)
        await anyio.wait_all_tasks_blocked()
        assert asked == [pytest.approx(100.0)]
        one.on_throttled(5.0)
        await anyio.wait_all_tasks_blocked()
        assert asked[1:] == [pytest.approx(5.0)]  # the pause now, not after the 100 s
        group.cancel_scope.cancel()


async def test_answers_without_a_count_tell_the_bucket_nothing_more(
    limiters: Any, clock: FakeClock
) -> None:
    one = limiters()
    await one.acquire()
    one.on_unanswered()
    one.on_accepted(None)
    await one.acquire()
    assert clock.now == 1000.0
    assert one.accepted == 1


# -- when Redis fails --------------------------------------------------------------------------


async def test_a_redis_failure_wakes_the_pump_to_fall_back(redis_server: RedisServer) -> None:
    limiter = RedisRateLimiter(redis_server.url, name="k")
    limiter.configure(rate=0.01, max_pause=60.0)  # a token every 100 s
    await limiter.acquire()
    with anyio.fail_after(30):  # not the 100 s its token would take
        async with anyio.create_task_group() as group:
            group.start_soon(limiter.acquire)  # takes a token 100 s ahead, and sleeps
            await anyio.wait_all_tasks_blocked()
            redis_server.stop()
            limiter.on_throttled(None, bucket_empty=False)  # its report fails
    assert not limiter.shared
    assert limiter.granted == 2  # the second through the local limiter
    await limiter.aclose()


async def test_redis_down_falls_back_to_the_local_limiter_and_comes_back(
    limiters: Any, redis_server: RedisServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quickrouter_async")
    one = limiters(retry_interval=5.0)
    await one.acquire()
    redis_server.stop()
    for _ in range(30):
        await one.acquire()
        one.on_accepted(None)
    assert not one.shared
    assert "local fallback" in repr(one)
    one.on_throttled(2.0)
    one.on_unanswered()
    assert one.paused_for == pytest.approx(2.0)  # the local limiter's pause
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one per outage, not one per create
    assert "pacing this process's creates alone" in warnings[0].getMessage()
    redis_server.start()
    clock.now += 5.0  # the retry interval
    await one.acquire()
    assert one.shared
    assert any("is back" in r.getMessage() for r in caplog.records)
    assert bucket(redis_server)["granted"] == 1  # a new, empty bucket took it


async def test_a_fixed_rate_falls_back_to_this_process_share(
    limiters: Any, redis_server: RedisServer, clock: FakeClock
) -> None:
    one, two = limiters(10.0), limiters(10.0)
    await one.acquire()
    await two.acquire()
    await one.acquire()
    assert one.processes == 2
    redis_server.stop()
    await one.acquire()  # fails over
    start = clock.now
    for _ in range(10):
        await one.acquire()
    assert clock.now - start == pytest.approx(10 / 5.0)  # half of 10/s


async def test_a_failing_report_of_a_429_falls_back(
    limiters: Any, redis_server: RedisServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    one = limiters()
    await one.acquire()
    redis_server.stop()
    one.on_throttled(1.0)
    await settle(one)
    assert not one.shared
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


async def test_a_redis_that_never_answers_costs_one_timeout(redis_server: RedisServer) -> None:
    limiter = RedisRateLimiter(redis_server.url, name="k", timeout=0.2)
    await limiter.acquire()
    redis_server.freeze()  # the kernel accepts connections; nobody answers
    try:
        with anyio.fail_after(30):  # a generous bound: the test must not hang
            for _ in range(5):
                await limiter.acquire()
        assert not limiter.shared
        assert limiter.granted == 6
    finally:
        redis_server.thaw()
        await limiter.aclose()
