"""Several processes, one API key: the create limit shared through Redis, or not.

    python benchmarks/bench_redis.py [--processes 8] [--inputs 100] [--no-docs]

The emulator runs in its own process and allows 20 creates/s (burst 10, ``Retry-After``
in whole seconds); predictions take 1 s. Each of ``--processes`` worker processes runs
``client.run_many`` over its own ``--inputs`` inputs with concurrency 50 and default
settings, all started at once. Three scenarios:

1. without Redis: each process finds the limit by itself;
2. one ``qr.RedisRateLimiter`` shared by every process (a redis-server on a unix socket);
3. the same, with Redis stopped once half the creates are made and started again a few
   seconds later.

The share of the limit achieved is computed as in ``bench_fanout.py``: the inputs beyond
the burst over the wall time less one prediction's duration, against 20/s. Throttled is
the share of create requests the server answered 429. "Created twice" counts predictions
beyond one per input. Redis commands come from Redis' own ``INFO commandstats``, reset
before each scenario: the script's calls (``EVALSHA``, and ``SCRIPT LOAD`` once after a
restart), every round trip (those, and each connection's handshake), and every command
counted, the ones the script runs inside Redis included.

Prints a Markdown table and writes ``benchmarks/results/redis.json``; unless
``--no-docs``, the table also replaces the one in ``docs/scaling.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

import anyio
import quickrouter_async as qr

from _common import ROOT, EmulatorProcess, machine, raise_open_files_limit, write_json

sys.path.insert(0, str(ROOT / "tests"))
from redis_server import RedisServer  # the tests' redis-server, reused

MODEL = "google/imagen-4"
RATE, BURST, DURATION, CONCURRENCY = 20.0, 10, 1.0, 50
RESULTS = ROOT / "benchmarks" / "results" / "redis.json"
SCALING_PAGE = ROOT / "docs" / "scaling.md"
BEGIN, END = "<!-- bench-redis:begin -->", "<!-- bench-redis:end -->"
# Scenario 3: Redis is stopped when this share of the creates is made, for this long.
STOP_AT, OUTAGE = 0.5, 3.0
# Commands the bucket's script runs inside Redis, and the benchmark's own: every other
# command is a round trip from a client (the script's, or a connection's handshake).
INNER = frozenset({"time", "hmget", "hset", "zadd", "zremrangebyscore", "zcard", "pexpire"})
OWN = frozenset({"config", "info"})
SCRIPT = frozenset({"evalsha", "eval", "script"})


# -- a worker process ------------------------------------------------------------------


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:  # noqa: ARG002 (counted, not shown)
        self.count += 1


async def work(options: dict[str, Any]) -> dict[str, Any]:
    """Wait for "go" on standard input, run the inputs, return what happened."""
    warnings = _Count()
    logging.getLogger("quickrouter_async").addHandler(warnings)
    limiter = qr.RedisRateLimiter(options["redis"]) if options["redis"] else None
    offset, count = options["offset"], options["count"]
    inputs = (
        (MODEL, {"prompt": f"process {offset} input {n}", "aspect_ratio": "16:9"})
        for n in range(offset, offset + count)
    )
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)
    succeeded, errors = 0, []
    async with (
        qr.QuickRouter(options["api_key"], base_url=options["base_url"], rate_limiter=limiter) as c,
        c.run_many(inputs, concurrency=CONCURRENCY) as outcomes,
    ):
        async for outcome in outcomes:
            succeeded += outcome.ok
            if not outcome.ok:
                errors.append(f"{type(outcome.error).__name__}: {outcome.error}"[:200])
    result: dict[str, Any] = {"succeeded": succeeded, "errors": errors[:5]}
    result["warnings"] = warnings.count
    if limiter is not None:
        result |= {"commands": limiter.commands, "shared_at_end": limiter.shared}
    return result


# -- the parent --------------------------------------------------------------------------


def run_scenario(
    server: EmulatorProcess, redis: RedisServer | None, processes: int, inputs: int, *, outage: bool
) -> dict[str, Any]:
    """Start the workers, let them go at once, and collect what they and the servers saw."""
    server.reset()
    if redis is not None:
        redis.client().config_resetstat()
    workers = []
    for number in range(processes):
        options = {
            "base_url": server.base_url,
            "api_key": server.api_key,
            "redis": None if redis is None else redis.url,
            "offset": number * inputs,
            "count": inputs,
        }
        workers.append(
            subprocess.Popen(
                [sys.executable, __file__, "worker", json.dumps(options)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for worker in workers:
        if worker.stdout is None or worker.stdout.readline().strip() != "ready":
            raise RuntimeError("a worker did not start")
    start = time.monotonic()
    for worker in workers:
        if worker.stdin is not None:
            worker.stdin.write("go\n")
            worker.stdin.flush()
    stopped_at = None
    commands: dict[str, int] = {}
    if outage and redis is not None:
        while server.stats()["creates"] < STOP_AT * processes * inputs:
            time.sleep(0.1)
        commands = _commands(redis)  # counted before the stop wipes them
        redis.stop()
        stopped_at = time.monotonic() - start
        time.sleep(OUTAGE)
        redis.start()
    results = []
    for worker in workers:
        out, _ = worker.communicate(timeout=600)
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.monotonic() - start
    stats = server.stats()
    if redis is not None:
        for name, calls in _commands(redis).items():
            commands[name] = commands.get(name, 0) + calls
    total = processes * inputs
    succeeded = sum(r["succeeded"] for r in results)
    creates = stats["creates"]
    row: dict[str, Any] = {
        "processes": processes,
        "inputs": total,
        "succeeded": succeeded,
        "created twice": max(0, stats["predictions"] - total),
        "wall_s": wall,
        "pct_of_limit": 100 * (succeeded - BURST) / (wall - DURATION) / RATE,
        "create requests": creates,
        "throttled": stats["throttled"],
        "pct_throttled": 100 * stats["throttled"] / creates if creates else 0.0,
        "warnings": sum(r["warnings"] for r in results),
        "errors": [e for r in results for e in r["errors"]][:5],
    }
    if redis is not None:
        calls = sum(v for k, v in commands.items() if k in SCRIPT)
        trips = sum(v for k, v in commands.items() if k not in INNER | OWN)
        every = sum(v for k, v in commands.items() if k not in OWN)
        row |= {
            "redis_script_calls": calls,
            "redis_round_trips": trips,
            "redis_commands": every,
            "script_calls_per_create": calls / creates if creates else 0.0,
            "round_trips_per_create": trips / creates if creates else 0.0,
            "commands_per_create": every / creates if creates else 0.0,
            "commandstats": commands,
            "client_calls": sum(r["commands"] for r in results),
            "shared_at_end": all(r["shared_at_end"] for r in results),
        }
    if stopped_at is not None:
        row |= {"redis_stopped_at_s": stopped_at, "outage_s": OUTAGE}
    return row


def _commands(redis: RedisServer) -> dict[str, int]:
    """Calls per command since the last reset, from ``INFO commandstats``."""
    info = redis.client().info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


def measure(processes: int, inputs: int) -> dict[str, Any]:
    """The three scenarios, on one emulator and one redis-server."""
    limit = {"rate": RATE, "burst": BURST, "retry_after": True}
    scenarios: dict[str, Any] = {}
    with EmulatorProcess(duration=DURATION, rate_limit=limit) as server, RedisServer() as redis:
        for label, shared, outage in (
            ("without Redis", False, False),
            ("one RedisRateLimiter", True, False),
            ("RedisRateLimiter, Redis stopped and restarted", True, True),
        ):
            print(f"  {processes} processes x {inputs} inputs, {label} ...", flush=True)
            time.sleep(BURST / RATE + 0.5)  # the server's bucket full again
            load = os.getloadavg()[0]  # the machine's load as the scenario starts
            scenarios[label] = run_scenario(
                server, redis if shared else None, processes, inputs, outage=outage
            ) | {"load_average": load}
    return {"processes": processes, "inputs_per_process": inputs, "scenarios": scenarios}


def table(results: dict[str, Any]) -> str:
    """One row per scenario."""
    lines = [
        (
            f"{results['processes']} processes x {results['inputs_per_process']} inputs, a "
            f"server limit of {RATE:g} creates/s (burst {BURST}), predictions of "
            f"{DURATION:g} s, `run_many` with concurrency {CONCURRENCY} and default settings "
            "in each process."
        ),
        "",
        (
            "| scenario | share of the limit achieved | creates throttled | succeeded "
            "| created twice | Redis script calls per create | Redis round trips per create "
            "| Redis commands per create |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, row in results["scenarios"].items():
        figures = [
            row.get(key)
            for key in ("script_calls_per_create", "round_trips_per_create", "commands_per_create")
        ]
        lines.append(
            f"| {label} | {row['pct_of_limit']:.1f} % | {row['pct_throttled']:.1f} % "
            f"| {row['succeeded']} of {row['inputs']} | {row['created twice']} | "
            + " | ".join("" if value is None else f"{value:.2f}" for value in figures)
            + " |"
        )
    loads = ", ".join(f"{row['load_average']:.1f}" for row in results["scenarios"].values())
    lines += ["", f"Load average (1 min) of the machine as each scenario started: {loads}."]
    return "\n".join(lines)


def update_page(text: str) -> None:
    """Replace what lies between the scaling page's markers with ``text``."""
    page = SCALING_PAGE.read_text()
    head, found, rest = page.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"{SCALING_PAGE} lacks the {BEGIN} ... {END} markers")
    SCALING_PAGE.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=100, help="inputs per process")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/scaling.md")
    options = parser.parse_args()
    raise_open_files_limit()
    from run_all import machine_line  # noqa: PLC0415 (run_all imports this module)

    results = {"machine": machine(), **measure(options.processes, options.inputs)}
    text = table(results)
    print(f"\n{text}\n")
    write_json(RESULTS, results)
    print(f"written to {RESULTS.relative_to(ROOT)}")
    if not options.no_docs:
        update_page(f"{machine_line(results['machine'])}\n\n{text}")
        print("table written to docs/scaling.md")


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        raise_open_files_limit()
        print(json.dumps(anyio.run(work, json.loads(sys.argv[2]))), flush=True)
    else:
        main()
