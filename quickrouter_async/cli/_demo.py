"""``quickrouter-async demo``: a small batch on the emulator, with a gallery."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio

import quickrouter_async as qr

from .._journal import JOURNAL_NAME
from .._serde import input_payload
from ..testing import Emulator
from ._batch import BatchOptions, run_batch
from ._gallery import RESULTS_NAME
from ._progress import interactive

if TYPE_CHECKING:
    from pathlib import Path

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


async def run_demo(out: Path, interrupt: anyio.Event | None = None) -> int:
    """Run the demo batch into ``out`` through the batch engine; return its exit code.

    The inputs are written to ``out/inputs.jsonl`` and run exactly as ``batch`` runs a
    file. A previous demo's journal is removed first: a fresh emulator cannot know the
    predictions it recorded.
    """
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    source = out / "inputs.jsonl"
    lines = "".join(
        json.dumps({"model": item.model, "input": input_payload(item)}) + "\n"
        for item in DEMO_INPUTS
    )
    await anyio.Path(source).write_text(lines, encoding="utf-8")
    for name in (JOURNAL_NAME, f"{JOURNAL_NAME}-wal", f"{JOURNAL_NAME}-shm", RESULTS_NAME):
        await anyio.Path(out / name).unlink(missing_ok=True)
    options = BatchOptions(source=source, out=out, concurrency=8, progress=interactive())
    async with (
        Emulator(duration=(0.3, 1.2), seed=7) as emulator,
        qr.QuickRouter(emulator.api_key, base_url=emulator.base_url) as client,
    ):
        return await run_batch(client, options, interrupt=interrupt)
