"""The transport over real HTTP: retries, wait hints, timeouts, broken answers, logging."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import logging
import pickle
import socket
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import anyio.lowlevel
import pytest
import quickrouter_async as qr
from aiohttp import web
from quickrouter_async._http import (
    MAX_BODY_BYTES,
    Answer,
    header,
    http_date,
    redirect_error,
    retry_after_seconds,
)
from quickrouter_async._transport import Transport, in_doubt

from .http_servers import Scripted, drop, hang, prediction_json, reply

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.anyio

RETRY = qr.RetryPolicy(attempts=4, initial=0.01, maximum=0.04, max_retry_after=5)
GET_PATH = "/replicate/v1/predictions/p1"
MODEL_PATH = "/replicate/v1/models/google/imagen-4/predictions"
LIST_PATH = "/replicate/v1/predictions"


class Sleeps(list[float]):
    """Stands in for the transport's sleep: notes each wait and does not wait."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        await anyio.lowlevel.checkpoint()


class Limiter:
    """A create limiter that notes what the transport tells it."""

    def __init__(self) -> None:
        self.acquired = 0
        self.throttled: list[float | None] = []
        self.empty: list[bool] = []
        self.accepted = 0
        self.remaining: list[float | None] = []
        self.unanswered = 0

    async def acquire(self) -> None:
        self.acquired += 1

    def on_throttled(self, retry_after: float | None, *, bucket_empty: bool = True) -> None:
        self.throttled.append(retry_after)
        self.empty.append(bucket_empty)

    def on_accepted(self, remaining: float | None = None) -> None:
        self.accepted += 1
        self.remaining.append(remaining)

    def on_unanswered(self) -> None:
        self.unanswered += 1


@pytest.fixture
async def server() -> AsyncIterator[Scripted]:
    async with Scripted() as scripted:
        yield scripted


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_client(base_url: str, sleeps: Sleeps | None = None, **options: Any) -> qr.QuickRouter:
    options.setdefault("retry", RETRY)
    return qr.QuickRouter("key-123", base_url=base_url, sleep=sleeps, **options)


@pytest.fixture
async def client(server: Scripted, sleeps: Sleeps) -> AsyncIterator[qr.QuickRouter]:
    async with make_client(server.base_url, sleeps) as c:
        yield c


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


OK = reply(200, prediction_json("p1"))

# -- retry policy and timeouts ---------------------------------------------------------


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = qr.RetryPolicy(initial=0.5, maximum=3)
    assert [policy.backoff_ceiling(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 3, 3]
    assert policy.backoff_ceiling(10_000) == 3
    assert all(0 <= policy.delay(3) <= 2 for _ in range(200))


def test_delay_honours_a_hint_but_caps_it() -> None:
    policy = qr.RetryPolicy(initial=0.01, maximum=0.01, max_retry_after=2)
    assert policy.delay(1, hint=1.5) == 1.5
    assert policy.delay(1, hint=3600) == 2
    assert 0 <= policy.delay(1, hint=0) <= 0.01


def test_policies_take_timedeltas() -> None:
    policy = qr.RetryPolicy(initial=dt.timedelta(milliseconds=250), maximum=dt.timedelta(seconds=4))
    assert (policy.initial, policy.maximum) == (0.25, 4)
    timeouts = qr.Timeouts(connect=dt.timedelta(seconds=2), read=1.5, total=None)
    assert (timeouts.connect, timeouts.read, timeouts.total) == (2, 1.5, None)
    assert qr.Timeouts.coerce(dt.timedelta(seconds=3)) == qr.Timeouts(connect=3, read=3, total=3)
    assert qr.Timeouts.coerce(None) == qr.Timeouts()


@pytest.mark.parametrize(
    "options",
    [
        {"attempts": 0},
        {"attempts": True},
        {"attempts": 1.5},
        {"initial": -1},
        {"maximum": "1"},
        {"max_retry_after": None},
        {"retry_statuses": {200}},
        {"retry_statuses": {"503"}},
    ],
)
def test_retry_policy_refuses_nonsense(options: dict[str, Any]) -> None:
    with pytest.raises(qr.InputError):
        qr.RetryPolicy(**options)


@pytest.mark.parametrize("options", [{"total": 0}, {"read": -1}, {"connect": "3"}])
def test_timeouts_refuse_nonsense(options: dict[str, Any]) -> None:
    with pytest.raises(qr.InputError):
        qr.Timeouts(**options)


# -- what is retried -------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_get_is_retried_on_passing_statuses(
    server: Scripted, client: qr.QuickRouter, sleeps: Sleeps, status: int
) -> None:
    server.queue("GET", GET_PATH, reply(status, {"detail": "try again"}), OK)
    prediction = await client.get("p1")
    assert prediction.id == "p1"
    assert server.count("GET", GET_PATH) == 2
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, qr.BadRequestError),
        (401, qr.AuthenticationError),
        (403, qr.PermissionDeniedError),
        (404, qr.NotFoundError),
        (409, qr.APIError),
        (422, qr.InvalidInputError),
        (501, qr.ServerError),
    ],
)
async def test_other_statuses_are_final(
    server: Scripted, client: qr.QuickRouter, status: int, error: type[Exception]
) -> None:
    server.queue("GET", GET_PATH, reply(status, {"title": "No", "status": status}), OK)
    with pytest.raises(error):
        await client.get("p1")
    assert server.count() == 1


