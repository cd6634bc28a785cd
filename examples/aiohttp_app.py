"""An aiohttp web app that generates images and learns they are done from webhooks.

One `qr.QuickRouter` client is shared by every request: created when the app starts,
closed when it stops. ``POST /generate`` with ``{"prompt": "..."}`` creates a
prediction whose webhook points back at this app, then waits for it; the wait
completes when the webhook arrives at ``POST /webhooks/quickrouter``, with no polling
(one poll only if no webhook arrives for 30 seconds).

Run it (the API must be able to reach ``PUBLIC_URL``)::

    QUICKROUTER_API_KEY=... PUBLIC_URL=https://my.example python examples/aiohttp_app.py

or against the emulator: ``quickrouter-async emulator`` in another terminal, then
``QUICKROUTER_BASE_URL=... QUICKROUTER_API_KEY=test-key python examples/aiohttp_app.py``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import quickrouter_async as qr
from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

WEBHOOK_PATH = "/webhooks/quickrouter"
CLIENT = web.AppKey("client", qr.QuickRouter)
RECEIVER = web.AppKey("receiver", qr.WebhookReceiver)


async def quickrouter(app: web.Application) -> AsyncIterator[None]:
    """One client for the app's lifetime, with a receiver attached to it."""
    async with qr.QuickRouter() as client:
        app[CLIENT] = client
        app[RECEIVER] = qr.WebhookReceiver(client)  # the secret is fetched on first use
        yield


def webhook_url(request: web.Request) -> str:
    """Where the API sends webhooks: ``PUBLIC_URL``, else this request's own origin."""
    public = os.environ.get("PUBLIC_URL") or str(request.url.origin())
    return public.rstrip("/") + WEBHOOK_PATH


async def generate(request: web.Request) -> web.Response:
    """``POST /generate {"prompt": ...}``: create, wait by push, answer the image URLs."""
    body = await request.json()
    client = request.app[CLIENT]
    try:
        prediction = await client.create(
            qr.Imagen4Input(prompt=body["prompt"]), webhook=webhook_url(request)
        )
        prediction = await client.wait(prediction, timeout=300, cancel_on_exit=True)
    except (KeyError, qr.InputError) as exc:
        return web.json_response({"error": f"bad input: {exc}"}, status=400)
    except qr.QuickRouterError as exc:
        return web.json_response({"error": str(exc)}, status=502)
    return web.json_response(
        {"id": prediction.id, "status": prediction.status.value, "output": prediction.output_urls}
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
    web.run_app(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
