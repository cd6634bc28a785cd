"""Fault injection: creates in doubt are resolved, never sent blindly; nothing hangs.

Every test talks HTTP to a server on 127.0.0.1: the emulator with its fault knobs, or a
small API written here for a sequence of events the emulator cannot stage.
"""

from __future__ import annotations

import collections
import datetime as dt
import email.utils
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import attrs
import pytest
import quickrouter_async as qr
from aiohttp import web
from quickrouter_async._ledger import Ledger
from quickrouter_async._lookup import Wanted
from quickrouter_async._request import build_create
from quickrouter_async.testing import Emulator, Faults

from .conftest import TEST_KEY
from .http_servers import Scripted, hang, prediction_json, reply

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

pytestmark = pytest.mark.anyio

RETRY = qr.RetryPolicy(attempts=4, initial=0.001, maximum=0.01, max_retry_after=0.02)
POLL = qr.PollPolicy(sync_wait=None, interval=0.01)
MODEL = "google/imagen-4"
CREATE_PATH = "/replicate/v1/models/google/imagen-4/predictions"
LIST_PATH = "/replicate/v1/predictions"


class Sleeps(list[float]):
    """Stands in for the transport's sleep; ``then`` runs before the first one."""

    def __init__(self, then: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.then = then

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        if self.then is not None:
            self.then()
            self.then = None
        await anyio.lowlevel.checkpoint()


def make_client(base_url: str, sleeps: Sleeps | None = None, **options: Any) -> qr.QuickRouter:
    options.setdefault("retry", RETRY)
    options.setdefault("poll", POLL)
    return qr.QuickRouter(TEST_KEY, base_url=base_url, sleep=sleeps, **options)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(duration=0.05, seed=7) as emu:
        yield emu


def server_copies(emulator: Emulator, prompt: str) -> int:
    return sum(1 for record in emulator.predictions if record.input.get("prompt") == prompt)


# -- one create, one fault -------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        Faults(server_error_after_create=1.0, endpoints={"create"}),
        Faults(reset_after_create=1.0, endpoints={"create"}),
        Faults(malformed=1.0, endpoints={"create"}),
    ],
    ids=["5xx after storing", "reset after storing", "broken answer"],
)
async def test_a_create_the_server_stored_is_attached_to(
    emulator: Emulator, faults: Faults
) -> None:
    emulator.faults = faults
    async with make_client(emulator.base_url) as client:
        prediction = await client.create(MODEL, {"prompt": "stored"})
    [record] = emulator.predictions
    assert prediction.id == record.id
    assert emulator.count("create") == 1
    assert emulator.count("list") >= 1
    assert record.id in client._creates.ledger.claimed


async def test_a_create_that_timed_out_after_storing_is_attached_to(emulator: Emulator) -> None:
    emulator.faults = Faults(slow=1.0, slow_seconds=5, endpoints={"create"})
    started = time.monotonic()
    async with make_client(emulator.base_url, timeout=0.2) as client:
        prediction = await client.create(MODEL, {"prompt": "slow"})
    assert time.monotonic() - started < 3
    # One create (still held by the server), found by a lookup.
    assert [record.id for record in emulator.predictions] == [prediction.id]
    assert emulator.count("list") >= 1


@pytest.mark.parametrize(
    "faults",
    [
        Faults(server_error=1.0, endpoints={"create"}),
        Faults(reset=1.0, endpoints={"create"}),
    ],
    ids=["5xx before storing", "reset before storing"],
)
async def test_a_create_certainly_not_made_is_sent_once_more(
    emulator: Emulator, faults: Faults
) -> None:
    emulator.faults = faults

    def heal() -> None:
        emulator.faults = None

    async with make_client(emulator.base_url, Sleeps(then=heal)) as client:
        prediction = await client.create(MODEL, {"prompt": "again"})
    assert [record.id for record in emulator.predictions] == [prediction.id]
    assert emulator.count("create") == 2
    # Two lookups a moment apart found nothing before the input was sent again.
    assert emulator.count("list") == 2


async def test_a_create_that_keeps_failing_ends_in_one_error(emulator: Emulator) -> None:
    emulator.faults = Faults(server_error=1.0, endpoints={"create"})
    async with make_client(emulator.base_url) as client:
        with pytest.raises(qr.ServerError):
            await client.create(MODEL, {"prompt": "never"})
    assert len(emulator.predictions) == 0
    assert emulator.count("create") == RETRY.attempts


