"""A FastAPI app that generates images and learns they are done from webhooks.

One `qr.QuickRouter` client is shared by every request: created in the app's lifespan,
closed when it ends. ``POST /generate`` with ``{"prompt": "..."}`` creates a prediction
whose webhook points back at this app, then waits for it; the wait completes when the
webhook arrives at ``POST /webhooks/quickrouter``, which hands the raw request to
`qr.WebhookReceiver.receive` (no aiohttp needed on the web side).

Run it (needs ``pip install fastapi uvicorn``; the API must reach ``PUBLIC_URL``)::

    QUICKROUTER_API_KEY=... PUBLIC_URL=https://my.example uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import quickrouter_async as qr
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

WEBHOOK_PATH = "/webhooks/quickrouter"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client for the app's lifetime, with a receiver attached to it."""
    async with qr.QuickRouter() as client:
        app.state.client = client
        app.state.receiver = qr.WebhookReceiver(client)
        yield


app = FastAPI(lifespan=lifespan)


class Generate(BaseModel):
    """The body of ``POST /generate``."""

    prompt: str


def webhook_url(request: Request) -> str:
    """Where the API sends webhooks: ``PUBLIC_URL``, else this request's own origin."""
    public = os.environ.get("PUBLIC_URL") or str(request.base_url)
    return public.rstrip("/") + WEBHOOK_PATH


@app.post("/generate")
async def generate(body: Generate, request: Request) -> dict[str, Any]:
    """Create a prediction with a webhook to this app, wait by push, return its URLs."""
    client: qr.QuickRouter = request.app.state.client
    try:
        prediction = await client.create(
            qr.Imagen4Input(prompt=body.prompt), webhook=webhook_url(request)
        )
        prediction = await client.wait(prediction, timeout=300, cancel_on_exit=True)
    except qr.InputError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    except qr.QuickRouterError as exc:
        raise HTTPException(status_code=502, detail=str(exc)) from exc
    return {
        "id": prediction.id,
        "status": prediction.status.value,
        "output": prediction.output_urls,
    }


@app.post(WEBHOOK_PATH)
async def webhook(request: Request) -> Response:
    """Verify a webhook and complete the wait it belongs to."""
    receiver: qr.WebhookReceiver = request.app.state.receiver
    try:
        await receiver.receive(request.headers, await request.body())
    except qr.WebhookVerificationError:
        return Response("invalid webhook\n", status_code=400)
    return Response("ok\n")