async def test_get_gives_up_after_its_attempts(
    server: Scripted, client: qr.QuickRouter, sleeps: Sleeps
) -> None:
    server.always("GET", GET_PATH, reply(500, {"title": "Internal Server Error"}))
    with pytest.raises(qr.ServerError, match="500 Internal Server Error"):
        await client.get("p1")
    assert server.count() == RETRY.attempts
    # Full jitter under an exponential ceiling.
    assert len(sleeps) == RETRY.attempts - 1
    for number, delay in enumerate(sleeps, start=1):
        assert 0 <= delay <= RETRY.backoff_ceiling(number)


async def test_cancel_is_retried_like_a_get(
    server: Scripted, client: qr.QuickRouter, sleeps: Sleeps
) -> None:
    path = GET_PATH + "/cancel"
    server.queue("POST", path, drop, reply(503, None), reply(200, prediction_json("p1")))
    assert (await client.cancel("p1")).id == "p1"
    assert server.count("POST", path) == 3


def when(value: str) -> str:
    """``+N``: an HTTP date N seconds ahead; ``@+N``: a Unix time N seconds ahead."""
    if value.startswith("+"):
        return email.utils.formatdate(time.time() + float(value), usegmt=True)
    if value.startswith("@+"):
        return str(round(time.time() + float(value[1:])))
    return value


@pytest.mark.parametrize(
    ("status", "headers", "body", "low", "high"),
    [
        (429, {"Retry-After": "2"}, {}, 2, 2),
        (503, {"Retry-After": "1.5"}, {}, 1.5, 1.5),
        (429, {"retry-after": "+3"}, {}, 1.5, 3.5),  # an HTTP date, 3 s ahead
        (429, {"Retry-After": "+3600"}, {}, 5, 5),  # capped at max_retry_after
        (429, {}, {"retry_after": 3}, 3, 3),
        (502, {}, {"retry_after": "2"}, 2, 2),
        (429, {}, {"detail": "Request was throttled. Your rate limit resets in ~4s."}, 4, 4),
        (429, {"ratelimit-reset": "1"}, {}, 1, 1),
        (429, {"ratelimit-reset": "@+3"}, {}, 1, 3.5),  # a Unix time, 3 s ahead
        # ratelimit-reset rides on every answer; on a 5xx it is no hint.
        (500, {"ratelimit-reset": "3"}, {}, 0, 0.01),
        (429, {"Retry-After": "soon"}, {}, 0, 0.01),
        (429, {"Retry-After": "nan"}, {}, 0, 0.01),
    ],
)
async def test_server_wait_hints_are_honoured(
    server: Scripted,
    client: qr.QuickRouter,
    sleeps: Sleeps,
    status: int,
    headers: dict[str, str],
    body: object,
    low: float,
    high: float,
) -> None:
    headers = {name: when(value) for name, value in headers.items()}
    server.queue("GET", GET_PATH, reply(status, body, headers=headers), OK)
    await client.get("p1")
    [delay] = sleeps
    assert low <= delay <= high