async def test_when_the_lookup_fails_the_error_carries_the_input(emulator: Emulator) -> None:
    emulator.faults = Faults(server_error=1.0, endpoints={"create", "list"})
    async with make_client(emulator.base_url) as client:
        with pytest.raises(qr.CreateInDoubt) as caught:
            await client.create(MODEL, {"prompt": "lost"})
    error = caught.value
    assert (error.model, error.input) == (MODEL, {"prompt": "lost"})
    assert "may exist" in str(error)
    assert isinstance(error.__cause__, qr.ServerError)
    # The lookup was retried as a GET is; the create was sent once.
    assert emulator.count("list") == RETRY.attempts
    assert emulator.count("create") == 1


async def test_a_hung_server_never_hangs_a_create() -> None:
    async with Scripted() as server:
        server.always("POST", CREATE_PATH, hang)
        server.always("GET", LIST_PATH, hang)
        started = time.monotonic()
        async with make_client(server.base_url, timeout=0.05) as client:
            with pytest.raises(qr.CreateInDoubt, match="timed out"):
                await client.create(MODEL, {"prompt": "x"})
        assert time.monotonic() - started < 5
        assert server.count("POST") == 1


async def test_a_refused_create_is_never_looked_up(emulator: Emulator) -> None:
    async with make_client(emulator.base_url) as client:
        with pytest.raises(qr.InvalidInputError):
            await client.create(MODEL, {"prompt": "x", "aspect_ratio": "7:5"})
    assert emulator.count("list") == 0


def test_an_input_that_is_not_json_is_refused_before_sending() -> None:
    looped: dict[str, object] = {"prompt": "x"}
    looped["self"] = looped
    deep: object = "x"
    for _ in range(5000):
        deep = [deep]
    for bad in ({"prompt": float("nan")}, {"prompt": object()}, looped, {"prompt": deep}):
        with pytest.raises(qr.InputError, match="not JSON"):
            build_create(
                MODEL,
                bad,
                wait=None,
                webhook=None,
                webhook_events_filter=None,
                cancel_after=None,
            )


# -- a small API for what the emulator cannot stage ----------------------------------


class MiniAPI:
    """Predictions in memory; each create answered by the next scripted behaviour.

    A behaviour gets the stored prediction (or None when the create is not stored)
    and answers.
    """

    def __init__(self, server: Scripted, *, clock_offset: float = 0.0) -> None:
        self.server = server
        self.offset = clock_offset
        self.stored: list[dict[str, Any]] = []
        self.behaviours: collections.deque[tuple[bool, Any]] = collections.deque()
        self.extra: list[dict[str, Any]] = []
        self.send_date = True
        server.always("POST", CREATE_PATH, self.create)
        server.always("GET", LIST_PATH, self.list)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.offset)

    def headers(self) -> dict[str, str]:
        if not self.send_date:
            return {"Date": "unknown"}  # aiohttp adds a Date header to any answer without one
        return {"Date": email.utils.formatdate(time.time() + self.offset, usegmt=True)}

    def then(
        self, answer: Callable[[dict[str, Any]], Awaitable[web.Response]], *, store: bool
    ) -> None:
        """Answer the next create with ``answer``, storing its prediction if ``store``."""
        self.behaviours.append((store, answer))

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        store, answer = self.behaviours.popleft() if self.behaviours else (True, None)
        prediction = prediction_json(
            f"p{len(self.stored) + 1}",
            status="starting",
            input=body["input"],
            created_at=self.now(),
        )
        if store:
            self.stored.append(prediction)
        if answer is None:
            return web.json_response(prediction, status=201, headers=self.headers())
        result: web.Response = await answer(prediction)
        return result

    async def list(self, request: web.Request) -> web.StreamResponse:
        del request
        results = [*reversed(self.stored), *self.extra]
        return web.json_response(
            {"next": None, "previous": None, "results": results}, headers=self.headers()
        )


async def fail_500(prediction: dict[str, Any]) -> web.Response:
    del prediction
    return web.json_response({"title": "Internal Server Error"}, status=500)


@pytest.fixture
async def mini() -> AsyncIterator[MiniAPI]:
    async with Scripted() as server:
        yield MiniAPI(server)


async def test_the_lookup_itself_is_retried_as_a_get(mini: MiniAPI) -> None:
    mini.then(fail_500, store=True)
    mini.server.queue("GET", LIST_PATH, reply(503, {"detail": "busy"}), reply(429, {}))
    async with make_client(mini.server.base_url) as client:
        prediction = await client.create(MODEL, {"prompt": "x"})
    assert prediction.id == "p1"
    assert mini.server.count("GET", LIST_PATH) == 3
    assert mini.server.count("POST") == 1


