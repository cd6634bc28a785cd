"""The API key stays secret: never in reprs, logs, errors or tracebacks, never sent away.

Each test uses a key no other string in the process contains, and looks for it
everywhere the library could have put it.
"""

from __future__ import annotations

import logging
import traceback
from typing import TYPE_CHECKING, Any

import pytest
import quickrouter_async as qr
from aiohttp import web
from quickrouter_async._config import resolve_base_url
from quickrouter_async.testing import Emulator, Faults

from .http_servers import Scripted, drop, hang, prediction_json, reply

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

KEY = "sk-qr-5e1f0c7d2b9a4e83-SECRET"
RETRY = qr.RetryPolicy(attempts=3, initial=0.001, maximum=0.005, max_retry_after=0.01)
POLL = qr.PollPolicy(sync_wait=None, interval=0.01)
GET_PATH = "/replicate/v1/predictions/p1"


def make_client(base_url: str, **options: Any) -> qr.QuickRouter:
    options.setdefault("retry", RETRY)
    options.setdefault("poll", POLL)
    return qr.QuickRouter(KEY, base_url=base_url, **options)


def everything_shown(error: BaseException) -> str:
    """Every way an error is shown: message, repr, attributes, plain and local tracebacks."""
    parts = [str(error), repr(error), repr(vars(error))]
    parts.extend(traceback.format_exception(error))
    with_locals = traceback.TracebackException.from_exception(error, capture_locals=True)
    parts.extend(with_locals.format())
    return "".join(parts)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(duration=0.05, api_key=KEY, seed=3) as emu:
        yield emu


def test_reprs_never_show_the_key() -> None:
    client = make_client("https://api.example")
    assert repr(client) == "<QuickRouter base_url='https://api.example' api_key=set>"
    transport = client._transport
    shown = repr(client) + repr(vars(client)) + repr(transport) + repr(vars(transport))
    assert KEY not in shown
    for keyless in (
        qr.QuickRouter(base_url="https://api.example"),
        qr.QuickRouter("", base_url="https://api.example"),
    ):
        assert "api_key=missing" in repr(keyless)


async def test_no_key_means_no_request(emulator: Emulator) -> None:
    async with qr.QuickRouter("", base_url=emulator.base_url) as client:
        with pytest.raises(qr.AuthenticationError, match="no API key"):
            await client.get("p1")
    assert emulator.requests == []


