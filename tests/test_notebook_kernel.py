"""The stop button in a real Jupyter kernel: an interrupt ends the library's waits.

Each test starts an ipykernel (jupyter_client, a kernel spec and connection file in a
temporary folder), runs a cell against an emulator served by this process, interrupts
the kernel 2.5 s into the wait and checks the figures issue 15 sets: the cell ends within
5 s of the interrupt, and 3 s after it nothing runs on the server.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from quickrouter_async.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from jupyter_client.asynchronous.client import AsyncKernelClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# Generous: a kernel starting while both cores are busy can take long.
STARTUP = 120.0
# How long predictions run: far longer than the test waits for anything.
DURATION = 20.0
INTERRUPT_AFTER = 2.5
CELL_ENDS_WITHIN = 5.0
NOTHING_RUNS_AFTER = 3.0


class Kernel:
    """A kernel and a client of it, with the messages of one cell collected."""

    def __init__(self, manager: AsyncKernelManager, client: AsyncKernelClient) -> None:
        self.manager = manager
        self.client = client

    async def message(self, msg_id: str) -> dict[str, Any]:
        """The next IOPub message that belongs to the cell ``msg_id``."""
        while True:
            message: dict[str, Any] = await self.client.get_iopub_msg(timeout=STARTUP)
            if message["parent_header"].get("msg_id") == msg_id:
                return message

    async def until_printed(self, msg_id: str, text: str) -> None:
        """Wait until the cell prints ``text``."""
        while True:
            message = await self.message(msg_id)
            if message["msg_type"] == "stream" and text in message["content"]["text"]:
                return

    async def until_idle(self, msg_id: str) -> tuple[str, list[str]]:
        """Wait until the cell ends; its printed text and the names of its errors."""
        printed, errors = [], []
        while True:
            message = await self.message(msg_id)
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                printed.append(content["text"])
            elif kind == "error":
                errors.append(content["ename"])
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(printed), errors

    async def run(self, code: str) -> tuple[str, list[str]]:
        """Run a cell to its end."""
        return await self.until_idle(self.client.execute(code))


@pytest.fixture
async def kernel(tmp_path: Path) -> AsyncIterator[Kernel]:
    """An ipykernel of this Python, shut down (and its files removed) after the test."""
    spec = tmp_path / "kernels" / "quickrouter-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel_json = {"argv": argv, "display_name": "test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel_json))
    manager = AsyncKernelManager(
        kernel_name="quickrouter-test",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]),
        connection_file=str(tmp_path / "connection.json"),
    )
    await manager.start_kernel()
    client = manager.client()
    try:
        client.start_channels()
        await client.wait_for_ready(timeout=STARTUP)
        yield Kernel(manager, client)
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=True)


def _client_code(emulator: Emulator) -> str:
    return (
        "import asyncio, signal, quickrouter_async as qr\n"
        f"client = qr.QuickRouter({emulator.api_key!r}, base_url={emulator.base_url!r})\n"
        "prompts = [qr.Imagen4Input(prompt=f'a lighthouse, style {n}') for n in range(3)]\n"
    )


async def _interrupt_cell(kernel: Kernel, emulator: Emulator, code: str, predictions: int) -> None:
    """Run ``code``, interrupt it 2.5 s into its wait, check the figures."""
    before = len(emulator.predictions)
    msg_id = kernel.client.execute(code)
    await kernel.until_printed(msg_id, "waiting")
    # The clock starts once the server has the predictions (it has no event for that).
    with anyio.fail_after(STARTUP):
        while len(emulator.predictions) < before + predictions:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    await anyio.sleep(INTERRUPT_AFTER)
    # The interrupt must land while the predictions run, or the test shows nothing.
    records = emulator.predictions[before:]
    assert len(records) == predictions
    assert not any(record.terminal for record in records)
    interrupted = time.monotonic()
    await kernel.manager.interrupt_kernel()
    with anyio.fail_after(60):
        printed, errors = await kernel.until_idle(msg_id)
    ended = time.monotonic() - interrupted
    assert errors == ["CancelledError"], printed
    assert ended < CELL_ENDS_WITHIN, f"the cell ended {ended:.2f}s after the interrupt"
    await anyio.sleep(max(0.0, interrupted + NOTHING_RUNS_AFTER - time.monotonic()))
    statuses = [str(record.status) for record in records]
    assert statuses == ["canceled"] * predictions
    print(f"cell ended {ended:.2f}s after the interrupt; after 3 s: {statuses}")  # noqa: T201


async def _handler_is_back(kernel: Kernel) -> None:
    printed, errors = await kernel.run(
        "await asyncio.sleep(0)\n"
        "print(signal.getsignal(signal.SIGINT).__module__, signal.set_wakeup_fd(-1))\n"
    )
    assert errors == []
    assert printed.split() == ["ipykernel.ipkernel", "-1"]


async def test_an_interrupt_stops_run_and_cancels_its_prediction(kernel: Kernel) -> None:
    async with Emulator(duration=DURATION) as emulator:
        await kernel.run(_client_code(emulator))
        code = "print('waiting', flush=True)\nawait client.run(prompts[0])\n"
        await _interrupt_cell(kernel, emulator, code, predictions=1)
        await _handler_is_back(kernel)
        # The kernel goes on: the next cell's wait works and can be interrupted again.
        await _interrupt_cell(kernel, emulator, code, predictions=1)


async def test_an_interrupt_stops_a_run_many_loop(kernel: Kernel) -> None:
    async with Emulator(duration=DURATION) as emulator:
        await kernel.run(_client_code(emulator))
        code = (
            "print('waiting', flush=True)\n"
            "async for outcome in client.run_many(prompts):\n"
            "    print(outcome)\n"
        )
        await _interrupt_cell(kernel, emulator, code, predictions=3)
        await _handler_is_back(kernel)


async def test_an_interrupt_stops_every_run_of_a_gather(kernel: Kernel) -> None:
    async with Emulator(duration=DURATION) as emulator:
        await kernel.run(_client_code(emulator))
        code = (
            "print('waiting', flush=True)\n"
            "await asyncio.gather(*(client.run(p) for p in prompts))\n"
        )
        await _interrupt_cell(kernel, emulator, code, predictions=3)
        await _handler_is_back(kernel)
