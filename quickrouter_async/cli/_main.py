"""Argument parsing and dispatch of the subcommands.

The API key comes only from ``QUICKROUTER_API_KEY`` or ``--api-key-file PATH`` (never a
flag: command lines end up in shell histories and process lists), and is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import InputError
from .._version import __version__
from ._status import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from .._client import QuickRouter


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key-file",
        type=Path,
        help="read the API key from this file (default: QUICKROUTER_API_KEY)",
    )
    parser.add_argument(
        "--base-url", help="the API's base URL (default: QUICKROUTER_BASE_URL, else QuickRouter)"
    )


# -- --rate-limit-redis: one create-rate limit for several processes -----------------------


def _rate_limit_redis(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rate-limit-redis",
        metavar="URL",
        help="share the create-rate limit with every process using this Redis "
        "(redis://, rediss:// or unix://; with --rate-limit, that rate is for all of them)",
    )


def _shared_rate_limit(options: argparse.Namespace) -> dict[str, Any]:
    """``rate_limiter=`` for the client when ``--rate-limit-redis`` was given."""
    if options.rate_limit_redis is None:
        return {}
    from .._redis import RedisRateLimiter  # noqa: PLC0415 (keeps --help fast)

    try:
        return {"rate_limiter": RedisRateLimiter(options.rate_limit_redis)}
    except ImportError as exc:
        raise InputError(str(exc)) from None


# -- end of --rate-limit-redis ---------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quickrouter-async",
        description="Run QuickRouter image-generation predictions from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run one prediction and download its files",
        description="Run one prediction, download its output files and print their paths.",
    )
    run.add_argument("model", help="owner/name, e.g. google/imagen-4")
    run.add_argument("--prompt", required=True, help="the text prompt")
    run.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another input field; VALUE is read as JSON when it parses, else as a string; "
        "@PATH sends a local file (@@ for a literal @)",
    )
    run.add_argument(
        "--out", type=Path, default=Path(), help="output folder, made if missing (default: .)"
    )
    _connection(run)
    _rate_limit_redis(run)

    batch = commands.add_parser(
        "batch",
        help="run every input of a JSON-lines file, resumably",
        description="Run one prediction per line of INPUT (a bare input with --model, or "
        '{"model": ..., "input": {...}}), download the files into --out, and write '
        "results.jsonl and a gallery index.html there. A journal in --out records every "
        "step: running the same command again resumes.",
    )
    batch.add_argument("source", type=Path, metavar="INPUT.jsonl")
    batch.add_argument("--out", type=Path, required=True, help="output folder")
    batch.add_argument("--model", help="model of lines that are bare inputs")
    batch.add_argument(
        "--concurrency", type=_positive_int, default=16, help="predictions in flight (16)"
    )
    batch.add_argument(
        "--rate-limit", type=_positive_float, help="creates per second (default: found)"
    )
    batch.add_argument(
        "--resume", action="store_true", help="continue the job in --out (refuse to start anew)"
    )
    batch.add_argument(
        "--detach",
        action="store_true",
        help="on Ctrl-C leave predictions running on the server (a resume re-attaches)",
    )
    batch.add_argument(
        "--accept-edits",
        action="store_true",
        help="resume with an edited input file: changed lines run as new inputs, removed "
        "lines leave the job (lines appended at the end need no flag)",
    )
    batch.add_argument(
        "--resend-in-doubt",
        action="store_true",
        help="send the inputs in doubt again (their predictions may exist: each may be "
        "paid for twice)",
    )
    _connection(batch)
    _rate_limit_redis(batch)

    get = commands.add_parser(
        "get",
        help="show a prediction and download its files",
        description="Show a prediction (status, model, times, error, output URLs) and, "
        "with --out, download its files and print their paths.",
    )
    get.add_argument("prediction_id", metavar="ID", help="the prediction's id")
    get.add_argument("--out", type=Path, help="download the output files into this folder")
    _connection(get)

    demo = commands.add_parser(
        "demo",
        help="run a small batch on the bundled emulator (no network, no key)",
        description="Start the emulator in-process and run Imagen 4 and Seedream 4 prompts "
        "through it, writing images, results.jsonl and a gallery index.html.",
    )
    demo.add_argument("--out", type=Path, default=Path("quickrouter-demo"), help="output folder")

    emulator = commands.add_parser(
        "emulator",
        help="run the emulator standalone until stopped",
        description="Serve the QuickRouter API emulator on 127.0.0.1 until interrupted.",
        add_help=False,
    )
    emulator.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _api_key(options: argparse.Namespace) -> str:
    """The API key from ``--api-key-file`` or the environment; '' if none."""
    if options.api_key_file is None:
        return os.environ.get("QUICKROUTER_API_KEY", "").strip()
    try:
        return Path(options.api_key_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        message = f"cannot read --api-key-file {options.api_key_file}: {exc.strerror}"
        raise InputError(message) from None
    except UnicodeDecodeError:
        # Not quoted: whatever the file holds may be (part of) a key.
        message = f"--api-key-file {options.api_key_file} is not UTF-8 text"
        raise InputError(message) from None


def _api_key_or_fail(options: argparse.Namespace) -> str:
    key = _api_key(options)
    if not key:
        raise InputError("no API key: set QUICKROUTER_API_KEY or pass --api-key-file PATH")
    return key


def _client(options: argparse.Namespace, key: str, **settings: Any) -> QuickRouter:
    from .._client import QuickRouter  # noqa: PLC0415 (keeps --help fast)

    return QuickRouter(key, base_url=options.base_url, **settings)


async def _until_interrupted(work: Callable[[anyio.Event], Awaitable[int]]) -> int:
    """Run ``work``, handing it an event set by SIGINT (Ctrl-C) instead of raising."""
    interrupt = anyio.Event()
    async with anyio.create_task_group() as group:

        async def listen() -> None:
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    interrupt.set()

        group.start_soon(listen)
        code = await work(interrupt)
        group.cancel_scope.cancel()
    return code


def _text_arguments(options: argparse.Namespace) -> None:
    """Refuse ``--prompt`` and ``--set`` values that are not valid text.

    Bytes of the command line that are not UTF-8 reach Python as lone surrogates; sent
    on, they would be billed as a garbled prompt.
    """
    for text in (options.prompt, *options.settings):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("--prompt and --set take UTF-8 text; this is not") from None


def _run(options: argparse.Namespace) -> int:
    from ._run import build_input, run_one  # noqa: PLC0415

    _text_arguments(options)
    payload = build_input(options.model, options.prompt, options.settings)
    key = _api_key_or_fail(options)
    shared = _shared_rate_limit(options)

    async def work(interrupt: anyio.Event) -> int:
        async with _client(options, key, **shared) as client, anyio.create_task_group() as group:
            code = EXIT_INTERRUPTED

            async def go() -> None:
                nonlocal code
                code = await run_one(client, options.model, payload, options.out)
                group.cancel_scope.cancel()

            group.start_soon(go)
            await interrupt.wait()
            group.cancel_scope.cancel()  # the prediction is canceled on the server
        return code

    return anyio.run(_until_interrupted, work)


def _get(options: argparse.Namespace) -> int:
    from ._get import show  # noqa: PLC0415

    key = _api_key_or_fail(options)

    async def work() -> int:
        async with _client(options, key) as client:
            return await show(client, options.prediction_id, options.out)

    return anyio.run(work)


def _batch(options: argparse.Namespace) -> int:
    from .._config import RetryPolicy  # noqa: PLC0415
    from ._batch import BatchOptions  # noqa: PLC0415
    from ._execute import run_batch  # noqa: PLC0415
    from ._progress import interactive  # noqa: PLC0415

    key = _api_key_or_fail(options)
    shared = _shared_rate_limit(options)
    batch = BatchOptions(
        source=options.source,
        out=options.out,
        model=options.model,
        concurrency=options.concurrency,
        resume=options.resume,
        detach=options.detach,
        progress=interactive(),
        accept_edits=options.accept_edits,
        resend_in_doubt=options.resend_in_doubt,
    )

    async def work(interrupt: anyio.Event) -> int:
        settings: dict[str, Any] = {
            "max_concurrency": options.concurrency,
            "rate_limit": options.rate_limit,
            **shared,
        }
        if options.resend_in_doubt:
            # This run's own creates in doubt are sent again too, by the client.
            settings["retry"] = RetryPolicy(in_doubt="resend")
        async with _client(options, key, **settings) as client:
            return await run_batch(client, batch, interrupt=interrupt)

    return anyio.run(_until_interrupted, work)


def _demo(options: argparse.Namespace) -> int:
    from ._demo import run_demo  # noqa: PLC0415 (keeps --help fast)

    return anyio.run(_until_interrupted, lambda interrupt: run_demo(options.out, interrupt))


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "get": _get,
    "batch": _batch,
    "demo": _demo,
}


def _innermost(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (the exception itself otherwise)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _unexpected(exc: BaseException, options: argparse.Namespace) -> int:
    """Say, in one line, that something unforeseen stopped the command."""
    leaf = _innermost(exc)
    if isinstance(leaf, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(leaf, InputError):  # from inside a task group: a usage error after all
        print(f"error: {leaf}", file=sys.stderr)  # noqa: T201 (the command's output)
        return EXIT_USAGE
    text = f"{type(leaf).__name__}: {leaf}"
    key = ""
    with contextlib.suppress(InputError, AttributeError):  # no key, or no key options
        key = _api_key(options)
    if key:
        text = text.replace(key, "[API key]")
    print(  # noqa: T201 (the command's output)
        f"error: an unexpected failure stopped the command: {text[:2000]} (please report it)",
        file=sys.stderr,
    )
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 some failed, 2 usage, 130 Ctrl-C)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["emulator"]:
        from ..testing._cli import main as emulator_main  # noqa: PLC0415 (optional extra)

        return emulator_main(arguments[1:], prog="quickrouter-async emulator")
    options = _parser().parse_args(arguments)
    try:
        return _COMMANDS[options.command](options)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 (the command's output)
        return EXIT_USAGE
    except (Exception, BaseExceptionGroup, KeyboardInterrupt) as exc:  # noqa: BLE001
        # The last resort, so that the command never ends in a traceback.
        return _unexpected(exc, options)
