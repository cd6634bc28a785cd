"""The single place that talks HTTP to the API.

It adds the ``Authorization`` header (only for the API's own scheme, host and port),
applies timeouts, retries what may be retried, honours the server's wait hints, maps
error answers onto the exception tree and logs each request at DEBUG and each retry at
INFO, never with the key.

What is retried (see `RetryPolicy`): a GET or a cancel on 429, 500, 502, 503, 504, a
broken answer, a failed or reset connection and a timeout. A create only when the server
certainly did not act on it: a 429, or a connection that could not be opened (refused,
or timed out while opening). Any other failed create is raised for `_create.py` to
resolve, never sent again blindly. That includes a connection reset before the request
was written: aiohttp reports it, for a request with a body, exactly as a reset after the
server read it, so it costs a lookup rather than risking a duplicate.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import anyio

from ._errors import (
    APIError,
    ProtocolError,
    RateLimitError,
    RequestTimeout,
    ServerError,
    TransportError,
)
from ._http import (
    RedactedHeaders,
    Secret,
    decode_json,
    error_from_answer,
    header,
    http_date,
    open_file,
    read_body,
    redirect_error,
    without_frames,
)
from ._output_hosts import guarded_socket
from ._ratelimit import bucket_empty, remaining_creates
from ._slots import Slots

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    from ._config import RetryPolicy, Timeouts
    from ._create import Ledger
    from ._ratelimit import CreateLimiter

__all__ = [
    "Response",
    "Transport",
    "create_in_doubt",
    "error_from_answer",
]

logger = logging.getLogger(__name__)

# Characters `urlsplit` strips from a URL: a URL with one has its path found the slow way.
_SPECIAL: Final = ("\t", "\r", "\n")
# Distinct read allowances (``Prefer: wait`` lengths) whose timeouts are kept.
_TIMEOUTS_KEPT: Final = 128
# Distinct combinations of extra headers whose merged headers are kept.
_HEADERS_KEPT: Final = 128


class Response(NamedTuple):
    """A successful answer: status, headers and the decoded JSON body."""

    status: int
    headers: Mapping[str, str]
    data: Any


class _Attempt:
    """One logical request as it is tried: what it is, and how the last try went.

    Its path (for messages and logs) is worked out only when one is written.
    """

    __slots__ = (
        "_path",
        "_path_of",
        "create",
        "garbled",
        "method",
        "number",
        "read_extra",
        "started",
        "url",
    )

    def __init__(
        self,
        method: str,
        url: str,
        path_of: Callable[[str], str],
        *,
        create: bool,
        read_extra: float,
    ) -> None:
        self.method = method
        self.url = url
        self._path_of = path_of
        self._path: str | None = None
        self.create = create
        self.read_extra = read_extra
        self.number = 0
        self.started = 0.0
        # The last failure was a 2xx whose body could not be read (a GET may ask again).
        self.garbled = False

    @property
    def path(self) -> str:
        """The URL's path."""
        if self._path is None:
            self._path = self._path_of(self.url)
        return self._path

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


