"""The answers of injected faults: throttling, server errors and broken bodies."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from ._protocol import dumps, problem
from ._ratelimit import throttled_body

if TYPE_CHECKING:
    import random

MALFORMED_VARIANTS: Final = ("truncated", "html", "array", "status")

# What a reverse proxy in front of a crashed upstream answers: HTML, not problem+json.
_BAD_GATEWAY_PAGE: Final = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_BUSY_PAGE: Final = (
    "<!doctype html><html><head><title>QuickRouter</title></head>"
    "<body><h1>We'll be right back</h1><p>The service is busy. Please retry.</p></body></html>"
)


class DroppedError(Exception):
    """Raised to drop the connection without an answer."""


def chance(rng: random.Random, probability: float) -> bool:
    """Whether an event of ``probability`` happens (no draw when it cannot)."""
    return probability > 0 and rng.random() < probability


def throttled(seconds: int, *, retry_after: bool) -> web.Response:
    """A 429 answer with Replicate's body, and ``Retry-After`` when asked."""
    headers = {"Retry-After": str(seconds)} if retry_after else None
    return web.Response(
        status=429,
        text=dumps(throttled_body(seconds)),
        content_type="application/problem+json",
        headers=headers,
    )


def server_error(status: int) -> web.Response:
    """A 500, 502 or 503 answer, each shaped the way such errors arrive in practice."""
    if status == 502:
        return web.Response(status=502, text=_BAD_GATEWAY_PAGE, content_type="text/html")
    if status == 503:
        return problem(
            503,
            "Service Unavailable",
            "The service is temporarily unavailable. Please try again.",
            headers={"Retry-After": "1"},
        )
    return problem(500, "Internal Server Error", "An unexpected error occurred.")


def malformed_variants(body: Any) -> tuple[str, ...]:
    """The broken shapes that make sense for ``body``."""
    if isinstance(body, dict) and "status" in body:
        return MALFORMED_VARIANTS
    return MALFORMED_VARIANTS[:3]


def malformed(body: Any, variant: str, status: int) -> web.Response:
    """A successful answer whose body is broken in the way ``variant`` names."""
    if variant == "html":
        return web.Response(status=status, text=_BUSY_PAGE, content_type="text/html")
    if variant == "array":
        text = dumps([body])
    elif variant == "status":
        text = dumps({**body, "status": 7})
    else:
        whole = json.dumps(body)
        text = whole[: max(1, len(whole) // 2)]
    return web.Response(status=status, text=text, content_type="application/json")
