"""Wire-level details: ids, timestamps, header parsing and problem+json answers."""

from __future__ import annotations

import datetime
import json
import re
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

if TYPE_CHECKING:
    import random
    from collections.abc import Mapping

ID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"
ID_LENGTH: Final = 26
MAX_PREFER_WAIT: Final = 60.0
PROBLEM_JSON: Final = "application/problem+json"

# RFC 7240 preferences are comma-separated; the API accepts ``wait`` and ``wait=1..60``
# (the OpenAPI pattern also lets 61..99 through, its description does not).
_PREFER_WAIT = re.compile(r"wait(?:=([1-9][0-9]?))?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_BARE_SECONDS = re.compile(r"\d+(?:\.\d+)?")
_UNIT_SECONDS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_FRACTION = re.compile(r"(\.\d{6})\d+")


def new_id(rng: random.Random) -> str:
    """A prediction id like Replicate's: 26 lowercase letters and digits."""
    return "".join(rng.choices(ID_ALPHABET, k=ID_LENGTH))


def rfc3339(nanoseconds: int) -> str:
    """UTC time in RFC 3339 with 'Z', as Go's RFC3339Nano writes it.

    Trailing zeros of the fraction are dropped, so the precision varies from one
    timestamp to the next (``...45.99397566Z``, ``...35.262Z``) exactly as real answers
    do, and parsers that expect a fixed number of digits fail here first.
    """
    whole, fraction = divmod(nanoseconds, 1_000_000_000)
    moment = datetime.datetime.fromtimestamp(whole, tz=datetime.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


def datetime_from_ns(nanoseconds: int) -> datetime.datetime:
    """An aware UTC datetime (microsecond precision) from nanoseconds since the epoch."""
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return epoch + datetime.timedelta(microseconds=nanoseconds // 1000)


def parse_timestamp(text: str) -> datetime.datetime | None:
    """An ISO 8601 timestamp (any fractional precision, 'Z' or offset; naive means UTC)."""
    try:
        moment = datetime.datetime.fromisoformat(_FRACTION.sub(r"\1", text.strip()))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def parse_prefer_wait(header: str | None) -> tuple[str, float] | None:
    """``(applied preference, seconds)`` for a ``Prefer`` header asking to wait.

    A ``wait`` value outside 1..60 is not understood and, as RFC 7240 asks of servers,
    ignored rather than refused: the request is answered at once, without
    ``Preference-Applied``.
    """
    if header is None:
        return None
    for token in header.split(","):
        match = _PREFER_WAIT.fullmatch(token.strip())
        seconds = float(match.group(1) or MAX_PREFER_WAIT) if match else 0.0
        if match and seconds <= MAX_PREFER_WAIT:
            return match.group(0), seconds
    return None


def parse_cancel_after(header: str) -> float | None:
    """Seconds of a ``Cancel-After`` header (``30``, ``30s``, ``5m``, ``1h30m45s``, ``500ms``).

    Returns ``None`` when the value is not a duration.
    """
    text = header.strip()
    if _BARE_SECONDS.fullmatch(text):
        return float(text)
    parts = list(_DURATION_PART.finditer(text))
    if not parts or "".join(part.group(0) for part in parts) != text:
        return None
    return sum(float(part.group(1)) * _UNIT_SECONDS[part.group(2)] for part in parts)


def dumps(body: Any) -> str:
    """Compact JSON, as the API writes it."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def json_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON answer."""
    return web.Response(
        status=status, text=dumps(body), content_type="application/json", headers=headers
    )


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """An RFC 7807 problem answer: ``{"title", "detail", "status", ...extra}``."""
    body = {"title": title, "detail": detail, "status": status, **extra}
    return web.Response(status=status, text=dumps(body), content_type=PROBLEM_JSON, headers=headers)


def validation_problem(invalid_fields: list[dict[str, str]]) -> web.Response:
    """The 422 answer for invalid input, with one ``- field: description`` line per problem."""
    detail = "".join(
        f"- {entry['field'] or '(root)'}: {entry['description']}\n" for entry in invalid_fields
    )
    return problem(422, "Input validation failed", detail, invalid_fields=invalid_fields)


def not_found(detail: str = "Prediction not found") -> web.Response:
    """The 404 answer."""
    return problem(404, "Not found", detail)


def gateway_not_found(request: web.Request) -> web.Response:
    """What a New-API gateway answers for a route it does not relay: 404, its own JSON."""
    message = f"Invalid URL ({request.method} {request.path})"
    body = {"error": {"message": message, "type": "invalid_request_error", "param": "", "code": ""}}
    return json_response(body, status=404)
