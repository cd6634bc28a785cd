"""A FastAPI app that generates images and learns they are done from webhooks.

One `qr.QuickRouter` client is shared by every request: created in the app's lifespan,
closed when it ends. ``POST /generate`` with ``{"prompt": "..."}`` (and optionally
``"aspect_ratio"``) runs a prediction whose webhook points back at this app; the wait
completes when the webhook arrives at ``POST /webhooks/quickrouter``, which hands the raw
request to `qr.WebhookReceiver.receive` (no aiohttp needed on the web side).

When the browser hangs up, the prediction is canceled on the server. Starlette (and so
FastAPI) never cancels an endpoint whose client disconnects: the endpoint watches the
connection itself, waiting for the ASGI ``http.disconnect`` message beside the wait in
one task group, and cancels the wait when it comes; `client.run` then cancels the
prediction it started.

Errors answer as the table of docs/web-backends.md says: a failed prediction 422 with
its error, a canceled one 409, the deadline (``GENERATE_TIMEOUT`` seconds, 300 by
default) 504, throttling 503, any other failure of the API 502, an invalid input 400; a
body that is not JSON or has no ``prompt`` gets FastAPI's own 422 naming the field.

Run it from the repository's root (needs ``pip install fastapi uvicorn``; the API must
reach ``PUBLIC_URL``)::

    QUICKROUTER_API_KEY=... PUBLIC_URL=https://my.example uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import TYPE_CHECKING

import anyio
import quickrouter_async as qr
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

WEBHOOK_PATH = "/webhooks/quickrouter"
TIMEOUT = float(os.environ.get("GENERATE_TIMEOUT", "300"))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client for the app's lifetime, with a receiver attached to it."""
    # No `Prefer: wait`: the create answers at once and the webhook says when the
    # prediction is done, instead of each request holding a connection to the API.
    async with qr.QuickRouter(poll=qr.PollPolicy(sync_wait=None)) as client:
        app.state.client = client
        app.state.receiver = qr.WebhookReceiver(client)
        yield


app = FastAPI(lifespan=lifespan)


class Generate(BaseModel):
    """The body of ``POST /generate``."""

    prompt: str
    aspect_ratio: str = "1:1"


def webhook_url(request: Request) -> str:
    """Where the API sends webhooks: ``PUBLIC_URL``, else this request's own origin."""
    public = os.environ.get("PUBLIC_URL") or str(request.base_url)
    return public.rstrip("/") + WEBHOOK_PATH


def error_answer(exc: qr.QuickRouterError) -> JSONResponse:
    """The answer for an error of the client, as the table of docs/web-backends.md says."""
    if isinstance(exc, qr.InputError):
        return JSONResponse({"error": str(exc), "field": exc.field}, 400)
    if isinstance(exc, qr.PredictionFailed):
        failed = exc.prediction
        return JSONResponse(
            {"error": failed.error or str(exc), "id": failed.id, "status": "failed"}, 422
        )
    if isinstance(exc, qr.PredictionCanceled):
        stopped = exc.prediction
        return JSONResponse(
            {"error": str(exc), "id": stopped.id, "status": stopped.status.value}, 409
        )
    if isinstance(exc, qr.WaitTimeout):
        last = exc.prediction
        return JSONResponse({"error": str(exc), "id": last.id if last is not None else None}, 504)
    if isinstance(exc, qr.RateLimitError):
        wait = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after else {}
        return JSONResponse({"error": str(exc)}, 503, headers=wait)
    return JSONResponse({"error": str(exc)}, 502)  # the API or the network failed


async def disconnected(request: Request) -> None:
    """Return when the client hangs up: the ASGI ``http.disconnect`` message.

    FastAPI has read the whole body by now, so the server's next message is the
    disconnect (uvicorn sends it as soon as the connection closes). A middleware built
    on Starlette's ``BaseHTTPMiddleware`` would hide it: this app has none.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run(body: Generate, request: Request) -> Response:
    """Run the prediction and answer with its URLs or the error's answer."""
    client: qr.QuickRouter = request.app.state.client
    try:
        prediction = await client.run(
            qr.Imagen4Input(prompt=body.prompt, aspect_ratio=body.aspect_ratio),
            webhook=webhook_url(request),
            timeout=TIMEOUT,
        )
    except qr.QuickRouterError as exc:
        return error_answer(exc)
    return JSONResponse(
        {"id": prediction.id, "status": prediction.status.value, "output": prediction.output_urls}
    )


@app.post("/generate")
async def generate(body: Generate, request: Request) -> Response:
    """Create a prediction with a webhook to this app, wait by push, answer its URLs."""
    # If the client leaves first, nobody reads this answer (nginx logs such a request
    # as 499, "client closed request").
    result: Response = Response(status_code=499)
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            await disconnected(request)
            group.cancel_scope.cancel()  # the client left: stop the wait, cancel the prediction

        group.start_soon(watch)
        result = await run(body, request)
        group.cancel_scope.cancel()  # answered: stop watching
    return result


@app.post(WEBHOOK_PATH)
async def webhook(request: Request) -> Response:
    """Verify a webhook and complete the wait it belongs to."""
    receiver: qr.WebhookReceiver = request.app.state.receiver
    try:
        await receiver.receive(request.headers, await request.body())
    except qr.WebhookVerificationError:
        return Response("invalid webhook\n", status_code=400)
    except qr.QuickRouterError:
        return Response("webhook secret unavailable\n", status_code=500)
    return Response("ok\n")