async def test_create_is_retried_on_429_only(server: Scripted, sleeps: Sleeps) -> None:
    limiter = Limiter()
    throttled = reply(429, {"detail": "throttled"}, headers={"Retry-After": "1"})
    server.queue("POST", MODEL_PATH, throttled, throttled, reply(201, prediction_json("p1")))
    async with make_client(server.base_url, sleeps, rate_limiter=limiter) as client:
        prediction = await client.create("google/imagen-4", {"prompt": "x"})
    assert prediction.id == "p1"
    assert server.count("POST") == 3
    assert sleeps == [1, 1]
    assert (limiter.acquired, limiter.throttled, limiter.accepted) == (3, [1, 1], 1)
    assert server.count("GET") == 0


async def test_a_failed_create_is_not_sent_again_blindly(server: Scripted) -> None:
    # The server has no list route: the create in doubt cannot be looked up.
    limiter = Limiter()
    server.always("POST", MODEL_PATH, reply(503, {"detail": "busy"}))
    async with make_client(server.base_url, rate_limiter=limiter) as client:
        with pytest.raises(qr.CreateInDoubt) as caught:
            await client.create("google/imagen-4", {"prompt": "x"})
        assert client.capabilities.list_predictions is False
    assert server.count("POST") == 1
    assert isinstance(caught.value.__cause__, qr.ServerError)
    assert in_doubt(caught.value.__cause__)
    # A 5xx is an answer that was not a throttle.
    assert (limiter.throttled, limiter.accepted) == ([], 1)


async def test_a_huge_answer_to_a_create_is_not_asked_again(server: Scripted) -> None:
    limiter = Limiter()
    server.always("POST", MODEL_PATH, reply(201, raw=b" " * (MAX_BODY_BYTES + 1)))
    async with make_client(server.base_url, rate_limiter=limiter) as client:
        with pytest.raises(qr.CreateInDoubt) as caught:
            await client.create("google/imagen-4", {"prompt": "x"})
    cause = caught.value.__cause__
    assert isinstance(cause, qr.ProtocolError)
    assert "larger than" in str(cause)
    assert server.count("POST") == 1
    assert (limiter.throttled, limiter.accepted) == ([], 1)


async def test_the_limiter_hears_the_creates_left_in_the_servers_bucket(
    server: Scripted,
) -> None:
    limiter = Limiter()
    server.queue(
        "POST",
        MODEL_PATH,
        reply(201, prediction_json("p1"), headers={"ratelimit-remaining": "42"}),
        reply(201, prediction_json("p2"), headers={"ratelimit-remaining": "soon"}),
        reply(201, prediction_json("p3"), headers={"ratelimit-remaining": "inf"}),
        reply(201, prediction_json("p4")),
    )
    async with make_client(server.base_url, rate_limiter=limiter) as client:
        for _ in range(4):
            await client.create("google/imagen-4", {"prompt": "x"})
    assert limiter.remaining == [42.0, None, None, None]


async def test_a_create_without_an_answer_is_reported_unanswered(sleeps: Sleeps) -> None:
    limiter = Limiter()
    async with make_client(
        f"http://127.0.0.1:{free_port()}", sleeps, rate_limiter=limiter
    ) as client:
        with pytest.raises(qr.TransportError):
            await client.create("google/imagen-4", {"prompt": "x"})
    assert limiter.acquired == RETRY.attempts
    assert (limiter.accepted, limiter.unanswered) == (0, RETRY.attempts)


