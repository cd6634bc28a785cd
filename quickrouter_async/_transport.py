"""The single place that talks HTTP to the API.

It adds the ``Authorization`` header (only for the API host), applies timeouts, retries
what may be retried, honours the server's rate-limit hints, maps error answers onto the
exception tree and logs each request at DEBUG and each retry at INFO, never with the key.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

import aiohttp
import anyio
import attrs

from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    InvalidInputError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    RequestTimeout,
    ServerError,
    TransportError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from ._config import RetryPolicy, Timeouts

__all__ = ["CreateLimiter", "Response", "Transport", "create_in_doubt", "error_from_answer"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 16 * 1024 * 1024
_ERROR_CLASSES: Final[dict[int, type[APIError]]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: PaymentRequiredError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: InvalidInputError,
    429: RateLimitError,
}
_TAGS: Final = re.compile(r"<[^>]+>")
_SPACES: Final = re.compile(r"\s+")
_RESETS_IN: Final = re.compile(r"(?:resets in|available in)\s*~?(\d+(?:\.\d+)?)\s*s", re.I)


class CreateLimiter(Protocol):
    """What the transport asks before each create and tells after (see `_ratelimit.py`)."""

    async def acquire(self) -> None:
        """Wait until a create may be sent."""

    def on_throttled(self, retry_after: float | None) -> None:
        """A create was answered 429."""

    def on_accepted(self) -> None:
        """A create was not throttled."""


@attrs.frozen
class Response:
    """A successful answer: status, headers and the decoded JSON body."""

    status: int
    headers: Mapping[str, str]
    data: Any


@attrs.define
class _Attempt:
    method: str
    path: str
    create: bool
    read_extra: float
    number: int = 0
    started: float = attrs.field(factory=time.monotonic)


def _retry_after_seconds(headers: Mapping[str, str], body: object) -> float | None:
    """The wait a throttled or failing answer asks for, from any hint the server gave."""
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value) if value.strip() else None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    if isinstance(body, dict):
        hint = body.get("retry_after")
        if isinstance(hint, int | float) and not isinstance(hint, bool):
            return max(0.0, float(hint))
        detail = body.get("detail")
        if isinstance(detail, str) and (match := _RESETS_IN.search(detail)):
            return float(match.group(1))
    reset = headers.get("ratelimit-reset")
    if reset:
        try:
            return max(0.0, float(reset))
        except ValueError:
            return None
    return None


def _problem_fields(body: object, text: str) -> tuple[str | None, str | None]:
    """Title and detail from problem+json, gateway JSON, or a plain-text / HTML body."""
    if isinstance(body, dict):
        title = body.get("title")
        detail = body.get("detail")
        error = body.get("error")
        if isinstance(error, dict):
            detail = detail or error.get("message")
            title = title or error.get("type") or error.get("code")
        elif isinstance(error, str):
            detail = detail or error
        detail = detail or body.get("message")
        return (
            str(title) if title is not None else None,
            str(detail) if detail is not None else None,
        )
    plain = _SPACES.sub(" ", _TAGS.sub(" ", text)).strip()
    return None, (plain[:300] or None)


def error_from_answer(
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    *,
    method: str,
    path: str,
) -> APIError:
    """Build the error for an HTTP error answer, whatever shape its body has."""
    text = raw.decode("utf-8", "replace")
    try:
        body: object = json.loads(text) if text.strip() else None
    except ValueError:
        body = text
    title, detail = _problem_fields(body, text)
    cls = _ERROR_CLASSES.get(status, ServerError if status >= 500 else APIError)
    summary = ": ".join(part for part in (title, detail) if part)
    message = f"{status} {summary or 'error'} ({method} {path})"
    kwargs: dict[str, Any] = {
        "status": status,
        "title": title,
        "detail": detail,
        "body": body,
        "method": method,
        "path": path,
    }
    if cls is InvalidInputError:
        fields = body.get("invalid_fields") if isinstance(body, dict) else None
        valid = [f for f in fields if isinstance(f, dict)] if isinstance(fields, list) else []
        if valid:
            message += "; " + "; ".join(
                f"{f.get('field') or 'input'}: {f.get('description') or f.get('type')}"
                for f in valid
            )
        return InvalidInputError(message, invalid_fields=valid, **kwargs)
    if cls is RateLimitError:
        return RateLimitError(message, retry_after=_retry_after_seconds(headers, body), **kwargs)
    return cls(message, **kwargs)


class Transport:
    """Sends requests to one API base URL through one `aiohttp.ClientSession`."""

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
        self._api_key = api_key
        self.timeouts = timeouts
        self.retry = retry
        self._owns_session = session is None
        self._session = session
        self._user_agent = user_agent
        self._sleep = sleep
        self._slots = anyio.CapacityLimiter(max(1, connections))
        self.create_limiter: CreateLimiter | None = None

    @staticmethod
    def _origin_of(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return parts.scheme, (parts.hostname or "").lower(), port

    def is_api_url(self, url: str) -> bool:
        """True if ``url`` is on the API's scheme, host and port (so it may get the key)."""
        return self._origin_of(url) == self._origin

    @property
    def connections(self) -> int:
        """How many requests may be under way at once."""
        return int(self._slots.total_tokens)

    def ensure_connections(self, count: int) -> None:
        """Let at least ``count`` requests be under way at once."""
        self._slots.total_tokens = max(self._slots.total_tokens, count)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session, created on first use inside the running event loop."""
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise TransportError("the aiohttp session passed to QuickRouter is closed")
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": self._user_agent},
                json_serialize=json.dumps,
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

    def _headers(self, url: str, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if extra:
            headers.update(extra)
        if self._api_key and self.is_api_url(url):
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _client_timeout(self, read_extra: float) -> aiohttp.ClientTimeout:
        t = self.timeouts
        read = None if t.read is None else t.read + read_extra
        total = None if t.total is None else t.total + read_extra
        return aiohttp.ClientTimeout(total=total, sock_connect=t.connect, sock_read=read)

    async def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        create: bool = False,
        read_extra: float = 0.0,
    ) -> Response:
        """Send one logical request, retrying what may be retried; return the 2xx answer.

        Args:
            method: the HTTP method.
            url: an absolute URL (API paths are joined by the caller with `url`).
            json_body: the JSON body to send.
            headers: extra headers.
            create: the request creates a prediction, so it is retried only when the
                server certainly did not act on it; other failures are raised with
                ``in_doubt = True`` set on the error.
            read_extra: seconds added to the read and total timeouts (``Prefer: wait``).

        Raises:
            APIError: the server answered with an error status, after any retries.
            TransportError: no answer (connection failed, reset, `RequestTimeout`).
            ProtocolError: a 2xx answer that is not JSON, or is too large.
        """
        path = urlsplit(url).path
        attempt = _Attempt(method, path, create, read_extra)
        data = None if json_body is None else json.dumps(json_body, separators=(",", ":"))
        send_headers = self._headers(url, headers)
        if data is not None:
            send_headers["Content-Type"] = "application/json"
        while True:
            attempt.number += 1
            attempt.started = time.monotonic()
            if create and self.create_limiter is not None:
                await self.create_limiter.acquire()
            try:
                return await self._send(url, data, send_headers, attempt)
            except (APIError, TransportError, ProtocolError) as exc:
                delay = self._retry_delay(exc, attempt.number, create=create)
                if create and self.create_limiter is not None and isinstance(exc, RateLimitError):
                    self.create_limiter.on_throttled(exc.retry_after)
                if delay is None:
                    raise
                logger.info(
                    "retrying %s %s in %.2fs (attempt %d of %d): %s",
                    method,
                    path,
                    delay,
                    attempt.number + 1,
                    self.retry.attempts,
                    _short(exc),
                )
                await self._sleep(delay)

    def _retry_delay(self, exc: Exception, number: int, *, create: bool) -> float | None:
        """Seconds to wait before trying again, or None when the error is final."""
        if number >= self.retry.attempts:
            return None
        if isinstance(exc, APIError):
            if exc.status not in self.retry.retry_statuses:
                return None
            if create and exc.status != 429:
                return None  # the server may have acted on it: the caller resolves the doubt
            hint = exc.retry_after if isinstance(exc, RateLimitError) else None
        elif isinstance(exc, TransportError):
            if create and exc.request_sent:
                return None
            hint = None
        else:
            return None  # a broken answer is not made whole by asking again
        if hint is not None:
            return min(hint, self.retry.max_retry_after)
        return random.uniform(0, self.retry.backoff_ceiling(number))  # noqa: S311

    async def _send(
        self, url: str, data: str | None, headers: dict[str, str], attempt: _Attempt
    ) -> Response:
        async with self._slots:
            try:
                async with self.session.request(
                    attempt.method,
                    url,
                    data=data,
                    headers=headers,
                    timeout=self._client_timeout(attempt.read_extra),
                    allow_redirects=False,
                ) as answer:
                    raw = await self._read_body(answer)
                    status, answer_headers = answer.status, answer.headers
            except TimeoutError as exc:
                self._log(attempt, "timeout")
                raise RequestTimeout(f"{attempt.method} {attempt.path} timed out") from exc
            except aiohttp.ClientConnectorError as exc:
                # The connection was never made: the server cannot have seen the request.
                self._log(attempt, "connect failed")
                raise TransportError(
                    f"could not connect for {attempt.method} {attempt.path}: {exc.strerror}",
                    request_sent=False,
                ) from exc
            except (aiohttp.ClientError, OSError) as exc:
                self._log(attempt, "connection error")
                raise TransportError(
                    f"connection failed during {attempt.method} {attempt.path}: "
                    f"{type(exc).__name__}"
                ) from exc
        self._log(attempt, status)
        if status >= 400 or status < 200:
            raise error_from_answer(
                status, answer_headers, raw, method=attempt.method, path=attempt.path
            )
        if attempt.create and self.create_limiter is not None:
            self.create_limiter.on_accepted()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            raise ProtocolError(
                f"{attempt.method} {attempt.path} answered {status} with a body that is not "
                f"JSON: {raw[:80]!r}"
            ) from None
        return Response(status, answer_headers, body)

    @contextlib.asynccontextmanager
    async def stream(self, url: str) -> AsyncIterator[tuple[str | None, AsyncIterator[bytes]]]:
        """Open a file download: its content type and an iterator over its chunks.

        The key is sent only when ``url`` is on the API host; redirects are followed only
        for file hosts, which never get the key.

        Raises:
            TransportError: the connection failed or timed out (worth retrying).
            APIError: the file host answered with an error status.
        """
        path = urlsplit(url).path
        try:
            async with self._slots, self.session.get(
                url,
                headers=self._headers(url, None) | {"Accept": "*/*"},
                timeout=self._client_timeout(0.0),
                allow_redirects=not self.is_api_url(url),
            ) as answer:
                if answer.status >= 400:
                    raw = await answer.content.read(4096)
                    error = error_from_answer(
                        answer.status, answer.headers, raw, method="GET", path=path
                    )
                    if isinstance(error, ServerError | RateLimitError):
                        raise TransportError(str(error)) from error
                    raise error
                yield answer.headers.get("Content-Type"), answer.content.iter_chunked(65536)
        except TimeoutError as exc:
            raise RequestTimeout(f"download of {path} timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"download of {path} failed: {type(exc).__name__}") from exc

    @staticmethod
    async def _read_body(answer: aiohttp.ClientResponse) -> bytes:
        length = answer.content_length
        if length is not None and length > MAX_BODY_BYTES:
            raise ProtocolError(f"answer of {length} bytes is larger than {MAX_BODY_BYTES}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in answer.content.iter_chunked(65536):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ProtocolError(f"answer is larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

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
    """Whether a failed create may have produced a prediction on the server."""
    if isinstance(exc, ServerError):
        return True
    if isinstance(exc, TransportError):
        return exc.request_sent
    return isinstance(exc, ProtocolError)


def _short(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0][:200]
