"""The HTTP details under the transport: reading answers, error bodies, server hints.

The transport decides what to do with an answer; this module only reads it. A body is
read up to a cap counted in decoded bytes, so a compressed answer cannot grow past it
(aiohttp inflates in bounded steps). Error bodies come as RFC 7807 problem details, as a
gateway's own JSON, or as plain text and HTML; each becomes an `APIError` with a
readable message. Every server hint is parsed here and nowhere else: ``Retry-After``
(seconds or an HTTP date), the body's ``retry_after``, a 429's "resets in ~30s" detail,
``ratelimit-remaining`` and ``ratelimit-reset``.

A successful answer reaches the caller byte for byte. Error answers are text for humans:
any echo of the API key is replaced in them before they become an exception, and an
`Answer` (what a frame holds while an error is built) never shows its body or headers in
a repr, so a traceback printed with its locals cannot reveal the key either.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
import re
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

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
    ServerError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    import aiohttp

__all__ = [
    "ERROR_BODY_BYTES",
    "MAX_BODY_BYTES",
    "REDACTED",
    "Answer",
    "AnswerRefused",
    "RedactedHeaders",
    "Secret",
    "Unreadable",
    "decode_json",
    "error_from_answer",
    "header",
    "http_date",
    "quote_start",
    "read_answer",
    "redirect_error",
    "remaining_creates",
    "retry_after_seconds",
    "seconds",
]

REDACTED: Final = "[redacted]"
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
ERROR_BODY_BYTES: Final = 65536
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
_BODY_TAG: Final = re.compile(r"<body\b[^>]*>", re.I)
_RESETS_IN: Final = re.compile(r"(?:resets in|available in)\s*~?(\d+(?:\.\d+)?)\s*s", re.I)
# A ratelimit-reset this large is a Unix time, not a number of seconds.
_EPOCH_THRESHOLD: Final = 1e9
_DETAIL_CHARS: Final = 300
_QUOTED_CHARS: Final = 80


class AnswerRefused(ProtocolError):
    """An answer the client will not take: a redirect, or a body over the size cap.

    Asking again would get the same answer, so it is never retried.
    """


class Secret:
    """The API key: its repr and str never show it, and it cannot be pickled."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not (value.isascii() and value.isprintable()) or any(c.isspace() for c in value):
            # Said without the key: a header error from aiohttp would quote it.
            raise InputError(
                "api_key must be printable ASCII without spaces or line breaks",
                field="api_key",
            )
        self._value = value

    def reveal(self) -> str:
        """The key itself, for the ``Authorization`` header only."""
        return self._value

    def scrub(self, text: str) -> str:
        """``text`` for humans, with the key replaced wherever it occurs."""
        return text.replace(self._value, REDACTED) if self._value in text else text

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __reduce__(self) -> str:
        raise TypeError("the API key is not picklable")


class RedactedHeaders(dict[str, str]):
    """Request headers whose repr hides ``Authorization`` (tracebacks with locals)."""

    def __repr__(self) -> str:
        return repr({k: "***" if k.lower() == "authorization" else v for k, v in self.items()})


class Answer:
    """A whole answer as read: status, headers, body. Its repr shows neither of the last
    two, which a hostile server may fill with an echo of the key.
    """

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Answer {self.status}, {len(self.body)} bytes>"


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
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": the date is in UTC, the offset is unknown
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def seconds(value: object) -> float | None:
    """A wait hint in seconds: a number, a numeric string or an HTTP date; None if none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            result = float(value)
        except OverflowError:  # an int too large for a float
            return None
    elif isinstance(value, str) and value.strip():
        try:
            result = float(value)
        except ValueError:
            when = http_date(value)
            if when is None:
                return None
            result = when - time.time()
    else:
        return None
    return max(0.0, result) if math.isfinite(result) else None


def remaining_creates(headers: Mapping[str, str]) -> float | None:
    """The answer's ``ratelimit-remaining`` as a number, or None (absent or not a number)."""
    value = header(headers, "ratelimit-remaining")
    if value is None:
        return None
    try:
        remaining = float(value)
    except ValueError:
        return None
    return remaining if math.isfinite(remaining) else None


def retry_after_seconds(
    headers: Mapping[str, str], body: object, *, throttled: bool = True
) -> float | None:
    """The wait an answer asks for, from any hint the server gave; None if none.

    ``Retry-After`` and the body's ``retry_after`` count for any answer; the 429 detail
    text and ``ratelimit-reset`` (sent on every answer) only when ``throttled``.
    """
    hint = seconds(header(headers, "Retry-After"))
    if hint is not None:
        return hint
    if isinstance(body, dict):
        hint = seconds(body.get("retry_after"))
        if hint is not None:
            return hint
        detail = body.get("detail")
        if throttled and isinstance(detail, str) and (match := _RESETS_IN.search(detail)):
            return seconds(match.group(1))
    if not throttled:
        return None
    reset = seconds(header(headers, "ratelimit-reset"))
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
    # An HTML page's <head> repeats what its body says (nginx: "502 Bad Gateway" twice).
    opening = _BODY_TAG.search(text)
    shown = text[opening.end() :] if opening else text
    plain = _SPACES.sub(" ", _TAGS.sub(" ", shown)).strip()
    return None, (plain[:_DETAIL_CHARS] or None)


