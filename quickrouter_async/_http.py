"""The HTTP details under the transport: reading answers, and keeping the key out of sight.

The transport decides what to do with an answer; this module only reads it. Error
bodies come as RFC 7807 problem details, as a gateway's own JSON, or as plain text and
HTML; each becomes an `APIError` with a readable message. Wait hints come from
``Retry-After`` (seconds or an HTTP date), the body's ``retry_after``, a 429's
"resets in ~30s" detail, and ``ratelimit-reset``. The API key is scrubbed from whatever
the server echoes back before it lands in an exception; the key itself is held by a
`Secret` whose repr never shows it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import json
import math
import re
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    InputError,
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
    from collections.abc import AsyncIterator, Mapping, Sequence

__all__ = [
    "MAX_BODY_BYTES",
    "REDACTED",
    "RedactedHeaders",
    "Secret",
    "decode_json",
    "error_from_answer",
    "header",
    "http_date",
    "open_file",
    "read_body",
    "redirect_error",
    "retry_after_seconds",
    "without_frames",
]

REDACTED: Final = "[redacted]"
_REDACTED_BYTES: Final = REDACTED.encode()
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
_ERROR_BODY_BYTES: Final = 65536
_CHUNK: Final = 65536
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
# A ratelimit-reset this large is a Unix time, not a number of seconds.
_EPOCH_THRESHOLD: Final = 1e9
_DETAIL_CHARS: Final = 300


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, matched in any case (aiohttp's headers already are)."""
    value = headers.get(name)
    if value is not None or type(headers) is CIMultiDictProxy:
        return value
    lowered = name.lower()
    for key, item in headers.items():
        if key.lower() == lowered:
            return item
    return None


def http_date(value: str) -> float | None:
    """An HTTP date (``Wed, 21 Oct 2015 07:28:00 GMT``) as a Unix time; None if it is not one."""
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": the date is in UTC, the offset is unknown
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _seconds(value: object) -> float | None:
    """A non-negative number of seconds from a number, a numeric string or an HTTP date."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            seconds = float(value)
        except ValueError:
            when = http_date(value)
            if when is None:
                return None
            seconds = when - time.time()
    else:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def retry_after_seconds(
    headers: Mapping[str, str], body: object, *, throttled: bool = True
) -> float | None:
    """The wait an error answer asks for, from any hint the server gave; None if none.

    ``Retry-After`` and the body's ``retry_after`` count for any error; the 429 detail
    text and ``ratelimit-reset`` (sent on every answer) only when ``throttled``.
    """
    hint = _seconds(header(headers, "Retry-After"))
    if hint is not None:
        return hint
    if isinstance(body, dict):
        hint = _seconds(body.get("retry_after"))
        if hint is not None:
            return hint
        detail = body.get("detail")
        if throttled and isinstance(detail, str) and (match := _RESETS_IN.search(detail)):
            return float(match.group(1))
    if not throttled:
        return None
    reset = _seconds(header(headers, "ratelimit-reset"))
    if reset is not None and reset > _EPOCH_THRESHOLD:
        return max(0.0, reset - time.time())
    return reset


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
            None if title is None else str(title)[:_DETAIL_CHARS],
            None if detail is None else str(detail)[: _DETAIL_CHARS * 10],
        )
    plain = _SPACES.sub(" ", _TAGS.sub(" ", text)).strip()
    return None, (plain[:_DETAIL_CHARS] or None)


def _decode(text: str) -> object:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def error_from_answer(
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    *,
    method: str,
    path: str,
) -> APIError:
    """Build the error for an HTTP error answer, whatever shape its body has.

    Args:
        status: the HTTP status (400 or more).
        headers: the answer's headers.
        raw: the answer's body.
        method: the request's method, for the message.
        path: the request's path, for the message.
    """
    text = raw.decode("utf-8", "replace")
    body = _decode(text)
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
    throttled = cls is RateLimitError
    hint = retry_after_seconds(headers, body, throttled=throttled)
    if throttled:
        return RateLimitError(message, retry_after=hint, **kwargs)
    return cls(message, retry_after=hint, **kwargs)


def redirect_error(
    status: int, headers: Mapping[str, str], *, method: str, path: str
) -> ProtocolError:
    """The error for a 1xx or 3xx answer: redirects are never followed with the key."""
    location = header(headers, "Location")
    where = ""
    if location:
        parts = urlsplit(location)
        # Scheme, host and path only: credentials or a query may carry someone's token.
        host = parts.hostname or ""
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            port = ""
        where = f" to {parts.scheme}://{host}{port}{parts.path}" if host else f" to {parts.path}"
    return ProtocolError(
        f"{method} {path} answered {status}{where}; redirects are not followed, so the API "
        "key never reaches another host: point base_url at the final address"
    )


class Secret:
    """The API key: its repr and str never show it, and it cannot be pickled."""

    __slots__ = ("_bytes", "_value")

    def __init__(self, value: str) -> None:
        if not (value.isascii() and value.isprintable()) or any(c.isspace() for c in value):
            # Said without the key: a header error from aiohttp would quote it.
            raise InputError(
                "api_key must be printable ASCII without spaces or line breaks",
                field="api_key",
            )
        self._value = value
        self._bytes = value.encode()

    def reveal(self) -> str:
        """The key itself, for the ``Authorization`` header only."""
        return self._value

    def scrub(self, data: bytes) -> bytes:
        """``data`` with the key replaced wherever it occurs (a server may echo it)."""
        key = self._bytes
        return data.replace(key, _REDACTED_BYTES) if key in data else data

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __reduce__(self) -> str:
        raise TypeError("the API key is not picklable")


class RedactedHeaders(dict[str, str]):
    """Request headers whose repr hides ``Authorization`` (tracebacks with locals)."""

    def __repr__(self) -> str:
        return repr({k: "***" if k.lower() == "authorization" else v for k, v in self.items()})


def without_frames(exc: BaseException) -> BaseException:
    """``exc`` and the exceptions behind it, without their tracebacks.

    aiohttp's frames hold the request's headers in their local variables, so a
    traceback printed with locals (``rich``, ``pytest -l``) would show the key. The
    exceptions keep their types and messages; only aiohttp's inner frames go.
    """
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        seen.__traceback__ = None
        seen = seen.__cause__ or seen.__context__
    return exc


async def read_body(answer: aiohttp.ClientResponse, where: object) -> bytes:
    """The whole body of a 2xx answer (at most `MAX_BODY_BYTES`), or the first
    `_ERROR_BODY_BYTES` of any other answer (enough for any message).

    Raises:
        ProtocolError: a 2xx body is larger than `MAX_BODY_BYTES`.
    """
    success = 200 <= answer.status < 300
    limit = MAX_BODY_BYTES if success else _ERROR_BODY_BYTES
    length = answer.content_length
    if success and length is not None and length > limit:
        raise ProtocolError(f"{where}: answer of {length} bytes is larger than {limit}")
    if length is not None and length <= limit:
        return await answer.read()  # its length is known and allowed: one read
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.content.iter_chunked(_CHUNK):
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            if not success:
                break  # the start of an error page says all there is to say
            raise ProtocolError(f"{where}: answer is larger than {limit} bytes")
    return b"".join(chunks)[:limit]


def decode_json(raw: bytes, status: int, where: object) -> Any:
    """The JSON of a 2xx body (None when empty), or `ProtocolError` quoting its start."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        if not raw.strip():
            return None
        text = raw[:80].decode("utf-8", "replace")
        raise ProtocolError(
            f"{where} answered {status} with a body that is not JSON: {text!r}"
        ) from None