async def test_refused_connections_are_retried_even_for_creates(sleeps: Sleeps) -> None:
    async with make_client(f"http://127.0.0.1:{free_port()}", sleeps) as client:
        with pytest.raises(qr.TransportError, match="could not connect") as caught:
            await client.get("p1")
        assert not caught.value.request_sent
        assert len(sleeps) == RETRY.attempts - 1
        sleeps.clear()
        with pytest.raises(qr.TransportError) as created:
            await client.create("google/imagen-4", {"prompt": "x"})
        assert type(created.value) is qr.TransportError
        assert not created.value.request_sent
        assert len(sleeps) == RETRY.attempts - 1


class ClosingConnector(aiohttp.TCPConnector):
    """Hands out connections that are already closing, like stale keep-alive ones."""

    async def connect(self, *args: Any, **kwargs: Any) -> Any:
        connection = await super().connect(*args, **kwargs)
        assert connection.transport is not None
        connection.transport.close()
        return connection


async def test_a_reset_before_sending_is_still_a_create_in_doubt(
    server: Scripted, sleeps: Sleeps
) -> None:
    # aiohttp cannot tell a POST that never left from one the server read: the create
    # is not sent again blindly, and here the lookup cannot get through either.
    async with (
        aiohttp.ClientSession(connector=ClosingConnector()) as session,
        make_client(server.base_url, sleeps, session=session) as client,
    ):
        with pytest.raises(qr.CreateInDoubt, match="may exist") as caught:
            await client.create("google/imagen-4", {"prompt": "x"})
    assert caught.value.input == {"prompt": "x"}
    assert caught.value.model == "google/imagen-4"
    # One create attempt; the lookup (a GET) was tried as often as a GET may be.
    assert len(sleeps) == RETRY.attempts - 1
    assert server.count() == 0


# -- timeouts --------------------------------------------------------------------------


async def test_a_hung_server_ends_in_request_timeout(server: Scripted, sleeps: Sleeps) -> None:
    server.always("GET", GET_PATH, hang)
    started = time.monotonic()
    async with make_client(server.base_url, sleeps, timeout=0.1) as client:
        with pytest.raises(qr.RequestTimeout, match="timed out"):
            await client.get("p1")
    assert server.count() == RETRY.attempts
    assert time.monotonic() - started < 5


async def test_a_stalled_body_ends_in_request_timeout(server: Scripted, sleeps: Sleeps) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "application/json"})
        answer.content_length = 1000
        await answer.prepare(request)
        await answer.write(b'{"id": "p1", ')
        return await hang(request)

    server.always("GET", GET_PATH, stall)
    timeouts = qr.Timeouts(connect=1, read=0.1, total=None)
    async with make_client(server.base_url, sleeps, timeout=timeouts) as client:
        with pytest.raises(qr.RequestTimeout):
            await client.get("p1")
    assert server.count() == RETRY.attempts


async def test_an_api_answer_is_bounded_by_read_as_a_whole(
    server: Scripted, sleeps: Sleeps
) -> None:
    # API answers come in one piece: `read` bounds the whole answer, even one that trickles.
    async def trickle(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "application/json"})
        body = json.dumps(prediction_json("p1")).encode()
        answer.content_length = len(body)
        await answer.prepare(request)
        for byte in range(len(body)):
            await answer.write(body[byte : byte + 1])
            await asyncio.sleep(0.02)
        return answer

    server.always("GET", GET_PATH, trickle)
    timeouts = qr.Timeouts(connect=1, read=0.2, total=None)
    async with make_client(server.base_url, sleeps, timeout=timeouts) as client:
        with pytest.raises(qr.RequestTimeout):
            await client.get("p1")


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose listen backlog is full: a connect there never completes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.settimeout(0)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for sock in [*fillers, listener]:
        sock.close()


