"""Hostile answers: what a compressed bomb or a huge percent-encoded output costs in memory.

    python benchmarks/bench_hostile.py

Each case runs in a fresh child process against a small aiohttp server on 127.0.0.1, so
its peak resident memory (``ru_maxrss``) is its own; the growth is that peak less the
process's resident memory just before the request. Cases:

1. ``gzip`` / ``deflate``: a prediction answer of about 400 KiB that inflates to 400 MiB
   of valid prediction JSON (the client's cap on answers is 16 MiB);
2. ``percent``: an output ``data:image/png,%41%41...`` of 5,000,000 escapes (a 15 MB
   answer, under the cap), downloaded whole (5 MB written) and with
   ``max_bytes=65536`` (refused).

Prints a Markdown table and writes ``benchmarks/results/hostile.json``.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import quickrouter_async as qr
from aiohttp import web

from _common import ROOT, machine, markdown_table, write_json

INFLATED = 400 << 20
ESCAPES = 5_000_000
PATH = "/replicate/v1/predictions/p1"


def _bomb(wbits: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    parts = [packer.compress(b'{"id": "p1", "status": "succeeded", "output": "')]
    chunk = b"A" * (1 << 20)
    parts += [packer.compress(chunk) for _ in range(INFLATED // len(chunk))]
    parts += [packer.compress(b'"}'), packer.flush()]
    return b"".join(parts)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _child(case: str) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if case in ("gzip", "deflate"):
        body = _bomb(31 if case == "gzip" else 15)
        headers["Content-Encoding"] = case
    else:
        output = "data:image/png," + "%41" * ESCAPES
        body = json.dumps({"id": "p1", "status": "succeeded", "output": [output]}).encode()

    async def answer(_: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get(PATH, answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    result: dict[str, Any] = {"case": case, "answer KiB": round(len(body) / 1024)}
    before = _rss_mib()
    try:
        async with qr.QuickRouter("k", base_url=f"http://127.0.0.1:{port}/replicate") as client:
            try:
                prediction = await client.get("p1")
                if case == "percent":
                    with tempfile.TemporaryDirectory() as folder:
                        files = await client.download(prediction, folder)
                        result["written bytes"] = sum(f.stat().st_size for f in files)
                        await client.download(prediction, folder, max_bytes=65536)
                result["outcome"] = "no error"
            except qr.QuickRouterError as exc:
                result["outcome"] = f"{type(exc).__name__}: {str(exc)[:90]}"
    finally:
        await runner.cleanup()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["growth MiB"] = round(peak - before, 1)
    return result


def main() -> None:
    rows = []
    for case in ("gzip", "deflate", "percent"):
        child = subprocess.run(
            [sys.executable, __file__, "--child", case],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        rows.append(json.loads(child.stdout.splitlines()[-1]))
    columns = ["case", "answer KiB", "written bytes", "outcome", "growth MiB"]
    print(markdown_table(rows, columns))
    results = {"machine": machine(), "rows": rows}
    write_json(ROOT / "benchmarks" / "results" / "hostile.json", results)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(asyncio.run(_child(sys.argv[2]))))
    else:
        main()
