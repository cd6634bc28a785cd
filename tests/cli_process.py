"""The real command line in a child process, as a user runs it."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import attrs

if TYPE_CHECKING:
    from quickrouter_async.testing import Emulator

ROOT = Path(__file__).resolve().parents[1]
COMMAND = (sys.executable, "-m", "quickrouter_async.cli")


@attrs.frozen
class Ran:
    """What one run of the command printed, and its exit status."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """Both outputs."""
        return self.out + self.err


def environment(emulator: Emulator | None, key: str | None = None) -> dict[str, str]:
    """The environment of a run against ``emulator`` (with its key unless ``key``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKROUTER_")}
    if emulator is not None:
        env["QUICKROUTER_BASE_URL"] = emulator.base_url
        env["QUICKROUTER_API_KEY"] = emulator.api_key if key is None else key
    return env


async def cli(
    *arguments: str | os.PathLike[str],
    emulator: Emulator | None = None,
    key: str | None = None,
    umask: int = -1,
) -> Ran:
    """Run ``quickrouter-async ARGUMENTS`` to its end."""
    done = await anyio.run_process(
        [*COMMAND, *map(str, arguments)],
        env=environment(emulator, key),
        cwd=ROOT,
        check=False,
        umask=umask,
    )
    return Ran(done.returncode, done.stdout.decode(), done.stderr.decode())


def per_input(emulator: Emulator) -> Counter[str]:
    """How many predictions the server made for each prompt."""
    return Counter(str((p.input or {}).get("prompt")) for p in emulator.predictions)
