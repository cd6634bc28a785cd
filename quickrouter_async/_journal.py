"""The SQLite journal of a batch job: every step of every input, so a crash loses nothing.

Each input moves through ``pending`` → ``submitting`` → ``submitted`` → ``terminal`` →
``done``, and the journal is written before and after every step: ``submitting`` (with
the time) before the create is sent, ``submitted`` with the prediction id as soon as the
create answers, ``terminal`` with the final prediction, ``done`` once its files are on
disk. A process killed at any moment leaves each input in a state it can continue from:

- ``pending``: not sent; send it.
- ``submitting``: the create may or may not have reached the server; look the
  prediction up (model, input, creation time) before sending anything again.
- ``submitted``: attach to the prediction by id and wait for it.
- ``terminal``: download the files of a succeeded prediction.

The file uses WAL mode with ``synchronous=NORMAL``: a committed step survives the death
of the process (not a power cut of the machine). `sqlite3` is blocking, so every call
runs in a worker thread, one at a time (the connection is shared by those threads and a
`CapacityLimiter` of one serializes them); the event loop never waits on the disk.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import attrs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path

__all__ = ["JOURNAL_NAME", "Entry", "Journal", "JournalMismatch"]

JOURNAL_NAME: Final = "journal.sqlite3"
STATES: Final = ("pending", "submitting", "submitted", "terminal", "done")
_T = TypeVar("_T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    line INTEGER NOT NULL,
    model TEXT NOT NULL,
    input TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    sent_at REAL,
    prediction_id TEXT,
    status TEXT,
    error TEXT,
    files TEXT NOT NULL DEFAULT '[]',
    created_at TEXT,
    started_at TEXT,
    completed_at TEXT,
    seconds REAL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_state ON entries (state, idx);
"""
_COLUMNS: Final = (
    "idx, line, model, input, state, sent_at, prediction_id, status, error, files, "
    "created_at, started_at, completed_at, seconds"
)


class JournalMismatch(Exception):
    """The journal belongs to another input file (or another default model)."""


@attrs.frozen(kw_only=True)
class Entry:
    """One input of the batch and how far it got."""

    index: int
    line: int
    model: str
    input: dict[str, Any]
    state: str = "pending"
    sent_at: float | None = None
    prediction_id: str | None = None
    status: str | None = None
    error: str | None = None
    files: list[str] = attrs.field(factory=list)
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    seconds: float | None = None

    def result(self) -> dict[str, Any]:
        """The line of ``results.jsonl`` for this input."""
        return {
            "index": self.index,
            "line": self.line,
            "model": self.model,
            "input": self.input,
            "prediction_id": self.prediction_id,
            "status": (self.status if self.state in {"terminal", "done"} else None) or self.state,
            "files": self.files,
            "error": self.error,
            "timings": {
                "created": self.created_at,
                "started": self.started_at,
                "completed": self.completed_at,
                "seconds": self.seconds,
            },
        }


def _entry(row: tuple[Any, ...]) -> Entry:
    return Entry(
        index=row[0],
        line=row[1],
        model=row[2],
        input=json.loads(row[3]),
        state=row[4],
        sent_at=row[5],
        prediction_id=row[6],
        status=row[7],
        error=row[8],
        files=json.loads(row[9]),
        created_at=row[10],
        started_at=row[11],
        completed_at=row[12],
        seconds=row[13],
    )


