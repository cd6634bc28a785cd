"""SIGINT cancels the library's waits, only where that is safe, and every handler comes back.

These tests send real SIGINTs to this process. Python's default handler is in place
under the test runner, so `qr.cancel_on_interrupt(enabled=True)` makes the waits take SIGINT; a
wait started in a task of its own is what gets cancelled, never the runner's task. (The
default, acting only inside an IPython kernel, is shown in a real kernel by
test_notebook_kernel.py.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import quickrouter_async as qr
from quickrouter_async._interrupt import INTERRUPTED, Interruptible
from quickrouter_async.testing import Emulator

from .conftest import FAST_POLL, FAST_RETRY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine, Iterator


@pytest.fixture(autouse=True)
def handlers() -> Iterator[None]:
    """Python's default handler and no wakeup descriptor before, checked and put back after."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = qr.cancel_on_interrupt(enabled=True)
    try:
        yield
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.set_wakeup_fd(-1) == -1
    finally:
        qr.cancel_on_interrupt(previous)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, before)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """Predictions that run far longer than any test waits."""
    async with Emulator(duration=30.0) as emu:
        yield emu


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[qr.QuickRouter]:
    async with qr.QuickRouter(
        emulator.api_key, base_url=emulator.base_url, poll=FAST_POLL, retry=FAST_RETRY
    ) as c:
        yield c


def interrupt() -> None:
    os.kill(os.getpid(), signal.SIGINT)


async def created(emulator: Emulator | None, count: int) -> None:
    """Until the emulator has ``count`` predictions (it has no event for that), then idle."""
    with anyio.fail_after(10):
        while emulator is not None and len(emulator.predictions) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await anyio.wait_all_tasks_blocked()


async def interrupted(
    *waits: Coroutine[Any, Any, object], emulator: Emulator | None = None, count: int = 0
) -> list[asyncio.Task[object]]:
    """Start each wait in a task of its own, send SIGINT once all wait, let them end."""
    tasks = [asyncio.create_task(wait) for wait in waits]
    await created(emulator, count)
    interrupt()
    await asyncio.wait(tasks)
    return tasks


def cancelled_by_interrupt(task: asyncio.Task[object]) -> bool:
    with pytest.raises(asyncio.CancelledError) as caught:
        task.result()
    return caught.value.args == (INTERRUPTED,)


async def test_an_interrupt_ends_a_run_and_cancels_its_prediction(
    client: qr.QuickRouter, emulator: Emulator
) -> None:
    run = client.run(qr.Imagen4Input(prompt="a lighthouse"))
    [task] = await interrupted(run, emulator=emulator, count=1)
    assert cancelled_by_interrupt(task)
    assert task.cancelling() == 1
    assert [str(record.status) for record in emulator.predictions] == ["canceled"]
    assert not asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)


async def test_an_interrupt_ends_a_wait_that_cancels_on_exit(
    client: qr.QuickRouter, emulator: Emulator
) -> None:
    prediction = await client.create(qr.Imagen4Input(prompt="a lighthouse"))
    kept = await client.create(qr.Imagen4Input(prompt="a harbour"))
    tasks = await interrupted(
        client.wait(prediction, cancel_on_exit=True), client.wait(kept, timeout=60)
    )
    assert all(cancelled_by_interrupt(task) for task in tasks)
    # A wait that does not cancel on exit leaves its prediction running, as documented.
    canceled, running = emulator.predictions
    assert str(canceled.status) == "canceled"
    assert not running.terminal


async def test_one_interrupt_ends_every_wait_of_a_gather(
    client: qr.QuickRouter, emulator: Emulator
) -> None:
    prompts = [qr.Imagen4Input(prompt=f"a lighthouse, style {n}") for n in range(3)]

    async def gathered() -> list[qr.Prediction]:
        return await asyncio.gather(*(client.run(prompt) for prompt in prompts))

    [task] = await interrupted(gathered(), emulator=emulator, count=3)
    assert cancelled_by_interrupt(task)
    statuses = [str(record.status) for record in emulator.predictions]
    assert statuses == ["canceled"] * 3