async def test_a_connect_timeout_is_retried_even_for_creates(
    unanswered_port: int, sleeps: Sleeps
) -> None:
    timeouts = qr.Timeouts(connect=0.1, read=1, total=2)
    base_url = f"http://127.0.0.1:{unanswered_port}"
    async with make_client(base_url, sleeps, timeout=timeouts) as client:
        with pytest.raises(qr.RequestTimeout, match="connecting timed out") as caught:
            await client.create("google/imagen-4", {"prompt": "x"})
    assert not caught.value.request_sent
    assert len(sleeps) == RETRY.attempts - 1


# -- broken answers --------------------------------------------------------------------

NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (reply(200, raw=b"<html><body>busy</body></html>", content_type="text/html"), "not JSON"),
        (reply(200, raw=b'{"id": "p1", "stat'), "not JSON"),
        (reply(200, raw=b"\xff\xfe\x00garbage"), "not JSON"),
        (reply(200, raw=NESTED), "not JSON"),
        (reply(200, raw=b""), "expected a prediction object"),
        (reply(200, [prediction_json("p1")]), "expected a prediction object"),
        (reply(200, {"id": "p1", "status": 7}), "no string 'status'"),
        (reply(200, {"id": 1, "status": "starting"}), "no string 'id'"),
        (reply(200, {"id": "p1", "status": "starting", "input": "x"}), "'input'"),
        (reply(200, {"id": "p1", "status": "starting", "created_at": 5}), "created_at"),
        (reply(200, {"id": "p1", "status": "starting", "created_at": "noon"}), "created_at"),
        (reply(200, {"id": "p1", "status": "starting", "data_removed": "no"}), "data_removed"),
        (reply(200, {"id": "p1", "status": "starting", "logs": []}), "'logs'"),
        (reply(200, {"id": "p1", "status": "x", "webhook_events_filter": "all"}), "filter"),
    ],
)
async def test_broken_answers_are_protocol_errors(
    server: Scripted, sleeps: Sleeps, answer: Any, message: str
) -> None:
    server.always("GET", GET_PATH, answer)
    async with make_client(server.base_url, sleeps, retry=qr.RetryPolicy(attempts=2)) as client:
        with pytest.raises(qr.ProtocolError, match=message):
            await client.get("p1")


async def test_an_unreadable_answer_to_a_get_is_asked_again(
    server: Scripted, client: qr.QuickRouter
) -> None:
    server.queue("GET", GET_PATH, reply(200, raw=b"<html>oops</html>"), OK)
    assert (await client.get("p1")).id == "p1"
    assert server.count() == 2


