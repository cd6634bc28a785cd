"""Nothing left running: every way a caller gives up, on Replicate's API and on a gateway.

The gateway relays create and get (and, here, cancel and ``Prefer: wait``) but has no list
route: a create its caller left while it was held open cannot be looked up, so the client
awaits its answer and cancels the prediction by id. Where the server lists predictions,
the client also finds and cancels it at once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import quickrouter_async as qr
from quickrouter_async.testing import Emulator, Faults

from .conftest import FAST_RETRY, running, until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

MODEL = "google/imagen-4"


def prompt(text: str) -> dict[str, str]:
    return {"prompt": text}


@contextlib.asynccontextmanager
async def make_client(emu: Emulator, **options: Any) -> AsyncIterator[qr.QuickRouter]:
    options.setdefault("poll", qr.PollPolicy(interval=0.05))  # sync mode "auto", then polls
    options.setdefault("retry", FAST_RETRY)
    async with qr.QuickRouter(emu.api_key, base_url=emu.base_url, **options) as client:
        yield client


def created(emu: Emulator, text: str) -> bool:
    return any(record.input.get("prompt") == text for record in emu.predictions)


def made(emu: Emulator, prefix: str) -> int:
    return sum(record.input.get("prompt", "").startswith(prefix) for record in emu.predictions)


def answered_creates(emu: Emulator) -> int:
    return sum(record.kind == "create" for record in emu.requests)


@pytest.mark.slow
async def test_giving_up_in_every_way_leaves_nothing_running(
    server_profile: dict[str, Any],
) -> None:
    async with Emulator(duration=20, seed=1, **server_profile) as emu:
        async with make_client(emu) as client:
            # A deadline.
            with pytest.raises(qr.WaitTimeout):
                await client.run(MODEL, prompt("deadline"), timeout=1)
            # A cancelled call, while its create is held open by the server.
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(client.run, MODEL, prompt("cancelled"))
                    await until(lambda: created(emu, "cancelled"))
                    before = answered_creates(emu)
                    scope.cancel()
            # The caller left at once: the create had not answered yet.
            assert answered_creates(emu) == before
            # A task group of 20, cancelled once their creates reached the server.
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:
                    for number in range(20):
                        group.start_soon(client.run, MODEL, prompt(f"group {number}"))
                    await until(lambda: made(emu, "group") == 20)
                    scope.cancel()
            # run_many of 100, 20 at a time, left once 20 creates reached the server.
            inputs = ((MODEL, prompt(f"many {number}")) for number in range(100))
            async with client.run_many(inputs, concurrency=20) as outcomes:
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as group:

                        async def consume() -> None:
                            async for _ in outcomes:
                                pass

                        group.start_soon(consume)
                        await until(lambda: made(emu, "many") == 20)
                        scope.cancel()
        assert len(emu.predictions) >= 1 + 1 + 20 + 20
        assert running(emu) == []
        assert all(record.canceled for record in emu.predictions)


async def test_a_cancelled_sync_create_on_a_gateway_is_canceled_once_it_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    options = {"profile": "gateway", "cancel_route": True, "honor_prefer_wait": True}
    async with Emulator(duration=30, seed=2, **options) as emu:
        with caplog.at_level(logging.INFO, "quickrouter_async"):
            async with make_client(emu, poll=qr.PollPolicy(sync_wait=1)) as client:
                for number in range(3):
                    with anyio.CancelScope() as scope:
                        async with anyio.create_task_group() as group:
                            group.start_soon(client.run, MODEL, prompt(f"held {number}"))
                            await until(lambda n=number: created(emu, f"held {n}"))
                            scope.cancel()
            known = client.capabilities
            assert running(emu) == []
    assert known == qr.Capabilities(
        list_predictions=False, cancel=True, sync_wait=True, rate_limit_headers=False
    )
    # Each absence said once, with what the client does instead; never per prediction.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "no list route" in w]) == 1
    assert "canceled once the create answers" in warnings[0]
    # Each held create ran its wait out before the client could cancel by id.
    assert all(record.cancel_requests == 1 for record in emu.predictions)


async def test_where_predictions_are_listed_a_held_create_is_canceled_at_once() -> None:
    async with (
        Emulator(duration=30, seed=3) as emu,
        make_client(emu, poll=qr.PollPolicy(sync_wait=20)) as client,
    ):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(client.run, MODEL, prompt("held"))
                await until(lambda: created(emu, "held"))
                scope.cancel()
        # Found in the list and canceled long before its 20 s wait ran out.
        await until(lambda: running(emu) == [])
        assert any(r.kind == "list" for r in emu.requests)
        assert client.capabilities.list_predictions is True


async def test_a_create_left_before_it_arrived_is_canceled_when_it_answers() -> None:
    async with Emulator(duration=30, seed=4) as emu:
        async with make_client(emu) as client:
            others = [await client.create(MODEL, prompt(f"other {n}")) for n in range(2)]
            emu.latency = 0.2  # the create is still on its way when the client gives up
            with pytest.raises(qr.WaitTimeout) as caught:
                await client.run(MODEL, prompt("late"), timeout=0.05)
            assert caught.value.prediction is None
            assert str(caught.value) == (
                "a prediction of google/imagen-4 was not created before the 0.05s deadline passed"
            )
            emu.latency = 0
        # The create arrived after all: its prediction was made, then canceled.
        assert len(emu.predictions) == 3
        assert [record.id for record in running(emu)] == [other.id for other in others]
        assert created(emu, "late")


async def test_the_lookup_of_a_create_given_up_on_reads_on_to_the_next_page() -> None:
    async with Emulator(duration=30, page_size=1, seed=5) as emu:
        async with make_client(emu, poll=qr.PollPolicy(sync_wait=20)) as client:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(client.run, MODEL, prompt("mine"))
                    await until(lambda: created(emu, "mine"))
                    newer = await client.create(MODEL, prompt("someone else's"))
                    scope.cancel()
            await until(lambda: emu.predictions[0].canceled)
        assert not emu.predictions.get(newer.id).canceled  # type: ignore[union-attr]
        assert sum(r.kind == "list" for r in emu.requests) == 2


async def test_a_failed_lookup_is_logged_and_the_answer_still_cancels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken_list = Faults(server_error=1.0, endpoints={"list"})
    async with Emulator(duration=30, faults=broken_list, seed=6) as emu:
        with caplog.at_level(logging.WARNING, "quickrouter_async"):
            async with make_client(emu, poll=qr.PollPolicy(sync_wait=1)) as client:
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as group:
                        group.start_soon(client.run, MODEL, prompt("x"))
                        await until(lambda: len(emu.predictions) == 1)
                        scope.cancel()
        assert "could not look up" in caplog.text
        assert running(emu) == []


async def test_a_failed_cancel_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    broken_cancel = Faults(server_error=1.0, endpoints={"cancel"})
    async with (
        Emulator(duration=30, faults=broken_cancel, seed=7) as emu,
        make_client(emu) as client,
    ):
        created_ = await client.create(MODEL, prompt("x"))
        with (
            caplog.at_level(logging.WARNING, "quickrouter_async"),
            pytest.raises(qr.WaitTimeout) as caught,
        ):
            await client.wait(created_, timeout=0.1, cancel_on_exit=True)
        assert f"could not cancel prediction {created_.id}" in caplog.text
        assert "canceling it on the server failed" in str(caught.value)
        assert len(running(emu)) == 1


@pytest.mark.slow
async def test_without_cancel_the_deadline_rides_with_the_create() -> None:
    async with Emulator(profile="gateway", duration=30, seed=8) as emu:
        async with make_client(emu) as client:
            started = time.monotonic()
            with pytest.raises(qr.WaitTimeout) as caught:
                await client.run(MODEL, prompt("bounded"), timeout=6)
            assert str(caught.value).endswith("; the server has no cancel route")
            assert client.capabilities.cancel is False
        [record] = emu.predictions
        assert record.create_headers["cancel-after"] == "6s"
        # The server stops it by itself at the deadline it was given.
        await until(lambda: record.terminal, timeout=15)
        assert record.outcome()[0] in {"canceled", "aborted"}
        assert time.monotonic() - started >= 6
