"""The two small synchronization primitives on the request path: `Slots` and `Channel`.

They stand in for anyio's `CapacityLimiter` and memory object stream, so they are held to
the same promises: order, no slot or item lost to a cancelled waiter, resizing, and the
two ways a channel ends.
"""

from __future__ import annotations

import asyncio
import json

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st
from quickrouter_async import _request
from quickrouter_async._channel import Channel
from quickrouter_async._create import build_create, input_key
from quickrouter_async._slots import Slots

pytestmark = pytest.mark.anyio


async def _settle() -> None:
    """Let every task that can run, run."""
    for _ in range(10):
        await anyio.lowlevel.checkpoint()


# -- Slots -----------------------------------------------------------------------------------


async def test_slots_bound_holders_and_serve_waiters_in_order() -> None:
    slots = Slots(2)
    order: list[int] = []
    release = anyio.Event()

    async def hold(number: int) -> None:
        async with slots:
            order.append(number)
            await release.wait()

    async with anyio.create_task_group() as group:
        for number in range(5):
            group.start_soon(hold, number)
            await _settle()
        assert order == [0, 1]
        assert slots.used == 2
        assert "3 waiting" in repr(slots)
        release.set()
    assert order == [0, 1, 2, 3, 4]
    assert slots.used == 0


async def test_a_cancelled_waiter_leaves_the_line_and_takes_no_slot() -> None:
    slots = Slots(1)
    await slots.acquire()
    with anyio.move_on_after(0.01):
        await slots.acquire()
    assert slots.used == 1
    slots.release()
    assert slots.try_acquire()


async def test_a_slot_granted_to_a_cancelled_waiter_is_passed_on() -> None:
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.ensure_future(slots.acquire())
    second = asyncio.ensure_future(slots.acquire())
    await _settle()
    slots.release()  # granted to the first waiter ...
    first.cancel()  # ... whose task is cancelled before it runs: the second gets it
    await asyncio.wait([first])
    assert first.cancelled()
    await second
    assert slots.used == 1


async def test_raising_the_total_lets_waiters_in() -> None:
    slots = Slots(1)
    await slots.acquire()
    entered = anyio.Event()

    async def wait() -> None:
        await slots.acquire()
        entered.set()

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await _settle()
        assert not entered.is_set()
        slots.total = 2
        await entered.wait()
    assert slots.used == 2


def test_slots_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)
    slots = Slots(1)
    with pytest.raises(ValueError, match="at least 1"):
        slots.total = 0
    with pytest.raises(RuntimeError, match="without a slot"):
        slots.release()


# -- Channel ---------------------------------------------------------------------------------


async def test_a_channel_keeps_order_and_blocks_senders_when_full() -> None:
    channel: Channel[int] = Channel(2)
    sent: list[int] = []

    async def send() -> None:
        for number in range(5):
            await channel.put(number)
            sent.append(number)
        channel.end()

    async with anyio.create_task_group() as group:
        group.start_soon(send)
        await _settle()
        assert sent == [0, 1]  # the third waits for room
        assert len(channel) == 2
        received = [await channel.get() for _ in range(5)]
    assert received == [0, 1, 2, 3, 4]
    with pytest.raises(anyio.EndOfStream):
        await channel.get()


async def test_a_waiting_receiver_gets_the_next_item_then_the_end() -> None:
    channel: Channel[str] = Channel(1)
    received: list[str] = []

    async def receive() -> None:
        while True:
            try:
                received.append(await channel.get())
            except anyio.EndOfStream:
                return

    async with anyio.create_task_group() as group:
        group.start_soon(receive)
        await _settle()
        assert channel.put_nowait("a")
        await _settle()
        assert channel.put_nowait("b")
        assert not channel.put_nowait("c")  # full until the receiver runs
        channel.end()
    assert received == ["a", "b"]


async def test_an_abandoned_channel_drops_items_and_frees_senders() -> None:
    channel: Channel[int] = Channel(1)
    await channel.put(1)
    freed = anyio.Event()

    async def send() -> None:
        await channel.put(2)  # waits: full
        freed.set()

    async with anyio.create_task_group() as group:
        group.start_soon(send)
        await _settle()
        assert not freed.is_set()
        channel.abandon()
        await freed.wait()
    assert not channel.ready
    assert channel.put_nowait(3)  # accepted and dropped
    assert len(channel) == 0


async def test_a_cancelled_receiver_passes_its_turn_on() -> None:
    channel: Channel[int] = Channel(4)
    first = asyncio.ensure_future(channel.get())
    second = asyncio.ensure_future(channel.get())
    await _settle()
    channel.put_nowait(7)  # wakes the first receiver ...
    first.cancel()  # ... whose task is cancelled before it runs: the second takes the item
    await asyncio.wait([first])
    assert first.cancelled()
    assert await second == 7

    with anyio.move_on_after(0.01):
        await channel.get()  # a receiver cancelled while it waits leaves the line
    channel.put_nowait(8)
    assert channel.pop() == 8


# -- one encoding per create -----------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(payload=st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=5))
def test_a_create_sends_its_input_as_json_and_keys_it_as_the_server_echoes_it(
    payload: dict[str, object],
) -> None:
    request = build_create(
        "acme/model",
        payload,
        wait=None,
        webhook=None,
        webhook_events_filter=None,
        cancel_after=None,
    )
    sent = json.loads(request.body)
    expected = {key: value for key, value in payload.items() if value is not None}
    assert sent == {"input": expected}
    assert request.input == expected
    # The key of the prediction the server echoes back equals the create's own.
    assert input_key("acme/model:v1", sent["input"]) == request.key


def _json_dumps_sorted(payload: object) -> str:
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


@given(payload=st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_the_reused_encoder_writes_what_json_dumps_writes(payload: dict[str, object]) -> None:
    assert _request._sorted_encoder(allow_nan=False)(payload) == _json_dumps_sorted(payload)


def test_without_json_s_c_encoder_the_text_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = {"z": [1, 2.5, None, True], "a": {"é": "日本", "b": {"c": []}}, "m": "line\n"}
    monkeypatch.setattr(_request, "c_make_encoder", None)
    encode = _request._sorted_encoder(allow_nan=False)
    assert encode(payload) == _json_dumps_sorted(payload)
    with pytest.raises(ValueError, match="Out of range"):
        encode({"x": float("nan")})
