"""Files the command line writes whole: atomically, and with the mode the umask gives.

`tempfile.mkstemp` makes its files ``0600`` whatever the umask, and a file renamed into
place keeps that mode: a web server running as another user could then not read a
job's results or gallery. `atomic_write` makes its temporary file as downloads do
(`open_part`: ``0o666``, less what the umask takes away, exactly as ``open(path, "w")``
would).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, TextIO, TypeVar

from .._files import open_part

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from .._journal import Entry

__all__ = ["atomic_write", "write_results"]

_T = TypeVar("_T")


def atomic_write(target: Path, write: Callable[[TextIO], _T]) -> _T:
    """Write ``target`` through ``write(handle)`` into a temporary file, then rename it.

    A reader sees the old file or the new one, never half of one; on any failure the
    temporary file is removed and ``target`` left as it was (blocking: call it in a
    worker thread).
    """
    descriptor, path = open_part(target)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            result = write(handle)
        path.replace(target)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return result


def write_results(target: Path, entries: Iterable[Entry]) -> int:
    """Write one JSON line per entry into ``target`` (atomically); return how many."""

    def write(handle: TextIO) -> int:
        count = 0
        for entry in entries:
            # ensure_ascii: whatever a server sent, the line is plain ASCII JSON.
            handle.write(json.dumps(entry.result()) + "\n")
            count += 1
        return count

    return atomic_write(target, write)
