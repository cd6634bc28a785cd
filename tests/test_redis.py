"""RedisRateLimiter against a real redis-server, in this process.

Several limiters with one name stand for several processes (each limiter keeps its own
queue and tokens, as a process does; only Redis joins them). Most tests run them on a
fake clock that stands in for Redis' clock too, so no test waits for real; the tests in
``test_redis_processes.py`` use real processes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import quickrouter_async as qr
from quickrouter_async._ratelimit import RateLimiter
from quickrouter_async._redis import RedisRateLimiter
from quickrouter_async._redis_bucket import redact_url
from quickrouter_async.cli import main
from quickrouter_async.testing import Emulator, RateLimit

from .conftest import FAST_POLL, FAST_RETRY
from .redis_server import RedisServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

KEY = "{k}:create-rate"
MODEL = "google/imagen-4"


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
    """A server's create limit: ``rate`` per second, ``burst`` at once, its count in
    ``ratelimit-remaining`` when ``headers``.
    """

    def __init__(self, clock: FakeClock, *, rate: float, burst: int, headers: bool) -> None:
        self.clock, self.rate, self.burst, self.headers = clock, rate, burst, headers
        self.tokens, self.stamp = float(burst), clock.now
        self.accepted = self.throttled = 0

    def create(self) -> tuple[float | None, float | None]:
        """(None, remaining) if accepted, else (Retry-After in whole seconds, None)."""
        now = self.clock.now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.accepted += 1
            return None, float(math.floor(self.tokens)) if self.headers else None
        self.throttled += 1
        return float(math.ceil((1 - self.tokens) / self.rate)), None


async def send(limiter: RedisRateLimiter, server: TokenBucketServer, clock: FakeClock) -> None:
    """One create as the transport sends it: acquire, answer, and after a 429 wait and retry."""
    while True:
        await limiter.acquire()
        retry_after, remaining = server.create()
        if retry_after is None:
            limiter.on_accepted(remaining)
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


async def test_an_unused_limiter_closes(redis_server: RedisServer) -> None:
    limiter = RedisRateLimiter(redis_server.url)
    await limiter.aclose()
    assert limiter.granted == 0


async def test_any_create_limiter_can_pace_a_client(emulator: Emulator) -> None:
    limiter = RateLimiter(1000.0)
    for _ in range(2):  # one limiter for two clients of this process
        async with qr.QuickRouter(
            emulator.api_key, base_url=emulator.base_url, poll=FAST_POLL, rate_limiter=limiter
        ) as client:
            await client.create(MODEL, {"prompt": "x"})
    assert limiter.granted == 2


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


# -- secrets, settings -------------------------------------------------------------------------


async def test_the_password_appears_in_no_repr_log_or_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with RedisServer(password="s3cret-pw") as server:
        right = RedisRateLimiter(server.url, name="k")
        await right.acquire()
        assert right.shared
        await right.aclose()
        wrong_url = server.url.replace("s3cret-pw", "wr0ng-pw")
        for url in (wrong_url, "redis://user:wr0ng-pw@127.0.0.1:1/0"):
            wrong = RedisRateLimiter(url, name="k")
            await wrong.acquire()
            await wrong.aclose()
            assert not wrong.shared
            assert "wr0ng-pw" not in repr(wrong) + wrong.url
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "***" in logged
    assert "s3cret-pw" not in logged
    assert "wr0ng-pw" not in logged
    with pytest.raises(qr.InputError) as raised:
        RedisRateLimiter("http://:wr0ng-pw@host/")
    assert "wr0ng-pw" not in str(raised.value)


def test_urls_lose_their_passwords() -> None:
    assert redact_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("rediss://me:pw@host/1") == "rediss://me:***@host/1"
    assert (
        redact_url("unix:///tmp/r.sock?password=pw&db=2") == "unix:///tmp/r.sock?password=***&db=2"
    )
    assert redact_url("redis://host:6379") == "redis://host:6379"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"url": "http://host"}, "url"),
        ({"url": "redis://host", "name": ""}, "name"),
        ({"url": "redis://host", "timeout": 0}, "timeout"),
        ({"url": "redis://host", "retry_interval": -1.0}, "retry_interval"),
    ],
)
def test_settings_are_checked(arguments: dict[str, Any], field: str) -> None:
    with pytest.raises(qr.InputError) as raised:
        RedisRateLimiter(**arguments)
    assert raised.value.field == field


def test_one_limiter_serves_one_rate() -> None:
    limiter = RedisRateLimiter("redis://host")
    limiter.configure(rate=5.0, max_pause=60.0)
    limiter.configure(rate=5.0, max_pause=30.0)
    with pytest.raises(qr.InputError):
        qr.QuickRouter("k", rate_limit=6.0, rate_limiter=limiter)


def test_without_redis_py_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImportError, match=r"quickrouter-async\[redis\]"):
        RedisRateLimiter("redis://host")


# -- with the client ---------------------------------------------------------------------------


def inputs(count: int, prefix: str = "p") -> Iterator[tuple[str, dict[str, Any]]]:
    for number in range(count):
        yield MODEL, {"prompt": f"{prefix} {number}"}


async def test_the_client_paces_its_creates_with_the_shared_bucket(
    redis_server: RedisServer,
) -> None:
    limiter = RedisRateLimiter(redis_server.url, name="k")
    async with (
        Emulator(duration=0.05, rate_limit=RateLimit(rate=1000, burst=5)) as emulator,
        qr.QuickRouter(
            emulator.api_key,
            base_url=emulator.base_url,
            poll=FAST_POLL,
            retry=FAST_RETRY,
            rate_limit=500.0,
            rate_limiter=limiter,
        ) as client,
    ):
        outcomes = [o async for o in client.run_many(inputs(30), concurrency=10)]
        assert all(outcome.ok for outcome in outcomes)
        creates = emulator.count("create")
    assert limiter._bucket._redis is None  # closed with the client
    state = bucket(redis_server)
    assert state["granted"] == creates == 30
    assert state["rate"] == 500.0  # the client's rate_limit, for every process


async def test_redis_stopped_and_started_again_mid_run(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quickrouter_async")
    limiter = RedisRateLimiter(redis_server.url, name="k", retry_interval=0.01)

    def outage() -> Iterator[tuple[str, dict[str, Any]]]:
        for number, item in enumerate(inputs(60)):
            if number == 20:
                redis_server.stop()
            if number == 40:
                redis_server.start()
            yield item

    async with (
        Emulator(duration=0.05) as emulator,
        qr.QuickRouter(
            emulator.api_key,
            base_url=emulator.base_url,
            poll=FAST_POLL,
            retry=FAST_RETRY,
            rate_limiter=limiter,
        ) as client,
    ):
        outcomes = [o async for o in client.run_many(outage(), concurrency=5)]
        predictions = len(emulator.predictions)
        assert limiter.shared
    assert sorted(o.index for o in outcomes if o.ok) == list(range(60))
    assert predictions == 60  # none lost, none created twice
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert any("is back" in r.getMessage() for r in caplog.records)
    assert bucket(redis_server)["granted"] >= 1  # the creates after the restart shared it


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """An emulator on an event loop of its own in a thread (``main`` runs its own loop),
    and the environment pointing at it.
    """
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        holder["stop"], holder["loop"] = asyncio.Event(), asyncio.get_running_loop()
        async with Emulator(duration=0.05, api_key="cli-key") as emulator:
            holder["emulator"] = emulator
            ready.set()
            await holder["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    ready.wait(10)
    monkeypatch.setenv("QUICKROUTER_API_KEY", "cli-key")
    monkeypatch.setenv("QUICKROUTER_BASE_URL", holder["emulator"].base_url)
    try:
        yield holder["emulator"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)


def test_batch_and_run_share_the_limit_through_redis(
    served: Emulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"prompt": "line {n}"}}\n' for n in range(6)))
    shared = ["--rate-limit-redis", redis_server.url]
    batch = ["batch", str(source), "--out", str(tmp_path / "out"), "--model", MODEL]
    assert main([*batch, *shared, "--rate-limit", "50"]) == 0
    with redis_server.client() as client:
        state = client.hgetall("{quickrouter}:create-rate")
    assert float(state[b"granted"]) == 6
    assert float(state[b"rate"]) == 50.0  # --rate-limit is the rate of every process
    run = ["run", MODEL, "--prompt", "one more", "--out", str(tmp_path / "run")]
    assert main([*run, *shared]) == 0
    with redis_server.client() as client:
        assert float(client.hget("{quickrouter}:create-rate", "granted") or 0) == 7
    assert served.count("create") == 7


def test_the_command_line_names_what_is_missing(
    served: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = ["run", MODEL, "--prompt", "x", "--out", str(tmp_path)]
    assert main([*run, "--rate-limit-redis", "http://:s3cret@host/"]) == 2
    assert "redis://" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    assert main([*run, "--rate-limit-redis", "redis://host"]) == 2
    assert "quickrouter-async[redis]" in capsys.readouterr().err
    assert served.count() == 0