async def test_identical_inputs_never_share_a_prediction(mini: MiniAPI) -> None:
    """A create in doubt waits for an identical create still under way before looking.

    The first create is stored at once but answered late; the second fails before it
    is stored. Looking up right away would find the first one's prediction, unclaimed.
    """

    async def late(prediction: dict[str, Any]) -> web.Response:
        await anyio.sleep(0.3)
        return web.json_response(prediction, status=201)

    mini.then(late, store=True)
    mini.then(fail_500, store=False)
    results: list[qr.Prediction] = []
    async with make_client(mini.server.base_url) as client:

        async def submit(delay: float) -> None:
            await anyio.sleep(delay)
            results.append(await client.create(MODEL, {"prompt": "twin"}))

        async with anyio.create_task_group() as group:
            group.start_soon(submit, 0)
            group.start_soon(submit, 0.05)
    assert sorted(p.id for p in results) == ["p1", "p2"]
    assert mini.server.count("POST") == 3
    assert len(mini.stored) == 2
    # The lookup came only after the first create was answered.
    posts = [i for i, seen in enumerate(mini.server.seen) if seen.method == "POST"]
    lists = [i for i, seen in enumerate(mini.server.seen) if seen.method == "GET"]
    assert lists
    assert min(lists) > posts[1]
    assert client._creates.ledger.inputs == {}


async def test_identical_inputs_through_create_faults_each_get_their_own(
    emulator: Emulator,
) -> None:
    emulator.faults = Faults(
        server_error=0.15,
        reset=0.1,
        server_error_after_create=0.15,
        reset_after_create=0.1,
        malformed=0.1,
        endpoints={"create"},
    )
    returned: dict[str, list[str]] = collections.defaultdict(list)
    failures: list[BaseException] = []
    async with make_client(emulator.base_url) as client:

        async def submit(prompt: str) -> None:
            try:
                prediction = await client.create(MODEL, {"prompt": prompt})
            except qr.QuickRouterError as exc:
                failures.append(exc)
            else:
                returned[prompt].append(prediction.id)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for number in range(30):
                    group.start_soon(submit, f"same {number % 3}")
    faults = collections.Counter(r.fault for r in emulator.requests if r.fault)
    assert faults["server_error_after_create"] + faults["reset_after_create"] > 0
    # Listing never failed, so every prediction on the server went to exactly one
    # submission, and every failure is certain (nothing made).
    stored: dict[str, set[str]] = collections.defaultdict(set)
    for record in emulator.predictions:
        stored[record.input["prompt"]].add(record.id)
    for prompt in stored.keys() | returned.keys():
        ids = returned[prompt]
        assert len(ids) == len(set(ids))
        assert set(ids) == stored[prompt]
    assert sum(len(ids) for ids in returned.values()) + len(failures) == 30
    assert not any(isinstance(error, qr.CreateInDoubt) for error in failures)


async def test_a_server_clock_far_behind_still_finds_the_prediction() -> None:
    async with Scripted() as server:
        mini = MiniAPI(server, clock_offset=-3600)
        mini.then(fail_500, store=True)
        async with make_client(server.base_url) as client:
            prediction = await client.create(MODEL, {"prompt": "skew"})
        assert prediction.id == "p1"
        assert server.count("POST") == 1
        # The local clock is an hour ahead of the server's.
        offset = client._transport.clock.offset
        assert offset is not None
        assert 3598 < offset < 3602


async def test_an_older_identical_prediction_is_not_taken_for_ours(mini: MiniAPI) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)
    mini.extra.append(
        prediction_json("old", status="succeeded", input={"prompt": "same"}, created_at=old)
    )
    mini.then(fail_500, store=False)
    async with make_client(mini.server.base_url) as client:
        prediction = await client.create(MODEL, {"prompt": "same"})
    assert prediction.id == "p1"
    assert mini.server.count("POST") == 2


async def test_without_a_date_header_the_local_clock_is_allowed_some_skew(mini: MiniAPI) -> None:
    mini.send_date = False
    mini.offset = -60

    async def fail_without_date(prediction: dict[str, Any]) -> web.Response:
        del prediction
        return web.json_response({"detail": "oops"}, status=500, headers=mini.headers())

    mini.then(fail_without_date, store=True)
    async with make_client(mini.server.base_url) as client:
        prediction = await client.create(MODEL, {"prompt": "no date"})
        assert client._transport.clock.offset is None
    assert prediction.id == "p1"
    assert mini.server.count("POST") == 1


