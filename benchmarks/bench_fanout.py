"""Fan-out benchmark: many predictions from one process, against the emulator in another.

    python benchmarks/bench_fanout.py [--quick]

Four scenarios, printed as Markdown tables and written to ``benchmarks/results/``:

1. fan-out: 10,000 predictions of 5 s with ``concurrency=10000`` (``--quick``: 1,000 of 2 s);
2. client CPU per prediction at zero server latency: quickrouter_async's ``run_many``, a
   bare aiohttp loop sending the same requests, and replicate-python 1.0.7, each in sync
   mode (``Prefer: wait``) and in poll mode (a fixed 50 ms poll interval), five rounds
   interleaved, the median shown, with the emulator on a core of its own;
3. a server limit of 20 creates/s (burst 10) and 600 inputs with default settings;
4. a generator of 1,000,000 inputs left with ``break`` after 300 outcomes.

CPU is `time.process_time()` of this process only; the emulator runs in a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import statistics
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import quickrouter_async as qr

from _common import (
    ROOT,
    TERMINAL,
    EmulatorProcess,
    machine,
    markdown_table,
    raise_open_files_limit,
    separate_cores,
    write_json,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

MODEL = "google/imagen-4"
POLL_INTERVAL = 0.05
CPU_DURATION = 0.2
CPU_CONCURRENCY = 50
CPU_ROUNDS = 5


def inputs(count: int, pulled: list[int] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """``count`` (model, input) pairs, made one at a time; ``pulled`` counts them."""
    for number in range(count):
        if pulled is not None:
            pulled.append(number)
        yield MODEL, {"prompt": f"benchmark prompt {number}", "aspect_ratio": "16:9"}


def max_rss_mb() -> float:
    """The peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- 1. fan-out ------------------------------------------------------------------------------


async def fan_out(base_url: str, api_key: str, count: int) -> dict[str, Any]:
    """``count`` predictions at once through run_many; errors by type."""
    errors: Counter[str] = Counter()
    succeeded = 0
    cpu, start = time.process_time(), time.monotonic()
    async with (
        qr.QuickRouter(api_key, base_url=base_url) as client,
        client.run_many(inputs(count), concurrency=count) as outcomes,
    ):
        async for outcome in outcomes:
            if outcome.ok:
                succeeded += 1
            else:
                errors[type(outcome.error).__name__] += 1
        throttled = outcomes.progress.throttled
    return {
        "succeeded": succeeded,
        "errors": dict(errors),
        "wall_s": time.monotonic() - start,
        "cpu_s": time.process_time() - cpu,
        "client_throttled": throttled,
        "max_rss_mb": max_rss_mb(),
    }


# -- 2. CPU per prediction -------------------------------------------------------------------


async def ours(
    base_url: str, api_key: str, count: int, *, sync: bool, rate_limit: float | None = None
) -> int:
    poll = qr.PollPolicy() if sync else qr.PollPolicy(sync_wait=None, interval=POLL_INTERVAL)
    succeeded = 0
    async with (
        qr.QuickRouter(api_key, base_url=base_url, poll=poll, rate_limit=rate_limit) as client,
        client.run_many(inputs(count), concurrency=CPU_CONCURRENCY) as outcomes,
    ):
        async for outcome in outcomes:
            succeeded += outcome.ok
    return succeeded


async def bare_aiohttp(base_url: str, api_key: str, count: int, *, sync: bool) -> int:
    """The same requests with nothing but aiohttp and json: the floor to compare with."""
    headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
    # The headers of quickrouter_async's creates with default settings (see
    # contenders.bare_aiohttp).
    create_headers = {**headers, "Content-Type": "application/json", "Cancel-After": "1800s"}
    if sync:
        create_headers["Prefer"] = "wait=5"
    create_url = f"{base_url}/v1/models/{MODEL}/predictions"
    slots = asyncio.Semaphore(CPU_CONCURRENCY)
    succeeded = 0

    async def one(payload: dict[str, Any], session: aiohttp.ClientSession) -> None:
        nonlocal succeeded
        async with slots:
            body = json.dumps({"input": payload})
            async with session.post(create_url, data=body, headers=create_headers) as answer:
                prediction = json.loads(await answer.read())
            while prediction["status"] not in TERMINAL:
                await asyncio.sleep(POLL_INTERVAL)
                url = f"{base_url}/v1/predictions/{prediction['id']}"
                async with session.get(url, headers=headers) as answer:
                    prediction = json.loads(await answer.read())
            succeeded += prediction["status"] == "succeeded"

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(payload, session) for _, payload in inputs(count)))
    return succeeded