class Journal:
    """A batch job's journal file; open it with `Journal.open`, close with `aclose`."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._lock = anyio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path) -> Journal:
        """Open (creating if missing) the journal at ``path``, in WAL mode."""

        def connect() -> sqlite3.Connection:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            return db

        return cls(await anyio.to_thread.run_sync(connect), path)

    async def _call(self, function: Callable[[], _T]) -> _T:
        return await anyio.to_thread.run_sync(function, limiter=self._lock)

    async def aclose(self) -> None:
        """Close the file; a later `open` continues where this one stopped."""
        with anyio.CancelScope(shield=True):
            await self._call(self._db.close)

    # -- identity ------------------------------------------------------------------------

    async def bind(self, identity: dict[str, str]) -> bool:
        """Record the job's identity, or check it against the one recorded.

        Returns:
            True for a new journal, False for one being resumed.

        Raises:
            JournalMismatch: the journal was written for another job.
        """

        def bind() -> bool:
            rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if not rows:
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.executemany("INSERT INTO meta VALUES (?, ?)", identity.items())
                return True
            for key, value in identity.items():
                if rows.get(key) != value:
                    raise JournalMismatch(
                        f"{self.path} belongs to another job: its {key} is "
                        f"{rows.get(key)!r}, not {value!r}; use another --out folder"
                    )
            return False

        return await self._call(bind)

    # -- writing -------------------------------------------------------------------------

    async def add(self, entries: Callable[[], Iterable[Entry]]) -> None:
        """Insert the new ``pending`` entries ``entries()`` yields, in one transaction.

        ``entries`` is called in the worker thread, so it may read files; the entries are
        streamed into the table, never all held in memory.
        """

        def add() -> None:
            now = time.time()
            rows = ((e.index, e.line, e.model, json.dumps(e.input), now) for e in entries())
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO entries (idx, line, model, input, updated) VALUES (?,?,?,?,?)",
                    rows,
                )

        await self._call(add)

    async def update(self, index: int, **fields: Any) -> None:
        """Set ``fields`` of entry ``index`` (``files`` as a list), committed at once."""
        if "files" in fields:
            fields["files"] = json.dumps(fields["files"])
        names = list(fields)
        assignments = ", ".join(f"{name} = ?" for name in [*names, "updated"])
        values = [*fields.values(), time.time(), index]
        statement = f"UPDATE entries SET {assignments} WHERE idx = ?"  # noqa: S608 (names are ours)
        await self._call(lambda: self._db.execute(statement, values))

    # -- reading -------------------------------------------------------------------------

    async def counts(self) -> dict[str, int]:
        """How many entries are in each state (and ``succeeded`` among the done)."""

        def counts() -> dict[str, int]:
            found = dict.fromkeys(STATES, 0)
            found.update(self._db.execute("SELECT state, count(*) FROM entries GROUP BY state"))
            found["succeeded"] = self._db.execute(
                "SELECT count(*) FROM entries WHERE state = 'done' AND status = 'succeeded'"
            ).fetchone()[0]
            return found

        return await self._call(counts)

    async def page(self, *, after: int, states: tuple[str, ...], limit: int = 256) -> list[Entry]:
        """Up to ``limit`` entries past index ``after`` whose state is one of ``states``."""
        marks = ",".join("?" for _ in states)
        statement = (
            f"SELECT {_COLUMNS} FROM entries WHERE idx > ? AND state IN ({marks}) "  # noqa: S608
            "ORDER BY idx LIMIT ?"
        )

        def page() -> list[Entry]:
            return [_entry(row) for row in self._db.execute(statement, (after, *states, limit))]

        return await self._call(page)

    async def get(self, index: int) -> Entry:
        """The entry of input ``index``."""
        statement = f"SELECT {_COLUMNS} FROM entries WHERE idx = ?"  # noqa: S608
        return await self._call(lambda: _entry(self._db.execute(statement, (index,)).fetchone()))

    async def prediction_ids(self) -> set[str]:
        """Every prediction id the journal holds."""

        def ids() -> set[str]:
            rows = self._db.execute("SELECT prediction_id FROM entries WHERE prediction_id > ''")
            return {row[0] for row in rows}

        return await self._call(ids)

    async def export(self, write: Callable[[Iterator[Entry]], _T]) -> _T:
        """Call ``write`` in the worker thread with every entry, in input order."""

        def export() -> _T:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY idx")  # noqa: S608
            return write(_entry(row) for row in rows)

        return await self._call(export)
