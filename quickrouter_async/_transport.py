"""The plain HTTP layer: one request at a time, errors mapped in one place, one retry helper.

`Transport.send` sends one request and returns the decoded 2xx answer, or raises: it adds
the ``Authorization`` header (only for the API's own scheme, host and port), applies the
timeouts, reads a bounded body, maps aiohttp's failures and the server's error answers
onto the exception tree, notes the server's clock and logs the request at DEBUG. It never
retries, and never rewrites an answer.

`Transport.retrying` is the one retry loop of the library: GETs, cancels, list pages and
file downloads go through it (`Transport.request`, with `Transport.transient` deciding),
and so do creates, with the create component's own rule. Each retry waits as the
`RetryPolicy` says, at least as long as the server asked, and is logged at INFO.

No exception of aiohttp is ever chained to the library's own (as a cause or as the
context), and the frames an error is raised from hold nothing whose repr shows the key:
aiohttp's request details carry the ``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

import aiohttp
import anyio

from ._clock import ServerClock
from ._errors import (
    APIError,
    ProtocolError,
    QuickRouterError,
    RequestTimeout,
    ServerError,
    TransportError,
)
from ._http import (
    AnswerRefused,
    RedactedHeaders,
    Secret,
    Unreadable,
    decode_json,
    error_from_answer,
    header,
    read_answer,
    redirect_error,
)
from ._output_hosts import guarded_socket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    from ._config import RetryPolicy, Timeouts
    from ._http import Answer

__all__ = ["Response", "Transport", "in_doubt"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_CHUNK: Final = 65536
# Distinct limits (by the seconds a held create adds) kept once made.
_TIMEOUTS_KEPT: Final = 64


class Response:
    """A successful answer: status, headers and the decoded JSON body.

    Its repr shows the status only: a frame holding it must not show what a hostile
    server echoed in its headers when a traceback is printed with its locals.
    """

    __slots__ = ("data", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], data: Any) -> None:
        self.status = status
        self.headers = headers
        self.data = data

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


def _transport_error(exc: BaseException, where: str, secret: Secret | None) -> TransportError:
    """The library's error for a failure of aiohttp or the network (never chained to it)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # Timed out while opening the connection: nothing was sent.
        return RequestTimeout(f"{where}: connecting timed out", request_sent=False)
    if isinstance(exc, TimeoutError):
        return RequestTimeout(f"{where} timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        # The connection was never made: the server cannot have seen the request.
        return TransportError(f"could not connect for {where}: {exc.strerror}", request_sent=False)
    name = type(exc).__name__
    # The text of a parse error quotes what the server sent, which may echo the key.
    said = str(exc).split("\n", 1)[0][:200] if isinstance(exc, aiohttp.ClientError) else ""
    if secret is not None:
        said = secret.scrub(said)
    detail = f" ({said})" if said else ""
    return TransportError(f"connection failed during {where}: {name}{detail}")


class Transport:
    """Sends requests to one API base URL through one `aiohttp.ClientSession`.

    Args:
        base_url: the API's base URL; requests under it carry the key.
        api_key: the key, or None.
        timeouts: the limits of one request.
        retry: how `retrying` waits, and how often it tries.
        session: an aiohttp session to borrow, or None to own one.
        connections: how many requests may be under way at once (raised by
            `ensure_connections`).
        user_agent: the ``User-Agent`` of an owned session.
        clock: the server's clock, learned from ``Date`` headers.
        sleep: how retries wait (tests pass one that records the waits).
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        timeouts: Timeouts,
        retry: RetryPolicy,
        session: aiohttp.ClientSession | None,
        connections: int,
        user_agent: str,
        clock: ServerClock | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.base_url = base_url
        self._origin = self._origin_of(base_url)
        # URLs under this prefix are on the API's origin whatever follows: no parsing.
        self._prefix = base_url.rstrip("/") + "/"
        self._base_path = urlsplit(base_url).path.rstrip("/")
        self.secret = None if not api_key else Secret(api_key)
        self._plain_headers = RedactedHeaders({"Accept": "application/json"})
        self._api_headers = RedactedHeaders(self._plain_headers)
        if self.secret is not None:
            self._api_headers["Authorization"] = f"Bearer {self.secret.reveal()}"
        self.timeouts = timeouts
        self.retry = retry
        self.clock = clock or ServerClock()
        self.sleep = sleep
        self._owns_session = session is None
        self._session = session
        self._user_agent = user_agent
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._connections = max(1, connections)
        # The standard library's: taking a free one costs a comparison, no trip through
        # the loop and no look at the cancel scopes.
        self._slots = asyncio.Semaphore(self._connections)

    def __repr__(self) -> str:
        return f"<Transport {self.base_url!r}>"

    @staticmethod
    def _origin_of(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1  # matches no real origin
        port = port or (443 if parts.scheme == "https" else 80)
        return parts.scheme, (parts.hostname or "").lower(), port

    def is_api_url(self, url: str) -> bool:
        """True if ``url`` is on the API's scheme, host and port (so it may get the key)."""
        return url.startswith(self._prefix) or self._origin_of(url) == self._origin

    def path_of(self, url: str) -> str:
        """The path of ``url`` (for messages and logs), as `urlsplit` gives it.

        `urlsplit` strips tabs and line breaks from a URL: one with any has its path
        found the slow way.
        """
        if url.startswith(self._prefix) and "\t" not in url and "\r" not in url and "\n" not in url:
            rest = url[len(self._prefix) - 1 :]
            return self._base_path + rest.partition("?")[0].partition("#")[0]
        return urlsplit(url).path

    def url(self, path: str) -> str:
        """The absolute URL of an API path such as ``/v1/predictions``."""
        return self.base_url + path

    def cursor_url(self, url: str | None) -> str | None:
        """A list page's ``next`` URL, moved onto the API base when it points elsewhere.

        Gateways pass the upstream's own cursor URLs through; only the query is kept, so
        the key never goes to another host.
        """
        if url is None or self.is_api_url(url):
            return url
        _, _, query = url.partition("?")
        return self.url("/v1/predictions") + (f"?{query}" if query else "")

    @property
    def connections(self) -> int:
        """How many requests may be under way at once."""
        return self._connections

    def ensure_connections(self, count: int) -> None:
        """Let at least ``count`` requests be under way at once."""
        for _ in range(count - self._connections):
            self._slots.release()  # a semaphore without a maximum grows by a release
        self._connections = max(self._connections, count)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session, created on first use inside the running event loop."""
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise TransportError("the aiohttp session passed to QuickRouter is closed")
            self._session = aiohttp.ClientSession(
                # The socket factory refuses, for output downloads only, the addresses
                # they may not reach (`_output_hosts`).
                connector=aiohttp.TCPConnector(
                    limit=0, ttl_dns_cache=300, socket_factory=guarded_socket
                ),
                headers={"User-Agent": self._user_agent},
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def aclose(self) -> None:
        """Close the session if the transport created it."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()

    # -- one request ---------------------------------------------------------------------

    def _headers(
        self, url: str, extra: Mapping[str, str] | None, *, json_body: bool
    ) -> RedactedHeaders:
        base = self._api_headers if self.is_api_url(url) else self._plain_headers
        if not extra and not json_body:
            return base  # never changed after this point: shared by every such request
        headers = RedactedHeaders(base)
        if extra:
            headers.update(extra)
            if "Authorization" in base:
                headers["Authorization"] = base["Authorization"]
        if json_body:
            headers["Content-Type"] = "application/json"
        return headers

    def _timeout(self, read_extra: float) -> aiohttp.ClientTimeout:
        """The limits of an API request, ``read_extra`` seconds longer for a held create.

        API answers are a few kilobytes that arrive in one piece, so the read limit (the
        wait for the answer) and the total limit are one timer for the whole exchange,
        not a read timer re-armed for every chunk that arrives.
        """
        timeout = self._timeouts.get(read_extra)
        if timeout is None:
            t = self.timeouts
            limits = [limit + read_extra for limit in (t.read, t.total) if limit is not None]
            timeout = aiohttp.ClientTimeout(
                total=min(limits) if limits else None, sock_connect=t.connect
            )
            if len(self._timeouts) < _TIMEOUTS_KEPT:  # a few waits, used over and over
                self._timeouts[read_extra] = timeout
        return timeout

    async def send(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        read_extra: float = 0.0,
    ) -> Response:
        """Send one request and return its 2xx answer; never retries.

        Args:
            method: the HTTP method.
            url: an absolute URL (API paths are joined with `url`).
            body: the JSON body to send, encoded.
            headers: extra headers.
            read_extra: seconds added to the read and total limits (``Prefer: wait``).

        Raises:
            APIError: the server answered with an error status.
            TransportError: no answer (connection failed, reset, `RequestTimeout`).
            ProtocolError: a 2xx answer that is not JSON; `AnswerRefused` for a
                redirect or a body over the size cap.
        """
        where = f"{method} {self.path_of(url)}"
        send_headers = self._headers(url, headers, json_body=body is not None)
        debug = logger.isEnabledFor(logging.DEBUG)
        started = time.monotonic() if debug else 0.0
        async with self._slots:
            result = await self._exchange(method, url, body, send_headers, read_extra, where)
        if debug:
            outcome = result.status if not isinstance(result, Exception) else type(result).__name__
            logger.debug("%s -> %s (%.3fs)", where, outcome, time.monotonic() - started)
        if isinstance(result, QuickRouterError):
            raise result
        answer = result
        self.clock.note_date(header(answer.headers, "Date"))
        if answer.status >= 400:
            raise error_from_answer(answer, method=method, path=where.partition(" ")[2])
        if answer.status >= 300 or answer.status < 200:
            raise redirect_error(answer, self.secret, method=method, path=where.partition(" ")[2])
        data = decode_json(answer.body, answer.status, where, self.secret)
        if isinstance(data, Unreadable):
            raise data.error
        return Response(answer.status, answer.headers, data)

    async def _exchange(  # noqa: PLR0917 (one request's parts, passed on as they are)
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: RedactedHeaders,
        read_extra: float,
        where: str,
    ) -> Answer | QuickRouterError:
        """Send the request and read the answer; a failure is returned, not raised, so
        that no frame holding aiohttp's objects is ever part of a traceback.
        """
        try:
            async with self.session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=self._timeout(read_extra),
                allow_redirects=False,
            ) as response:
                return await read_answer(response, self.secret, where=where)
        except AnswerRefused as exc:
            return exc.with_traceback(None)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return _transport_error(exc, where, self.secret)

    # -- retries -------------------------------------------------------------------------

    def transient(self, exc: QuickRouterError) -> bool:
        """Whether asking again may get another answer (for a request that may be repeated).

        A retry status, a failed connection, a timeout, or a 2xx answer that could not
        be read; not a redirect or an answer over the size cap.
        """
        if isinstance(exc, APIError):
            return exc.status in self.retry.retry_statuses
        if isinstance(exc, ProtocolError):
            return not isinstance(exc, AnswerRefused)
        return isinstance(exc, TransportError)

    async def retrying(
        self,
        operation: Callable[..., Awaitable[T]],
        *args: object,
        retry_on: Callable[[QuickRouterError], bool],
        what: str,
    ) -> T:
        """Call ``operation(*args)`` until it succeeds, a failure is final, or the
        attempts end.

        Args:
            operation: one attempt.
            args: its arguments.
            retry_on: whether a failure is worth another attempt.
            what: the attempt's description, for the log.
        """
        policy = self.retry
        attempt = 1
        while True:
            try:
                return await operation(*args)
            except QuickRouterError as exc:
                if attempt >= policy.attempts or not retry_on(exc):
                    raise
                hint = exc.retry_after if isinstance(exc, APIError) else None
                delay = policy.delay(attempt, hint)
                logger.info(
                    "retrying %s in %.2fs (attempt %d of %d): %s",
                    what,
                    delay,
                    attempt + 1,
                    policy.attempts,
                    str(exc).split("\n", 1)[0][:200],
                )
            await self.sleep(delay)
            attempt += 1

    async def request(self, method: str, url: str) -> Response:
        """Send a request that may be repeated (a GET, a cancel), retrying what is transient.

        Raises:
            APIError, TransportError, ProtocolError: as `send`, once retries are over.
        """
        return await self.retrying(
            self.send, method, url, retry_on=self.transient, what=f"{method} {self.path_of(url)}"
        )

    # -- file downloads ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def stream(
        self, url: str, *, middlewares: Sequence[aiohttp.ClientMiddlewareType] = ()
    ) -> AsyncIterator[tuple[str | None, AsyncIterator[bytes]]]:
        """Open a file download: its content type and an iterator over its chunks.

        File downloads never carry the API key, whatever host they are on (output files
        need none), so redirects are followed. Retry them with `retrying` and
        `transient`: a 429 or 5xx from a file host is worth another attempt.

        Raises:
            TransportError: the connection failed or timed out.
            APIError: the file host answered with an error status.
            ProtocolError: the answer is a redirect that leads nowhere.
        """
        where = f"download of {urlsplit(url).path}"
        t = self.timeouts
        timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.read)
        async with self._slots, contextlib.AsyncExitStack() as stack:
            opened = await self._open(stack, url, timeout, where, middlewares)
            if isinstance(opened, QuickRouterError):
                raise opened
            yield opened.headers.get("Content-Type"), self._chunks(opened, where)

    async def _open(
        self,
        stack: contextlib.AsyncExitStack,
        url: str,
        timeout: aiohttp.ClientTimeout,
        where: str,
        middlewares: Sequence[aiohttp.ClientMiddlewareType],
    ) -> aiohttp.ClientResponse | QuickRouterError:
        try:
            response = await stack.enter_async_context(
                self.session.get(
                    url,
                    headers={"Accept": "*/*"},
                    timeout=timeout,
                    middlewares=tuple(middlewares) or None,
                )
            )
            if 200 <= response.status < 300:
                return response
            answer = await read_answer(response, None, where=where)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return _transport_error(exc, where, None)
        path = urlsplit(url).path
        if answer.status >= 400:
            return error_from_answer(answer, method="GET", path=path)
        return redirect_error(answer, None, method="GET", path=path)

    @staticmethod
    async def _chunks(response: aiohttp.ClientResponse, where: str) -> AsyncIterator[bytes]:
        """The body's chunks; a broken connection becomes a `TransportError`."""
        iterator = response.content.iter_chunked(_CHUNK).__aiter__()
        while True:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                error = _transport_error(exc, where, None)
            else:
                yield chunk
                continue
            raise error


def in_doubt(exc: BaseException) -> bool:
    """Whether a failed create may have produced a prediction on the server.

    A 5xx, a broken 2xx answer, or no answer after the request was sent: the server may
    have stored the prediction before failing. A 4xx answer or a connection never made
    is certain: nothing was created.
    """
    if isinstance(exc, ServerError):
        return True
    if isinstance(exc, TransportError):
        return exc.request_sent
    return isinstance(exc, ProtocolError)
