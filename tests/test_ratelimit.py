"""The create-rate limiter: pacing, pausing on 429, and finding a server's limit.

The limiter runs on a fake clock here: its ``sleep`` moves the clock, so no test waits.
"""

from __future__ import annotations

import anyio
import pytest
import quickrouter_async as qr
from quickrouter_async._ratelimit import INITIAL_BURST, INITIAL_RATE, MIN_RATE, RateLimiter
from quickrouter_async.testing import Emulator, RateLimit

from .conftest import FAST_POLL, FAST_RETRY
from .limits import FakeClock, TokenBucketServer

pytestmark = pytest.mark.anyio


async def drive(limiter: RateLimiter, server: TokenBucketServer, clock: FakeClock, n: int) -> float:
    """Send ``n`` creates one after another as the transport would; return the time taken."""
    start = clock.now
    for _ in range(n):
        while True:
            await limiter.acquire()
            retry_after = server.create()
            if retry_after is None:
                limiter.on_accepted()
                break
            limiter.on_throttled(retry_after)
            await clock.sleep(retry_after)
    return clock.now - start


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_a_fixed_rate_spaces_creates_evenly(clock: FakeClock) -> None:
    limiter = RateLimiter(10.0, clock=clock, sleep=clock.sleep)
    for _ in range(6):
        await limiter.acquire()
    assert clock.now - 1000.0 == pytest.approx(0.5)
    assert limiter.granted == 6
    assert limiter.fixed
    assert limiter.rate == 10.0
    assert "fixed" in repr(limiter)


class StoppedClock(FakeClock):
    """A clock whose sleeps never end: only something other than time lets callers on."""

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await anyio.sleep_forever()


@pytest.fixture
def stopped() -> StoppedClock:
    return StoppedClock()


async def queue_callers(
    limiter: RateLimiter, count: int, granted: list[int]
) -> anyio.abc.TaskGroup:
    """Start ``count`` callers of ``acquire``; each appends its number once let through."""

    async def caller(number: int) -> None:
        await limiter.acquire()
        granted.append(number)

    group = anyio.create_task_group()
    await group.__aenter__()
    for number in range(count):
        group.start_soon(caller, number)
    await anyio.wait_all_tasks_blocked()
    return group


async def test_the_servers_remaining_creates_let_a_queue_through_at_once(
    stopped: StoppedClock,
) -> None:
    limiter = RateLimiter(clock=stopped, sleep=stopped.sleep)
    for _ in range(int(INITIAL_BURST)):
        await limiter.acquire()  # the first burst, sent and not yet answered
    granted: list[int] = []
    group = await queue_callers(limiter, 30, granted)
    start = stopped.now
    # One answer says 25 creates remain: the other 9 of the burst are still out.
    limiter.on_accepted(remaining=25)
    await anyio.wait_all_tasks_blocked()
    assert sorted(granted) == list(range(16)), "25 remaining less 9 awaiting answers: the first 16"
    assert stopped.now == start, "let through without waiting for the clock"
    group.cancel_scope.cancel()
    await group.__aexit__(None, None, None)


@pytest.mark.parametrize("remaining", [0, 0.5, float("nan")])
async def test_no_number_of_remaining_creates_lets_nothing_more_through(
    stopped: StoppedClock, remaining: float
) -> None:
    limiter = RateLimiter(clock=stopped, sleep=stopped.sleep)
    for _ in range(int(INITIAL_BURST)):
        await limiter.acquire()
    granted: list[int] = []
    group = await queue_callers(limiter, 5, granted)
    limiter.on_accepted(remaining=remaining)
    await anyio.wait_all_tasks_blocked()
    assert granted == []
    group.cancel_scope.cancel()
    await group.__aexit__(None, None, None)


