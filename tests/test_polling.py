"""Waiting for predictions: the learned schedule, watch, wait, run, deadlines, cancellation."""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import itertools
import json
import math
import random
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import pytest
import quickrouter_async as qr
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from quickrouter_async import _schedule
from quickrouter_async._clock import ServerClock
from quickrouter_async._polling import MAX_HINT, raise_for_outcome, retry_after
from quickrouter_async._schedule import DurationSummary, PollPlan, Schedule
from quickrouter_async.testing import Emulator, Faults

from .conftest import FAST_RETRY, TEST_KEY, running, until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


pytestmark = pytest.mark.anyio

MODEL = "google/imagen-4"
COST = 14.0


def prompt(text: str = "a lighthouse at dusk") -> dict[str, str]:
    return {"prompt": text}


# Sync mode as by default, and fast polls when it does not apply.
SYNC_POLL = qr.PollPolicy(interval=0.01)


@contextlib.asynccontextmanager
async def make_client(base_url: str, **options: Any) -> AsyncIterator[qr.QuickRouter]:
    options.setdefault("poll", SYNC_POLL)
    options.setdefault("retry", FAST_RETRY)
    async with qr.QuickRouter(TEST_KEY, base_url=base_url, **options) as client:
        yield client


def gets(emu: Emulator, prediction_id: str) -> int:
    return sum(r.kind == "get" and r.prediction_id == prediction_id for r in emu.requests)


def walk(plan: PollPlan, duration: float) -> tuple[int, float]:
    """Polls and detection delay of a prediction of ``duration`` on ``plan`` (no jitter)."""
    age, polls = 0.0, 0
    while True:
        age = plan.next_poll(age)
        polls += 1
        if age >= duration:
            return polls, age - duration


def learned(durations: list[float]) -> DurationSummary:
    summary = DurationSummary()
    for duration in durations:
        summary.finish(duration)
    return summary


def uniform(count: int, low: float = 1.5, high: float = 4.5) -> list[float]:
    rng = random.Random(7)
    return [rng.uniform(low, high) for _ in range(count)]


# -- the policy ---------------------------------------------------------------------------


def test_the_policy_defaults_to_sync_mode_and_a_learned_schedule() -> None:
    policy = qr.PollPolicy()
    assert policy.sync_wait == "auto"
    assert policy.interval is None
    assert policy.delay_cost > 0


def test_the_policy_takes_timedeltas() -> None:
    policy = qr.PollPolicy(
        sync_wait=dt.timedelta(seconds=10),
        interval=dt.timedelta(milliseconds=250),
        min_interval=dt.timedelta(milliseconds=50),
        max_interval=dt.timedelta(seconds=2),
    )
    assert (policy.sync_wait, policy.interval) == (10.0, 0.25)
    assert (policy.min_interval, policy.max_interval) == (0.05, 2.0)


@pytest.mark.parametrize(
    "options",
    [
        {"sync_wait": 0.5},
        {"sync_wait": 61},
        {"interval": 0},
        {"interval": "1s"},
        {"min_interval": -1},
        {"max_interval": 0},
        {"min_interval": 2, "max_interval": 1},
        {"delay_cost": 0},
        {"delay_cost": math.inf},
    ],
)
def test_the_policy_refuses_bad_values(options: dict[str, Any]) -> None:
    with pytest.raises(qr.InputError):
        qr.PollPolicy(**options)


# -- server hints -------------------------------------------------------------------------


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    assert retry_after({"Retry-After": "2.5"}) == 2.5
    assert retry_after({"Retry-After": "-3"}) == 0.0
    assert retry_after({"Retry-After": "86400"}) == MAX_HINT
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (retry_after({"Retry-After": later}) or 0) <= 30
    for value in ("", "soon", "nan", "Mon, 99 Foo 2020 00:00:00 GMT"):
        assert retry_after({"Retry-After": value}) is None
    assert retry_after({}) is None


# -- the learned schedule -----------------------------------------------------------------


def test_without_data_the_first_poll_comes_early_and_the_gaps_grow() -> None:
    plan = DurationSummary().plan(COST)
    ages = [0.0]
    for _ in range(8):
        ages.append(plan.next_poll(ages[-1]))
    gaps = [later - earlier for earlier, later in itertools.pairwise(ages)]
    assert 0.5 < gaps[0] < 1.2
    assert gaps == sorted(gaps)