async def replicate_python(base_url: str, api_key: str, count: int, *, sync: bool) -> int:
    """replicate-python 1.0.7: ``async_run`` (sync mode) or ``async_create`` + ``async_wait``."""
    import replicate  # noqa: PLC0415 (an optional benchmark dependency)

    client = replicate.Client(api_token=api_key, base_url=base_url)
    client.poll_interval = POLL_INTERVAL
    slots = asyncio.Semaphore(CPU_CONCURRENCY)
    succeeded = 0

    async def one(payload: dict[str, Any]) -> None:
        nonlocal succeeded
        async with slots:
            if sync:
                await client.async_run(MODEL, input=payload)
                succeeded += 1
            else:
                prediction = await client.predictions.async_create(model=MODEL, input=payload)
                await prediction.async_wait()
                succeeded += prediction.status == "succeeded"

    await asyncio.gather(*(one(payload) for _, payload in inputs(count)))
    return succeeded


async def ours_unpaced(base_url: str, api_key: str, count: int, *, sync: bool) -> int:
    """`ours` with a create rate that never binds: no pacing, like the bare loop.

    By default the client starts at Replicate's documented 10 creates/s and ramps up over
    the first second; on this zero-latency server with predictions of one fixed length
    that ramp leaves the creates spread out for the rest of the run, while the bare loop
    sends them in batches of 50 that the event loop handles together.
    """
    return await ours(base_url, api_key, count, sync=sync, rate_limit=UNPACED)


UNPACED = 100_000.0
CONTENDERS = {
    "bare aiohttp loop": bare_aiohttp,
    "quickrouter_async run_many": ours,
    f"quickrouter_async run_many, rate_limit={UNPACED:,.0f}": ours_unpaced,
    "replicate-python 1.0.7": replicate_python,
}


def _one_run(server: EmulatorProcess, contender: Any, count: int, *, sync: bool) -> dict[str, Any]:
    """One contender once: its CPU per prediction, successes, requests and any error."""
    server.reset()
    gc.collect()
    cpu, start = time.process_time(), time.monotonic()
    error = None
    try:
        succeeded = anyio.run(lambda: contender(server.base_url, server.api_key, count, sync=sync))
    except Exception as exc:  # noqa: BLE001 (a contender that breaks is a result)
        succeeded, error = 0, f"{type(exc).__name__}: {exc}"[:120]
    return {
        "cpu_ms": (time.process_time() - cpu) * 1000 / count,
        "wall_s": time.monotonic() - start,
        "succeeded": succeeded,
        "requests": server.stats()["total_requests"],
        "error": error,
    }


def cpu_per_prediction(server: EmulatorProcess, count: int, rounds: int) -> list[dict[str, Any]]:
    """Every contender ``rounds`` times, interleaved; the median round of each is shown.

    Interleaving spreads whatever else the machine does over all contenders alike, and
    the median keeps one disturbed round from deciding a ratio.
    """
    rows = []
    for sync in (True, False):
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
        for _ in range(rounds):
            for name, contender in CONTENDERS.items():
                runs[name].append(_one_run(server, contender, count, sync=sync))
        floor = statistics.median(run["cpu_ms"] for run in runs[next(iter(CONTENDERS))])
        for name, done in runs.items():
            cpu_ms = statistics.median(run["cpu_ms"] for run in done)
            errors = [run["error"] for run in done if run["error"]]
            rows.append(
                {
                    "mode": "sync (Prefer: wait)"
                    if sync
                    else f"poll ({POLL_INTERVAL * 1000:g} ms)",
                    "client": name,
                    "predictions": count,
                    "succeeded": min(run["succeeded"] for run in done),
                    "requests/prediction": statistics.median(run["requests"] for run in done)
                    / count,
                    "CPU ms/prediction": cpu_ms,
                    "vs bare aiohttp": cpu_ms / floor,
                    "rounds (CPU ms)": " ".join(f"{run['cpu_ms']:.3f}" for run in done),
                    "wall s": statistics.median(run["wall_s"] for run in done),
                    "error": errors[0] if errors else None,
                }
            )
    return rows


# -- 3. rate limit ---------------------------------------------------------------------------


async def rate_limited(base_url: str, api_key: str, count: int) -> dict[str, Any]:
    lost = 0
    start = time.monotonic()
    async with (
        qr.QuickRouter(api_key, base_url=base_url) as client,
        client.run_many(inputs(count)) as outcomes,
    ):
        async for outcome in outcomes:
            lost += not outcome.ok
    return {"lost": lost, "wall_s": time.monotonic() - start}


# -- 4. leaving early ------------------------------------------------------------------------


async def leave_early(
    base_url: str, api_key: str, *, enough: int, context_manager: bool
) -> dict[str, Any]:
    """Break after ``enough`` outcomes; time from the break until nothing is left."""
    pulled: list[int] = []
    seen = 0
    async with qr.QuickRouter(api_key, base_url=base_url) as client:
        outcomes = client.run_many(inputs(1_000_000, pulled))
        if context_manager:
            async with outcomes:
                async for _ in outcomes:
                    seen += 1
                    if seen == enough:
                        left = time.monotonic()
                        break
        else:
            async for _ in outcomes:
                seen += 1
                if seen == enough:
                    left = time.monotonic()
                    break
            del outcomes
            gc.collect()
            # The cleanup runs in the background: wait for its task before closing.
            for _ in range(3000):
                if not any(_is_run_many(task) for task in asyncio.all_tasks()):
                    break
                await asyncio.sleep(0.01)
        closed_in = time.monotonic() - left
    return {"outcomes": seen, "pulled": len(pulled), "left_in_s": closed_in}