async def test_a_huge_answer_is_refused_without_reading_it_all(
    server: Scripted, client: qr.QuickRouter
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "application/json"})
        await answer.prepare(request)
        chunk = b" " * 1_000_000
        try:
            for _ in range(MAX_BODY_BYTES // len(chunk) * 2):
                await answer.write(chunk)
        except (ConnectionError, RuntimeError):
            return answer  # the client hung up, as it should
        raise AssertionError("the client read the whole body")

    server.always("GET", GET_PATH, endless)
    server.queue("GET", GET_PATH, reply(200, raw=b" " * (MAX_BODY_BYTES + 1)))
    for _ in range(2):  # too large by its length, then as it streams in
        with pytest.raises(qr.ProtocolError, match="larger than"):
            await client.get("p1")
    # Asking again would get the same answer: it is not retried.
    assert server.count() == 2


async def test_a_huge_error_page_is_cut_short(server: Scripted, client: qr.QuickRouter) -> None:
    server.always("GET", GET_PATH, reply(404, raw=b"<p>" + b"x" * 1_000_000))
    with pytest.raises(qr.NotFoundError) as caught:
        await client.get("p1")
    assert len(str(caught.value)) < 1000


@pytest.mark.parametrize(
    ("status", "location", "shown"),
    [
        (
            302,
            "https://user:pw@other.example:8443/v1/x?token=abc",
            "https://other.example:8443/v1/x",
        ),
        (301, "/elsewhere?sig=1", "to /elsewhere;"),
        (307, "http://other.example:99999/x", "http://other.example/x"),
        (300, None, "answered 300;"),
    ],
)
async def test_redirects_are_errors(
    server: Scripted, client: qr.QuickRouter, status: int, location: str | None, shown: str
) -> None:
    headers = {"Location": location} if location else None
    server.always("GET", GET_PATH, reply(status, raw=b"", headers=headers))
    with pytest.raises(qr.ProtocolError, match="redirects are not followed") as caught:
        await client.get("p1")
    message = str(caught.value)
    assert shown in message
    assert "token" not in message
    assert "pw" not in message
    assert server.count() == 1


# -- logging ---------------------------------------------------------------------------


async def test_requests_log_at_debug_and_retries_at_info(
    server: Scripted, client: qr.QuickRouter, caplog: pytest.LogCaptureFixture
) -> None:
    server.queue("GET", GET_PATH, reply(503, {"detail": "busy"}), OK)
    with caplog.at_level(logging.DEBUG, logger="quickrouter_async"):
        await client.get("p1")
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    name = "quickrouter_async._transport"
    debug = [message for logger, level, message in lines if level == logging.DEBUG]
    assert debug[0].startswith("GET /replicate/v1/predictions/p1 -> 503 (")
    assert debug[1].startswith("GET /replicate/v1/predictions/p1 -> 200 (")
    assert debug[0].endswith("s)")
    [retry] = [(logger, message) for logger, level, message in lines if level == logging.INFO]
    assert retry[0] == name
    assert retry[1].startswith("retrying GET /replicate/v1/predictions/p1 in ")
    assert "(attempt 2 of 4): 503" in retry[1]


# -- the session, URLs and keys --------------------------------------------------------


async def test_a_borrowed_session_is_used_and_left_open(server: Scripted) -> None:
    server.always("GET", GET_PATH, OK)
    async with aiohttp.ClientSession() as session:
        async with make_client(server.base_url, session=session) as client:
            await client.get("p1")
        assert not session.closed
        await session.close()
        async with make_client(server.base_url, session=session) as client:
            with pytest.raises(qr.TransportError, match="session passed to QuickRouter is closed"):
                await client.get("p1")


async def test_an_owned_session_is_renewed_after_closing(
    server: Scripted, client: qr.QuickRouter
) -> None:
    server.always("GET", GET_PATH, OK)
    await client.get("p1")
    await client.aclose()
    await client.get("p1")
    assert server.count() == 2


def test_cursor_urls_stay_on_the_api_host() -> None:
    transport = Transport(
        base_url="https://api.example/replicate",
        api_key="k",
        timeouts=qr.Timeouts(),
        retry=RETRY,
        session=None,
        connections=1,
        user_agent="t",
    )
    assert repr(transport) == "<Transport 'https://api.example/replicate'>"
    assert transport.cursor_url(None) is None
    own = "https://api.example/replicate/v1/predictions?cursor=a"
    assert transport.cursor_url(own) == own
    assert (
        transport.cursor_url("https://api.replicate.com/v1/predictions?cursor=b")
        == "https://api.example/replicate/v1/predictions?cursor=b"
    )
    assert transport.cursor_url("https://api.replicate.com/v1/predictions") == (
        "https://api.example/replicate/v1/predictions"
    )
    assert transport.is_api_url("https://API.example:443/x")
    assert not transport.is_api_url("http://api.example/x")
    assert not transport.is_api_url("https://api.example:8443/x")
    assert not transport.is_api_url("https://api.example:99999/x")
    assert transport.clock.server_time() == pytest.approx(time.time(), abs=1)


@pytest.mark.parametrize(
    "key", ["sk-a b", "sk-1\r\nX-Evil: 1", " sk-2", "sk-3\x00", "sk-4\t", "sk-ключ"]
)
def test_a_key_that_would_break_the_header_is_refused_without_showing_it(key: str) -> None:
    with pytest.raises(qr.InputError, match="api_key") as caught:
        qr.QuickRouter(key, base_url="https://api.example")
    assert key.strip() not in str(caught.value)


def test_the_key_holder_hides_it() -> None:
    transport = Transport(
        base_url="https://api.example",
        api_key="sk-hidden",
        timeouts=qr.Timeouts(),
        retry=RETRY,
        session=None,
        connections=1,
        user_agent="t",
    )
    secret = transport.secret
    assert secret is not None
    assert "sk-hidden" not in repr(secret) + str(secret) + repr(vars(transport))
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    headers = transport._headers("https://api.example/v1/x", {"Prefer": "wait=5"}, json_body=True)
    assert headers["Authorization"] == "Bearer sk-hidden"
    assert "sk-hidden" not in repr(headers)
    assert "Prefer" in repr(headers)
    assert "Authorization" not in transport._headers(
        "https://files.example/x.png", None, json_body=False
    )


# -- downloads -------------------------------------------------------------------------


async def fetch(client: qr.QuickRouter, url: str) -> bytes:
    async with client._transport.stream(url) as (_, chunks):
        return b"".join([chunk async for chunk in chunks])


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (reply(503, {"detail": "busy"}), qr.ServerError),
        (reply(429, {"detail": "slow down"}), qr.RateLimitError),
        (reply(404, {"detail": "gone"}), qr.NotFoundError),
        (reply(304, raw=b""), qr.ProtocolError),
        (drop, qr.TransportError),
    ],
)
async def test_download_errors(
    server: Scripted, client: qr.QuickRouter, answer: Any, error: type[Exception]
) -> None:
    server.always("GET", "/files/a.png", answer)
    with pytest.raises(error):
        await fetch(client, f"{server.url}/files/a.png")


