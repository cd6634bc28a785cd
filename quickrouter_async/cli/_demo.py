"""``quickrouter-async demo``: a small batch on the emulator, with a gallery."""

from __future__ import annotations

import html
import json
import sys
from typing import TYPE_CHECKING, Any

import anyio

import quickrouter_async as qr

from ..testing import Emulator

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


async def _one(
    client: qr.QuickRouter, index: int, item: qr.Imagen4Input | qr.Seedream4Input, out: Path
) -> dict[str, Any]:
    record: dict[str, Any] = {"index": index, "model": item.model, "input": None, "files": []}
    record["input"] = qr._serde.input_payload(item)  # noqa: SLF001 (the payload sent)
    try:
        prediction = await client.run(item)
        files = await client.download(prediction, out)
    except qr.PredictionError as exc:
        prediction, files = exc.prediction, []
        record["error"] = str(exc)
    else:
        record["error"] = None
    record.update(
        prediction_id=prediction.id,
        status=prediction.status.value,
        files=[path.name for path in files],
    )
    return record


def _gallery(records: list[dict[str, Any]]) -> str:
    cards = []
    for record in records:
        images = "".join(
            f'<a href="{html.escape(name)}"><img src="{html.escape(name)}" alt=""></a>'
            for name in record["files"]
        )
        cards.append(
            f'<figure class="{html.escape(record["status"])}">{images}<figcaption>'
            f"<b>#{record['index']}</b> {html.escape(str(record['input'].get('prompt', '')))}"
            f"<br><small>{html.escape(record['model'])} · {html.escape(record['status'])}"
            "</small></figcaption></figure>"
        )
    return (
        "<!doctype html><meta charset=utf-8><title>quickrouter-async gallery</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;background:#fafafa}"
        "main{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1em}"
        "figure{margin:0;padding:.6em;background:#fff;border-radius:8px;"
        "box-shadow:0 1px 3px #0002}img{max-width:100%;max-height:220px;display:block;"
        "margin:0 auto .4em}.failed,.canceled,.aborted{outline:2px solid #c33}</style>"
        f"<h1>quickrouter-async gallery</h1><p>{len(records)} predictions</p>"
        f"<main>{''.join(cards)}</main>"
    )


async def run_demo(out: Path) -> int:
    """Run the demo batch into ``out``; return 0 if every prediction succeeded."""
    await anyio.to_thread.run_sync(lambda: out.mkdir(parents=True, exist_ok=True))
    records: list[dict[str, Any]] = []
    async with (
        Emulator(duration=(0.3, 1.2), seed=7) as emulator,
        qr.QuickRouter(emulator.api_key, base_url=emulator.base_url) as client,
        anyio.create_task_group() as group,
    ):

        async def collect(index: int, item: qr.Imagen4Input | qr.Seedream4Input) -> None:
            records.append(await _one(client, index, item, out))

        for index, item in enumerate(DEMO_INPUTS):
            group.start_soon(collect, index, item)
    records.sort(key=lambda record: int(record["index"]))
    lines = "".join(json.dumps(record) + "\n" for record in records)
    await anyio.Path(out / "results.jsonl").write_text(lines, encoding="utf-8")
    await anyio.Path(out / "index.html").write_text(_gallery(records), encoding="utf-8")
    ok = sum(record["error"] is None for record in records)
    print(  # noqa: T201 (the command's output)
        f"{ok} of {len(records)} predictions succeeded; gallery: {out / 'index.html'}",
        file=sys.stdout,
    )
    return 0 if ok == len(records) else 1
