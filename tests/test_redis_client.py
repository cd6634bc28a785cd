"""RedisRateLimiter seen from outside: its settings and secrets, with the client, on the
command line; against a real redis-server and the emulator.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any

import pytest
import quickrouter_async as qr
from quickrouter_async._ratelimit import RateLimiter
from quickrouter_async._redis import RedisRateLimiter
from quickrouter_async._redis_bucket import redact_url
from quickrouter_async.cli import main
from quickrouter_async.testing import Emulator, RateLimit

from .conftest import FAST_POLL, FAST_RETRY
from .redis_server import RedisServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

MODEL = "google/imagen-4"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def bucket(server: RedisServer, name: str = "k") -> dict[str, float]:
    with server.client() as client:
        return {k.decode(): float(v) for k, v in client.hgetall(f"{{{name}}}:create-rate").items()}


# -- secrets, settings -------------------------------------------------------------------------


async def test_the_password_appears_in_no_repr_log_or_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with RedisServer(password="s3cret-pw") as server:
        right = RedisRateLimiter(server.url, name="k")
        await right.acquire()
        assert right.shared
        await right.aclose()
        wrong_url = server.url.replace("s3cret-pw", "wr0ng-pw")
        for url in (wrong_url, "redis://user:wr0ng-pw@127.0.0.1:1/0"):
            wrong = RedisRateLimiter(url, name="k")
            await wrong.acquire()
            await wrong.aclose()
            assert not wrong.shared
            assert "wr0ng-pw" not in repr(wrong) + wrong.url
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "***" in logged
    assert "s3cret-pw" not in logged
    assert "wr0ng-pw" not in logged
    with pytest.raises(qr.InputError) as raised:
        RedisRateLimiter("http://:wr0ng-pw@host/")
    assert "wr0ng-pw" not in str(raised.value)


def test_urls_lose_their_passwords() -> None:
    assert redact_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("rediss://me:pw@host/1") == "rediss://me:***@host/1"
    assert (
        redact_url("unix:///tmp/r.sock?password=pw&db=2") == "unix:///tmp/r.sock?password=***&db=2"
    )
    assert redact_url("redis://host:6379") == "redis://host:6379"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"url": "http://host"}, "url"),
        ({"url": "redis://host", "name": ""}, "name"),
        ({"url": "redis://host", "timeout": 0}, "timeout"),
        ({"url": "redis://host", "retry_interval": -1.0}, "retry_interval"),
    ],
)
def test_settings_are_checked(arguments: dict[str, Any], field: str) -> None:
    with pytest.raises(qr.InputError) as raised:
        RedisRateLimiter(**arguments)
    assert raised.value.field == field


def test_one_limiter_serves_one_rate() -> None:
    limiter = RedisRateLimiter("redis://host")
    limiter.configure(rate=5.0, max_pause=60.0)
    limiter.configure(rate=5.0, max_pause=30.0)
    with pytest.raises(qr.InputError):
        qr.QuickRouter("k", rate_limit=6.0, rate_limiter=limiter)


def test_without_redis_py_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImportError, match=r"quickrouter-async\[redis\]"):
        RedisRateLimiter("redis://host")


async def test_an_unused_limiter_closes(redis_server: RedisServer) -> None:
    limiter = RedisRateLimiter(redis_server.url)
    await limiter.aclose()
    assert limiter.granted == 0


async def test_any_create_limiter_can_pace_a_client(emulator: Emulator) -> None:
    limiter = RateLimiter(1000.0)
    for _ in range(2):  # one limiter for two clients of this process
        async with qr.QuickRouter(
            emulator.api_key, base_url=emulator.base_url, poll=FAST_POLL, rate_limiter=limiter
        ) as client:
            await client.create(MODEL, {"prompt": "x"})
    assert limiter.granted == 2


# -- with the client ---------------------------------------------------------------------------


def inputs(count: int, prefix: str = "p") -> Iterator[tuple[str, dict[str, Any]]]:
    for number in range(count):
        yield MODEL, {"prompt": f"{prefix} {number}"}


async def test_the_client_paces_its_creates_with_the_shared_bucket(
    redis_server: RedisServer,
) -> None:
    limiter = RedisRateLimiter(redis_server.url, name="k")
    async with (
        Emulator(duration=0.05, rate_limit=RateLimit(rate=1000, burst=5)) as emulator,
        qr.QuickRouter(
            emulator.api_key,
            base_url=emulator.base_url,
            poll=FAST_POLL,
            retry=FAST_RETRY,
            rate_limit=500.0,
            rate_limiter=limiter,
        ) as client,
    ):
        outcomes = [o async for o in client.run_many(inputs(30), concurrency=10)]
        assert all(outcome.ok for outcome in outcomes)
        creates = emulator.count("create")
    assert limiter._bucket._redis is None  # closed with the client
    state = bucket(redis_server)
    assert state["granted"] == creates == 30
    assert state["rate"] == 500.0  # the client's rate_limit, for every process


async def test_redis_stopped_and_started_again_mid_run(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quickrouter_async")
    limiter = RedisRateLimiter(redis_server.url, name="k", retry_interval=0.01)

    def outage() -> Iterator[tuple[str, dict[str, Any]]]:
        for number, item in enumerate(inputs(60)):
            if number == 20:
                redis_server.stop()
            if number == 40:
                redis_server.start()
            yield item

    async with (
        Emulator(duration=0.05) as emulator,
        qr.QuickRouter(
            emulator.api_key,
            base_url=emulator.base_url,
            poll=FAST_POLL,
            retry=FAST_RETRY,
            rate_limiter=limiter,
        ) as client,
    ):
        outcomes = [o async for o in client.run_many(outage(), concurrency=5)]
        predictions = len(emulator.predictions)
        assert limiter.shared
    assert sorted(o.index for o in outcomes if o.ok) == list(range(60))
    assert predictions == 60  # none lost, none created twice
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert any("is back" in r.getMessage() for r in caplog.records)
    assert bucket(redis_server)["granted"] >= 1  # the creates after the restart shared it


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """An emulator on an event loop of its own in a thread (``main`` runs its own loop),
    and the environment pointing at it.
    """
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        holder["stop"], holder["loop"] = asyncio.Event(), asyncio.get_running_loop()
        async with Emulator(duration=0.05, api_key="cli-key") as emulator:
            holder["emulator"] = emulator
            ready.set()
            await holder["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    ready.wait(10)
    monkeypatch.setenv("QUICKROUTER_API_KEY", "cli-key")
    monkeypatch.setenv("QUICKROUTER_BASE_URL", holder["emulator"].base_url)
    try:
        yield holder["emulator"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)


def test_batch_and_run_share_the_limit_through_redis(
    served: Emulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"prompt": "line {n}"}}\n' for n in range(6)))
    shared = ["--rate-limit-redis", redis_server.url]
    batch = ["batch", str(source), "--out", str(tmp_path / "out"), "--model", MODEL]
    assert main([*batch, *shared, "--rate-limit", "50"]) == 0
    with redis_server.client() as client:
        state = client.hgetall("{quickrouter}:create-rate")
    assert float(state[b"granted"]) == 6
    assert float(state[b"rate"]) == 50.0  # --rate-limit is the rate of every process
    run = ["run", MODEL, "--prompt", "one more", "--out", str(tmp_path / "run")]
    assert main([*run, *shared]) == 0
    with redis_server.client() as client:
        assert float(client.hget("{quickrouter}:create-rate", "granted") or 0) == 7
    assert served.count("create") == 7


def test_the_command_line_names_what_is_missing(
    served: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = ["run", MODEL, "--prompt", "x", "--out", str(tmp_path)]
    assert main([*run, "--rate-limit-redis", "http://:s3cret@host/"]) == 2
    assert "redis://" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    assert main([*run, "--rate-limit-redis", "redis://host"]) == 2
    assert "quickrouter-async[redis]" in capsys.readouterr().err
    assert served.count() == 0