async def test_debug_logs_never_show_the_key(
    emulator: Emulator, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    emulator.faults = Faults(
        throttle=0.2,
        server_error=0.2,
        reset=0.1,
        server_error_after_create=0.2,
        reset_after_create=0.1,
        malformed=0.1,
    )
    with caplog.at_level(logging.DEBUG):
        async with make_client(
            emulator.base_url,
            retry=qr.RetryPolicy(attempts=8, initial=0.001, maximum=0.005, max_retry_after=0.01),
        ) as client:
            for number in range(8):
                try:
                    prediction = await client.run(qr.Imagen4Input(prompt=f"lighthouse {number}"))
                    await client.download(prediction, tmp_path)
                except qr.QuickRouterError:
                    pass
        async with qr.QuickRouter("sk-wrong", base_url=emulator.base_url, retry=RETRY) as wrong:
            with pytest.raises(qr.AuthenticationError):
                await wrong.get("p1")
    records = caplog.records
    levels = {record.levelno for record in records if record.name.startswith("quickrouter_async")}
    assert {logging.DEBUG, logging.INFO} <= levels
    for record in records:
        text = record.getMessage() + (record.exc_text or "")
        if record.exc_info and record.exc_info[1] is not None:
            text += everything_shown(record.exc_info[1])
        assert KEY not in text, record.name
    assert KEY not in caplog.text


async def test_error_messages_and_tracebacks_never_show_the_key(tmp_path: Path) -> None:
    async def echo_key(request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "")
        return web.json_response(
            {"title": "Unauthenticated", "detail": f"token {token} is not valid"}, status=401
        )

    async def garbled_echo(request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "")
        return web.Response(text=f"<html>{token}</html>", content_type="text/html")

    async def invalid_echo(request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "")
        body = {"detail": "bad", "invalid_fields": [{"field": "input", "description": token}]}
        return web.json_response(body, status=422)

    errors: list[BaseException] = []
    async with Scripted() as server:
        server.always("GET", GET_PATH, echo_key)
        server.always("GET", "/replicate/v1/predictions/garbled", garbled_echo)
        server.always("POST", "/replicate/v1/models/google/imagen-4/predictions", invalid_echo)
        server.always("GET", "/replicate/v1/predictions/hung", hang)
        server.always("GET", "/replicate/v1/predictions/dropped", drop)
        async with make_client(server.base_url, timeout=0.05) as client:
            for call in (
                client.get("p1"),
                client.get("garbled"),
                client.get("hung"),
                client.get("dropped"),
                client.create("google/imagen-4", {"prompt": "x"}),
            ):
                with pytest.raises(qr.QuickRouterError) as caught:
                    await call
                errors.append(caught.value)
    # The server is gone: the connection is refused.
    async with make_client(server.base_url) as client:
        with pytest.raises(qr.TransportError, match="could not connect") as caught:
            await client.get("p1")
        errors.append(caught.value)
    kinds = {type(error) for error in errors}
    assert {qr.AuthenticationError, qr.ProtocolError, qr.RequestTimeout} <= kinds
    assert qr.InvalidInputError in kinds
    for error in errors:
        assert KEY not in everything_shown(error), type(error)
    assert "[redacted]" in str(errors[0])


async def test_file_hosts_never_get_the_key(emulator: Emulator, tmp_path: Path) -> None:
    async with make_client(emulator.base_url) as client:
        prediction = await client.run(
            qr.Seedream4Input(
                prompt="three lighthouses", sequential_image_generation="auto", max_images=3
            )
        )
        files = await client.download(prediction, tmp_path)
    assert files
    # The emulator serves files on the API's own host and port: still no key.
    assert emulator.file_requests
    assert not any(record.had_authorization for record in emulator.file_requests)


async def test_a_file_host_elsewhere_never_gets_the_key(tmp_path: Path) -> None:
    async with Scripted() as api, Scripted() as files:
        files.always("GET", "/out.png", reply(200, raw=b"\x89PNG", content_type="image/png"))
        # The API's own host may redirect a file too: followed, but without the key.
        api.always(
            "GET",
            "/files/out.png",
            reply(302, raw=b"", headers={"Location": f"{files.url}/out.png"}),
        )
        api.always(
            "GET",
            GET_PATH,
            reply(
                200,
                prediction_json("p1", output=[f"{files.url}/out.png", f"{api.url}/files/out.png"]),
            ),
        )
        async with make_client(api.base_url) as client:
            paths = await client.download("p1", tmp_path)
        assert len(paths) == 2
        assert api.seen[0].headers["Authorization"] == f"Bearer {KEY}"
        downloads = [seen for seen in api.seen + files.seen if "out.png" in seen.path]
        assert len(downloads) == 3
        assert not any("Authorization" in seen.headers for seen in downloads)


async def test_a_redirect_to_another_host_never_gets_the_key() -> None:
    async with Scripted() as api, Scripted() as other:
        other.always("GET", GET_PATH, reply(200, prediction_json("p1")))
        api.always(
            "GET", GET_PATH, reply(302, raw=b"", headers={"Location": f"{other.url}{GET_PATH}"})
        )
        async with make_client(api.base_url) as client:
            with pytest.raises(qr.ProtocolError, match="redirects are not followed") as caught:
                await client.get("p1")
        assert f"answered 302 to {other.url}{GET_PATH}" in str(caught.value)
        assert other.count() == 0
        # A redirect is not a passing failure: asked once.
        assert api.count() == 1


@pytest.mark.parametrize(
    "base_url",
    [
        "http://localhost:8080/replicate",
        "http://127.0.0.1:9/replicate",
        "http://127.8.9.10",
        "http://[::1]:8080",
        "http://app.localhost",
        "https://api.quickrouter.ai/replicate/",
    ],
)
def test_plain_http_is_fine_on_loopback(base_url: str) -> None:
    assert resolve_base_url(base_url) == base_url.rstrip("/")


@pytest.mark.parametrize(
    "base_url",
    ["http://api.quickrouter.ai/replicate", "http://10.0.0.5:8080", "http://localhost.example"],
)
def test_plain_http_elsewhere_needs_an_explicit_opt_in(base_url: str) -> None:
    with pytest.raises(qr.InputError, match="unencrypted"):
        qr.QuickRouter(KEY, base_url=base_url)
    assert qr.QuickRouter(KEY, base_url=base_url, allow_http=True).base_url == base_url


def test_plain_http_from_the_environment_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUICKROUTER_BASE_URL", "http://api.quickrouter.ai/replicate")
    with pytest.raises(qr.InputError, match="unencrypted"):
        qr.QuickRouter(KEY)


@pytest.mark.parametrize(
    "base_url",
    [
        "ftp://api.example",
        "https://",
        "https://api.example/?key=1",
        "https://api.example/#x",
        f"https://user:{KEY}@api.example",
    ],
)
def test_other_bad_base_urls_are_refused(base_url: str) -> None:
    with pytest.raises(qr.InputError) as caught:
        qr.QuickRouter(KEY, base_url=base_url)
    assert KEY not in str(caught.value)
