"""Gateways: nothing left running and never billed twice, with create and get alone.

    python benchmarks/bench_gateway.py [--key KEY] [--inputs N]

Against the emulator (in a process of its own) playing a gateway that relays create and
get only, as QuickRouter documents, plus what each scenario names:

1. giving up, with the cancel route and ``Prefer: wait`` relayed, predictions of 20 s:
   ``run(timeout=1)``, a cancelled ``run()``, a task group of 20 cancelled after 1 s and a
   ``run_many`` of 100 (concurrency 20) left after 1 s; the predictions still running on
   the server 2 s after the client closed;
2. no cancel route either: ``run(timeout=6)``, its ``Cancel-After`` and whether the
   server stopped the prediction;
3. a fault mix (20 % 429 on polls, 5 % 5xx on any request, 1 % of creates answered 500
   after the server stored them) over ``N`` inputs (default 1,000) through ``run_many``:
   on the gateway with the default policy (at most once) and with
   ``RetryPolicy(in_doubt="resend")``, and on the full API; outcomes by kind and the
   inputs created twice.

Prints Markdown tables and writes ``benchmarks/results/gateway.json`` (or
``gateway-KEY.json`` for another key).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import time
from typing import Any

import anyio
import quickrouter_async as qr

from _common import ROOT, EmulatorProcess, machine, markdown_table, write_json

MODEL = "google/imagen-4"
GATEWAY_WITH_CANCEL = {"profile": "gateway", "cancel_route": True, "honor_prefer_wait": True}
FAULT_MIX = [
    {"throttle": 0.2, "endpoints": ["get"]},
    {"server_error": 0.05},
    {"server_error_after_create": 0.01, "endpoints": ["create"]},
]


def prompt(text: str) -> dict[str, str]:
    return {"prompt": text}


async def give_up_in_every_way(base_url: str, key: str) -> dict[str, Any]:
    """The four ways of giving up of scenario 1, each on a client of its own."""
    started = time.monotonic()
    async with qr.QuickRouter(key, base_url=base_url) as client:
        with contextlib.suppress(qr.WaitTimeout):
            await client.run(MODEL, prompt("deadline"), timeout=1)
    async with qr.QuickRouter(key, base_url=base_url) as client:
        with anyio.move_on_after(1):
            await client.run(MODEL, prompt("cancelled"))
    async with qr.QuickRouter(key, base_url=base_url) as client:
        with anyio.move_on_after(1):
            async with anyio.create_task_group() as group:
                for number in range(20):
                    group.start_soon(client.run, MODEL, prompt(f"group {number}"))
    async with qr.QuickRouter(key, base_url=base_url) as client:
        inputs = ((MODEL, prompt(f"many {number}")) for number in range(100))
        with anyio.move_on_after(1):
            async with client.run_many(inputs, concurrency=20) as outcomes:
                async for _ in outcomes:
                    pass
    closed = time.monotonic()
    await anyio.sleep(2)
    return {"seconds_until_all_closed": closed - started}


async def bounded_without_cancel(base_url: str, key: str) -> dict[str, Any]:
    async with qr.QuickRouter(key, base_url=base_url) as client:
        try:
            await client.run(MODEL, prompt("bounded"), timeout=6)
        except qr.WaitTimeout as exc:
            message = str(exc)
        capabilities = client.capabilities
    await anyio.sleep(2)
    return {"message": message, "cancel_route": capabilities.cancel}


async def through_faults(base_url: str, key: str, count: int, in_doubt: str) -> dict[str, Any]:
    retry = qr.RetryPolicy(in_doubt=in_doubt)  # type: ignore[arg-type]
    kinds: collections.Counter[str] = collections.Counter()
    async with (
        qr.QuickRouter(key, base_url=base_url, retry=retry) as client,
        client.run_many((MODEL, prompt(f"fault mix {n}")) for n in range(count)) as results,
    ):
        async for outcome in results:
            kinds["succeeded" if outcome.ok else type(outcome.error).__name__] += 1
    return dict(kinds)


def scenario_giving_up(key: str) -> dict[str, Any]:
    with EmulatorProcess(duration=20.0, api_key=key, **GATEWAY_WITH_CANCEL) as server:
        timing = anyio.run(give_up_in_every_way, server.base_url, key)
        stats = server.stats()
    return {
        **timing,
        "predictions": stats["predictions"],
        "by_status": stats["by_status"],
        "running_2s_after_close": stats["running"],
    }


def scenario_cancel_after(key: str) -> dict[str, Any]:
    with EmulatorProcess(duration=30.0, api_key=key, profile="gateway") as server:
        result = anyio.run(bounded_without_cancel, server.base_url, key)
        stats = server.stats()
    return {**result, "by_status": stats["by_status"], "cancel_after": stats["cancel_after"]}


def scenario_faults(key: str, count: int) -> list[dict[str, Any]]:
    rows = []
    for profile, in_doubt in (("gateway", "raise"), ("gateway", "resend"), ("replicate", "raise")):
        options = {"profile": profile, "faults": FAULT_MIX, "seed": 42}
        with EmulatorProcess(duration=(0.5, 2.0), api_key=key, **options) as server:
            kinds = anyio.run(through_faults, server.base_url, key, count, in_doubt)
            stats = server.stats()
        rows.append(
            {
                "server": profile,
                "in_doubt": in_doubt,
                "inputs": count,
                "succeeded": kinds.get("succeeded", 0),
                "% succeeded": 100 * kinds.get("succeeded", 0) / count,
                "CreateInDoubt": kinds.get("CreateInDoubt", 0),
                "other errors": {
                    k: v for k, v in kinds.items() if k not in {"succeeded", "CreateInDoubt"}
                },
                "created twice": stats["inputs_created_twice"],
                "stored then 500": stats["faults"].get("server_error_after_create", 0),
                "predictions": stats["predictions"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--key", default="bench-key", help="the API key (try k)")
    parser.add_argument("--inputs", type=int, default=1000, help="inputs of the fault mix")
    arguments = parser.parse_args()
    key = arguments.key
    print(f"## Gateways (key {key!r})\n", flush=True)
    giving_up = scenario_giving_up(key)
    print(markdown_table([giving_up], list(giving_up)), flush=True)
    cancel_after = scenario_cancel_after(key)
    print(markdown_table([cancel_after], list(cancel_after)), flush=True)
    faults = scenario_faults(key, arguments.inputs)
    print(markdown_table(faults, list(faults[0])), flush=True)
    name = "gateway.json" if key == "bench-key" else f"gateway-{key}.json"
    write_json(
        ROOT / "benchmarks" / "results" / name,
        {
            "machine": machine(),
            "key": key,
            "giving_up": giving_up,
            "cancel_after": cancel_after,
            "faults": faults,
        },
    )


if __name__ == "__main__":
    main()