async def test_too_many_recent_predictions_to_search_is_a_create_in_doubt(
    mini: MiniAPI,
) -> None:
    mini.then(fail_500, store=True)
    page = {
        "next": "https://api.replicate.com/v1/predictions?cursor=more",
        "previous": None,
        "results": [
            prediction_json(f"other{i}", input={"prompt": f"other {i}"}) for i in range(100)
        ],
    }
    mini.server.always("GET", LIST_PATH, reply(200, page))
    async with make_client(mini.server.base_url) as client:
        with pytest.raises(qr.CreateInDoubt, match="too many predictions") as caught:
            await client.create(MODEL, {"prompt": "needle"})
    assert caught.value.input == {"prompt": "needle"}
    assert isinstance(caught.value.__cause__, qr.ServerError)
    assert mini.server.count("GET", LIST_PATH) == 10
    # Only predictions created since the create was sent are asked for, and cursor pages
    # from another host were followed on the API host, with their query.
    first, *others = [seen.query for seen in mini.server.seen if seen.method == "GET"]
    assert first.startswith("created_after=")
    assert set(others) == {"cursor=more"}


async def test_an_empty_listing_means_absent(mini: MiniAPI) -> None:
    mini.then(fail_500, store=False)
    mini.server.queue(
        "GET",
        LIST_PATH,
        reply(200, {"next": None, "previous": None, "results": []}),
        reply(200, {"next": "https://x.invalid/?c=1", "results": []}),
    )
    async with make_client(mini.server.base_url) as client:
        assert (await client.create(MODEL, {"prompt": "x"})).id == "p1"
    assert mini.server.count("POST") == 2


async def test_watched_predictions_are_never_attached_to(mini: MiniAPI) -> None:
    mini.then(fail_500, store=False)
    mini.extra.append(prediction_json("watched", status="starting", input={"prompt": "w"}))
    async with make_client(mini.server.base_url) as client:
        request = build_create(
            MODEL,
            {"prompt": "w"},
            wait=None,
            webhook=None,
            webhook_events_filter=None,
            cancel_after=None,
        )
        prediction = await client._creates.create(request, taken={"watched"})
    assert prediction.id == "p1"


def test_old_claims_are_forgotten() -> None:
    ledger = Ledger()
    ledger.claimed["ancient"] = time.monotonic() - 7200
    ledger.claimed["recent"] = time.monotonic() - 60
    ledger.claim("fresh")
    ledger.claim("newer")
    ledger.claim("fresh")
    assert list(ledger.claimed) == ["recent", "newer", "fresh"]


@pytest.mark.parametrize(
    ("model", "prediction", "match"),
    [
        ("google/imagen-4", {"model": "google/imagen-4", "version": "hidden"}, True),
        ("google/imagen-4", {"model": "google/imagen-4-fast"}, False),
        ("acme/m:abc123", {"model": "acme/m", "version": "abc123"}, True),
        ("acme/m:abc123", {"model": "acme/m", "version": "def456"}, False),
        ("acme/m:abc123", {"model": None, "version": None}, True),
        ("acme/m:abc123", {"model": "acme/n", "version": "abc123"}, False),
        ("abc123", {"model": "acme/m", "version": "abc123"}, True),
        ("abc123", {"model": "acme/m", "version": "def456"}, False),
    ],
)
def test_which_predictions_match_a_create(
    model: str, prediction: dict[str, Any], match: bool
) -> None:
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    wanted = Wanted.of(model, {"prompt": "p", "n": 1}, since)
    candidate = qr.Prediction(
        id="x", status=qr.Status.STARTING, input={"n": 1, "prompt": "p"}, **prediction
    )
    assert wanted.accepts(candidate) is match


# -- many predictions through every fault at once ---------------------------------------

FAULTS = Faults(
    throttle=0.2,
    server_error=0.05,
    reset=0.02,
    server_error_after_create=0.005,
    reset_after_create=0.005,
)