@contextlib.asynccontextmanager
async def open_file(
    session: aiohttp.ClientSession,
    url: str,
    timeout: aiohttp.ClientTimeout,
    middlewares: Sequence[aiohttp.ClientMiddlewareType] = (),
) -> AsyncIterator[tuple[str | None, AsyncIterator[bytes]]]:
    """GET an output file without the key: its content type and its chunks.

    ``middlewares`` see each hop (the URL and each redirect) before it is sent.
    """
    path = urlsplit(url).path
    async with contextlib.AsyncExitStack() as stack:
        try:
            answer = await stack.enter_async_context(
                session.get(
                    url,
                    headers={"Accept": "*/*"},
                    timeout=timeout,
                    middlewares=tuple(middlewares) or None,
                )
            )
            if answer.status >= 400:
                raw = await answer.content.read(4096)
                error = error_from_answer(
                    answer.status, answer.headers, raw, method="GET", path=path
                )
                if isinstance(error, ServerError | RateLimitError):
                    raise TransportError(str(error)) from error
                raise error
        except TimeoutError as exc:
            raise RequestTimeout(f"download of {path} timed out") from without_frames(exc)
        except (aiohttp.ClientError, OSError) as exc:
            failed = f"download of {path} failed: {type(exc).__name__}"
            raise TransportError(failed) from without_frames(exc)
        if not 200 <= answer.status < 300:
            raise redirect_error(answer.status, answer.headers, method="GET", path=path)
        yield answer.headers.get("Content-Type"), _file_chunks(answer, path)


async def _file_chunks(answer: aiohttp.ClientResponse, path: str) -> AsyncIterator[bytes]:
    """The body's chunks; a broken connection becomes a `TransportError`."""
    try:
        async for chunk in answer.content.iter_chunked(_CHUNK):
            yield chunk
    except TimeoutError as exc:
        raise RequestTimeout(f"download of {path} timed out") from without_frames(exc)
    except (aiohttp.ClientError, OSError) as exc:
        failed = f"download of {path} failed: {type(exc).__name__}"
        raise TransportError(failed) from without_frames(exc)
