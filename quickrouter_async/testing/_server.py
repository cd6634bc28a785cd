"""The aiohttp application: routes, and the middleware every API request goes through.

The middleware does what is common to all endpoints, in the order a real gateway does:
latency, authentication, injected faults, the create rate limit, then the handler; it
maps errors to problem+json, adds the ``ratelimit-*`` headers and records the exchange.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from . import _faults
from ._handlers import Exchange, Handlers, current_exchange
from ._protocol import gateway_not_found, problem
from ._ratelimit import DEFAULT_REMAINING, UNLIMITED_REMAINING
from ._records import RequestRecord

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._emulator import Emulator
    from ._runtime import Runtime

logger = logging.getLogger(__name__)

API_PREFIXES: Final = ("/replicate/v1", "/v1")
_ROUTES_KEY: Final = web.AppKey("routes", dict)
_ROUTER_ERRORS: Final = {
    404: ("Not found", "The requested resource could not be found."),
    405: ("Method not allowed", "The method is not allowed for the requested resource."),
}
# Seedream takes up to ten input images, possibly as data URLs of a few megabytes each.
_MAX_BODY: Final = 64 * 1024 * 1024
_UNAUTHENTICATED: Final = ("Unauthenticated", "You did not pass a valid authentication token")


def _authorized(request: web.Request, api_key: str) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    )


def build_app(emulator: Emulator, runtime: Runtime) -> web.Application:
    """The application serving ``emulator``'s API and output files."""
    handlers = Handlers(emulator, runtime)
    app = web.Application(middlewares=[_middleware(emulator, runtime)], client_max_size=_MAX_BODY)
    kinds: dict[web.AbstractRoute, str] = {}
    for prefix in API_PREFIXES:
        for method, path, handler, kind in (
            ("POST", "/models/{owner}/{name}/predictions", handlers.create_for_model, "create"),
            ("POST", "/predictions", handlers.create_for_version, "create"),
            (
                "POST",
                "/deployments/{owner}/{name}/predictions",
                handlers.create_for_deployment,
                "create",
            ),
            ("GET", "/predictions", handlers.list_predictions, "list"),
            ("GET", "/predictions/{prediction_id}", handlers.get, "get"),
            ("POST", "/predictions/{prediction_id}/cancel", handlers.cancel, "cancel"),
            ("GET", "/webhooks/default/secret", handlers.webhook_secret, "webhook_secret"),
        ):
            kinds[app.router.add_route(method, prefix + path, handler)] = kind
    kinds[app.router.add_get("/files/{prediction_id}/{name}", handlers.file)] = "file"
    app[_ROUTES_KEY] = kinds
    return app


class _ClientLeft(Exception):
    """The client disconnected before its request could be read."""


def _middleware(emulator: Emulator, runtime: Runtime) -> Any:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        arrived = time.monotonic()
        kind = request.app[_ROUTES_KEY].get(request.match_info.route, "unknown")
        await runtime.pause(emulator.latency)
        if kind == "file":
            return await handler(request)
        exchange = Exchange(kind)
        current_exchange.set(exchange)
        authorized = _authorized(request, emulator.api_key)
        status: int | None = None
        response: web.StreamResponse
        try:
            if not authorized:
                response = problem(401, *_UNAUTHENTICATED)
            elif not emulator.relays(kind):
                response = gateway_not_found(request)
            else:
                response = await _answer(emulator, runtime, request, handler, exchange)
            status = response.status
        except _ClientLeft:
            return web.Response()  # never sent, and not recorded: it never fully arrived
        except _faults.DroppedError:
            # The transport is gone only if the client left first: nothing to drop then.
            if request.transport is not None:  # pragma: no branch
                request.transport.abort()
            response = web.Response()
        else:
            if emulator.rate_limit_headers:
                _rate_headers(runtime, kind, response)
        emulator.requests.append(
            RequestRecord(
                method=request.method,
                path=request.path,
                query=request.query_string,
                kind=kind,
                status=status,
                time=arrived,
                authorized=authorized,
                prediction_id=exchange.prediction_id,
                fault=",".join(exchange.faults) or None,
            )
        )
        return response

    return middleware


async def _answer(
    emulator: Emulator,
    runtime: Runtime,
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    exchange: Exchange,
) -> web.StreamResponse:
    rng = runtime.rng
    fault_sets = emulator.faults_for(exchange.kind)
    for faults in fault_sets:
        if _faults.chance(rng, faults.reset):
            exchange.faults.append("reset")
            raise _faults.DroppedError
        if _faults.chance(rng, faults.throttle):
            exchange.faults.append("throttle")
            return _faults.throttled(1, retry_after=True)
        if _faults.chance(rng, faults.server_error):
            exchange.faults.append("server_error")
            return _faults.server_error(rng.choice((500, 502, 503)))
    bucket = runtime.bucket
    if exchange.kind == "create" and bucket is not None:
        wait = bucket.take(time.monotonic())
        if wait is not None:
            return _faults.throttled(wait, retry_after=bucket.limit.retry_after)
    try:
        response = await handler(request)
    except _faults.DroppedError:
        raise
    except ConnectionError as exc:
        # The client went away while its request was read (killed, or gave up): no one
        # to answer, and not the emulator's failure.
        logger.debug("the client left during %s %s", request.method, request.path)
        raise _ClientLeft from exc
    except web.HTTPException as exc:
        # The router's own answers (no such route, wrong method) become problem+json.
        title, detail = _ROUTER_ERRORS.get(exc.status, (exc.reason, exc.reason))
        return problem(exc.status, title, detail)
    except Exception:
        logger.exception("the emulator failed to answer %s %s", request.method, request.path)
        return problem(500, "Internal Server Error", "The emulator failed; see its log.")
    for faults in fault_sets:
        if 200 <= response.status < 300 and _faults.chance(rng, faults.malformed):
            variant = rng.choice(_faults.malformed_variants(exchange.body))
            exchange.faults.append(f"malformed:{variant}")
            response = _faults.malformed(exchange.body, variant, response.status)
        if _faults.chance(rng, faults.slow):
            exchange.faults.append("slow")
            await runtime.pause(faults.slow_seconds)
    return response


def _rate_headers(runtime: Runtime, kind: str, response: web.StreamResponse) -> None:
    bucket = runtime.bucket
    if kind == "create" and bucket is not None:
        now = time.monotonic()
        remaining, reset = bucket.remaining(now), bucket.reset(now)
    else:
        remaining, reset = UNLIMITED_REMAINING.get(kind, DEFAULT_REMAINING), 1
    response.headers["ratelimit-remaining"] = str(remaining)
    response.headers["ratelimit-reset"] = str(reset)