async def test_download_broken_mid_body(server: Scripted) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "image/png"})
        answer.content_length = 100_000
        await answer.prepare(request)
        await answer.write(b"\x89PNG" + b"x" * 1000)
        assert request.transport is not None
        request.transport.abort()
        return answer

    async def stall(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "image/png"})
        answer.content_length = 100_000
        await answer.prepare(request)
        await answer.write(b"\x89PNG")
        return await hang(request)

    server.always("GET", "/files/cut.png", cut)
    server.always("GET", "/files/stall.png", stall)
    async with make_client(server.base_url, timeout=qr.Timeouts(read=0.1)) as client:
        with pytest.raises(qr.TransportError, match=r"failed during download of /files/cut\.png"):
            await fetch(client, f"{server.url}/files/cut.png")
        with pytest.raises(qr.RequestTimeout, match=r"download of /files/stall\.png timed out"):
            await fetch(client, f"{server.url}/files/stall.png")


async def test_download_timeout_while_connecting(unanswered_port: int) -> None:
    async with make_client("https://api.example", timeout=0.1) as client:
        with pytest.raises(qr.RequestTimeout):
            await fetch(client, f"http://127.0.0.1:{unanswered_port}/a")


async def test_an_error_inside_a_download_is_not_taken_for_a_network_error(
    server: Scripted, client: qr.QuickRouter
) -> None:
    server.always("GET", "/files/a.png", reply(200, raw=b"PNG", content_type="image/png"))
    with pytest.raises(OSError, match="disk full"):  # noqa: PT012 (the error is raised inside)
        async with client._transport.stream(f"{server.url}/files/a.png") as (kind, chunks):
            assert kind == "image/png"
            async for _ in chunks:
                raise OSError("disk full")


# -- reading answers -------------------------------------------------------------------