def test_a_learned_schedule_sleeps_until_the_shortest_duration_then_polls_densely() -> None:
    plan = learned(uniform(300)).plan(COST)
    first = plan.next_poll(0.0)
    assert 1.5 < first < 2.4
    samples = [walk(plan, 1.5 + 3.0 * (i + 0.5) / 200) for i in range(200)]
    polls = sum(p for p, _ in samples) / len(samples)
    delay = sum(d for _, d in samples) / len(samples)
    # The best any schedule does on 1.5-4.5 s with this cost: 3.56 polls at 0.218 s.
    assert polls < 3.8
    assert delay < 0.25
    # A fixed 0.5 s interval, for comparison: 6.5 polls at 0.25 s.
    assert polls * delay < 0.6 * 6.5 * 0.25


def test_past_the_longest_duration_seen_the_schedule_backs_off() -> None:
    plan = learned(uniform(300)).plan(COST)
    ages = [5.0]
    for _ in range(12):
        ages.append(plan.next_poll(ages[-1]))
    gaps = [later - earlier for earlier, later in itertools.pairwise(ages)]
    assert gaps == sorted(gaps)
    assert gaps[-1] > 2 * gaps[0]


def test_a_higher_delay_cost_polls_more_and_notices_sooner() -> None:
    summary = learned(uniform(300))
    cheap = [walk(summary.plan(4.0), d) for d in uniform(100)]
    dear = [walk(summary.plan(40.0), d) for d in uniform(100)]
    assert sum(p for p, _ in dear) > sum(p for p, _ in cheap)
    assert sum(d for _, d in dear) < sum(d for _, d in cheap)


def test_predictions_still_running_lower_the_estimated_chance_of_finishing() -> None:
    done = learned([2.0] * 20)
    waiting = learned([2.0] * 20)
    for _ in range(20):
        waiting.running(0.0, 6.0)  # watched up to 6 s, not finished yet
    assert waiting.plan(COST).next_poll(3.0) > done.plan(COST).next_poll(3.0)


def test_the_summary_forgets_old_durations() -> None:
    summary = learned([1.0] * 200 + [10.0] * 200)
    assert summary.quantile(0.5) == pytest.approx(10.0, rel=0.04)
    assert summary.quantile(0.2) == pytest.approx(10.0, rel=0.04)
    assert DurationSummary().quantile(0.5) is None
    assert summary.weight == pytest.approx(100 * (1 - 0.99**400))


def test_the_summary_stays_small() -> None:
    summary = DurationSummary()
    rng = random.Random(3)
    for _ in range(3_000):  # past a rescale, which drops what faded away
        duration = math.exp(rng.uniform(math.log(0.001), math.log(7_200)))
        summary.running(0.0, duration)
        summary.finish(duration)
    assert summary.size <= 2 * (_schedule._MAX_BIN + 1)
    assert summary.weight < 101


def test_nonsense_durations_are_ignored() -> None:
    summary = DurationSummary()
    summary.finish(math.nan)
    summary.finish(-1.0)
    summary.running(3.0, 2.0)
    assert summary.size == 0
    assert summary.weight == 0


def test_the_plan_is_rebuilt_as_data_comes_in() -> None:
    summary = learned(uniform(100))
    plan = summary.plan(COST)
    summary.finish(3.0)
    assert summary.plan(COST) is plan  # one new sample among ~100: not yet
    for _ in range(10):
        summary.finish(3.0)
    assert summary.plan(COST) is not plan
    assert summary.plan(COST + 1) is not summary.plan(COST)


def test_the_schedule_keeps_the_most_recently_used_models() -> None:
    schedule = Schedule(qr.PollPolicy(), models=2)
    first = schedule.summary("a/one")
    schedule.summary("a/two")
    assert schedule.summary("a/one") is first  # used again: now the most recent
    schedule.summary("a/three")
    assert list(schedule._summaries) == ["a/one", "a/three"]