def _decode(text: str) -> object:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def error_from_answer(answer: Answer, *, method: str, path: str) -> APIError:
    """Build the error for an HTTP error answer, whatever shape its body has.

    The answer's body must already be scrubbed of the key (`read_answer` does it).
    """
    text = answer.body.decode("utf-8", "replace")
    body = _decode(text)
    title, detail = _problem_fields(body, text)
    status = answer.status
    cls = _ERROR_CLASSES.get(status, ServerError if status >= 500 else APIError)
    summary = ": ".join(part for part in (title, detail) if part) or "error"
    # Said once: a page that starts with its own status, a gateway that names the route.
    if not summary.startswith(f"{status} "):
        summary = f"{status} {summary}"
    route = f"{method} {path}"
    message = summary if route in summary else f"{summary} ({route})"
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
    hint = retry_after_seconds(answer.headers, body, throttled=throttled)
    if throttled:
        return RateLimitError(
            message, retry_after=hint, remaining=remaining_creates(answer.headers), **kwargs
        )
    return cls(message, retry_after=hint, **kwargs)


def redirect_error(
    answer: Answer, secret: Secret | None, *, method: str, path: str
) -> ProtocolError:
    """The error for a 1xx or 3xx answer: redirects are never followed with the key."""
    location = header(answer.headers, "Location")
    where = ""
    if location:
        parts = urlsplit(location)
        # Scheme, host and path only: credentials or a query may carry someone's token.
        host = parts.hostname or ""
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            port = ""
        shown = f"{parts.scheme}://{host}{port}{parts.path}" if host else parts.path
        if secret is not None:
            shown = secret.scrub(shown)
        where = f" to {shown[:_DETAIL_CHARS]}"
    return AnswerRefused(
        f"{method} {path} answered {answer.status}{where}; redirects are not followed, so the "
        "API key never reaches another host: point base_url at the final address"
    )


def _identity(response: aiohttp.ClientResponse) -> bool:
    encoding = response.headers.get("Content-Encoding", "")
    return not encoding or encoding.strip().lower() == "identity"


async def read_answer(
    response: aiohttp.ClientResponse, secret: Secret | None, *, where: str
) -> Answer:
    """The answer: a 2xx body whole (at most `MAX_BODY_BYTES` once decoded), or the first
    `ERROR_BODY_BYTES` of any other, with any echo of the key replaced.

    Raises:
        AnswerRefused: a 2xx body is larger than `MAX_BODY_BYTES`.
    """
    status = response.status
    success = 200 <= status < 300
    limit = MAX_BODY_BYTES if success else ERROR_BODY_BYTES
    length = response.content_length
    # Content-Length counts the bytes on the wire: only without compression is it the
    # size of the body.
    plain = _identity(response)
    if success and plain and length is not None and length > limit:
        raise AnswerRefused(f"{where}: answer of {length} bytes is larger than {limit}")
    if plain and length is not None and length <= limit:
        body = await response.read()  # its size is known and allowed: one read
    else:
        # An error page is read a little past its cut, so that an echo of the key
        # across the cut is whole when it is replaced.
        extra = 0 if success or secret is None else len(secret.reveal())
        body = await _bounded(response, limit, extra, success=success, where=where)
    if success:
        return Answer(status, response.headers, body)
    if secret is not None:
        text = secret.scrub(body.decode("utf-8", "replace"))[:limit]
        body = text.encode()
    return Answer(status, response.headers, body)


async def _bounded(
    response: aiohttp.ClientResponse, limit: int, extra: int, *, success: bool, where: str
) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        chunks.append(chunk)
        if size > limit + extra:
            if not success:
                break  # the start of an error page says all there is to say
            raise AnswerRefused(f"{where}: answer is larger than {limit} bytes")
    return b"".join(chunks)[: limit + extra]


class Unreadable:
    """What `decode_json` returns for a body that is not JSON: the error to raise.

    Returned, not raised, so that the frame holding the body is not part of the
    traceback (its locals may show an echo of the key).
    """

    __slots__ = ("error",)

    def __init__(self, error: ProtocolError) -> None:
        self.error = error


def decode_json(raw: bytes, status: int, where: str, secret: Secret | None) -> Any:
    """The JSON of a 2xx body (None when empty), or an `Unreadable` quoting its start."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        pass
    if not raw.strip():
        return None
    return Unreadable(
        ProtocolError(
            f"{where} answered {status} with a body that is not JSON: {quote_start(raw, secret)!r}"
        )
    )


def quote_start(raw: bytes, secret: Secret | None, chars: int = _QUOTED_CHARS) -> str:
    """The first ``chars`` characters of ``raw`` as text, with any echo of the key
    replaced, including one that the cut would split.
    """
    extra = 0 if secret is None else len(secret.reveal())
    text = raw[: chars + extra].decode("utf-8", "replace")
    if secret is not None:
        text = secret.scrub(text)
    return text[:chars]
