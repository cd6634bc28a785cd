"""``quickrouter-async demo``: a small batch on the emulator, with a gallery."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio

import quickrouter_async as qr

from .._journal import JOURNAL_NAME
from .._serde import input_payload
from ..testing import Emulator
from ._batch import BatchOptions, Kind
from ._execute import run_batch
from ._job import Refused, remove_job_files
from ._lock import LOCK_NAME, JobLock, Locked
from ._progress import interactive
from ._status import EXIT_USAGE, say

if TYPE_CHECKING:
    from pathlib import Path

INPUTS_NAME = "inputs.jsonl"
DEMO_INPUTS: list[qr.Imagen4Input | qr.Seedream4Input] = [
    qr.Imagen4Input(prompt="a lighthouse at dusk, oil painting", aspect_ratio="16:9"),
    qr.Imagen4Input(prompt="a red fox in fresh snow", aspect_ratio="3:4", output_format="png"),
    qr.Imagen4Input(prompt="a tiny robot watering a bonsai", model="google/imagen-4-fast"),
    qr.Imagen4Input(
        prompt="a neon city street in the rain", aspect_ratio="9:16", model="google/imagen-4-ultra"
    ),
    qr.Seedream4Input(prompt="a store front called Seedream 4", aspect_ratio="4:3"),
    qr.Seedream4Input(
        prompt="a four-panel comic of a cat learning to fly",
        aspect_ratio="1:1",
        sequential_image_generation="auto",
        max_images=3,
    ),
]


def _lines() -> str:
    return "".join(
        json.dumps({"model": item.model, "input": input_payload(item)}) + "\n"
        for item in DEMO_INPUTS
    )


async def _check(out: Path) -> None:
    """Refuse a folder that is not new, empty or an earlier demo's.

    Raises:
        Refused: ``out`` is a file, holds another job, or holds other files.
    """
    folder = anyio.Path(out)
    if not await folder.exists():
        return
    if not await folder.is_dir():
        raise Refused(f"--out {out} is a file, not a folder")
    names = {path.name async for path in folder.iterdir()} - {LOCK_NAME}
    if not names:
        return
    if JOURNAL_NAME in names:
        # Read from the demo's own inputs, not the journal: a check writes nothing, and
        # the demos of every release left the same file.
        inputs = anyio.Path(out / INPUTS_NAME)
        if await inputs.exists() and await inputs.read_text(encoding="utf-8") == _lines():
            return
        raise Refused(
            f"{out} holds another job: demo never writes into another job's folder; use a "
            "new or empty --out folder"
        )
    raise Refused(
        f"{out} is not empty and holds no earlier demo: demo writes only into a new or "
        "empty folder, or over an earlier demo"
    )


async def run_demo(out: Path, interrupt: anyio.Event | None = None) -> int:
    """Run the demo batch into ``out`` through the batch engine; return its exit status.

    The inputs are written to ``out/inputs.jsonl`` and run exactly as ``batch`` runs a
    file. ``out`` must be new, empty, or an earlier demo, which is replaced: a fresh
    emulator cannot know the predictions it recorded.
    """
    try:
        await _check(out)  # before anything is written
        await anyio.Path(out).mkdir(parents=True, exist_ok=True)
        async with JobLock(out):
            await _check(out)  # again: another run may have come first
            await remove_job_files(out)
            source = out / INPUTS_NAME
            await anyio.Path(source).write_text(_lines(), encoding="utf-8")
            options = BatchOptions(
                source=source, out=out, concurrency=8, progress=interactive(), kind=Kind.DEMO
            )
            async with (
                Emulator(duration=(0.3, 1.2), seed=7) as emulator,
                qr.QuickRouter(emulator.api_key, base_url=emulator.base_url) as client,
            ):
                return await run_batch(client, options, interrupt=interrupt, locked=True)
    except (Refused, Locked) as exc:
        say(f"error: {exc}")
    except OSError as exc:
        say(f"error: {exc.filename or out}: {exc.strerror or exc}")
    return EXIT_USAGE