@settings(max_examples=60, deadline=None)
@given(
    durations=st.lists(st.floats(0.0, 120.0), max_size=40),
    age=st.floats(0.0, 500.0),
    cost=st.floats(0.5, 100.0),
)
def test_the_plan_counts_polls_consistently(
    durations: list[float], age: float, cost: float
) -> None:
    plan = learned(durations).plan(cost)
    polls = plan.polls_by(age)
    assert plan.age_at(polls) == pytest.approx(age, rel=1e-6, abs=1e-6)
    following = plan.next_poll(age)
    assert following > age
    assert plan.polls_by(following) == pytest.approx(polls + 1, rel=1e-6)


def prediction(status: str = "processing", age: float = 1.0, **fields: Any) -> qr.Prediction:
    fields.setdefault("created_at", dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age))
    fields.setdefault("model", MODEL)
    return qr.Prediction(id="abc", status=qr.Status(status), **fields)


def test_a_fixed_interval_is_kept_but_a_server_hint_stretches_it() -> None:
    schedule = Schedule(qr.PollPolicy(interval=0.2))
    track = schedule.track(prediction())
    assert track.next_delay() == 0.2
    assert track.next_delay(hint=1.5) == 1.5
    assert track.next_delay(hint=0.1) == 0.2


def test_learned_gaps_stay_within_the_policy_bounds() -> None:
    policy = qr.PollPolicy(min_interval=0.3, max_interval=0.4)
    schedule = Schedule(policy, rng=random.Random(1))
    for age in (0.0, 0.5, 5.0, 500.0):
        delay = schedule.track(prediction(age=age)).next_delay()
        assert 0.3 <= delay <= 0.4


def test_the_clock_offset_is_learned_from_server_times() -> None:
    now = [1_000_000.0]
    schedule = Schedule(qr.PollPolicy(), clock=ServerClock(clock=lambda: now[0]))
    created = dt.datetime.fromtimestamp(now[0] - 10.0, dt.UTC)  # the server runs 10 s late
    seen = qr.Prediction(id="x", status=qr.Status.STARTING, created_at=created)
    schedule.observe(seen, received=now[0] + 0.02)
    assert schedule.server.offset == pytest.approx(10.02)
    assert schedule.age(seen, now[0] + 1.02) == pytest.approx(1.0)
    schedule.observe(seen, received=now[0] + 0.5)  # a slower answer says less
    assert schedule.server.offset == pytest.approx(10.02)
    assert schedule.age(qr.Prediction(id="y", status=qr.Status.STARTING), now[0]) is None
    schedule.observe(qr.Prediction(id="y", status=qr.Status.STARTING), received=now[0])
    assert schedule.server.offset == pytest.approx(10.02)
    # A Date header says less than a timestamp: it does not replace one.
    schedule.server.note_date(email.utils.formatdate(now[0], usegmt=True))
    assert schedule.server.offset == pytest.approx(10.02)
    later = dt.datetime.fromtimestamp(now[0] + 3600 - 10.5, dt.UTC)  # an hour on, the
    schedule.observe(  # server clock was stepped: the old minimum gives way
        qr.Prediction(id="z", status=qr.Status.STARTING, created_at=later),
        received=now[0] + 3600,
    )
    assert schedule.server.offset == pytest.approx(10.5)


def test_a_track_learns_durations_from_server_times() -> None:
    schedule = Schedule(qr.PollPolicy())
    start = prediction("starting", age=0.0)
    track = schedule.track(start, watched_from=0.0)
    assert track.next_delay() > 0
    created = start.created_at
    assert created is not None
    done = prediction(
        "succeeded", created_at=created, completed_at=created + dt.timedelta(seconds=2.0)
    )
    track.update(done)
    summary = schedule.summary(MODEL)
    assert summary.weight == 1
    assert summary.quantile(0.5) == pytest.approx(2.0, rel=0.04)
    assert track.polls == 1


def test_a_fixed_interval_learns_nothing() -> None:
    schedule = Schedule(qr.PollPolicy(interval=0.5))
    start = prediction("starting", age=0.0)
    track = schedule.track(start, watched_from=0.0)
    created = start.created_at
    assert created is not None
    track.update(prediction("processing", created_at=created))
    done = prediction(
        "succeeded", created_at=created, completed_at=created + dt.timedelta(seconds=2.0)
    )
    track.update(done)
    assert track.polls == 2
    assert track.prediction is done
    assert track.next_delay() == 0.5
    assert schedule.summary(MODEL).weight == 0, "the schedule is not used: nothing learned"
    assert schedule.server.offset is None


