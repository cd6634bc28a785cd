"""One run at a time per job folder: an exclusive ``flock`` on ``DIR/journal.lock``.

The kernel holds the lock for as long as the process keeps the file open and drops it
when the process ends, however it ends (``kill -9`` and crashes included), so a lock can
never outlive its holder and there is nothing stale to clean up or guess about. The
holder writes its pid, host and start time into the file, so that a second run can say
who holds it. The file stays in place after the run: deleting it could let two runs lock
two different files of the same name. docs/design-decisions.md says why this and not
SQLite's own locking or the ``filelock`` package.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import time
from typing import TYPE_CHECKING, Final, Self

import anyio

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

__all__ = ["LOCK_NAME", "JobLock", "Locked"]

LOCK_NAME: Final = "journal.lock"
# How often, and how far apart, the record of a holder is read before doing without it.
_HOLDER_LOOKS: Final = 20
_HOLDER_PAUSE: Final = 0.025


class Locked(Exception):
    """Another process holds the job folder's lock; the message says which."""


def _holder(descriptor: int) -> str:
    """Who holds the lock, from what the holder wrote into the file.

    A holder writes its record right after it takes the lock; one that has not yet is
    given a moment (it may be waiting for a core) before the message does without it.
    """
    for _ in range(_HOLDER_LOOKS):
        try:
            text = os.pread(descriptor, 4096, 0).decode("utf-8", "replace")
            record = json.loads(text)
            return f"pid {record['pid']} on {record['host']}, since {record['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(_HOLDER_PAUSE)  # in a worker thread (see `JobLock`)
    # Not written yet, or the file was edited.
    return "a process that has not said who it is yet"


def _acquire(path: Path) -> int:
    # 0o666 and the umask decide the mode, as for every file the job writes.
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    locked = False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked = True
    except BlockingIOError:
        raise Locked(
            f"{path.parent} is in use by another quickrouter-async run "
            f"({_holder(descriptor)}); wait for it to finish, or stop it, then run the "
            "command again"
        ) from None
    finally:
        if not locked:
            os.close(descriptor)
    since = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
    # Who holds it is only for messages; a full disk is reported by the job itself.
    with contextlib.suppress(OSError):
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(record) + "\n").encode(), 0)
    return descriptor


class JobLock:
    """The exclusive lock of a job folder, as an async context manager.

    Raises:
        Locked: on entry, when another process holds it.
        OSError: on entry, when the lock file cannot be made.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._descriptor = -1

    async def __aenter__(self) -> Self:
        self._descriptor = await anyio.to_thread.run_sync(_acquire, self.path)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Closing the file releases the lock; the holder record goes with the next one.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(os.close, self._descriptor)
