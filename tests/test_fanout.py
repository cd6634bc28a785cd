"""run_many against the emulator: outcomes, bounds, order, leaving early, progress."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
import quickrouter_async as qr
from quickrouter_async.testing import Emulator, RateLimit

from .conftest import FAST_POLL, FAST_RETRY

pytestmark = pytest.mark.anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

MODEL = "google/imagen-4"
TERMINAL = {"succeeded", "failed", "canceled", "aborted"}


def _records(emu: Emulator) -> list[Any]:
    records = emu.predictions
    return list(records.values()) if isinstance(records, dict) else list(records)


def _status(record: Any) -> str:
    status = record["status"] if isinstance(record, dict) else record.status
    return str(getattr(status, "value", status))


def still_running(emu: Emulator) -> list[Any]:
    """Server records of predictions not yet terminal."""
    return [record for record in _records(emu) if _status(record) not in TERMINAL]


def prompts(count: int, pulled: list[int] | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """``count`` (model, input) pairs, noting in ``pulled`` how many were taken."""
    for number in range(count):
        if pulled is not None:
            pulled.append(number)
        yield MODEL, {"prompt": f"prompt {number}"}


@contextlib.asynccontextmanager
async def make_client(emu: Emulator, **options: Any) -> AsyncIterator[qr.QuickRouter]:
    options.setdefault("poll", FAST_POLL)
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("rate_limit", 10_000)
    async with qr.QuickRouter(emu.api_key, base_url=emu.base_url, **options) as client:
        yield client


async def collect(run: qr.QuickRouter, inputs: Any, **options: Any) -> list[qr.Outcome[Any]]:
    async with run.run_many(inputs, **options) as outcomes:
        return [outcome async for outcome in outcomes]


def _client_code(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    filename = getattr(code, "co_filename", "")
    return "quickrouter_async" in filename and "testing" not in filename


async def other_tasks() -> set[asyncio.Task[Any]]:
    """Tasks the client left in this event loop, after letting finished ones go."""
    for _ in range(5):
        await anyio.lowlevel.checkpoint()
    return {task for task in asyncio.all_tasks() if _client_code(task)}


async def test_every_input_gets_one_outcome(server_profile: dict[str, Any]) -> None:
    typed = [qr.Imagen4Input(prompt=f"typed {n}") for n in range(5)]
    pairs = [(MODEL, {"prompt": f"pair {n}"}) for n in range(5)]
    inputs: list[Any] = [*typed, *pairs]
    async with (
        Emulator(duration=0.05, seed=8, **server_profile) as emulator,
        make_client(emulator, poll=qr.PollPolicy(interval=0.01)) as client,
    ):
        outcomes = await collect(client, inputs, concurrency=4)
    assert sorted(o.index for o in outcomes) == list(range(10))
    for outcome in outcomes:
        assert outcome.ok, outcome.error
        assert outcome.input is inputs[outcome.index]
        assert outcome.prediction is not None
        assert outcome.prediction.status is qr.Status.SUCCEEDED
    assert len(_records(emulator)) == 10


async def test_invalid_items_become_outcomes(emulator: Emulator) -> None:
    inputs: list[Any] = [
        (MODEL, {"prompt": "fine"}),
        (MODEL, {"prompt": "a"}, "extra"),
        (42, {"prompt": "b"}),
        "just a string",
        ("no-slash", {"prompt": "c"}),
        (MODEL, {"prompt": {1, 2}}),  # not JSON
        (MODEL, {"prompt": "fine too"}),
    ]
    async with make_client(emulator) as client:
        outcomes = await collect(client, inputs)
    by_index = {o.index: o for o in outcomes}
    assert len(by_index) == len(inputs)
    assert by_index[0].ok
    assert by_index[6].ok
    for index in (1, 2, 3, 4):
        assert isinstance(by_index[index].error, qr.InputError), by_index[index]
        assert by_index[index].prediction is None
    assert not by_index[5].ok
    assert "tuple of 3" in str(by_index[1].error)


async def test_failed_and_timed_out_predictions_are_outcomes() -> None:
    async with (
        Emulator(duration=0.05, fail_prompts=["doomed"]) as emu,
        make_client(emu) as client,
    ):
        outcomes = await collect(
            client, [(MODEL, {"prompt": "doomed"}), (MODEL, {"prompt": "fine"})]
        )
    failed, fine = sorted(outcomes, key=lambda o: o.index)
    assert isinstance(failed.error, qr.PredictionFailed)
    assert failed.prediction is not None
    assert failed.prediction.status is qr.Status.FAILED
    assert fine.ok


async def test_a_timeout_cancels_the_prediction_and_is_its_outcome() -> None:
    async with Emulator(duration=30.0) as emu, make_client(emu) as client:
        outcomes = await collect(client, prompts(2), timeout=0.2)
        assert all(isinstance(o.error, qr.WaitTimeout) for o in outcomes)
        assert not still_running(emu)


async def test_ordered_yields_in_input_order() -> None:
    async with Emulator(duration=(0.0, 0.08), seed=7) as emu, make_client(emu) as client:
        outcomes = await collect(client, prompts(40), concurrency=8, ordered=True)
    assert [o.index for o in outcomes] == list(range(40))
    assert all(o.ok for o in outcomes)


async def test_concurrency_bounds_what_is_in_flight(emulator: Emulator) -> None:
    snapshots: list[qr.Progress] = []
    async with make_client(emulator) as client:
        outcomes = await collect(client, prompts(30), concurrency=3, progress=snapshots.append)
    assert len(outcomes) == 30
    assert max(p.running for p in snapshots) <= 3
    final = snapshots[-1]
    assert (final.submitted, final.running, final.succeeded, final.failed) == (30, 0, 30, 0)
    assert final.finished == 30
    assert final.rate > 0


async def test_inputs_are_pulled_lazily(emulator: Emulator) -> None:
    pulled: list[int] = []
    async with (
        make_client(emulator) as client,
        client.run_many(prompts(1_000_000, pulled), concurrency=4) as outcomes,
    ):
        seen = 0
        async for _ in outcomes:
            seen += 1
            if seen == 10:
                break
    # In flight, waiting to be delivered, and nothing more.
    assert len(pulled) <= 10 + 2 * 4 + 1


async def test_async_iterables_are_accepted(emulator: Emulator) -> None:
    async def generate() -> AsyncIterator[qr.Imagen4Input]:
        for number in range(6):
            await anyio.lowlevel.checkpoint()
            yield qr.Imagen4Input(prompt=f"async {number}")

    async with make_client(emulator) as client:
        outcomes = await collect(client, generate(), concurrency=2)
    assert sorted(o.index for o in outcomes) == list(range(6))
    assert all(o.ok for o in outcomes)


async def test_leaving_with_break_cancels_everything_started(
    server_profile: dict[str, Any],
) -> None:
    pulled: list[int] = []
    async with Emulator(duration=30.0, **server_profile) as emu, make_client(emu) as client:
        async with client.run_many(prompts(1_000_000, pulled), concurrency=5) as outcomes:
            with anyio.move_on_after(0.3):
                async for _ in outcomes:
                    pytest.fail("nothing finishes in 30 s")
        assert 1 <= len(pulled) <= 6
        assert _records(emu)
        assert not still_running(emu)
        assert not await other_tasks()


async def test_a_plain_break_cleans_up_in_the_background(server_profile: dict[str, Any]) -> None:
    async def inputs() -> AsyncIterator[Any]:
        for pair in prompts(5):
            yield pair
        await anyio.sleep(0.2)
        yield "not an input"  # its outcome comes at once, while the others run
        for pair in prompts(1_000_000):
            yield pair

    async with Emulator(duration=30.0, **server_profile) as emu, make_client(emu) as client:
        async for outcome in client.run_many(inputs(), concurrency=6):
            assert isinstance(outcome.error, qr.InputError)
            break
        gc.collect()
        for _ in range(500):
            if not still_running(emu) and not await other_tasks():
                break
            await anyio.sleep(0.01)
        # The worker whose input failed at once may have pulled one more before the break.
        assert 5 <= len(_records(emu)) <= 6
        assert not still_running(emu)
        assert not await other_tasks()


async def test_a_cancelled_consumer_leaves_nothing_running(server_profile: dict[str, Any]) -> None:
    async with Emulator(duration=30.0, **server_profile) as emu, make_client(emu) as client:
        outcomes = client.run_many(prompts(100), concurrency=4)
        with anyio.move_on_after(0.3) as scope:
            async for _ in outcomes:
                pass
        assert scope.cancelled_caught
        assert not still_running(emu)
        assert not await other_tasks()
        assert [o async for o in outcomes] == [], "a closed run yields nothing more"


async def test_an_error_in_the_inputs_is_raised_after_the_started_ones(
    emulator: Emulator,
) -> None:
    def broken() -> Iterator[tuple[str, dict[str, str]]]:
        yield MODEL, {"prompt": "one"}
        yield MODEL, {"prompt": "two"}
        raise RuntimeError("the input file is corrupt")

    seen: list[qr.Outcome[Any]] = []

    async def consume(client: qr.QuickRouter) -> None:
        async for outcome in client.run_many(broken()):
            seen.append(outcome)  # noqa: PERF401 (keeps what came before the error)

    async with make_client(emulator) as client:
        with pytest.raises(RuntimeError, match="corrupt"):
            await consume(client)
    assert sorted(o.index for o in seen) == [0, 1]


async def test_a_broken_progress_callback_stops_the_call() -> None:
    def explode(progress: qr.Progress) -> None:
        raise ZeroDivisionError(progress.submitted)

    async with Emulator(duration=30.0) as emu, make_client(emu) as client:
        with pytest.raises(ZeroDivisionError):
            await collect(client, prompts(10), progress=explode)
        assert not still_running(emu)


async def test_throttled_creates_are_retried_and_counted() -> None:
    limit = RateLimit(rate=200, burst=2, retry_after=True)
    snapshots: list[qr.Progress] = []
    async with Emulator(duration=0.01, rate_limit=limit) as emu:
        async with qr.QuickRouter(
            emu.api_key,
            base_url=emu.base_url,
            poll=FAST_POLL,
            retry=qr.RetryPolicy(attempts=50, initial=0.001, maximum=0.01, max_retry_after=0.02),
            rate_limit=1000,
        ) as client:
            outcomes = await collect(client, prompts(12), concurrency=12, progress=snapshots.append)
        assert all(o.ok for o in outcomes), [o.error for o in outcomes]
        throttled = [r for r in emu.requests if r.status == 429]
    assert throttled
    assert snapshots[-1].throttled == len(throttled)


async def test_the_result_reports_progress_and_closes_idempotently(emulator: Emulator) -> None:
    async with make_client(emulator) as client:
        run = client.run_many(prompts(3))
        assert run.progress.submitted == 0
        assert "submitted=0" in repr(run)
        await run.aclose()
        assert [o async for o in run] == []
        run = client.run_many(prompts(3))
        outcomes = [o async for o in run]
        assert len(outcomes) == 3
        assert run.progress.succeeded == 3
        await run.aclose()


async def test_the_pool_grows_to_the_concurrency(emulator: Emulator) -> None:
    async with make_client(emulator, max_concurrency=2) as client:
        before = client._transport.connections
        run = client.run_many(prompts(0), concurrency=100)
        assert client._transport.connections >= 100 > before
        assert [o async for o in run] == []


@pytest.mark.parametrize("concurrency", [0, -1, True, 2.5])
def test_concurrency_must_be_a_positive_integer(concurrency: Any) -> None:
    client = qr.QuickRouter("k", base_url="http://127.0.0.1:1")
    with pytest.raises(qr.InputError):
        client.run_many([], concurrency=concurrency)
    with pytest.raises(qr.InputError):
        client.run_many([], timeout=-1)


@pytest.mark.parametrize(
    "inputs",
    [
        "a prompt",
        b"bytes",
        {"prompt": "a mapping is one input"},
        42,
        qr.Imagen4Input(prompt="one typed input"),
        (MODEL, {"prompt": "one pair"}),
    ],
)
def test_inputs_must_be_an_iterable_of_inputs(inputs: Any) -> None:
    client = qr.QuickRouter("k", base_url="http://127.0.0.1:1")
    with pytest.raises(qr.InputError, match="inputs") as info:
        client.run_many(inputs)
    assert info.value.field == "inputs"


async def test_without_a_key_nothing_is_sent(emulator: Emulator) -> None:
    async with qr.QuickRouter("", base_url=emulator.base_url) as client:
        with pytest.raises(qr.AuthenticationError, match="no API key"):
            client.run_many(prompts(3))
    assert emulator.requests == []


async def test_sync_mode_needs_no_polls() -> None:
    sync = qr.PollPolicy(sync_wait=5, interval=0.01)
    async with Emulator(duration=0.05) as emu, make_client(emu, poll=sync) as client:
        outcomes = await collect(client, prompts(4), timeout=10)
        assert all(o.ok for o in outcomes)
        assert not [r for r in emu.requests if r.method == "GET"]


async def test_predictions_canceled_elsewhere_are_counted_as_canceled() -> None:
    snapshots: list[qr.Progress] = []
    async with Emulator(duration=30.0) as emu, make_client(emu) as client:

        async def cancel_them() -> None:
            for _ in range(500):
                if len(_records(emu)) == 3:
                    break
                await anyio.sleep(0.01)
            for record in _records(emu):
                await client.cancel(record.id)

        async with anyio.create_task_group() as group:
            group.start_soon(cancel_them)
            outcomes = await collect(client, prompts(3), progress=snapshots.append)
    assert all(isinstance(o.error, qr.PredictionCanceled) for o in outcomes)
    assert snapshots[-1].canceled == 3


async def test_a_slow_consumer_holds_the_work_back(emulator: Emulator) -> None:
    pulled: list[int] = []
    async with (
        make_client(emulator) as client,
        client.run_many(prompts(20, pulled), concurrency=2) as outcomes,
    ):
        first = await outcomes.__anext__()
        await anyio.sleep(0.3)  # everything that can finish has finished by now
        assert len(pulled) <= 1 + 2 * 2 + 1
        rest = [o async for o in outcomes]
    assert sorted(o.index for o in [first, *rest]) == list(range(20))