class Transport:
    """Sends requests to one API base URL through one `aiohttp.ClientSession`.

    Attributes:
        clock_offset: the server's clock minus this machine's, in seconds, from the
            latest ``Date`` header (None until one arrived).
        create_limiter: paces creates; told of each create's answer.
        ledger: the ids this client's creates were answered with, and its creates under
            way (`_create.Ledger`).
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
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.base_url = base_url
        self._origin = self._origin_of(base_url)
        # URLs under this prefix are on the API's origin whatever follows: no parsing.
        self._prefix = base_url.rstrip("/") + "/"
        self._base_path = urlsplit(base_url).path.rstrip("/")
        self._api_key = None if not api_key else Secret(api_key)
        # Built once: every request copies them instead of building them anew.
        self._plain_headers = RedactedHeaders({"Accept": "application/json"})
        self._api_headers = RedactedHeaders(self._plain_headers)
        if self._api_key is not None:
            self._api_headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        self._merged_headers: dict[tuple[object, ...], RedactedHeaders] = {}
        self._timeout_cache: dict[float, aiohttp.ClientTimeout] = {}
        self._timeout_source: Timeouts | None = None
        self.timeouts = timeouts
        self.retry = retry
        self._owns_session = session is None
        self._session = session
        self._user_agent = user_agent
        self.sleep = sleep
        self._slots = Slots(max(1, connections))
        self.create_limiter: CreateLimiter | None = None
        self.clock_offset: float | None = None
        self._last_date: str | None = None
        # The creates' ledger (`_create.py`), made on the first create.
        self.ledger: Ledger | None = None

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

    def _path_of(self, url: str) -> str:
        """The path of ``url`` (for messages and logs), as `urlsplit` gives it."""
        if url.startswith(self._prefix) and not any(c in url for c in _SPECIAL):
            rest = url[len(self._prefix) - 1 :]
            return self._base_path + rest.partition("?")[0].partition("#")[0]
        return urlsplit(url).path

    @property
    def connections(self) -> int:
        """How many requests may be under way at once."""
        return self._slots.total

    def ensure_connections(self, count: int) -> None:
        """Let at least ``count`` requests be under way at once."""
        self._slots.total = max(self._slots.total, count)

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

    def server_time(self) -> float:
        """The server's clock now, as a Unix time (this machine's until a ``Date`` came)."""
        return time.time() + (self.clock_offset or 0.0)

    def _headers(
        self, url: str, extra: Mapping[str, str] | None, *, json_body: bool = False
    ) -> RedactedHeaders:
        api = self.is_api_url(url)
        base = self._api_headers if api else self._plain_headers
        if not extra and not json_body:
            return base  # never changed after this point: shared by every such request
        # A bulk job sends the same few combinations over and over: each is built once.
        key = (api, json_body, *extra.items()) if extra else (api, json_body)
        headers = self._merged_headers.get(key)
        if headers is not None:
            return headers
        headers = RedactedHeaders(base)
        if extra:
            headers.update(extra)
            if "Authorization" in base:
                headers["Authorization"] = base["Authorization"]
        if json_body:
            headers["Content-Type"] = "application/json"
        if len(self._merged_headers) < _HEADERS_KEPT:
            self._merged_headers[key] = headers
        return headers

    def _client_timeout(self, read_extra: float) -> aiohttp.ClientTimeout:
        """The limits of an API request, ``read_extra`` seconds longer for a held create.

        API answers are a few kilobytes that arrive in one piece, so the read limit (the
        wait for the answer) and the total limit are one timer for the whole exchange,
        not a read timer re-armed for every chunk that arrives.
        """
        t = self.timeouts
        if t is not self._timeout_source:
            self._timeout_cache.clear()
            self._timeout_source = t
        timeout = self._timeout_cache.get(read_extra)
        if timeout is None:
            limits = [limit + read_extra for limit in (t.read, t.total) if limit is not None]
            timeout = aiohttp.ClientTimeout(
                total=min(limits) if limits else None, sock_connect=t.connect
            )
            if len(self._timeout_cache) < _TIMEOUTS_KEPT:
                self._timeout_cache[read_extra] = timeout
        return timeout

    def _download_timeout(self) -> aiohttp.ClientTimeout:
        """The limits of a file download: the read limit is per chunk."""
        t = self.timeouts
        return aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.read)

    async def request(
        self,
        method: str,
        url: str,
        *,
        json_body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        create: bool = False,
        read_extra: float = 0.0,
    ) -> Response:
        """Send one logical request, retrying what may be retried; return the 2xx answer.

        Args:
            method: the HTTP method.
            url: an absolute URL (API paths are joined by the caller with `url`).
            json_body: the JSON body to send, encoded.
            headers: extra headers.
            create: the request creates a prediction, so it is retried only when the
                server certainly did not act on it (see the module's docstring).
            read_extra: seconds added to the read and total timeouts (``Prefer: wait``).

        Raises:
            APIError: the server answered with an error status, after any retries.
            TransportError: no answer (connection failed, reset, `RequestTimeout`).
            ProtocolError: a 2xx answer that is not JSON or too large, or a redirect.
        """
        attempt = _Attempt(method, url, self._path_of, create=create, read_extra=read_extra)
        send_headers = self._headers(url, headers, json_body=json_body is not None)
        while True:
            attempt.number += 1
            if create and self.create_limiter is not None:
                await self.create_limiter.acquire()
            attempt.started = time.monotonic()
            attempt.garbled = False
            try:
                return await self._send(url, json_body, send_headers, attempt)
            except (APIError, TransportError, ProtocolError) as exc:
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise
                logger.info(
                    "retrying %s %s in %.2fs (attempt %d of %d): %s",
                    method,
                    attempt.path,
                    delay,
                    attempt.number + 1,
                    self.retry.attempts,
                    str(exc).split("\n", 1)[0][:200],
                )
                await self.sleep(delay)

    def _retry_delay(self, exc: Exception, attempt: _Attempt) -> float | None:
        """Seconds to wait before trying again, or None when the error is final."""
        policy = self.retry
        if attempt.number >= policy.attempts:
            return None
        hint: float | None = None
        if isinstance(exc, APIError):
            if exc.status not in policy.retry_statuses:
                return None
            if attempt.create and exc.status != 429:
                return None  # the server may have acted on it: the caller resolves the doubt
            hint = exc.retry_after
        elif isinstance(exc, TransportError):
            if attempt.create and exc.request_sent:
                return None
        elif attempt.create or not attempt.garbled:
            return None  # a redirect or an unreadable create: asking again changes nothing
        return policy.delay(attempt.number, hint)

    async def _send(
        self, url: str, body: bytes | None, headers: RedactedHeaders, attempt: _Attempt
    ) -> Response:
        """One HTTP exchange: the answer's status, headers and body, or an error."""
        slots = self._slots
        limiter = self.create_limiter if attempt.create else None
        try:
            if not slots.try_acquire():
                await slots.acquire()
        except BaseException:
            if limiter is not None:
                limiter.on_unanswered()
            raise
        try:
            status, answer_headers, raw = await self._exchange(url, body, headers, attempt)
        except ProtocolError:
            if limiter is not None:
                limiter.on_accepted()  # an answer, if a useless one
            raise
        except BaseException:
            if limiter is not None:
                limiter.on_unanswered()
            raise
        finally:
            slots.release()
        if self._api_key is not None:
            raw = self._api_key.scrub(raw)  # before it reaches any message or local
        self._log(attempt, status)
        self._note_date(answer_headers)
        error = None
        if status >= 400:
            error = error_from_answer(
                status,
                answer_headers,
                raw,
                method=attempt.method,
                path=attempt.path,
            )
        if limiter is not None:
            if isinstance(error, RateLimitError):
                limiter.on_throttled(error.retry_after, bucket_empty=bucket_empty(answer_headers))
            else:
                limiter.on_accepted(remaining_creates(answer_headers))
        if error is not None:
            raise error
        if status < 200 or status >= 300:
            raise redirect_error(status, answer_headers, method=attempt.method, path=attempt.path)
        try:
            data = decode_json(raw, status, attempt)
        except ProtocolError:
            attempt.garbled = True
            raise
        return Response(status, answer_headers, data)

    async def _exchange(
        self, url: str, body: bytes | None, headers: RedactedHeaders, attempt: _Attempt
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Send the request and read the answer; failures become the library's errors."""
        try:
            async with self.session.request(
                attempt.method,
                url,
                data=body,
                headers=headers,
                timeout=self._client_timeout(attempt.read_extra),
                allow_redirects=False,
            ) as answer:
                status, answer_headers = answer.status, answer.headers
                raw = await read_body(answer, attempt)
        except ProtocolError:
            attempt.garbled = True
            self._log(attempt, "too large")
            raise
        except aiohttp.ConnectionTimeoutError as exc:
            # Timed out while opening the connection: nothing was sent.
            self._log(attempt, "connect timeout")
            raise RequestTimeout(
                f"{attempt.method} {attempt.path}: connecting timed out", request_sent=False
            ) from without_frames(exc)
        except TimeoutError as exc:
            self._log(attempt, "timeout")
            raise RequestTimeout(f"{attempt.method} {attempt.path} timed out") from without_frames(
                exc
            )
        except aiohttp.ClientConnectorError as exc:
            # The connection was never made: the server cannot have seen the request.
            self._log(attempt, "connect failed")
            raise TransportError(
                f"could not connect for {attempt.method} {attempt.path}: {exc.strerror}",
                request_sent=False,
            ) from without_frames(exc)
        except (aiohttp.ClientError, OSError) as exc:
            self._log(attempt, "connection error")
            raise TransportError(
                f"connection failed during {attempt.method} {attempt.path}: {type(exc).__name__}"
            ) from without_frames(exc)
        return status, answer_headers, raw

    def _note_date(self, headers: Mapping[str, str]) -> None:
        """Learn the server's clock from a ``Date`` header (whole seconds, so +0.5)."""
        value = header(headers, "Date")
        if value is None or value == self._last_date:
            return
        when = http_date(value)
        if when is not None:
            self._last_date = value
            self.clock_offset = when + 0.5 - time.time()

    @contextlib.asynccontextmanager
    async def stream(
        self, url: str, *, middlewares: Sequence[aiohttp.ClientMiddlewareType] = ()
    ) -> AsyncIterator[tuple[str | None, AsyncIterator[bytes]]]:
        """Open a file download: its content type and an iterator over its chunks.

        File downloads never carry the API key, whatever host they are on (output files
        need none), so redirects are followed; ``middlewares`` see each hop before it is
        sent (the output hosts' policy).

        Raises:
            TransportError: the connection failed or timed out, or the host answered
                429 or 5xx (worth retrying).
            APIError: the file host answered with another error status.
            ProtocolError: the answer is a redirect that leads nowhere.
        """
        async with (
            self._slots,
            open_file(self.session, url, self._download_timeout(), middlewares) as opened,
        ):
            yield opened

    @staticmethod
    def _log(attempt: _Attempt, outcome: int | str) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s %s -> %s (attempt %d, %.3fs)",
                attempt.method,
                attempt.path,
                outcome,
                attempt.number,
                time.monotonic() - attempt.started,
            )


def create_in_doubt(exc: BaseException) -> bool:
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
