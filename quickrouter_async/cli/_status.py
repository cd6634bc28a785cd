"""The command line's exit statuses, and how it prints its messages."""

from __future__ import annotations

import sys
from typing import Final

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "clip", "say"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # some input or the prediction failed, or the run stopped early
EXIT_USAGE: Final = 2  # usage, input or folder errors: nothing was sent
EXIT_INTERRUPTED: Final = 130


def clip(text: str, limit: int) -> str:
    """``text``, cut to its first ``limit`` characters (saying how long it was) if longer."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def say(text: str, *, error: bool = True) -> None:
    """Print a line of the command's output (standard error unless ``error`` is False)."""
    print(text, file=sys.stderr if error else sys.stdout)
