"""Hostile servers and hostile names: bounded bodies, no key in any error, no steered path.

Each case is staged over real HTTP on 127.0.0.1: an aiohttp server for answers aiohttp
can write, and a raw TCP server for what no HTTP library would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import traceback
import tracemalloc
import zlib
from typing import TYPE_CHECKING, Any

import pytest
import quickrouter_async as qr
import yarl
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quickrouter_async._http import ERROR_BODY_BYTES, MAX_BODY_BYTES
from quickrouter_async._request import build_create, prediction_path

from .http_servers import Scripted, prediction_json, reply

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

KEY = "sk-hostile-7f3a9c21b4e5d6f8-KEY"
GET_PATH = "/replicate/v1/predictions/p1"
CREATE_PATH = "/replicate/v1/models/google/imagen-4/predictions"


def make_client(base_url: str, key: str = KEY, **options: Any) -> qr.QuickRouter:
    options.setdefault("retry", qr.RetryPolicy(attempts=2, initial=0.001, maximum=0.001))
    return qr.QuickRouter(key, base_url=base_url, **options)


def everything_shown(error: BaseException) -> str:
    """Every way an error and the errors behind it are shown, locals included."""
    parts: list[str] = []
    seen: BaseException | None = error
    while seen is not None:
        parts += [str(seen), repr(seen), repr(vars(seen))]
        request_info = getattr(seen, "request_info", None)
        parts.append(repr(request_info))
        seen = seen.__cause__ or seen.__context__
    parts.extend(traceback.format_exception(error))
    parts.extend(traceback.TracebackException.from_exception(error, capture_locals=True).format())
    return "".join(parts)


# -- 16.1: compressed answers stay under the body cap -------------------------------------


def bomb(size: int, wbits: int) -> bytes:
    """A compressed prediction (gzip: wbits 31, deflate: 15) that inflates to ``size``."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = b'{"id": "p1", "status": "succeeded", "output": "'
    parts = [compressor.compress(head)]
    chunk = b"A" * (1 << 20)
    parts.extend(compressor.compress(chunk) for _ in range(size // len(chunk)))
    parts += [compressor.compress(b'"}'), compressor.flush()]
    return b"".join(parts)


@pytest.mark.parametrize(("encoding", "wbits"), [("gzip", 31), ("deflate", 15)])
async def test_a_compressed_bomb_is_refused_in_bounded_memory(encoding: str, wbits: int) -> None:
    body = bomb(64 << 20, wbits)  # inflates to four times the cap
    assert len(body) < MAX_BODY_BYTES // 64
    answer = reply(200, raw=body, headers={"Content-Encoding": encoding})
    async with Scripted() as server, make_client(server.base_url) as client:
        server.always("GET", GET_PATH, answer)
        tracemalloc.start()
        try:
            with pytest.raises(qr.ProtocolError, match="larger than"):
                await client.get("p1")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Asking again would get the same answer: it is not retried.
        assert server.count("GET", GET_PATH) == 1
    assert peak < 2 * MAX_BODY_BYTES + (8 << 20)


async def test_a_compressed_answer_under_the_cap_is_read_whole() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = compressor.compress(b'{"id": "p1", "status": "succeeded"}') + compressor.flush()
    async with Scripted() as server, make_client(server.base_url) as client:
        server.always("GET", GET_PATH, reply(200, raw=body, headers={"Content-Encoding": "gzip"}))
        assert (await client.get("p1")).succeeded


# -- 16.4: the key in no error -------------------------------------------------------------


async def test_a_location_echoing_the_key_is_not_in_the_error() -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        token = request.headers["Authorization"].partition(" ")[2]
        return web.Response(status=302, headers={"Location": f"https://evil.example/{token}"})

    async with Scripted() as server, make_client(server.base_url) as client:
        server.always("GET", GET_PATH, echo)
        server.always("POST", CREATE_PATH, echo)
        with pytest.raises(qr.ProtocolError, match="redirects are not followed") as got:
            await client.get("p1")
        assert "https://evil.example/[redacted]" in str(got.value)
        with pytest.raises(qr.CreateInDoubt) as doubt:
            await client.create("google/imagen-4", {"prompt": "x"})
    for error in (got.value, doubt.value):
        assert KEY not in everything_shown(error)


async def test_answer_headers_echoing_the_key_are_in_no_traceback() -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        token = request.headers["Authorization"]
        return web.json_response(
            {"detail": "boom"}, status=500, headers={"X-Seen": token, "Retry-After": "0"}
        )

    async with Scripted() as server, make_client(server.base_url) as client:
        server.always("GET", GET_PATH, echo)
        server.always("POST", CREATE_PATH, echo)
        errors: list[BaseException] = []
        for call in (client.get("p1"), client.cancel("p1"), client.wait("p1", timeout=5)):
            with pytest.raises(qr.QuickRouterError) as caught:
                await call
            errors.append(caught.value)
        with pytest.raises(qr.CreateInDoubt) as doubt:
            await client.create("google/imagen-4", {"prompt": "x"})
        errors.append(doubt.value)
    for error in errors:
        assert KEY not in everything_shown(error), type(error)


async def test_an_echo_across_the_cut_of_an_error_page_is_replaced_whole() -> None:
    async def page(request: web.Request) -> web.StreamResponse:
        token = request.headers["Authorization"].partition(" ")[2]
        filler = "x" * (ERROR_BODY_BYTES - 20)
        return web.Response(status=404, text=filler + token + "y" * 1000)

    async with Scripted() as server, make_client(server.base_url) as client:
        server.always("GET", GET_PATH, page)
        with pytest.raises(qr.NotFoundError) as caught:
            await client.get("p1")
    body = caught.value.body
    assert isinstance(body, str)
    assert KEY[:20] not in body
    assert KEY not in everything_shown(caught.value)


@contextlib.asynccontextmanager
async def raw_server(answer: bytes) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that answers any request with ``answer``, as bytes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/replicate"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: nonsense\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nX-\x00Bad: 1\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",
    ],
    ids=["status line", "length", "header", "short body"],
)
async def test_a_malformed_answer_gives_an_error_with_nothing_of_aiohttp_behind_it(
    answer: bytes,
) -> None:
    async with raw_server(answer) as base_url, make_client(base_url) as client:
        with pytest.raises(qr.TransportError) as caught:
            await client.get("p1")
        with pytest.raises(qr.CreateInDoubt) as doubt:
            await client.create("google/imagen-4", {"prompt": "x"})
    for error in (caught.value, doubt.value.__cause__):
        assert error is not None
        assert error.__cause__ is None
        assert error.__context__ is None
    for error in (caught.value, doubt.value):
        assert KEY not in everything_shown(error)


