"""Argument parsing and dispatch of the subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .._version import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quickrouter-async",
        description="Run QuickRouter image-generation predictions from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 some failed, 2 usage)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["emulator"]:
        from ..testing._cli import main as emulator_main  # noqa: PLC0415 (optional extra)

        return emulator_main(arguments[1:], prog="quickrouter-async emulator")
    options = _parser().parse_args(arguments)
    from ._demo import run_demo  # noqa: PLC0415 (keeps --help fast)

    return anyio.run(run_demo, options.out)
