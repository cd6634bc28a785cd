"""The example web apps, served for real on 127.0.0.1, against the emulator.

Each app shares one client across requests, creates predictions with a webhook pointing
back at itself, and learns they finished from the emulator's webhooks: no polls.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from quickrouter_async.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from types import ModuleType

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str) -> ModuleType:
    """Import ``examples/{name}.py`` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def emulator(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Emulator]:
    """An emulator the apps' clients find through the environment."""
    async with Emulator(duration=0.05, seed=21) as emu:
        monkeypatch.setenv("QUICKROUTER_API_KEY", emu.api_key)
        monkeypatch.setenv("QUICKROUTER_BASE_URL", emu.base_url)
        monkeypatch.delenv("PUBLIC_URL", raising=False)
        yield emu


@contextlib.asynccontextmanager
async def aiohttp_app() -> AsyncIterator[str]:
    runner = web.AppRunner(load("aiohttp_app").create_app(), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def fastapi_app() -> Iterator[str]:
    """Serve the FastAPI example with uvicorn in a thread (its own event loop)."""
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    config = uvicorn.Config(
        load("fastapi_app").app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    # A socket bound and listening before the thread starts: the port is known at once,
    # and requests wait in the backlog until the app has started.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive()


async def generate(base: str, prompts: list[str]) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:

        async def one(prompt: str) -> None:
            async with session.post(f"{base}/generate", json={"prompt": prompt}) as answer:
                assert answer.status == 200, await answer.text()
                answers.append(await answer.json())

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for prompt in prompts:
                    group.start_soon(one, prompt)
    return answers


def check(emulator: Emulator, answers: list[dict[str, Any]]) -> None:
    assert len(answers) == 3
    assert all(a["status"] == "succeeded" and len(a["output"]) == 1 for a in answers)
    assert emulator.count("create") == 3
    assert emulator.count("get") == 0  # completed by push
    assert emulator.count("webhook_secret") == 1  # one shared client, one receiver
    completed = [d for d in emulator.webhook_deliveries if d.event == "completed"]
    assert {d.prediction_id for d in completed} == {a["id"] for a in answers}


async def test_the_aiohttp_example(emulator: Emulator) -> None:
    async with aiohttp_app() as base:
        answers = await generate(base, ["a red fox", "a blue whale", "a green owl"])
        await emulator.drain_webhooks()
    check(emulator, answers)


async def test_the_fastapi_example(emulator: Emulator) -> None:
    with fastapi_app() as base:
        answers = await generate(base, ["a red fox", "a blue whale", "a green owl"])
        await emulator.drain_webhooks()
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{base}/webhooks/quickrouter", data=b"{}") as answer,
        ):
            assert answer.status == 400  # unsigned: refused
    check(emulator, answers)