def _is_run_many(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return "_fanout" in getattr(code, "co_filename", "")


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, about a minute")
    options = parser.parse_args()
    quick = options.quick
    raise_open_files_limit()
    results: dict[str, Any] = {"machine": machine(), "quick": quick}
    print("## Machine\n")
    print(markdown_table([results["machine"]], results["machine"]))

    # 1. fan-out
    count, duration = (1_000, 2.0) if quick else (10_000, 5.0)
    with EmulatorProcess(duration=duration) as server:
        row = anyio.run(fan_out, server.base_url, server.api_key, count)
        stats = server.stats()
    row |= {
        "predictions": count,
        "duration_s": duration,
        "concurrency": count,
        "server_running_after": stats["running"],
        "requests/prediction": stats["total_requests"] / count,
        "CPU ms/prediction": row["cpu_s"] * 1000 / count,
    }
    results["fan_out"] = row
    print(f"\n## 1. Fan-out: {count:,} predictions of {duration:g} s, concurrency={count:,}\n")
    print(
        markdown_table(
            [row],
            [
                "predictions",
                "succeeded",
                "errors",
                "wall_s",
                "requests/prediction",
                "CPU ms/prediction",
                "max_rss_mb",
                "server_running_after",
            ],
        )
    )

    # 2. CPU per prediction
    count, rounds = (500, 1) if quick else (2_000, CPU_ROUNDS)
    with (
        EmulatorProcess(duration=CPU_DURATION, latency=0.0) as server,
        separate_cores(server) as cores,
    ):
        rows = cpu_per_prediction(server, count, rounds)
    results["cpu"] = rows
    results["cpu_cores"] = cores
    print(
        f"\n## 2. Client CPU per prediction ({count:,} predictions of {CPU_DURATION:g} s, "
        f"concurrency {CPU_CONCURRENCY}, zero server latency; median of {rounds} "
        f"interleaved rounds; {cores})\n"
    )
    print(markdown_table(rows, rows[0]))

    # 3. rate limit
    count, rate, burst, duration = (200 if quick else 600), 20.0, 10, 1.0
    limit = {"rate": rate, "burst": burst, "retry_after": True}
    with EmulatorProcess(duration=duration, rate_limit=limit) as server:
        row = anyio.run(rate_limited, server.base_url, server.api_key, count)
        stats = server.stats()
    attempts = stats["creates"]
    achieved = (count - burst) / (row["wall_s"] - duration)
    row |= {
        "inputs": count,
        "server limit": f"{rate:g}/s, burst {burst}",
        "creates/s": achieved,
        "% of limit": 100 * achieved / rate,
        "create attempts": attempts,
        "throttled": stats["throttled"],
        "% throttled": 100 * stats["throttled"] / attempts if attempts else 0.0,
        "server_predictions": stats["predictions"],
    }
    results["rate_limit"] = row
    print(f"\n## 3. Server limit {rate:g} creates/s (burst {burst}), default settings\n")
    print(
        markdown_table(
            [row],
            [
                "inputs",
                "server limit",
                "wall_s",
                "creates/s",
                "% of limit",
                "create attempts",
                "throttled",
                "% throttled",
                "lost",
            ],
        )
    )

    # 4. leaving early
    rows = []
    for context_manager in (True, False):
        with EmulatorProcess(duration=(0.5, 3.0), seed=11) as server:
            row = anyio.run(
                lambda cm=context_manager: leave_early(
                    server.base_url, server.api_key, enough=300, context_manager=cm
                )
            )
            stats = server.stats()
        row |= {
            "how": "async with + break" if context_manager else "plain break (garbage collected)",
            "inputs": "1,000,000 (generator)",
            "created on server": stats["predictions"],
            "canceled on server": stats["statuses"].get("canceled", 0),
            "running on server after": stats["running"],
        }
        rows.append(row)
    results["leave_early"] = rows
    print("\n## 4. Leaving early: break after 300 outcomes of a 1,000,000-input generator\n")
    print(
        markdown_table(
            rows,
            [
                "how",
                "outcomes",
                "pulled",
                "created on server",
                "canceled on server",
                "running on server after",
                "left_in_s",
            ],
        )
    )

    name = "fanout-quick.json" if quick else "fanout.json"
    write_json(ROOT / "benchmarks" / "results" / name, results)
    print(f"\nwritten to benchmarks/results/{name}")


if __name__ == "__main__":
    main()
