"""Tiny aiohttp servers on 127.0.0.1 for answer shapes the emulator does not produce.

`Scripted` answers each request with the next answer queued for its method and path
(or a default), and records what it received, headers included.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
from typing import TYPE_CHECKING, Any, Self

import attrs
from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType


@attrs.frozen
class Seen:
    """One request a `Scripted` server received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    raw_path: str = ""


def prediction_json(
    prediction_id: str,
    *,
    status: str = "succeeded",
    model: str = "google/imagen-4",
    input: dict[str, Any] | None = None,  # noqa: A002
    created_at: dt.datetime | None = None,
    output: object = "https://files.invalid/out.png",
) -> dict[str, Any]:
    """A prediction as the API sends it."""
    created = created_at or dt.datetime.now(dt.UTC)
    return {
        "id": prediction_id,
        "model": model,
        "version": "hidden",
        "input": input if input is not None else {"prompt": "x"},
        "output": output,
        "status": status,
        "error": None,
        "logs": "",
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "urls": {"get": f"https://api.replicate.com/v1/predictions/{prediction_id}"},
    }


def reply(
    status: int = 200,
    body: object = None,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An answer: JSON ``body`` (or ``raw`` bytes) with ``status`` and ``headers``."""

    async def answer(request: web.Request) -> web.StreamResponse:
        del request
        data = raw if raw is not None else json.dumps(body).encode()
        return web.Response(status=status, body=data, headers=headers, content_type=content_type)

    return answer


RELEASE: web.AppKey[asyncio.Event] = web.AppKey("release", asyncio.Event)


async def hang(request: web.Request) -> web.StreamResponse:
    """Never answer, until the server stops (then a 503 nobody reads)."""
    await request.app[RELEASE].wait()
    return web.Response(status=503)


async def drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer."""
    assert request.transport is not None
    request.transport.abort()
    return web.Response()


class Scripted:
    """A server that answers from queues of answers, per method and path.

    ``server.queue("GET", "/replicate/v1/predictions/p1", reply(500), reply(200, {...}))``
    answers the first GET with a 500 and the next with the prediction; once a queue is
    empty, ``default`` (a 404) answers.
    """

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._queues: dict[tuple[str, str], collections.deque[Any]] = {}
        self.default: Callable[[web.Request], Awaitable[web.StreamResponse]] = reply(
            404, {"detail": "not found"}
        )
        self.handlers: dict[tuple[str, str], Any] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    def queue(
        self,
        method: str,
        path: str,
        *answers: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> None:
        """Answer the next requests to ``method path`` with ``answers``, in order."""
        self._queues.setdefault((method, path), collections.deque()).extend(answers)

    def always(
        self, method: str, path: str, answer: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> None:
        """Answer every request to ``method path`` (once its queue is empty) with ``answer``."""
        self.handlers[(method, path)] = answer

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """An API base on this server."""
        return f"{self.url}/replicate"

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """Requests received that match."""
        return sum(
            1
            for seen in self.seen
            if (method is None or seen.method == method) and (path is None or seen.path == path)
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.query_string,
                dict(request.headers),
                body,
                request.raw_path,
            )
        )
        key = (request.method, request.path)
        pending = self._queues.get(key)
        if pending:
            return await pending.popleft()(request)
        handler = self.handlers.get(key, self.default)
        result: web.StreamResponse = await handler(request)
        return result

    async def __aenter__(self) -> Self:
        app = web.Application()
        app[RELEASE] = self._release = asyncio.Event()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._runner is not None
        self._release.set()
        await self._runner.cleanup()
