"""An aiohttp web app that generates images and learns they are done from webhooks.

One `qr.QuickRouter` client is shared by every request: created when the app starts,
closed when it stops. ``POST /generate`` with ``{"prompt": "..."}`` (and optionally
``"aspect_ratio"``) runs a prediction whose webhook points back at this app; the wait
completes when the webhook arrives at ``POST /webhooks/quickrouter``, with no polling.

When the browser hangs up, the prediction is canceled on the server: the app runs with
aiohttp's handler cancellation on (``handler_cancellation=True``, off by default), so
aiohttp cancels the handler when the connection closes, and `client.run` cancels the
prediction it started when it is cancelled.

Errors answer as the table of docs/web-backends.md says: a body that is not JSON or has
no ``prompt`` 400, a failed prediction 422 with its error, a canceled one 409, the
deadline (``GENERATE_TIMEOUT`` seconds, 300 by default) 504, throttling 503, any other
failure of the API 502.

Run it (the API must be able to reach ``PUBLIC_URL``); it listens on 127.0.0.1:8081,
or the port in ``PORT`` (0 picks a free one)::

    QUICKROUTER_API_KEY=... PUBLIC_URL=https://my.example python examples/aiohttp_app.py

or against the emulator: ``quickrouter-async emulator --port 8080`` in another
terminal, then ``QUICKROUTER_BASE_URL=http://127.0.0.1:8080/replicate
QUICKROUTER_API_KEY=test-key python examples/aiohttp_app.py``.
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any

import quickrouter_async as qr
from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

WEBHOOK_PATH = "/webhooks/quickrouter"
TIMEOUT = float(os.environ.get("GENERATE_TIMEOUT", "300"))
CLIENT = web.AppKey("client", qr.QuickRouter)
RECEIVER = web.AppKey("receiver", qr.WebhookReceiver)


async def quickrouter(app: web.Application) -> AsyncIterator[None]:
    """One client for the app's lifetime, with a receiver attached to it."""
    # No `Prefer: wait`: the create answers at once and the webhook says when the
    # prediction is done, instead of each request holding a connection to the API.
    async with qr.QuickRouter(poll=qr.PollPolicy(sync_wait=None)) as client:
        app[CLIENT] = client
        app[RECEIVER] = qr.WebhookReceiver(client)  # the secret is fetched on first use
        yield


def webhook_url(request: web.Request) -> str:
    """Where the API sends webhooks: ``PUBLIC_URL``, else this request's own origin."""
    public = os.environ.get("PUBLIC_URL") or str(request.url.origin())
    return public.rstrip("/") + WEBHOOK_PATH


def answer(status: int, body: dict[str, Any], **headers: str) -> web.Response:
    """A JSON answer."""
    return web.json_response(body, status=status, headers=headers)


def bad_request(message: str) -> web.HTTPBadRequest:
    """A 400 answer saying what is wrong with the body, to raise."""
    return web.HTTPBadRequest(
        text=json.dumps({"error": message, "field": "prompt"}), content_type="application/json"
    )


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object of the request; a 400 answer if it is not one or has no prompt."""
    try:
        # Bytes to `json.loads`: it finds the encoding itself, whatever charset is claimed.
        body = json.loads(await request.read())
    except (ValueError, RecursionError):
        raise bad_request('the body is not JSON: send {"prompt": "..."}') from None
    if not isinstance(body, dict) or "prompt" not in body:
        raise bad_request('the field "prompt" is missing: send {"prompt": "..."}')
    return body


def error_answer(exc: qr.QuickRouterError) -> web.Response:
    """The answer for an error of the client, as the table of docs/web-backends.md says."""
    if isinstance(exc, qr.InputError):
        return answer(400, {"error": str(exc), "field": exc.field})
    if isinstance(exc, qr.PredictionFailed):
        failed = exc.prediction
        return answer(422, {"error": failed.error or str(exc), "id": failed.id, "status": "failed"})
    if isinstance(exc, qr.PredictionCanceled):
        stopped = exc.prediction
        return answer(409, {"error": str(exc), "id": stopped.id, "status": stopped.status.value})
    if isinstance(exc, qr.WaitTimeout):
        last = exc.prediction
        return answer(504, {"error": str(exc), "id": last.id if last is not None else None})
    if isinstance(exc, qr.RateLimitError):
        wait = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after else {}
        return answer(503, {"error": str(exc)}, **wait)
    return answer(502, {"error": str(exc)})  # the API or the network failed


async def generate(request: web.Request) -> web.Response:
    """``POST /generate {"prompt": ...}``: run a prediction, wait by push, answer its URLs."""
    body = await read_body(request)
    try:
        prediction = await request.app[CLIENT].run(
            qr.Imagen4Input(prompt=body["prompt"], aspect_ratio=body.get("aspect_ratio", "1:1")),
            webhook=webhook_url(request),
            timeout=TIMEOUT,
        )
    except qr.QuickRouterError as exc:
        return error_answer(exc)
    return answer(
        200,
        {"id": prediction.id, "status": prediction.status.value, "output": prediction.output_urls},
    )


async def webhook(request: web.Request) -> web.Response:
    """``POST /webhooks/quickrouter``: the receiver verifies and delivers it."""
    return await request.app[RECEIVER].handle(request)


def create_app() -> web.Application:
    """The application; ``QUICKROUTER_*`` environment variables configure the client."""
    app = web.Application()
    app.cleanup_ctx.append(quickrouter)
    app.router.add_post("/generate", generate)
    app.router.add_post(WEBHOOK_PATH, webhook)
    return app


if __name__ == "__main__":
    web.run_app(
        create_app(),
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8081")),
        # Cancel a handler when its client disconnects: `client.run` then cancels the
        # prediction on the server. aiohttp leaves handlers running by default.
        handler_cancellation=True,
    )