@pytest.mark.slow
async def test_two_hundred_predictions_through_every_fault() -> None:
    count = 200
    async with Emulator(duration=(0.05, 0.2), seed=11, faults=FAULTS) as emulator:
        retry = qr.RetryPolicy(attempts=6, initial=0.005, maximum=0.05, max_retry_after=0.05)
        outcomes: list[qr.Outcome[Any]] = []
        with anyio.fail_after(50):
            async with (
                make_client(emulator.base_url, retry=retry, rate_limit=200) as client,
                client.run_many(
                    ((MODEL, {"prompt": f"input {i}"}) for i in range(count)),
                    concurrency=32,
                    timeout=30,
                ) as results,
            ):
                outcomes = [outcome async for outcome in results]
        faults = collections.Counter(r.fault for r in emulator.requests if r.fault)
    # Every input ends as exactly one outcome.
    assert sorted(o.index for o in outcomes) == list(range(count))
    succeeded = [o for o in outcomes if o.ok]
    assert len(succeeded) >= 0.99 * count, [repr(o.error) for o in outcomes if not o.ok]
    # Never two predictions for one input, and every success is its own prediction.
    copies = collections.Counter(record.input["prompt"] for record in emulator.predictions)
    assert max(copies.values()) == 1
    ids = [o.prediction.id for o in succeeded if o.prediction is not None]
    assert len(set(ids)) == len(ids) == len(succeeded)
    # The faults really happened.
    assert faults["throttle"] > 20
    assert faults["server_error"] > 5


# -- what a create sends ----------------------------------------------------------------


def build(model: Any = MODEL, payload: Any = None, **options: Any) -> Any:
    settings: dict[str, Any] = {
        "wait": None,
        "webhook": None,
        "webhook_events_filter": None,
        "cancel_after": None,
    }
    settings.update(options)
    return build_create(model, payload, **settings)


@pytest.mark.parametrize(
    ("options", "headers"),
    [
        ({"wait": True}, {"Prefer": "wait=60"}),
        ({"wait": False}, {}),
        ({"wait": 2.5}, {"Prefer": "wait=3"}),
        ({"cancel_after": "1h30m"}, {"Cancel-After": "1h30m"}),
        ({"cancel_after": dt.timedelta(minutes=2)}, {"Cancel-After": "120s"}),
        ({"cancel_after": 10.4}, {"Cancel-After": "11s"}),
    ],
)
def test_create_headers(options: dict[str, Any], headers: dict[str, str]) -> None:
    assert build(MODEL, {"prompt": "x"}, **options).headers == headers


@pytest.mark.parametrize(
    ("args", "options"),
    [
        ((MODEL, None), {}),
        ((qr.Imagen4Input(prompt="x"), {"prompt": "y"}), {}),
        ((42, {"prompt": "x"}), {}),
        ((MODEL, {"prompt": "x"}), {"wait": 0}),
        ((MODEL, {"prompt": "x"}), {"wait": "soon"}),
        ((MODEL, {"prompt": "x"}), {"cancel_after": 4}),
        ((MODEL, {"prompt": "x"}), {"webhook": "ftp://hooks.example"}),
        ((MODEL, {"prompt": "x"}), {"webhook_events_filter": []}),
        ((MODEL, {"prompt": "x"}), {"webhook_events_filter": ["start", "bogus"]}),
    ],
)
def test_create_arguments_are_checked_before_sending(
    args: tuple[Any, Any], options: dict[str, Any]
) -> None:
    with pytest.raises(qr.InputError):
        build(*args, **options)


def test_create_bodies() -> None:
    typed = build(qr.Imagen4Input(prompt="x", aspect_ratio="16:9"))
    assert typed.path == "/v1/models/google/imagen-4/predictions"
    assert list(json.loads(typed.body)) == ["input"]
    assert typed.input["prompt"] == "x"
    assert typed.input["aspect_ratio"] == "16:9"
    assert typed.sync_wait is None
    versioned = build(
        "acme/m:abc",
        {"prompt": "x", "sizes": (1, 2)},
        wait=5,
        webhook="https://hooks.example/q",
        webhook_events_filter=("start", "completed"),
    )
    assert versioned.path == "/v1/predictions"
    assert json.loads(versioned.body) == {
        "input": {"prompt": "x", "sizes": [1, 2]},
        "version": "acme/m:abc",
        "webhook": "https://hooks.example/q",
        "webhook_events_filter": ["start", "completed"],
    }
    assert versioned.sync_wait == 5
    # The same input in any key order is one text, as a lookup compares it.
    assert versioned.input_json == build("acme/m", {"sizes": [1, 2], "prompt": "x"}).input_json
    assert versioned.input_json != build("acme/m:abc", {"prompt": "x", "sizes": [1, 3]}).input_json