def test_canceled_predictions_teach_nothing() -> None:
    schedule = Schedule(qr.PollPolicy())
    track = schedule.track(prediction("processing"))
    track.update(prediction("canceled"))
    assert schedule.summary(MODEL).weight == 0


def test_without_timestamps_the_duration_is_what_the_client_saw() -> None:
    schedule = Schedule(qr.PollPolicy())
    bare = qr.Prediction(id="x", status=qr.Status.PROCESSING, version="v1")
    track = schedule.track(bare)
    track.update(qr.Prediction(id="x", status=qr.Status.SUCCEEDED, version="v1"))
    summary = schedule.summary("v1")
    assert summary.weight == 1
    assert (summary.quantile(1.0) or 1.0) < 0.5  # finished between two looks, just now


def test_a_prediction_seen_only_finished_counts_as_watched_throughout() -> None:
    schedule = Schedule(qr.PollPolicy())
    created = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=100)
    done = prediction(
        "succeeded", created_at=created, completed_at=created + dt.timedelta(seconds=3)
    )
    schedule.track(done)
    plan = schedule.summary(MODEL).plan(COST)
    assert plan.next_poll(0.0) > 1.0  # nothing finished before 3 s was watched


# -- watch and wait -----------------------------------------------------------------------


async def test_watch_yields_each_change_and_ends_after_a_terminal_one() -> None:
    async with (
        Emulator(duration=0.3, start_delay=0.1, seed=1) as emu,
        make_client(emu.base_url) as client,
    ):
        created = await client.create(MODEL, prompt())
        seen = [snapshot async for snapshot in client.watch(created)]
        assert seen[0] is created
        assert seen[-1].status is qr.Status.SUCCEEDED
        assert not any(snapshot.terminal for snapshot in seen[:-1])
        statuses = [snapshot.status.value for snapshot in seen]
        assert statuses[0] == "starting"
        assert "processing" in statuses
        for earlier, later in itertools.pairwise(seen):
            assert (earlier.status, earlier.logs, earlier.output) != (
                later.status,
                later.logs,
                later.output,
            )
        by_id = [snapshot async for snapshot in client.watch(created.id)]
        assert [snapshot.status for snapshot in by_id] == [qr.Status.SUCCEEDED]


async def test_watch_can_be_left_early(emulator: Emulator, client: qr.QuickRouter) -> None:
    created = await client.create(MODEL, prompt())
    watcher = client.watch(created)
    async with contextlib.aclosing(watcher):
        async for snapshot in watcher:
            assert snapshot is created
            break
    assert await client.wait(created) is not None


async def test_wait_returns_the_terminal_prediction(server_profile: dict[str, Any]) -> None:
    async with (
        Emulator(duration=0.05, seed=1, **server_profile) as emu,
        make_client(emu.base_url) as client,
    ):
        created = await client.create(MODEL, prompt())
        done = await client.wait(created.id, timeout=dt.timedelta(seconds=10))
        assert done.status is qr.Status.SUCCEEDED
        assert done.output is not None


async def test_waiting_on_a_finished_prediction_sends_nothing(
    emulator: Emulator, client: qr.QuickRouter
) -> None:
    done = await client.run(MODEL, prompt())
    before = len(emulator.requests)
    assert await client.wait(done) is done
    assert len(emulator.requests) == before


async def test_a_wait_past_its_deadline_leaves_the_prediction_running() -> None:
    async with Emulator(duration=30, seed=2) as emu, make_client(emu.base_url) as client:
        created = await client.create(MODEL, prompt())
        with pytest.raises(qr.WaitTimeout) as caught:
            await client.wait(created, timeout=0.2)
        assert caught.value.prediction is not None
        assert caught.value.prediction.status in {qr.Status.STARTING, qr.Status.PROCESSING}
        assert created.id in str(caught.value)
        assert [record.id for record in running(emu)] == [created.id]
        await client.cancel(created)