async def test_with_a_short_key_answers_reach_the_caller_byte_for_byte() -> None:
    body = prediction_json("kk-1", input={"prompt": "keep k"}, output="https://k.example/k.png")
    async with Scripted() as server, make_client(server.base_url, key="k") as client:
        server.always("GET", "/replicate/v1/predictions/kk-1", reply(200, body))
        prediction = await client.get("kk-1")
    assert prediction.id == "kk-1"
    assert prediction.input == {"prompt": "keep k"}
    assert prediction.output == "https://k.example/k.png"


# -- 16.8: names and ids never steer a request ---------------------------------------------

STEERING_MODELS = ["../..", "a/%2e%2e", "a/b#frag", "a/b?x=1", "a/..", "./b", "a/b/c", "a/ b"]
STEERING_IDS = [".", "..", "a/b", "%2e%2e", "a?x=1", "a#f", "", " ", "p1/../../x"]


async def test_hostile_names_and_ids_never_reach_the_server() -> None:
    async with Scripted() as server, make_client(server.base_url) as client:
        for model in STEERING_MODELS:
            with pytest.raises(qr.InputError):
                await client.create(model, {"prompt": "x"})
        for prediction_id in STEERING_IDS:
            for call in (client.get(prediction_id), client.cancel(prediction_id)):
                with pytest.raises(qr.InputError):
                    await call
            with pytest.raises(qr.InputError):
                await client.wait(prediction_id)
            with pytest.raises(qr.InputError):
                await client.download(prediction_id, "unused")
        assert server.seen == []


ROUTE = re.compile(
    r"/replicate/v1/(models/[A-Za-z0-9._-]+/[A-Za-z0-9._-]+/predictions|predictions)"
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.text(max_size=30), prediction_id=st.text(max_size=30))
def test_any_name_or_id_is_refused_or_stays_on_its_route(model: str, prediction_id: str) -> None:
    base = "https://api.example/replicate"
    try:
        request = build_create(
            model,
            {"prompt": "x"},
            wait=None,
            webhook=None,
            webhook_events_filter=None,
            cancel_after=None,
        )
    except qr.InputError:
        pass
    else:
        # aiohttp sends what yarl makes of the URL: dot segments resolved, and so on.
        assert ROUTE.fullmatch(yarl.URL(base + request.path).path), request.path
    try:
        path = prediction_path(prediction_id)
    except qr.InputError:
        return
    for url in (base + path, base + path + "/cancel"):
        parsed = yarl.URL(url)
        assert re.fullmatch(r"/replicate/v1/predictions/[^/]+(/cancel)?", parsed.path), url
        assert parsed.path.split("/")[4] == prediction_id
        assert not parsed.query_string
        assert not parsed.fragment
