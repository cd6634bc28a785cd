"""A process of ``test_redis_processes.py``: one client with a `RedisRateLimiter`.

    python tests/redis_worker.py '{"base_url": ..., "api_key": ..., "redis": ..., ...}'

``mode`` "run_many" runs ``count`` inputs, printing ``at N`` after N successes for each N
in ``stops`` and going on only once a line arrives on standard input. ``mode`` "create" sends
``count`` creates one after the other, a 429 ending the run (``attempts`` 1: no retry).
The last line printed is a JSON summary.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import anyio
import quickrouter_async as qr


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:  # noqa: ARG002 (counted only)
        self.count += 1


async def main(options: dict[str, Any]) -> dict[str, Any]:
    warnings = _Warnings()
    logging.getLogger("quickrouter_async").addHandler(warnings)
    limiter = qr.RedisRateLimiter(
        options["redis"], name="k", retry_interval=options.get("retry_interval", 5.0)
    )
    client = qr.QuickRouter(
        options["api_key"],
        base_url=options["base_url"],
        poll=qr.PollPolicy(sync_wait=None, interval=0.01),
        retry=qr.RetryPolicy(attempts=options.get("attempts", 6), initial=0.001, maximum=0.01),
        rate_limit=options.get("rate_limit"),
        rate_limiter=limiter,
    )
    inputs = (
        ("google/imagen-4", {"prompt": f"{options['offset']} {n}"}) for n in range(options["count"])
    )
    succeeded = throttled = 0
    async with client:
        if options["mode"] == "create":
            for model, payload in inputs:
                try:
                    await client.create(model, payload)
                except qr.RateLimitError:
                    throttled += 1
                    break
                succeeded += 1
        else:
            stops = set(options.get("stops", ()))
            async with client.run_many(inputs, concurrency=5) as outcomes:
                async for outcome in outcomes:
                    succeeded += outcome.ok
                    if succeeded in stops:
                        print(f"at {succeeded}", flush=True)  # noqa: T201 (to the test)
                        await anyio.to_thread.run_sync(sys.stdin.readline)
    return {
        "succeeded": succeeded,
        "throttled": throttled,
        "warnings": warnings.count,
        "shared": limiter.shared,
        "granted": limiter.granted,
    }


if __name__ == "__main__":
    print(json.dumps(anyio.run(main, json.loads(sys.argv[1]))), flush=True)  # noqa: T201