async def test_a_wait_can_cancel_on_exit(server_profile: dict[str, Any]) -> None:
    async with (
        Emulator(duration=30, seed=3, **server_profile) as emu,
        make_client(emu.base_url) as client,
    ):
        created = await client.create(MODEL, prompt())
        with pytest.raises(qr.WaitTimeout) as caught:
            await client.wait(created.id, timeout=0.2, cancel_on_exit=True)
        assert caught.value.prediction is not None
        assert caught.value.prediction.status is qr.Status.CANCELED
        assert str(caught.value) == (
            f"prediction {created.id} was still starting when the 0.2s deadline passed; "
            "it was canceled on the server"
        )
        assert running(emu) == []


async def test_the_last_poll_comes_just_before_the_deadline() -> None:
    async with (
        Emulator(duration=0.35, seed=4) as emu,
        make_client(emu.base_url, poll=qr.PollPolicy(sync_wait=None, interval=5.0)) as client,
    ):
        created = await client.create(MODEL, prompt())
        done = await client.wait(created, timeout=0.6)
        assert done.status is qr.Status.SUCCEEDED
        assert gets(emu, created.id) == 1


async def test_an_unknown_status_keeps_the_wait_going_until_the_deadline() -> None:
    async with (
        Emulator(duration=0.05, seed=5) as emu,
        Proxy(emu.base_url, status="queued_elsewhere") as proxy,
        make_client(proxy.base_url) as client,
    ):
        created = await client.create(MODEL, prompt())
        with pytest.raises(qr.WaitTimeout) as caught:
            await client.wait(created, timeout=0.3)
        assert caught.value.prediction is not None
        assert caught.value.prediction.status == "queued_elsewhere"
        assert not caught.value.prediction.status.known
        assert gets(emu, created.id) > 3


async def test_aborted_is_terminal() -> None:
    async with (
        Emulator(duration=1.0, start_delay=1.0, min_cancel_after=0.05, seed=6) as emu,
        make_client(emu.base_url) as client,
    ):
        created = await client.create(MODEL, prompt(), cancel_after="0.1s")
        done = await client.wait(created, timeout=5)
        assert done.status is qr.Status.ABORTED
        with pytest.raises(qr.PredictionCanceled, match="aborted"):
            raise_for_outcome(done)


async def test_a_server_hint_spaces_the_polls_out() -> None:
    async with (
        Emulator(duration=0.5, seed=7) as emu,
        Proxy(emu.base_url, retry_after="0.2") as proxy,
        make_client(proxy.base_url) as client,
    ):
        created = await client.create(MODEL, prompt())
        await client.wait(created)
        times = [r.time for r in emu.requests if r.kind == "get"]
        assert 2 <= len(times) <= 4  # not 50, as the 10 ms interval alone would give
        assert min(b - a for a, b in itertools.pairwise(times)) >= 0.19


async def test_the_schedule_learns_to_poll_little() -> None:
    policy = qr.PollPolicy(sync_wait=None, min_interval=0.01)
    async with (
        Emulator(duration=(0.3, 0.4), seed=8) as emu,
        make_client(emu.base_url, poll=policy) as client,
    ):
        async with anyio.create_task_group() as group:
            for number in range(10):
                group.start_soon(client.run, MODEL, prompt(f"warm-up {number}"))
        delays: dict[str, float] = {}

        async def one(number: int) -> None:
            done = await client.run(MODEL, prompt(f"learned {number}"))
            assert done.completed_at is not None
            delays[done.id] = time.time() - done.completed_at.timestamp()

        async with anyio.create_task_group() as group:
            for number in range(10):
                group.start_soon(one, number)
        polls = sum(gets(emu, prediction_id) for prediction_id in delays) / len(delays)
        assert polls <= 2.5  # a fixed 50 ms interval would take 7
        assert sum(delays.values()) / len(delays) < 0.1


# -- run ----------------------------------------------------------------------------------


async def test_run_in_sync_mode_costs_one_request() -> None:
    async with (
        Emulator(duration=0.1, seed=9) as emu,
        make_client(emu.base_url, poll=qr.PollPolicy()) as client,
    ):
        done = await client.run(MODEL, prompt(), timeout=30)
        assert done.status is qr.Status.SUCCEEDED
        assert [(r.kind, r.status) for r in emu.requests] == [("create", 201)]
        # Nothing says the server lists predictions: a short sync wait, and the deadline.
        headers = emu.predictions[0].create_headers
        assert (headers["prefer"], headers["cancel-after"]) == ("wait=5", "30s")
        listed = qr.Capabilities(list_predictions=True)
    async with (
        Emulator(duration=0.1, seed=9) as emu,
        make_client(emu.base_url, poll=qr.PollPolicy(), capabilities=listed) as client,
    ):
        await client.run(MODEL, prompt(), timeout=30)
        assert emu.predictions[0].create_headers["prefer"] == "wait=29"  # 30 s, less a margin


