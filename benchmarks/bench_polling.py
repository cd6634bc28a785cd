"""Poll scheduler benchmark: requests per prediction and detection delay.

    python benchmarks/bench_polling.py [--predictions 300] [--concurrency 50] [--repeat 3]

The emulator runs in its own process (``python -m quickrouter_async.testing``) with
predictions lasting uniformly 1.5-4.5 s. Two scenarios, printed as Markdown tables and
written to ``benchmarks/results/polling.json``:

1. the server ignores ``Prefer: wait``: ``client.run`` with the learned schedule (the
   default `PollPolicy`) and with a fixed 0.5 s interval (what replicate-python does),
   one after the other in the same run, each from a fresh client that knows nothing
   about the model. ``--concurrency`` predictions wait at a time.
2. the server honours ``Prefer: wait``: ``client.run`` with the default policy.

Requests are counted per prediction by an aiohttp trace on the client's session (every
request sent, retries included). The detection delay of a prediction is the moment
``run`` returned minus the server's ``completed_at`` (one machine, one clock). Warm-up
predictions are those created before the client had seen any prediction of the model
finish: the schedule had nothing to learn from yet.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import quickrouter_async as qr

from _common import ROOT, EmulatorCommand, machine, markdown_table, write_json

if TYPE_CHECKING:
    from types import SimpleNamespace

MODEL = "google/imagen-4"
DURATION = (1.5, 4.5)
FIXED_INTERVAL = 0.5
API_KEY = "bench-key"
RESULTS = ROOT / "benchmarks" / "results" / "polling.json"


class RequestCounter:
    """Counts the requests a client sends, per prediction id (creates under their answer)."""

    def __init__(self) -> None:
        self.polls: Counter[str] = Counter()
        self.other: Counter[str] = Counter()
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_end.append(self._ended)

    async def _ended(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        del session, context
        path = params.url.path
        if params.method == "GET" and "/v1/predictions/" in path:
            self.polls[path.rsplit("/", 1)[1]] += 1
        else:
            self.other[f"{params.method} {path.rsplit('/v1/', 1)[-1]}"] += 1


async def scenario(
    base_url: str, policy: qr.PollPolicy, *, predictions: int, concurrency: int
) -> list[dict[str, Any]]:
    """Run ``predictions`` through ``client.run``, ``concurrency`` at a time; one record each."""
    counter = RequestCounter()
    records: list[dict[str, Any]] = []
    first_finish = [float("inf")]
    numbers = iter(range(predictions))

    async def worker(client: qr.QuickRouter) -> None:
        for number in numbers:
            created = time.time()
            prompt = f"polling benchmark {number} {created}"
            prediction = await client.run(MODEL, {"prompt": prompt})
            noticed = time.time()
            first_finish[0] = min(first_finish[0], noticed)
            if prediction.completed_at is None or prediction.created_at is None:
                raise RuntimeError(f"prediction {prediction.id} has no server times")
            records.append(
                {
                    "id": prediction.id,
                    "created": created,
                    "delay": noticed - prediction.completed_at.timestamp(),
                    "duration": (prediction.completed_at - prediction.created_at).total_seconds(),
                }
            )

    connector = aiohttp.TCPConnector(limit=0)
    async with (
        aiohttp.ClientSession(connector=connector, trace_configs=[counter.trace]) as session,
        qr.QuickRouter(API_KEY, base_url=base_url, poll=policy, session=session) as client,
        anyio.create_task_group() as group,
    ):
        for _ in range(concurrency):
            group.start_soon(worker, client)
    creates = sum(count for name, count in counter.other.items() if name.startswith("POST"))
    if creates != predictions:
        raise RuntimeError(f"expected {predictions} creates, the client sent {creates}")
    for record in records:
        record["gets"] = counter.polls[record["id"]]
        record["warm_up"] = record["created"] < first_finish[0]
    return records


def summarize(name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of one scenario: all predictions, and those after warm-up."""
    steady = [r for r in records if not r["warm_up"]]

    def mean(rows: list[dict[str, Any]], key: str) -> float | None:
        return statistics.fmean(r[key] for r in rows) if rows else None

    delays = sorted(r["delay"] for r in records)
    return {
        "scheduler": name,
        "predictions": len(records),
        "warm-up": len(records) - len(steady),
        "GET/prediction": mean(records, "gets"),
        "mean delay s": mean(records, "delay"),
        "p95 delay s": delays[round(0.95 * (len(delays) - 1))],
        "GET/prediction after warm-up": mean(steady, "gets"),
        "mean delay after warm-up s": mean(steady, "delay"),
        "most GETs": max(r["gets"] for r in records),
        "requests/prediction": 1.0 + (mean(records, "gets") or 0.0),
        "GETs per prediction": dict(sorted(Counter(r["gets"] for r in records).items())),
    }


def mean_row(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of the runs of one scheduler, figure by figure."""
    runs = [row for row in rows if row["scheduler"] == name]
    mean = {"scheduler": f"{name}, mean of {len(runs)} runs"}
    for column in POLLED_COLUMNS[1:]:
        mean[column] = statistics.fmean(row[column] for row in runs)
    return mean


POLLED_COLUMNS = (
    "scheduler",
    "predictions",
    "warm-up",
    "GET/prediction",
    "mean delay s",
    "p95 delay s",
    "GET/prediction after warm-up",
    "mean delay after warm-up s",
)
SYNC_COLUMNS = ("scheduler", "predictions", "requests/prediction", "most GETs", "mean delay s")


def main() -> None:
    """Run both scenarios, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--predictions", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    duration = f"{DURATION[0]:g},{DURATION[1]:g}"
    contenders = {
        "learned (default PollPolicy)": qr.PollPolicy(),
        f"fixed {FIXED_INTERVAL:g} s interval": qr.PollPolicy(interval=FIXED_INTERVAL),
    }

    def measure(base_url: str, policy: qr.PollPolicy) -> list[dict[str, Any]]:
        return anyio.run(
            lambda: scenario(
                base_url,
                policy,
                predictions=options.predictions,
                concurrency=options.concurrency,
            )
        )

    polled = []
    with EmulatorCommand(
        "--api-key", API_KEY, "--duration", duration, "--no-prefer-wait"
    ) as server:
        for _ in range(options.repeat):
            for name, policy in contenders.items():
                polled.append(summarize(name, measure(server.base_url, policy)))
    with EmulatorCommand("--api-key", API_KEY, "--duration", duration) as server:
        sync = summarize("default PollPolicy", measure(server.base_url, qr.PollPolicy()))

    if options.repeat > 1:
        polled += [mean_row(name, polled) for name in contenders]
    span = f"{DURATION[0]:g}-{DURATION[1]:g} s predictions, {options.concurrency} at a time"
    print(f"\n### The server ignores Prefer: wait ({span})\n")
    print(markdown_table(polled, POLLED_COLUMNS))
    print(f"\n### The server honours Prefer: wait ({span})\n")
    print(markdown_table([sync], SYNC_COLUMNS))
    write_json(
        RESULTS,
        {
            "machine": machine(),
            "duration": DURATION,
            "concurrency": options.concurrency,
            "ignores_prefer_wait": polled,
            "honours_prefer_wait": sync,
        },
    )
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