async def test_without_a_count_each_accepted_create_lets_two_through(
    stopped: StoppedClock,
) -> None:
    limiter = RateLimiter(clock=stopped, sleep=stopped.sleep)
    for _ in range(int(INITIAL_BURST)):
        await limiter.acquire()
    granted: list[int] = []
    group = await queue_callers(limiter, 30, granted)
    # As TCP's slow start: each answer lets two more through, without the clock moving.
    for answers in range(1, 4):
        limiter.on_accepted()
        await anyio.wait_all_tasks_blocked()
        assert sorted(granted) == list(range(2 * answers))
    # Once a 429 came, answers let nothing more through.
    limiter.on_throttled(0.0)
    limiter.on_accepted()
    await anyio.wait_all_tasks_blocked()
    assert sorted(granted) == list(range(6))
    group.cancel_scope.cancel()
    await group.__aexit__(None, None, None)


async def test_remaining_creates_are_ignored_after_a_429_and_at_a_fixed_rate(
    clock: FakeClock,
) -> None:
    fixed = RateLimiter(1.0, clock=clock, sleep=clock.sleep)
    await fixed.acquire()
    fixed.on_accepted(remaining=500)
    await fixed.acquire()
    assert clock.now - 1000.0 == pytest.approx(1.0), "the fixed pace holds"
    adaptive = RateLimiter(clock=clock, sleep=clock.sleep)
    await adaptive.acquire()
    adaptive.on_throttled(1.0)
    await adaptive.acquire()  # after the pause
    before = clock.now
    adaptive.on_accepted(remaining=500)
    await adaptive.acquire()
    await adaptive.acquire()
    assert clock.now > before, "paced by the measured rate, not the header"


async def test_creates_that_got_no_answer_stop_holding_back_the_allowance(
    stopped: StoppedClock,
) -> None:
    limiter = RateLimiter(clock=stopped, sleep=stopped.sleep)
    for _ in range(int(INITIAL_BURST)):
        await limiter.acquire()
    for _ in range(int(INITIAL_BURST) - 1):
        limiter.on_unanswered()
    granted: list[int] = []
    group = await queue_callers(limiter, 10, granted)
    limiter.on_accepted(remaining=5)
    await anyio.wait_all_tasks_blocked()
    assert sorted(granted) == list(range(5)), "nothing is awaiting an answer any more"
    group.cancel_scope.cancel()
    await group.__aexit__(None, None, None)


async def test_a_fixed_rate_pauses_on_429_but_keeps_its_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(5.0, max_pause=2.0, clock=clock, sleep=clock.sleep)
    await limiter.acquire()
    limiter.on_throttled(30.0)
    assert limiter.paused_for == pytest.approx(2.0), "capped by max_pause"
    await limiter.acquire()
    assert clock.now - 1000.0 == pytest.approx(2.0)
    assert limiter.rate == 5.0
    assert limiter.paused_for == 0.0
    assert limiter.throttled == 1