async def test_the_sync_wait_never_outlasts_the_deadline() -> None:
    policy = qr.PollPolicy(sync_wait=60, interval=0.01)
    async with (
        Emulator(duration=0.1, seed=10) as emu,
        make_client(emu.base_url, poll=policy) as client,
    ):
        await client.run(MODEL, prompt("short"), timeout=1.5)
        await client.run(MODEL, prompt("none"))
        first, second = emu.predictions
        assert first.create_headers["prefer"] == "wait=1"  # the deadline, less a margin
        assert second.create_headers["prefer"] == "wait=60"
        no_sync = qr.PollPolicy(sync_wait=None, interval=0.01)
    async with (
        Emulator(duration=0.1, seed=11) as emu,
        make_client(emu.base_url, poll=no_sync) as client,
    ):
        await client.run(MODEL, prompt())
        assert "prefer" not in emu.predictions[0].create_headers


async def test_run_polls_when_the_server_ignores_prefer_wait() -> None:
    async with (
        Emulator(duration=0.1, honor_prefer_wait=False, seed=12) as emu,
        make_client(emu.base_url, poll=qr.PollPolicy(interval=0.01)) as client,
    ):
        done = await client.run(MODEL, prompt())
        assert done.status is qr.Status.SUCCEEDED
        assert gets(emu, done.id) >= 1


async def test_run_raises_for_a_failed_prediction() -> None:
    async with (
        Emulator(duration=0.05, fail_prompts=["forbidden"], seed=13) as emu,
        make_client(emu.base_url) as client,
    ):
        with pytest.raises(qr.PredictionFailed) as caught:
            await client.run(MODEL, prompt("something forbidden"))
        assert caught.value.prediction.status is qr.Status.FAILED
        assert "E005" in str(caught.value)


async def test_run_raises_for_a_prediction_canceled_elsewhere() -> None:
    async with (
        Emulator(duration=30, honor_prefer_wait=False, seed=14) as emu,
        make_client(emu.base_url) as client,
    ):

        async def cancel_it() -> None:
            await until(lambda: len(emu.predictions) == 1)
            await client.cancel(emu.predictions[0].id)

        async with anyio.create_task_group() as group:
            group.start_soon(cancel_it)
            with pytest.raises(qr.PredictionCanceled) as caught:
                await client.run(MODEL, prompt())
        assert caught.value.prediction.status is qr.Status.CANCELED


async def test_run_refuses_bad_input_before_any_request(
    emulator: Emulator, client: qr.QuickRouter
) -> None:
    with pytest.raises(qr.InputError):
        await client.run(MODEL, prompt(), timeout=-1)
    with pytest.raises(qr.InputError):
        await client.run("not a model", prompt())
    assert emulator.requests == []


# -- giving up leaves nothing running -----------------------------------------------------


async def test_a_deadline_in_run_cancels_the_prediction(server_profile: dict[str, Any]) -> None:
    async with (
        Emulator(duration=30, seed=15, **server_profile) as emu,
        make_client(emu.base_url) as client,
    ):
        with pytest.raises(qr.WaitTimeout) as caught:
            await client.run(MODEL, prompt(), timeout=0.3)
        assert caught.value.prediction is not None
        assert caught.value.prediction.status is qr.Status.CANCELED
        assert "canceled on the server" in str(caught.value)
        assert running(emu) == []
        assert emu.predictions[0].canceled


async def test_a_deadline_in_run_may_leave_it_running_if_asked() -> None:
    async with Emulator(duration=30, seed=16) as emu, make_client(emu.base_url) as client:
        with pytest.raises(qr.WaitTimeout):
            await client.run(MODEL, prompt(), timeout=0.3, cancel_on_exit=False)
        assert len(running(emu)) == 1


