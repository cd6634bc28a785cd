"""The emulator's command line, in-process and as a child process, and a foreign client.

replicate-python (the official SDK) is run against the emulator when it is installed:
a client written by others must find the protocol it expects.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import runpy
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from quickrouter_async.testing import Emulator, Faults, RateLimit, _cli

from .test_emulator import eventually

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


def options(*argv: str) -> dict[str, Any]:
    return _cli.emulator_options(_cli.build_parser().parse_args(list(argv)))


def test_flags_become_emulator_options() -> None:
    parsed = options(
        "--duration", "0.5,2", "--seed", "3", "--rate", "5", "--burst", "3",
        "--no-retry-after", "--fail-prompt", "bad", "--fail-prompt", "worse",
        "--no-prefer-wait", "--throttle", "0.2", "--reset", "0.1", "--slow-seconds", "1",
        "--fault-endpoints", "get, list", "--local-urls", "--early-output",
        "--start-delay", "0.1", "--data-retention", "60",
    )  # fmt: skip
    assert parsed["duration"] == (0.5, 2.0)
    assert parsed["rate_limit"] == RateLimit(rate=5.0, burst=3, retry_after=False)
    assert parsed["faults"] == Faults(
        throttle=0.2, reset=0.1, slow_seconds=1.0, endpoints={"get", "list"}
    )
    assert parsed["fail_prompts"] == ["bad", "worse"]
    assert parsed["honor_prefer_wait"] is False
    assert parsed["passthrough_urls"] is False
    assert parsed["early_output"] is True
    Emulator(**parsed)


def test_the_defaults_need_no_flags() -> None:
    parsed = options()
    assert parsed["rate_limit"] is None
    assert parsed["faults"] is None
    assert parsed["duration"] == 1.0
    assert options("--burst", "4")["rate_limit"] == RateLimit(rate=10.0, burst=4)


@pytest.mark.parametrize(
    "argv", [["--duration", "soon"], ["--failure-rate", "2"], ["--throttle", "1.5"]]
)
def test_bad_flags_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _cli.main(argv, prog="emulator")
    assert info.value.code == 2
    assert "emulator: error:" in capsys.readouterr().err


def test_main_serves_the_parsed_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    async def fake_serve(options: dict[str, Any], **_: Any) -> None:
        seen.append(options)

    monkeypatch.setattr(_cli, "serve", fake_serve)
    assert _cli.main(["--port", "0", "--api-key", "k"]) == 0
    assert seen[0]["api_key"] == "k"
    monkeypatch.setattr(sys, "argv", ["quickrouter_async.testing", "--seed", "9"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("quickrouter_async.testing", run_name="__main__")
    assert info.value.code == 0
    assert seen[1]["seed"] == 9


async def test_serve_prints_the_base_url_and_stops_when_asked() -> None:
    stdout = io.StringIO()
    stop = asyncio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(
            functools.partial(
                _cli.serve, options("--api-key", "k", "--duration", "0"), stdout=stdout, stop=stop
            )
        )
        await eventually(lambda: "\n" in stdout.getvalue())
        first, second = stdout.getvalue().splitlines()[:2]
        assert second == "QUICKROUTER_API_KEY=k"
        base_url = first.removeprefix("QUICKROUTER_BASE_URL=")
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                base_url + "/v1/predictions", headers={"Authorization": "Bearer k"}
            ) as response,
        ):
            assert response.status == 200
        stop.set()


async def test_the_module_runs_as_a_process_until_sigterm() -> None:
    command = [
        sys.executable, "-m", "quickrouter_async.testing",
        "--port", "0", "--duration", "0.05", "--api-key", "k", "--seed", "1",
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    with anyio.fail_after(20):
        async with await anyio.open_process(command, env=environment) as process:
            assert process.stdout is not None
            received = b""
            while b"\n" not in received:
                received += await process.stdout.receive()
            line = received.decode().splitlines()[0]
            assert line.startswith("QUICKROUTER_BASE_URL=http://127.0.0.1:")
            base_url = line.removeprefix("QUICKROUTER_BASE_URL=")
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    base_url + "/v1/models/google/imagen-4/predictions",
                    json={"input": {"prompt": "hello"}},
                    headers={"Authorization": "Bearer k", "Prefer": "wait"},
                ) as response,
            ):
                assert response.status == 201
                assert (await response.json())["status"] == "succeeded"
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


async def test_replicate_python_runs_against_the_emulator() -> None:
    replicate = pytest.importorskip("replicate")
    async with Emulator(duration=0.02, api_key="r8_test", fail_prompts=["bad"]) as emulator:
        client = replicate.Client(api_token=emulator.api_key, base_url=emulator.base_url)
        client.poll_interval = 0.01
        try:
            prediction = await client.predictions.async_create(
                model="google/imagen-4", input={"prompt": "a lighthouse", "aspect_ratio": "16:9"}
            )
            assert prediction.status == "starting"
            await prediction.async_wait()
            assert prediction.status == "succeeded"
            assert prediction.output.startswith(emulator.url)
            output = await client.async_run(
                "bytedance/seedream-4",
                input={"prompt": "a", "sequential_image_generation": "auto", "max_images": 2},
                use_file_output=False,
            )
            assert len(output) == 2
            with pytest.raises(replicate.exceptions.ModelError):
                await client.async_run("google/imagen-4", input={"prompt": "bad"})
            with pytest.raises(replicate.exceptions.ReplicateError) as info:
                await client.predictions.async_create(
                    model="google/imagen-4", input={"prompt": "a", "aspect_ratio": "2:1"}
                )
            assert info.value.status == 422
            assert info.value.title == "Input validation failed"
            page = await client.predictions.async_list()
            assert len(page.results) == 3
            assert emulator.count("get") >= 1
            assert emulator.count("create") == 4
        finally:
            await client._async_client.aclose()