async def test_adaptive_starts_with_a_burst_then_grows_while_callers_wait(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    assert "slow start" in repr(limiter)
    for _ in range(int(INITIAL_BURST)):
        await limiter.acquire()
    assert clock.now == 1000.0, "the first burst is not delayed"
    assert limiter.rate == INITIAL_RATE, "creates that did not wait do not raise the rate"
    granted: list[int] = []
    group = await queue_callers(limiter, 100, granted)
    await group.__aexit__(None, None, None)  # every caller let through (pytest-timeout)
    assert granted == list(range(100)), "first come, first served"
    assert limiter.rate > 10 * INITIAL_RATE
    assert clock.now - 1000.0 < 3.0


async def test_until_a_429_queued_creates_go_in_groups(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    for _ in range(int(INITIAL_BURST)):
        await limiter.acquire()
    granted: list[int] = []
    group = await queue_callers(limiter, 40, granted)
    await group.__aexit__(None, None, None)  # every caller let through (pytest-timeout)
    assert len(granted) == 40
    # The pump wakes when the bucket covers the queue, or half a second has passed, and
    # each wake lets a group through, not one create at a time.
    assert max(clock.sleeps) <= 0.5
    assert len(clock.sleeps) <= 10, f"40 creates in {len(clock.sleeps)} wakes"
    assert clock.now - 1000.0 < 4.0, "the pace itself is not lowered"
    # A lone caller waits for one token only.
    clock.sleeps.clear()
    for _ in range(20):
        await limiter.acquire()
    assert clock.sleeps, "the bucket ran dry"
    assert max(clock.sleeps) <= 1.0 / INITIAL_RATE
    # After a 429, queued callers go one by one, at the pace found.
    limiter.on_throttled(0.0)
    clock.sleeps.clear()
    granted.clear()
    group = await queue_callers(limiter, 10, granted)
    await group.__aexit__(None, None, None)
    assert len(clock.sleeps) >= 9


async def test_a_429_without_hint_pauses_a_second(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    await limiter.acquire()
    limiter.on_throttled(None)
    assert limiter.paused_for == pytest.approx(1.0)
    assert limiter.rate == INITIAL_RATE / 2, "too little history to measure: halved"
    assert "slow start" in repr(limiter)


async def test_throttles_close_together_cut_the_rate_once(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    for _ in range(40):
        await limiter.acquire()
    limiter.on_throttled(0.0)
    cut = limiter.rate
    assert cut < 40
    assert "adaptive" in repr(limiter)
    limiter.on_throttled(0.0)
    limiter.on_throttled(0.0)
    assert limiter.rate == cut
    assert limiter.throttled == 3


async def test_the_rate_never_falls_below_the_floor(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    limiter.on_throttled(0.0)  # nothing granted yet: the current rate stands for the measure
    for _ in range(60):
        clock.now += 60.0
        limiter.on_throttled(0.0)
    assert limiter.rate == pytest.approx(MIN_RATE)


async def test_accepted_creates_are_counted(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    await limiter.acquire()
    limiter.on_accepted()
    assert (limiter.granted, limiter.accepted, limiter.throttled) == (1, 1, 0)


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(qr.InputError):
        RateLimiter(0)
    with pytest.raises(qr.InputError):
        qr.QuickRouter("k", base_url="http://127.0.0.1:1", rate_limit=-1)


@pytest.mark.parametrize(
    ("rate", "burst", "whole_seconds", "share"),
    [
        (20.0, 10, False, 0.85),
        (20.0, 10, True, 0.85),
        (5.0, 5, False, 0.85),
        (50.0, 20, False, 0.85),
        # A bucket of one and a Retry-After rounded up to whole seconds: every 429
        # costs a second of silence, so less of the limit is reached.
        (2.0, 1, True, 0.7),
        (20.0, 1, True, 0.5),
    ],
)
def test_adaptive_finds_the_server_limit(
    clock: FakeClock, rate: float, burst: int, whole_seconds: bool, share: float
) -> None:
    # Synchronous, so that the parameters are not mixed with anyio's backend parameter.
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    server = TokenBucketServer(clock, rate=rate, burst=burst, whole_seconds=whole_seconds)
    n = int(rate * 30)
    took = anyio.run(drive, limiter, server, clock, n)
    achieved = (n - burst) / took
    assert achieved >= share * rate, (achieved, limiter)
    assert server.throttled <= 0.10 * (server.throttled + server.accepted)
    assert server.accepted == n


async def test_adaptive_probes_back_up_when_the_server_limit_rises(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    server = TokenBucketServer(clock, rate=5.0, burst=5, whole_seconds=False)
    await drive(limiter, server, clock, 100)
    assert limiter.rate < 6.0
    server.rate = 20.0
    await drive(limiter, server, clock, 600)
    assert limiter.rate > 15.0


async def test_waiters_are_served_in_order(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, clock=clock, sleep=clock.sleep)
    order: list[int] = []

    async def take(number: int) -> None:
        await limiter.acquire()
        order.append(number)

    async with anyio.create_task_group() as group:
        for number in range(5):
            group.start_soon(take, number)
            await anyio.lowlevel.checkpoint()
    assert order == [0, 1, 2, 3, 4]


async def test_every_create_goes_through_the_client_limiter() -> None:
    limit = RateLimit(rate=50, burst=2, retry_after=True)
    async with (
        Emulator(duration=0.01, rate_limit=limit) as emu,
        qr.QuickRouter(
            emu.api_key, base_url=emu.base_url, poll=FAST_POLL, retry=FAST_RETRY
        ) as client,
    ):
        limiter = client._creates.limiter
        assert isinstance(limiter, RateLimiter)
        assert not limiter.fixed
        for _ in range(3):
            await client.create("google/imagen-4", {"prompt": "a"})
        assert limiter.granted >= 3
        assert limiter.accepted == 3


async def test_a_fixed_client_rate_limit_is_installed() -> None:
    async with qr.QuickRouter("k", base_url="http://127.0.0.1:1", rate_limit=7.5) as client:
        limiter = client._creates.limiter
        assert isinstance(limiter, RateLimiter)
        assert limiter.fixed
        assert limiter.rate == 7.5


async def test_a_429_with_creates_remaining_neither_pauses_nor_slows(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    for _ in range(40):
        await limiter.acquire()
    before = limiter.rate
    for _ in range(10):
        limiter.on_throttled(1.0, bucket_empty=False)
    assert limiter.paused_for == 0.0
    assert limiter.rate == before
    assert limiter.throttled == 10
    assert "slow start" in repr(limiter)


async def test_random_429s_without_a_header_do_not_drive_the_rate_down(clock: FakeClock) -> None:
    # Every fifth create refused whatever the pace: cuts within the episode keep a
    # quarter of the best rate measured, so the pace never collapses.
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    for number in range(2000):
        await limiter.acquire()
        if number % 5 == 4:
            limiter.on_throttled(1.0)
            await clock.sleep(1.0)
        else:
            limiter.on_accepted()
    assert limiter.rate >= 10 * MIN_RATE, limiter


async def test_queued_callers_are_let_through_together(clock: FakeClock) -> None:
    limiter = RateLimiter(1000.0, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        await limiter.acquire()  # empty the bucket (five creates: a tick's worth)
    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(limiter.acquire)
    assert limiter.granted == 25
    # A tick lets five through: the pump sleeps once per tick, not once per caller.
    assert len(clock.sleeps) <= 5, clock.sleeps


async def test_a_cancelled_waiter_leaves_the_queue_moving(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, clock=clock, sleep=clock.sleep)
    await limiter.acquire()
    with anyio.move_on_after(0) as scope:
        await limiter.acquire()  # would wait for the pump: cancelled at once
    assert scope.cancelled_caught
    await limiter.acquire()
    assert limiter.granted == 2


async def test_random_throttles_from_the_emulator_keep_the_pace() -> None:
    # 429s that come whatever the pace (a fault, with ratelimit-remaining above 0) are
    # retried one by one; the limiter neither pauses everyone nor cuts its rate.
    faults = qr.testing.Faults(throttle=0.2, endpoints="create")
    # Enough attempts that no input runs out of them (0.2 ** 12 per input).
    retry = qr.RetryPolicy(attempts=12, initial=0.001, maximum=0.01, max_retry_after=0.05)
    async with (
        Emulator(duration=0.01, faults=faults, seed=3) as emu,
        qr.QuickRouter(emu.api_key, base_url=emu.base_url, poll=FAST_POLL, retry=retry) as client,
    ):
        limiter = client._creates.limiter
        assert isinstance(limiter, RateLimiter)
        inputs = [("google/imagen-4", {"prompt": f"p{n}"}) for n in range(60)]
        async with client.run_many(inputs, concurrency=20) as outcomes:
            results = [outcome async for outcome in outcomes]
        assert all(outcome.ok for outcome in results)
        assert limiter.throttled > 0
        assert limiter.rate >= INITIAL_RATE, limiter
        assert limiter.paused_for == 0.0