def test_header_lookup_ignores_case() -> None:
    assert header({"retry-after": "3"}, "Retry-After") == "3"
    assert header({"Retry-After": "3"}, "Retry-After") == "3"
    assert header({}, "Date") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480.0),
        ("Wed, 21 Oct 2015 07:28:00 -0000", 1445412480.0),
        ("not a date", None),
        ("", None),
    ],
)
def test_http_dates(value: str, expected: float | None) -> None:
    assert http_date(value) == expected


@pytest.mark.parametrize(
    ("headers", "body", "throttled", "expected"),
    [
        ({}, {"retry_after": True}, True, None),
        ({}, {"retry_after": float("inf")}, True, None),
        ({}, {"retry_after": [1]}, True, None),
        ({}, {"retry_after": -4}, True, 0),
        ({}, "plain text", True, None),
        ({}, {"detail": "resets in ~30s"}, False, None),
        ({"ratelimit-reset": "1"}, None, False, None),
    ],
)
def test_odd_wait_hints(
    headers: dict[str, str], body: object, throttled: bool, expected: float | None
) -> None:
    assert retry_after_seconds(headers, body, throttled=throttled) == expected


def test_a_redirect_error_names_no_secrets() -> None:
    answer = Answer(302, {"Location": "https://u:p@h.example/a?t=1"}, b"")
    error = redirect_error(answer, None, method="GET", path="/v1/p")
    assert "GET /v1/p answered 302 to https://h.example/a;" in str(error)


@pytest.mark.parametrize(
    ("error", "doubt"),
    [
        (qr.ServerError("x", status=500), True),
        (qr.ProtocolError("x"), True),
        (qr.TransportError("x"), True),
        (qr.RequestTimeout("x"), True),
        (qr.TransportError("x", request_sent=False), False),
        (qr.RateLimitError("x", status=429), False),
        (qr.InvalidInputError("x", status=422), False),
        (ValueError("x"), False),
    ],
)
def test_which_create_failures_are_in_doubt(error: BaseException, doubt: bool) -> None:
    assert in_doubt(error) is doubt


async def test_the_server_clock_is_learned_from_date_headers(
    server: Scripted, client: qr.QuickRouter
) -> None:
    ahead = email.utils.formatdate(time.time() + 3600, usegmt=True)
    server.queue("GET", GET_PATH, reply(200, prediction_json("p1"), headers={"Date": ahead}))
    await client.get("p1")
    # The local clock is an hour behind the server's.
    offset = client._transport.clock.offset
    assert offset is not None
    assert -3602 < offset < -3598
    # The same Date again is not parsed again; an unreadable one is ignored.
    server.queue("GET", GET_PATH, reply(200, prediction_json("p1"), headers={"Date": "?"}))
    await client.get("p1")
    assert client._transport.clock.offset == offset


async def test_without_a_key_no_authorization_is_sent(server: Scripted) -> None:
    server.always("GET", GET_PATH, OK)
    transport = Transport(
        base_url=server.base_url,
        api_key=None,
        timeouts=qr.Timeouts(),
        retry=RETRY,
        session=None,
        connections=1,
        user_agent="t",
    )
    try:
        answer = await transport.request("GET", transport.url("/v1/predictions/p1"))
    finally:
        await transport.aclose()
    assert answer.data["id"] == "p1"
    assert "Authorization" not in server.seen[0].headers


@pytest.mark.parametrize(
    ("error", "text"),
    [
        ("plain", "plain"),
        ({"message": "from a gateway"}, "from a gateway"),
        ({"detail": "problem"}, "problem"),
        ({"code": 5}, "{'code': 5}"),
        (["odd"], "['odd']"),
    ],
)
async def test_error_fields_of_any_shape_are_read(
    server: Scripted, client: qr.QuickRouter, error: object, text: str
) -> None:
    body = prediction_json("p1", status="failed") | {"error": error}
    server.always("GET", GET_PATH, reply(200, body))
    assert (await client.get("p1")).error == text