async def test_an_interrupt_ends_a_run_many_loop_and_its_predictions(
    client: qr.QuickRouter, emulator: Emulator
) -> None:
    seen: list[qr.Outcome[Any]] = []

    async def consume() -> None:
        prompts = [qr.Imagen4Input(prompt=f"a lighthouse, style {n}") for n in range(4)]
        seen.extend([outcome async for outcome in client.run_many(prompts)])

    [task] = await interrupted(consume(), emulator=emulator, count=4)
    assert cancelled_by_interrupt(task)
    assert seen == []
    statuses = [str(record.status) for record in emulator.predictions]
    assert statuses == ["canceled"] * 4


async def test_a_second_interrupt_does_not_cut_the_clean_up_short(
    client: qr.QuickRouter, emulator: Emulator
) -> None:
    task = asyncio.create_task(client.run(qr.Imagen4Input(prompt="a lighthouse")))
    await created(emulator, 1)
    interrupt()
    interrupt()
    await asyncio.wait([task])
    assert cancelled_by_interrupt(task)
    assert task.cancelling() == 1
    assert [str(record.status) for record in emulator.predictions] == ["canceled"]


async def test_waits_go_on_when_switched_off(emulator: Emulator) -> None:
    qr.cancel_on_interrupt(enabled=False)
    emulator.duration = 0.2
    calls: list[int] = []
    signal.signal(signal.SIGINT, lambda number, _frame: calls.append(number))
    async with qr.QuickRouter(emulator.api_key, base_url=emulator.base_url, poll=FAST_POLL) as c:
        task = asyncio.create_task(c.run(qr.Imagen4Input(prompt="a lighthouse")))
        await anyio.wait_all_tasks_blocked()
        interrupt()
        prediction = await task
    assert prediction.succeeded
    assert calls == [signal.SIGINT]
    signal.signal(signal.SIGINT, signal.default_int_handler)


async def test_a_handler_someone_else_installed_is_never_taken(client: qr.QuickRouter) -> None:
    calls: list[int] = []

    def server_handler(number: int, _frame: object) -> None:
        calls.append(number)

    signal.signal(signal.SIGINT, server_handler)
    task = asyncio.create_task(client.run(qr.Imagen4Input(prompt="a lighthouse")))
    await anyio.wait_all_tasks_blocked()
    assert signal.getsignal(signal.SIGINT) is server_handler
    interrupt()
    await anyio.wait_all_tasks_blocked()
    assert calls == [signal.SIGINT]
    assert not task.done()
    task.cancel()
    await asyncio.wait([task])
    assert signal.getsignal(signal.SIGINT) is server_handler
    signal.signal(signal.SIGINT, signal.default_int_handler)


async def test_by_default_only_a_kernel_handler_is_taken(client: qr.QuickRouter) -> None:
    qr.cancel_on_interrupt(enabled=None)
    task = asyncio.create_task(client.run(qr.Imagen4Input(prompt="a lighthouse")))
    await anyio.wait_all_tasks_blocked()
    # Outside a kernel Python's default handler stays: Ctrl-C raises KeyboardInterrupt.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    task.cancel()
    await asyncio.wait([task])

    calls: list[int] = []

    def kernel_handler(number: int, _frame: object) -> None:
        calls.append(number)

    # What ipykernel installs while a cell runs is recognised by its module (and only
    # looked for once ipykernel is loaded, as in a kernel it is).
    pytest.importorskip("ipykernel")
    kernel_handler.__module__ = "ipykernel.ipkernel"
    signal.signal(signal.SIGINT, kernel_handler)
    [task] = await interrupted(client.run(qr.Imagen4Input(prompt="a harbour")))
    assert cancelled_by_interrupt(task)
    assert calls == []  # the loop had SIGINT meanwhile
    assert signal.getsignal(signal.SIGINT) is kernel_handler
    signal.signal(signal.SIGINT, signal.default_int_handler)