def test_input_json_is_checked_and_keyed_as_the_server_echoes_it() -> None:
    # Keys of several types cannot be sorted; as JSON they are strings, and so is the key.
    mixed = build(MODEL, {"prompt": "x", "weights": {1: "a", "b": 2}})
    assert mixed.input == {"prompt": "x", "weights": {"1": "a", "b": 2}}
    assert json.loads(mixed.body)["input"] == mixed.input
    for bad in ({"prompt": float("nan")}, {"prompt": object()}, {"prompt": "\ud800"}):
        with pytest.raises(qr.InputError, match="input is not"):
            build(MODEL, bad)
    # Non-ASCII text goes as UTF-8, unescaped.
    assert "café".encode() in build(MODEL, {"prompt": "café"}).body


def test_matching_with_a_start_time() -> None:
    now = dt.datetime.now(dt.UTC)
    wanted = Wanted.of(MODEL, {"prompt": "x"}, now)
    recent = qr.Prediction(id="a", status=qr.Status.STARTING, input={"prompt": "x"}, created_at=now)
    old = attrs.evolve(recent, created_at=now - dt.timedelta(hours=1))
    assert wanted.accepts(recent)
    assert not wanted.accepts(old)


# -- a gateway without the list route ----------------------------------------------------


@pytest.fixture
async def gateway() -> AsyncIterator[Emulator]:
    async with Emulator(profile="gateway", duration=0.05, seed=31) as emu:
        yield emu


async def test_on_a_gateway_a_create_in_doubt_raises_with_its_input(
    gateway: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.faults = Faults(server_error_after_create=1.0, endpoints={"create"})
    with caplog.at_level(logging.WARNING, "quickrouter_async"):
        async with make_client(gateway.base_url) as client:
            for number in range(3):
                with pytest.raises(qr.CreateInDoubt) as caught:
                    await client.create(MODEL, {"prompt": f"doubt {number}"})
                assert caught.value.input == {"prompt": f"doubt {number}"}
                assert "no list route" in str(caught.value)
            assert client.capabilities.list_predictions is False
    # At most once: each create sent once, and looked for once (the route was absent).
    assert gateway.count("create") == 3
    assert gateway.count("list") == 1
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "no list route" in caplog.records[0].getMessage()


async def test_on_a_gateway_resend_sends_a_create_in_doubt_again(gateway: Emulator) -> None:
    gateway.faults = Faults(server_error_after_create=1.0, endpoints={"create"})

    def heal() -> None:
        gateway.faults = None

    retry = attrs.evolve(RETRY, in_doubt="resend")
    async with make_client(gateway.base_url, Sleeps(then=heal), retry=retry) as client:
        prediction = await client.create(MODEL, {"prompt": "paid twice"})
    # The first create was stored before its 500: resending made a second prediction.
    assert server_copies(gateway, "paid twice") == 2
    assert prediction.id == gateway.predictions[-1].id


@pytest.mark.parametrize(
    ("profile", "in_doubt"),
    [("replicate", "raise"), ("gateway", "raise"), ("gateway", "resend")],
)
async def test_through_create_faults_nothing_is_created_twice_unless_asked(
    profile: str, in_doubt: str
) -> None:
    faults = Faults(server_error=0.1, server_error_after_create=0.1, endpoints={"create"})
    retry = qr.RetryPolicy(
        attempts=6, initial=0.001, maximum=0.01, max_retry_after=0.02, in_doubt=in_doubt
    )
    async with (
        Emulator(profile=profile, duration=0.05, seed=33, faults=faults) as emu,  # type: ignore[arg-type]
        make_client(emu.base_url, retry=retry, rate_limit=1000) as client,
        client.run_many(((MODEL, {"prompt": f"p {n}"}) for n in range(60)), timeout=30) as results,
    ):
        outcomes = [outcome async for outcome in results]
    copies = collections.Counter(record.input["prompt"] for record in emu.predictions)
    stored_then_failed = sum(r.fault == "server_error_after_create" for r in emu.requests)
    assert stored_then_failed > 0
    errors = collections.Counter(type(o.error).__name__ for o in outcomes if not o.ok)
    if in_doubt == "raise":
        assert max(copies.values()) == 1
        allowed = {"CreateInDoubt"} if profile == "gateway" else set()
        assert set(errors) <= allowed, errors
    else:
        assert not errors
        assert sum(copies.values()) - len(copies) <= stored_then_failed
