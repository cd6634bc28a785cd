"""The emulator's command line: parse flags, serve until SIGINT or SIGTERM.

``python -m quickrouter_async.testing`` and ``quickrouter-async emulator`` both land in
:func:`main`. The first line written to standard output is
``QUICKROUTER_BASE_URL=http://127.0.0.1:PORT/replicate`` (the next one gives the API
key), so another process can start the emulator and read where it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import TYPE_CHECKING, Any, TextIO

from ._emulator import Emulator
from ._options import FAULT_ENDPOINTS, Faults, RateLimit

if TYPE_CHECKING:
    from collections.abc import Sequence

_FAULT_FLAGS = (
    ("throttle", "chance of a 429 with Retry-After"),
    ("server_error", "chance of a 500/502/503 before acting"),
    ("server_error_after_create", "chance a committed create is answered 502/500"),
    ("reset", "chance the connection is dropped before acting"),
    ("reset_after_create", "chance the connection is dropped after a create is committed"),
    ("slow", "chance an answer is held back --slow-seconds"),
    ("malformed", "chance a 2xx answer has a broken body"),
)


def _duration(text: str) -> float | tuple[float, float]:
    low, comma, high = text.partition(",")
    try:
        return (float(low), float(high)) if comma else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not SECONDS or MIN,MAX: {text!r}") from None


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the emulator command."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the QuickRouter API emulator until interrupted (Ctrl-C or SIGTERM).",
    )
    add = parser.add_argument
    add(
        "--profile",
        choices=("replicate", "gateway"),
        default="replicate",
        help="replicate: the full API (default); gateway: create and get only, as QuickRouter "
        "documents",
    )
    add("--any-model", action="store_true", help="run any model name (default: known ones)")
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default)")
    add("--api-key", default="test-key", help="bearer token required (default test-key)")
    add("--duration", type=_duration, default=1.0, help="seconds per prediction, or MIN,MAX")
    add("--start-delay", type=_duration, help="seconds spent starting (default 10%% of it)")
    add("--seed", type=int, help="seed the random generator so runs repeat")
    add("--latency", type=float, default=0.0, help="seconds added before every answer")
    add("--fail-prompt", action="append", default=[], help="prompts containing it fail")
    add("--failure-rate", type=float, default=0.0, help="chance any prediction fails")
    add("--no-prefer-wait", action="store_true", help="ignore the Prefer: wait header")
    add("--prefer-wait", action="store_true", help="honour Prefer: wait (with --profile gateway)")
    add("--list-route", action="store_true", help="serve the list route (with --profile gateway)")
    add(
        "--cancel-route",
        action="store_true",
        help="serve the cancel route (with --profile gateway)",
    )
    add("--image-size", type=int, default=256, help="long edge of output images in pixels")
    add("--page-size", type=int, default=100, help="predictions per list page")
    add("--min-cancel-after", type=float, default=5.0, help="smallest Cancel-After accepted")
    add("--data-retention", type=float, help="seconds after completion when data is removed")
    add("--local-urls", action="store_true", help="urls.get/cancel point at the emulator")
    add("--early-output", action="store_true", help="show outputs while still processing")
    limits = parser.add_argument_group("create rate limit")
    limits.add_argument("--rate", type=float, help="creates per second (default 10 with --burst)")
    limits.add_argument("--burst", type=int, help="creates allowed at once (default 10)")
    limits.add_argument("--no-retry-after", action="store_true", help="omit Retry-After on 429")
    hooks = parser.add_argument_group("webhook delivery")
    hooks.add_argument(
        "--webhook-duplicate-rate", type=float, default=0.0, help="chance a webhook is sent twice"
    )
    hooks.add_argument(
        "--webhook-reorder-rate",
        type=float,
        default=0.0,
        help="chance a webhook is sent after the next one (out of order)",
    )
    hooks.add_argument(
        "--webhook-retries", type=int, default=6, help="retries of a failed completed webhook"
    )
    hooks.add_argument(
        "--webhook-retry-delay", type=float, default=1.0, help="seconds before the first retry"
    )
    faults = parser.add_argument_group("faults (probabilities from 0 to 1)")
    for name, text in _FAULT_FLAGS:
        faults.add_argument("--" + name.replace("_", "-"), type=float, default=0.0, help=text)
    faults.add_argument("--slow-seconds", type=float, default=5.0, help="delay of slow answers")
    faults.add_argument(
        "--fault-endpoints",
        default=",".join(sorted(FAULT_ENDPOINTS)),
        help="comma-separated endpoint kinds faults apply to (default all)",
    )
    return parser


def emulator_options(arguments: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :class:`Emulator` from parsed flags.

    Raises:
        ValueError: a value is out of range.
        TypeError: a value has the wrong type.
    """
    rate_limit = None
    if arguments.rate is not None or arguments.burst is not None:
        rate_limit = RateLimit(
            rate=10.0 if arguments.rate is None else arguments.rate,
            burst=10 if arguments.burst is None else arguments.burst,
            retry_after=not arguments.no_retry_after,
        )
    chances = {name: getattr(arguments, name) for name, _ in _FAULT_FLAGS}
    faults = None
    if any(chances.values()):
        endpoints = [part.strip() for part in arguments.fault_endpoints.split(",") if part.strip()]
        faults = Faults(**chances, slow_seconds=arguments.slow_seconds, endpoints=endpoints)
    prefer: bool | None = None
    if arguments.no_prefer_wait or arguments.prefer_wait:
        prefer = arguments.prefer_wait and not arguments.no_prefer_wait
    return {
        "profile": arguments.profile,
        "accept_any_model": arguments.any_model,
        "list_route": True if arguments.list_route else None,
        "cancel_route": True if arguments.cancel_route else None,
        "host": arguments.host,
        "port": arguments.port,
        "api_key": arguments.api_key,
        "duration": arguments.duration,
        "start_delay": arguments.start_delay,
        "seed": arguments.seed,
        "latency": arguments.latency,
        "fail_prompts": arguments.fail_prompt,
        "failure_rate": arguments.failure_rate,
        "honor_prefer_wait": prefer,
        "image_size": arguments.image_size,
        "page_size": arguments.page_size,
        "min_cancel_after": arguments.min_cancel_after,
        "data_retention": arguments.data_retention,
        "passthrough_urls": not arguments.local_urls,
        "early_output": arguments.early_output,
        "webhook_duplicate_rate": arguments.webhook_duplicate_rate,
        "webhook_reorder_rate": arguments.webhook_reorder_rate,
        "webhook_retries": arguments.webhook_retries,
        "webhook_retry_delay": arguments.webhook_retry_delay,
        "rate_limit": rate_limit,
        "faults": faults,
    }


async def serve(
    options: dict[str, Any], *, stdout: TextIO, stop: asyncio.Event | None = None
) -> None:
    """Run an emulator built from ``options`` until ``stop`` is set or a signal arrives.

    The base URL, then the API key, are written to ``stdout`` once it listens.
    """
    stop = asyncio.Event() if stop is None else stop
    loop = asyncio.get_running_loop()
    installed = []
    for number in (signal.SIGINT, signal.SIGTERM):
        # Not possible on Windows, nor outside the main thread: then rely on `stop`.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(number, stop.set)
            installed.append(number)
    try:
        async with Emulator(**options) as emulator:
            stdout.write(f"QUICKROUTER_BASE_URL={emulator.base_url}\n")
            stdout.write(f"QUICKROUTER_API_KEY={emulator.api_key}\n")
            stdout.flush()
            await stop.wait()
    finally:
        for number in installed:
            loop.remove_signal_handler(number)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) and serve; return the exit code."""
    parser = build_parser(prog)
    arguments = parser.parse_args(argv)
    try:
        options = emulator_options(arguments)
        Emulator(**options)  # validate every knob before anything listens
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    asyncio.run(serve(options, stdout=sys.stdout))
    return 0