async def test_a_handler_replaced_during_the_wait_is_kept(client: qr.QuickRouter) -> None:
    task = asyncio.create_task(client.run(qr.Imagen4Input(prompt="a lighthouse")))
    await anyio.wait_all_tasks_blocked()
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler

    def next_cell_handler(_number: int, _frame: object) -> None:
        """As a kernel starting another cell would install it."""

    signal.signal(signal.SIGINT, next_cell_handler)
    task.cancel()
    await asyncio.wait([task])
    assert signal.getsignal(signal.SIGINT) is next_cell_handler
    signal.signal(signal.SIGINT, signal.default_int_handler)


async def test_the_loops_other_signal_handlers_keep_their_wakeup_descriptor(
    client: qr.QuickRouter,
) -> None:
    loop = asyncio.get_running_loop()
    usr1 = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, usr1.set)
    try:
        [task] = await interrupted(client.run(qr.Imagen4Input(prompt="a lighthouse")))
        assert cancelled_by_interrupt(task)
        os.kill(os.getpid(), signal.SIGUSR1)
        with anyio.fail_after(10):  # the loop's handler still runs: its descriptor is in place
            await usr1.wait()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


async def test_a_wakeup_descriptor_found_is_put_back(client: qr.QuickRouter) -> None:
    first, second = socket.socketpair()
    with first, second:
        first.setblocking(False)  # noqa: FBT003 (the socket API)
        signal.set_wakeup_fd(first.fileno())
        [task] = await interrupted(client.run(qr.Imagen4Input(prompt="a lighthouse")))
        assert cancelled_by_interrupt(task)
        assert signal.set_wakeup_fd(-1) == first.fileno()


async def test_a_wait_in_another_thread_leaves_signals_alone(emulator: Emulator) -> None:
    emulator.duration = 0.2

    async def run() -> qr.Prediction:
        async with qr.QuickRouter(
            emulator.api_key, base_url=emulator.base_url, poll=FAST_POLL
        ) as client:
            return await client.run(qr.Imagen4Input(prompt="a lighthouse"))

    prediction = await anyio.to_thread.run_sync(asyncio.run, run())
    assert prediction.succeeded
    assert threading.current_thread() is threading.main_thread()


def test_a_wait_outside_a_task_is_left_alone() -> None:
    seen: list[object] = []

    def callback() -> None:
        with Interruptible():
            seen.append(signal.getsignal(signal.SIGINT))

    loop = asyncio.new_event_loop()
    try:
        loop.call_soon(callback)
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        loop.close()
    assert seen == [signal.default_int_handler]


def test_a_loop_without_signal_support_is_left_alone() -> None:
    class NoSignals(asyncio.SelectorEventLoop):
        def add_signal_handler(self, *_args: object) -> None:
            raise NotImplementedError

    async def wait() -> object:
        with Interruptible():
            return signal.getsignal(signal.SIGINT)

    loop = NoSignals()
    try:
        assert loop.run_until_complete(wait()) is signal.default_int_handler
    finally:
        loop.close()


def test_signal_lent_to_a_loop_that_stopped_is_not_lent_twice() -> None:
    entered = asyncio.Event()

    async def stuck() -> None:
        with Interruptible():
            entered.set()
            await asyncio.Event().wait()

    async def start() -> asyncio.Task[None]:
        task = asyncio.create_task(stuck())
        await entered.wait()
        return task

    async def other() -> object:
        with Interruptible():
            return signal.getsignal(signal.SIGINT)

    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        task = first.run_until_complete(start())
        lent = signal.getsignal(signal.SIGINT)
        assert lent is not signal.default_int_handler
        assert second.run_until_complete(other()) is lent
        task.cancel()
        first.run_until_complete(asyncio.wait([task]))
    finally:
        first.close()
        second.close()


def test_the_switch_takes_only_true_false_or_none() -> None:
    assert qr.cancel_on_interrupt(enabled=False) is True
    assert qr.cancel_on_interrupt(enabled=None) is False
    with pytest.raises(qr.InputError, match="True, False or None"):
        qr.cancel_on_interrupt("yes")  # type: ignore[arg-type]
    assert qr.cancel_on_interrupt(enabled=True) is None
