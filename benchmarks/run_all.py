"""quickrouter_async, replicate-python and a bare aiohttp loop, side by side in one run.

    nox -s bench                     # or: python benchmarks/run_all.py [--quick] [--no-docs]

The emulator runs in its own process (CPU time measured here is the client's alone); each
workload starts a fresh one. The three contenders (see ``contenders.py``) drive the same
workloads:

1. CPU: 2,000 predictions of 0.2 s, 100 at a time, zero server latency, against a server
   that sends no ``ratelimit-*`` headers (as QuickRouter documents none), in sync mode
   (``Prefer: wait``) and in poll mode (a fixed 50 ms interval): client CPU per prediction,
   throughput, requests per prediction; five rounds of each contender, interleaved, the
   median kept; the emulator and the client share the machine's cores, as they would;
2. polling: 300 predictions of 1.5-4.5 s, 50 at a time, the server ignoring
   ``Prefer: wait``, each client's default schedule: requests per prediction and the delay
   between the server finishing and the client noticing;
3. most in flight: predictions of 5 s, all at once, in steps of 300, 1,000, 3,000 and
   10,000: the largest step each client finishes without an error;
4. memory: the Python heap (``tracemalloc``) per prediction in flight, 250 at once;
5. rate limit: the server allows 20 creates/s (burst 10), 600 inputs, 64 at a time: the
   share of the limit achieved, the share of creates throttled, the inputs lost;
6. several processes, one key (``bench_redis.py``): 8 processes of 100 inputs against the
   same 20/s limit, without Redis, with one ``qr.RedisRateLimiter``, and with Redis
   stopped and started again mid-run; quickrouter_async only.

Prints a Markdown table and writes ``benchmarks/results/summary.json``; unless
``--no-docs``, the table also replaces the one in ``docs/performance.md`` (and the
processes' one the one in ``docs/scaling.md``).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
from typing import TYPE_CHECKING, Any

import anyio

import bench_redis
from _common import (
    ROOT,
    EmulatorProcess,
    machine,
    raise_open_files_limit,
    write_json,
)
from contenders import CONTENDERS, Record, Workload, payloads

if TYPE_CHECKING:
    from pathlib import Path

    from contenders import Contender

RESULTS = ROOT / "benchmarks" / "results" / "summary.json"
PERFORMANCE_PAGE = ROOT / "docs" / "performance.md"
SCALING_PAGE = ROOT / "docs" / "scaling.md"
# The API's published limits (reference: Replicate's rate-limit page): creates, and
# every other request, per second.
CREATE_LIMIT, OTHER_LIMIT = 600 / 60, 3000 / 60
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
# Rounds of the CPU workload per contender (the median is kept).
CPU_ROUNDS = 5


def drive(
    contender: Contender, server: EmulatorProcess, count: int, work: Workload, offset: int = 0
) -> dict[str, Any]:
    """Run one contender on one workload; what it saw and what the server saw."""
    server.reset()
    gc.collect()
    inputs = payloads(count, offset)
    cpu, start = time.process_time(), time.monotonic()
    error = None
    try:
        records: list[Record] = anyio.run(contender, server.base_url, server.api_key, inputs, work)
    except Exception as exc:  # noqa: BLE001 (a contender that breaks is a result)
        records, error = [], f"{type(exc).__name__}: {exc}"[:160]
    cpu_s, wall_s = time.process_time() - cpu, time.monotonic() - start
    stats = server.stats()
    failed = [record for record in records if not record.ok]
    if error is None and failed:
        error = failed[0].error
    delays = [delay for record in records if (delay := record.delay) is not None]
    return {
        "inputs": count,
        "succeeded": sum(record.ok for record in records),
        "lost": count - sum(record.ok for record in records),
        "error": error,
        "cpu_ms_per_prediction": cpu_s * 1000 / count,
        "wall_s": wall_s,
        "predictions_per_s": count / wall_s,
        "requests_per_prediction": stats["total_requests"] / count,
        "mean_delay_s": statistics.fmean(delays) if delays else None,
        "server": stats,
    }


def each(label: str, run: Any) -> dict[str, dict[str, Any]]:
    """``run(name, contender)`` for every contender, reporting as it goes."""
    results = {}
    for name, contender in CONTENDERS.items():
        print(f"  {label}: {name} ...", flush=True)
        results[name] = run(name, contender)
    return results


def cpu(count: int, rounds: int) -> dict[str, Any]:
    """Every contender ``rounds`` times, interleaved; the round with the median CPU is
    kept, and every round's CPU listed beside it.

    Interleaving spreads whatever else the machine does over all contenders alike, and
    the median keeps one disturbed round from deciding a ratio. Neither process is
    pinned to a core.
    """
    results: dict[str, Any] = {}
    cores = "not pinned"
    with EmulatorProcess(duration=0.2, latency=0.0, rate_limit_headers=False) as server:
        print(f"  CPU: {cores}", flush=True)
        for mode, sync in (("sync", True), ("poll", False)):
            work = Workload(concurrency=100, sync=sync, interval=0.05)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
            for round_ in range(1, rounds + 1):
                for name, contender in CONTENDERS.items():
                    print(f"  CPU, {mode} mode, round {round_}: {name} ...", flush=True)
                    runs[name].append(drive(contender, server, count, work))
            results[mode] = {name: _median_run(done) for name, done in runs.items()}
    results["cores"] = cores
    return results


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda run: float(run["cpu_ms_per_prediction"]))
    median = dict(ordered[len(ordered) // 2])
    median["cpu_ms_rounds"] = [run["cpu_ms_per_prediction"] for run in runs]
    return median


def polling(count: int) -> dict[str, Any]:
    with EmulatorProcess(duration=[1.5, 4.5], honor_prefer_wait=False) as server:
        return each("polling", lambda _, c: drive(c, server, count, Workload(concurrency=50)))


def in_flight(steps: list[int]) -> dict[str, Any]:
    with EmulatorProcess(duration=5.0) as server:

        def climb(_: str, contender: Contender) -> dict[str, Any]:
            best, failure = 0, None
            for step in steps:
                run = drive(contender, server, step, Workload(concurrency=step))
                if run["lost"]:
                    failure = f"at {step:,}: {run['error']}"
                    break
                best = step
            return {"most_in_flight": best, "first_failure": failure}

        return each("most in flight", climb)


def memory(count: int) -> dict[str, Any]:
    with EmulatorProcess(duration=3.0) as server:

        def measure(_: str, contender: Contender) -> dict[str, Any]:
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            run = drive(contender, server, count, Workload(concurrency=count))
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            return {"kb_per_in_flight": (peak - before) / 1024 / count, "lost": run["lost"]}

        return each("memory", measure)


def rate_limit(count: int) -> dict[str, Any]:
    rate, burst, duration = 20.0, 10, 1.0
    limit = {"rate": rate, "burst": burst, "retry_after": True}
    with EmulatorProcess(duration=duration, rate_limit=limit) as server:

        def measure(_: str, contender: Contender) -> dict[str, Any]:
            run = drive(contender, server, count, Workload(concurrency=64))
            stats = run["server"]
            # The burst goes out at once; the rest at the rate the client found.
            seconds = max(run["wall_s"] - duration, 1e-9)
            attempts = stats["creates"]
            return {
                # A client that lost inputs achieved no rate worth the name.
                "pct_of_limit": None
                if run["lost"]
                else 100 * max(run["succeeded"] - burst, 0) / seconds / rate,
                "pct_throttled": 100 * stats["throttled"] / attempts if attempts else 0.0,
                "lost": run["lost"],
                "error": run["error"],
            }

        return each("rate limit", measure)


def _ratio(value: float | None, floor: float | None) -> str:
    if value is None or not floor:
        return ""
    return f"{value / floor:.2f}x"


# One row of the table: label, where in the results (workload.key), format, ratio shown.
ROWS = (
    ("client CPU per prediction, sync mode (ms)", "cpu.sync.cpu_ms_per_prediction", "{:.2f}", True),
    ("client CPU per prediction, polling (ms)", "cpu.poll.cpu_ms_per_prediction", "{:.2f}", True),
    ("throughput, sync mode (predictions/s)", "cpu.sync.predictions_per_s", "{:.0f}", True),
    ("requests per prediction, 1.5-4.5 s runs", "polling.requests_per_prediction", "{:.2f}", True),
    ("mean detection delay, 1.5-4.5 s runs (s)", "polling.mean_delay_s", "{:.3f}", False),
    ("most predictions in flight without an error", "in_flight.most_in_flight", "{:,}", False),
    ("Python heap per prediction in flight (KiB)", "memory.kb_per_in_flight", "{:.1f}", True),
    ("share of a 20/s create limit achieved (%)", "rate_limit.pct_of_limit", "{:.1f}", False),
    ("creates throttled under that limit (%)", "rate_limit.pct_throttled", "{:.1f}", False),
    ("inputs lost under that limit", "rate_limit.lost", "{:,}", False),
)


def table(results: dict[str, Any]) -> str:
    """One row per figure, one column per client, ratios to the bare loop beside them."""
    names = list(CONTENDERS)
    ours, theirs, floor = "quickrouter_async", "replicate-python", "bare aiohttp"
    rows = []
    for label, where, fmt, ratio in ROWS:
        *path, key = where.split(".")
        runs = results
        for part in path:
            runs = runs[part]
        rows.append((label, {name: runs[name][key] for name in names}, fmt, ratio))

    header = f"| figure | {' | '.join(names)} | {ours} ÷ bare | {theirs} ÷ bare |"
    lines = [header, "|---|" + "---:|" * (len(names) + 2)]
    for label, values, fmt, ratio in rows:
        cells = ["" if values[n] is None else fmt.format(values[n]) for n in names]
        ratios = (
            [_ratio(values[ours], values[floor]), _ratio(values[theirs], values[floor])]
            if ratio
            else ["", ""]
        )
        lines.append(f"| {label} | {' | '.join(cells + ratios)} |")
    notes = [
        f"- {name}: first failure {run['first_failure']}"
        for name, run in results["in_flight"].items()
        if run["first_failure"]
    ]
    return "\n".join(lines + (["", *notes] if notes else []))


def machine_line(facts: dict[str, Any]) -> str:
    versions = ", ".join(
        f"{name} {facts[name]}"
        for name in ("quickrouter_async", "aiohttp", "replicate", "httpx")
        if name in facts
    )
    return (
        f"Machine: {facts['cores']} cores, {facts['cpu']}, {facts['system']}, "
        f"Python {facts['python']}; {versions}."
    )


def capacity(results: dict[str, Any]) -> str:
    """What one core of this machine can drive, beside what the API allows."""
    ours = "quickrouter_async"
    sync_ms = results["cpu"]["sync"][ours]["cpu_ms_per_prediction"]
    poll_ms = results["cpu"]["poll"][ours]["cpu_ms_per_prediction"]
    polled = results["polling"][ours]["requests_per_prediction"] - 1  # less the create
    lines = [
        "| figure | value |",
        "|---|---:|",
        f"| client CPU per prediction, sync mode | {sync_ms:.2f} ms |",
        f"| predictions/s one core can drive in sync mode | {1000 / sync_ms:,.0f} |",
        f"| client CPU per prediction, poll mode (50 ms polls) | {poll_ms:.2f} ms |",
        f"| predictions/s one core can drive in poll mode | {1000 / poll_ms:,.0f} |",
        f"| the API's create limit | {CREATE_LIMIT:g} predictions/s |",
        f"| polls per prediction, learned schedule, 1.5-4.5 s runs | {polled:.2f} |",
        f"| the API's limit on other requests | {OTHER_LIMIT:g} requests/s |",
        (
            "| predictions/s that limit allows at that polling | "
            f"{OTHER_LIMIT / polled if polled > 0 else float('inf'):.1f} |"
        ),
        (
            "| one core's headroom over the create limit, sync mode | "
            f"{1000 / sync_ms / CREATE_LIMIT:,.0f}x |"
        ),
    ]
    return "\n".join(lines)


def update_page(page_path: Path, text: str) -> None:
    """Replace what lies between the page's markers with ``text``."""
    page = page_path.read_text()
    head, found, rest = page.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"{page_path} lacks the {BEGIN} ... {END} markers")
    page_path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads, ~2 minutes")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/performance.md")
    options = parser.parse_args()
    quick = options.quick
    raise_open_files_limit()
    facts = machine()
    print(machine_line(facts), flush=True)
    results: dict[str, Any] = {"machine": facts, "quick": quick}
    results["cpu"] = cpu(500, 1) if quick else cpu(2_000, CPU_ROUNDS)
    results["polling"] = polling(100 if quick else 300)
    results["in_flight"] = in_flight([300, 1_000] if quick else [300, 1_000, 3_000, 10_000])
    results["memory"] = memory(250)
    results["rate_limit"] = rate_limit(200 if quick else 600)
    results["redis"] = bench_redis.measure(4, 50) if quick else bench_redis.measure(8, 100)
    rounds = "one round" if quick else f"median of {CPU_ROUNDS} interleaved rounds"
    cpu_note = f"CPU figures: {rounds}, {results['cpu']['cores']}."
    text = f"{machine_line(facts)} {cpu_note}\n\n{table(results)}"
    print(f"\n{text}\n")
    name = "summary-quick.json" if quick else "summary.json"
    write_json(RESULTS.with_name(name), results)
    print(f"written to benchmarks/results/{name}")
    derived = capacity(results)
    print(f"\n{derived}\n")
    processes = bench_redis.table(results["redis"])
    print(f"{processes}\n")
    if not options.no_docs and not quick:
        update_page(PERFORMANCE_PAGE, text)
        update_page(SCALING_PAGE, f"{machine_line(facts)}\n\n{derived}")
        bench_redis.update_page(f"{machine_line(facts)}\n\n{processes}")
        print("tables written to docs/performance.md and docs/scaling.md")


if __name__ == "__main__":
    main()
