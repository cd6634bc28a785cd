"""Reliability benchmark: thousands of predictions through an API that keeps failing.

    python benchmarks/bench_reliability.py [--count 2000] [--seed 1]

The emulator runs in its own process (``python -m quickrouter_async.testing`` with its
fault flags) and fails on purpose: 20% of requests throttled (429, ``Retry-After: 1``),
5% answered 500/502/503 before acting, 2% connections dropped before acting, on every
endpoint; and 1% of creates fail after the prediction was stored (0.5% answered
500/502, 0.5% dropped), the ambiguous case where a blind retry makes a duplicate.

The client runs ``run_many`` over ``--count`` inputs, each a different prompt. Afterwards
the server's predictions are listed and counted per prompt. The run checks that every
input ends as exactly one outcome, that at least 99.5% succeed, that no prompt has two
predictions on the server, and that the whole run ends within its time budget. It prints
a Markdown table and writes ``benchmarks/results/reliability.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import quickrouter_async as qr

from _common import machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reliability.json"
API_KEY = "bench-key"
MODEL = "google/imagen-4"
FAULTS = {
    "throttle": 0.2,
    "server-error": 0.05,
    "reset": 0.02,
    "server-error-after-create": 0.005,
    "reset-after-create": 0.005,
}
CONCURRENCY = 64
# The emulator asks for 1 s on one request in five whatever the load; honouring it in
# full only makes the run longer, so server waits are capped at this.
MAX_RETRY_AFTER = 0.25
# A fixed create rate: the adaptive limiter reads random 429s as a low server limit.
RATE_LIMIT = 100.0
BUDGET = 900.0


class Tally(logging.Handler):
    """Counts the library's retry and create-in-doubt log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for key, start in (
            ("retries", "retrying "),
            ("creates in doubt", "create of "),
            ("attached after doubt", "attached to prediction"),
            ("sent again after lookup", "prediction of "),
        ):
            if message.startswith(start):
                self.counts[key] += 1


def start_emulator(seed: int) -> tuple[subprocess.Popen[str], str]:
    """The emulator in a child process, with the fault flags; and its base URL."""
    command = [
        sys.executable,
        "-m",
        "quickrouter_async.testing",
        "--api-key",
        API_KEY,
        "--duration",
        "0.2,0.5",
        "--seed",
        str(seed),
    ]
    for flag, value in FAULTS.items():
        command += [f"--{flag}", str(value)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = process.stdout.readline().strip() if process.stdout is not None else ""
    if not line.startswith("QUICKROUTER_BASE_URL="):
        process.kill()
        raise RuntimeError(f"the emulator did not start: {line!r}")
    return process, line.split("=", 1)[1]


def inputs(count: int) -> Any:
    for number in range(count):
        yield MODEL, {"prompt": f"reliability prompt {number}"}


async def scenario(base_url: str, count: int) -> dict[str, Any]:
    retry = qr.RetryPolicy(max_retry_after=MAX_RETRY_AFTER)
    outcomes: list[qr.Outcome[Any]] = []
    started = time.monotonic()
    with anyio.fail_after(BUDGET):
        async with (
            qr.QuickRouter(API_KEY, base_url=base_url, retry=retry, rate_limit=RATE_LIMIT) as c,
            c.run_many(inputs(count), concurrency=CONCURRENCY, timeout=120) as results,
        ):
            outcomes = [outcome async for outcome in results]
    elapsed = time.monotonic() - started
    # What the server holds, listed by a patient client (the faults hit listing too).
    patient = qr.RetryPolicy(attempts=30, max_retry_after=MAX_RETRY_AFTER)
    async with qr.QuickRouter(API_KEY, base_url=base_url, retry=patient) as lister:
        server = [prediction async for prediction in lister.list_predictions()]
    return {"outcomes": outcomes, "server": server, "elapsed": elapsed}


def summarize(run: dict[str, Any], count: int, tally: Tally) -> dict[str, Any]:
    outcomes: list[qr.Outcome[Any]] = run["outcomes"]
    server: list[qr.Prediction] = run["server"]
    indexes = collections.Counter(outcome.index for outcome in outcomes)
    succeeded = [o for o in outcomes if o.ok]
    errors = collections.Counter(type(o.error).__name__ for o in outcomes if not o.ok)
    per_prompt = collections.Counter((p.input or {}).get("prompt") for p in server)
    duplicates = sum(n - 1 for n in per_prompt.values() if n > 1)
    ours = {o.prediction.id for o in outcomes if o.prediction is not None}
    return {
        "inputs": count,
        "outcomes": len(outcomes),
        "one outcome per input": sorted(indexes) == list(range(count))
        and set(indexes.values()) == {1},
        "succeeded": len(succeeded),
        "success rate %": 100.0 * len(succeeded) / count,
        "explicit errors": dict(errors),
        "server predictions": len(server),
        "duplicate predictions": duplicates,
        "server predictions without an outcome": sum(1 for p in server if p.id not in ours),
        "elapsed s": run["elapsed"],
        **dict(tally.counts),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--count", type=int, default=2000, help="predictions (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="the emulator's seed")
    arguments = parser.parse_args()
    tally = Tally()
    logging.getLogger("quickrouter_async").addHandler(tally)
    logging.getLogger("quickrouter_async").setLevel(logging.INFO)
    process, base_url = start_emulator(arguments.seed)
    try:
        run = anyio.run(scenario, base_url, arguments.count)
    finally:
        process.terminate()
        process.wait(timeout=10)
    summary = summarize(run, arguments.count, tally)
    passed = (
        summary["one outcome per input"]
        and summary["success rate %"] >= 99.5
        and summary["duplicate predictions"] == 0
    )
    summary["passed"] = passed
    print(f"## Reliability: {arguments.count} predictions through injected faults\n")
    print("| measure | value |\n|---|---|")
    for key, value in summary.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"| {key} | {shown} |")
    faults = ", ".join(f"{flag} {value:g}" for flag, value in FAULTS.items())
    print(f"\nFaults: {faults}; concurrency {CONCURRENCY}; emulator in its own process.")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "faults": FAULTS,
        "concurrency": CONCURRENCY,
        "max_retry_after": MAX_RETRY_AFTER,
        "rate_limit": RATE_LIMIT,
        "seed": arguments.seed,
        "duration": [0.2, 0.5],
        "emulator": "python -m quickrouter_async.testing (separate process)",
    }
    document = {"machine": machine(), "settings": settings, "summary": summary}
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
