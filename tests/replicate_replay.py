"""A second Replicate-compatible server, independent of the emulator.

It answers the way recorded Replicate traffic and gateway pass-through do: ``201`` with
``status: "starting"``, ``version: "hidden"``, nanosecond timestamps, ``urls`` that point
at api.replicate.com, no ``Location`` header, ``Prefer`` ignored, Replicate's own error
bodies, and a status that advances one step per poll (so tests need no clock).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from aiohttp import web

TOKEN = "r8_replay_token"
_STEPS = ("starting", "processing", "succeeded")
_UNAUTHENTICATED = {
    "title": "Unauthenticated",
    "detail": "You did not pass a valid authentication token",
    "status": 401,
}


def _problem(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/problem+json"
    )


class ReplayServer:
    """``async with ReplayServer() as server:`` gives ``server.base_url`` and ``server.polls``."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_post("/v1/models/{owner}/{name}/predictions", self._create_model)
        self.app.router.add_post("/v1/predictions", self._create_version)
        self.app.router.add_get("/v1/predictions/{id}", self._get)
        self.predictions: dict[str, dict[str, Any]] = {}
        self.polls = 0
        self._ids = itertools.count(1)
        self._runner = web.AppRunner(self.app)
        self.base_url = ""

    async def __aenter__(self) -> ReplayServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def _create_model(self, request: web.Request) -> web.Response:
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        return await self._create(request, model)

    async def _create_version(self, request: web.Request) -> web.Response:
        body = await request.json()
        version = str(body.get("version", ""))
        if not version.startswith(("google/", "bytedance/")):
            return _problem(
                422,
                {
                    "title": "Invalid version or not permitted",
                    "detail": "The specified version does not exist (or perhaps you don't "
                    "have permission to use it?)",
                    "status": 422,
                },
            )
        return await self._create(request, version.split(":", 1)[0])

    async def _create(self, request: web.Request, model: str) -> web.Response:
        if not self._authorized(request):
            return _problem(401, _UNAUTHENTICATED)
        body = await request.json()
        prompt = body.get("input", {}).get("prompt")
        if not isinstance(prompt, str):
            return _problem(
                422,
                {
                    "detail": "- input: prompt is required\n",
                    "status": 422,
                    "title": "Input validation failed",
                    "invalid_fields": [
                        {"type": "required", "field": "input", "description": "prompt is required"}
                    ],
                },
            )
        pid = f"replay{next(self._ids):020d}"
        record = {
            "id": pid,
            "model": model,
            "version": "hidden",
            "input": body["input"],
            "logs": "",
            "output": None,
            "data_removed": False,
            "error": None,
            "source": "api",
            "status": "starting",
            "created_at": "2025-09-10T08:15:16.064900134Z",
            "urls": {
                "cancel": f"https://api.replicate.com/v1/predictions/{pid}/cancel",
                "get": f"https://api.replicate.com/v1/predictions/{pid}",
                "stream": f"https://stream.replicate.com/v1/files/{pid}",
                "web": f"https://replicate.com/p/{pid}",
            },
        }
        self.predictions[pid] = record
        return web.json_response(record, status=201)

    async def _get(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _problem(401, _UNAUTHENTICATED)
        record = self.predictions.get(request.match_info["id"])
        if record is None:
            return web.json_response({"detail": "Not found."}, status=404)
        self.polls += 1
        step = _STEPS.index(record["status"])
        record["status"] = _STEPS[min(step + 1, len(_STEPS) - 1)]
        if record["status"] == "processing":
            record["started_at"] = "2025-09-10T08:15:17.1Z"
        if record["status"] == "succeeded":
            url = f"https://replicate.delivery/xezq/{record['id']}/out-0.png"
            record["output"] = [url] if record["model"].startswith("bytedance/") else url
            record["completed_at"] = "2025-09-10T08:15:21.926871Z"
            record["metrics"] = {"image_count": 1, "predict_time": 4.8, "total_time": 5.9}
        return web.json_response(record)