async def test_a_task_cancelled_while_polling_cancels_the_prediction(
    server_profile: dict[str, Any],
) -> None:
    async with (
        Emulator(duration=30, seed=21, **{**server_profile, "honor_prefer_wait": False}) as emu,
        make_client(emu.base_url) as client,
    ):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(client.run, MODEL, prompt())
                await until(lambda: any(r.kind == "get" for r in emu.requests))
                scope.cancel()
        assert running(emu) == []
        assert not any(r.kind == "list" for r in emu.requests)


async def test_a_wait_cancelled_before_its_first_answer_cancels_by_id(
    server_profile: dict[str, Any],
) -> None:
    slow_get = Faults(slow=1.0, slow_seconds=10, endpoints={"get"})
    async with (
        Emulator(duration=30, seed=23, **{**server_profile, "honor_prefer_wait": False}) as emu,
        make_client(emu.base_url) as client,
    ):
        created = await client.create(MODEL, prompt())
        emu.faults = slow_get
        with pytest.raises(qr.WaitTimeout) as caught:
            await client.wait(created.id, timeout=0.1, cancel_on_exit=True)
        assert caught.value.prediction is not None
        assert caught.value.prediction.status is qr.Status.CANCELED
        assert running(emu) == []


# -- a proxy that edits answers -----------------------------------------------------------


class Proxy:
    """A loopback HTTP proxy in front of the emulator that rewrites prediction answers."""

    def __init__(self, upstream: str, *, status: str | None = None, retry_after: str | None = None):
        self.upstream = upstream.split("/replicate", maxsplit=1)[0]
        self.status = status
        self.retry_after = retry_after
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Proxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/replicate"
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=await request.read(),
            headers=headers,
        ) as answer:
            body = await answer.read()
            status = answer.status
        extra: dict[str, str] = {}
        if request.method == "GET" and "/v1/predictions/" in request.path and status == 200:
            data = json.loads(body)
            if self.status is not None:
                data["status"] = self.status
            body = json.dumps(data).encode()
            if self.retry_after is not None:
                extra["Retry-After"] = self.retry_after
        return web.Response(
            status=status, body=body, content_type="application/json", headers=extra
        )


async def test_each_combination_of_create_headers_is_sent_as_given(
    emulator: Emulator, client: qr.QuickRouter
) -> None:
    # The merged headers of a create are built once per combination and reused.
    creates = [
        {"wait": False, "cancel_after": None},
        {"wait": False, "cancel_after": 30},
        {"wait": 5, "cancel_after": 30},
        {"wait": False, "cancel_after": 45},
        {"wait": False, "cancel_after": 30},
        {"wait": False, "cancel_after": None},
    ]
    for options in creates:
        await client.create("google/imagen-4", {"prompt": "x"}, **options)
    seen = [
        (record.create_headers.get("prefer"), record.create_headers.get("cancel-after"))
        for record in emulator.predictions
    ]
    assert seen == [
        (None, None),
        (None, "30s"),
        ("wait=5", "30s"),
        (None, "45s"),
        (None, "30s"),
        (None, None),
    ]
    assert all(
        record.create_headers.get("content-type") == "application/json"
        for record in emulator.predictions
    )


async def test_a_wait_outlasts_a_few_failed_polls() -> None:
    async with (
        Emulator(duration=0.2, seed=30) as emu,
        make_client(emu.base_url, poll=qr.PollPolicy(sync_wait=None, interval=0.01)) as client,
    ):
        created = await client.create(MODEL, prompt())
        emu.faults = Faults(throttle=1.0, endpoints={"get"})
        attempts = FAST_RETRY.attempts

        async def heal() -> None:
            # Two polls, each with all its retries, fail before the server recovers.
            await until(lambda: emu.count("get") >= 2 * attempts)
            emu.faults = None

        async with anyio.create_task_group() as group:
            group.start_soon(heal)
            done = await client.wait(created, timeout=30)
        assert done.succeeded
        # A server that keeps failing ends the wait after a few such polls.
        again = await client.create(MODEL, prompt("again"))
        emu.faults = Faults(server_error=1.0, endpoints={"get"})
        with pytest.raises(qr.ServerError):
            await client.wait(again, timeout=30)
        assert emu.count("get", status=None) >= 4 * attempts
