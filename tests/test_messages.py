"""Error messages quote at most a few hundred characters of any value, however large."""

from __future__ import annotations

import datetime as dt
import inspect
from typing import TYPE_CHECKING, Any

import pytest
import quickrouter_async as qr
from hypothesis import given, settings
from hypothesis import strategies as st
from quickrouter_async._errors import SHORT_REPR_CHARS, short_repr
from quickrouter_async._inputs import validate_model_name
from quickrouter_async._serde import parse_prediction
from quickrouter_async.cli._lines import parse_setting, validate

if TYPE_CHECKING:
    from collections.abc import Callable

    from quickrouter_async.testing import Emulator

pytestmark = pytest.mark.anyio

FIVE_MB = 5 * 1024 * 1024
HUGE_TEXT = "x" * FIVE_MB
HUGE_BYTES = b"\x00" * FIVE_MB
LONGEST_MESSAGE = 2000


class LoudRepr:
    """An object whose repr runs to megabytes."""

    def __repr__(self) -> str:
        return HUGE_TEXT


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


BUILDERS: dict[str, Callable[[], object]] = {
    "prompt bytes": lambda: qr.Imagen4Input(prompt=HUGE_BYTES),  # type: ignore[arg-type]
    "enum": lambda: qr.Imagen4Input(prompt="x", aspect_ratio=HUGE_TEXT),  # type: ignore[arg-type]
    "integer": lambda: qr.Seedream4Input(prompt="x", width=HUGE_TEXT),  # type: ignore[arg-type]
    "huge integer": lambda: qr.Seedream4Input(prompt="x", max_images=10**5000),
    "image path": lambda: qr.Seedream4Input(prompt="x", image_input=[HUGE_TEXT]),
    "image object": lambda: qr.Seedream4Input(prompt="x", image_input=[LoudRepr()]),  # type: ignore[list-item]
    "image broken repr": lambda: qr.Seedream4Input(prompt="x", image_input=[BrokenRepr()]),  # type: ignore[list-item]
    "timeout": lambda: qr.QuickRouter("k", timeout=HUGE_TEXT),  # type: ignore[arg-type]
    "attempts": lambda: qr.RetryPolicy(attempts=HUGE_BYTES),  # type: ignore[arg-type]
    "output_hosts": lambda: qr.QuickRouter("k", output_hosts=[HUGE_TEXT + "/"]),
    "prediction field": lambda: parse_prediction({"id": "p", "status": "x", "logs": HUGE_BYTES}),
    "timestamp": lambda: parse_prediction({"id": "p", "status": "x", "created_at": HUGE_TEXT}),
    "status": lambda: parse_prediction({"id": HUGE_TEXT, "status": [HUGE_TEXT]}),
    "cli setting": lambda: parse_setting(HUGE_TEXT),
    "cli unknown field": lambda: validate("google/imagen-4", {"prompt": "x", HUGE_TEXT: 1}),
    "model name type": lambda: validate_model_name(HUGE_BYTES),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_invalid_huge_values_give_short_messages(name: str) -> None:
    with pytest.raises(qr.QuickRouterError) as caught:
        BUILDERS[name]()
    assert len(str(caught.value)) < LONGEST_MESSAGE


CALLS: dict[str, Callable[[qr.QuickRouter], Any]] = {
    "model": lambda c: c.create(HUGE_TEXT + " x/y", {"prompt": "x"}),
    "model type": lambda c: c.create(HUGE_BYTES, {"prompt": "x"}),  # type: ignore[arg-type]
    "wait": lambda c: c.create("a/b", {"prompt": "x"}, wait=HUGE_TEXT),  # type: ignore[arg-type]
    "events": lambda c: c.create("a/b", {"prompt": "x"}, webhook_events_filter=[HUGE_TEXT]),
    "key": lambda c: c.create("a/b", {HUGE_BYTES: 1}),
    "not json": lambda c: c.create("a/b", {"prompt": LoudRepr()}),
    "id": lambda c: c.get(HUGE_BYTES),  # type: ignore[arg-type]
    "wait timeout": lambda c: c.wait("p", timeout=dt.timedelta(seconds=-1) * FIVE_MB),
    "concurrency": lambda c: c.run_many([], concurrency=HUGE_TEXT),  # type: ignore[arg-type]
    "file too large": lambda c: c.create("a/b", {"image": HUGE_BYTES * 3}),
}


@pytest.mark.parametrize("name", sorted(CALLS))
async def test_invalid_huge_arguments_give_short_messages(
    name: str, client: qr.QuickRouter, emulator: Emulator
) -> None:

    async def call() -> None:
        result = CALLS[name](client)
        if inspect.isawaitable(result):
            await result

    with pytest.raises(qr.InputError) as caught:
        await call()
    assert len(str(caught.value)) < LONGEST_MESSAGE
    assert emulator.count("create") == 0


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=2000)
    | st.binary(max_size=2000)
    | st.builds(bytearray, st.binary(max_size=500))
    | st.builds(memoryview, st.binary(max_size=50))
    | st.just(10**4000)
    | st.just(LoudRepr()),
    lambda inner: (
        st.lists(inner, max_size=20)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=300), inner, max_size=20)
        | st.frozensets(st.text(max_size=300), max_size=20)
    ),
    max_leaves=60,
)


@settings(max_examples=200, deadline=None)
@given(value=values, limit=st.integers(20, 1000))
def test_short_repr_is_never_longer_than_its_limit(value: object, limit: int) -> None:
    assert len(short_repr(value, limit)) <= limit
    assert len(short_repr(value)) <= SHORT_REPR_CHARS


def test_short_repr_shows_the_start_and_the_size() -> None:
    assert short_repr("abc") == "'abc'"
    assert short_repr(HUGE_TEXT).endswith(f"... ({FIVE_MB:,} characters)")
    assert short_repr(HUGE_BYTES).endswith(f"... ({FIVE_MB:,} bytes)")
    assert short_repr(bytearray(b"ab")) == "bytearray(b'ab')"
    assert short_repr(bytearray(500)).endswith(", 500 bytes in all")
    assert short_repr("\x00" * 40).endswith("... (40 characters)")
    assert short_repr(memoryview(b"abc")) == "<memoryview of 3 bytes>"
    assert short_repr(10**5000) == f"<int of {(10**5000).bit_length():,} bits>"
    assert short_repr(BrokenRepr()).startswith("<BrokenRepr instance at ")
