"""The SQLite journal of a batch job: every step of every input, so a crash loses nothing.

Each input moves through the states of `State`, and the journal is written before and
after every step: ``submitting`` (with the time) before the create is sent, ``submitted``
with the prediction id as soon as the create answers, ``terminal`` with the final
prediction, ``done`` once its files are on disk. A process killed at any moment leaves
each input in a state it can continue from (`State` says how).

The file uses WAL mode with ``synchronous=NORMAL``: a committed step survives the death
of the process (not a power cut of the machine). `sqlite3` is blocking, so every call
runs in a worker thread, one at a time (the connection is shared by those threads and a
`CapacityLimiter` of one serializes them); the event loop never waits on the disk. Every
failure of SQLite or of the disk surfaces as one `JournalError` that says which kind it
is, so the command line can say what to do.

The format is versioned with ``PRAGMA user_version``: 0 is the journal of the first
release (read as it is: its states are a subset of today's), 1 adds the ``replaced``
table. A journal of a newer format is refused rather than misread.
"""

from __future__ import annotations

import enum
import json
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import attrs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

__all__ = [
    "COLUMNS",
    "JOURNAL_NAME",
    "Entry",
    "Journal",
    "JournalError",
    "Problem",
    "State",
    "entry_of",
    "storable",
]

JOURNAL_NAME: Final = "journal.sqlite3"
FORMAT: Final = 1
_T = TypeVar("_T")


class State(enum.StrEnum):
    """Where one input of a batch job stands; stored in the journal by its value.

    ``pending``: not sent. ``submitting``: the create may have reached the server; look
    the prediction up before sending anything again. ``in_doubt``: it may exist and the
    lookup failed; looked up again on each run, sent again only when asked to.
    ``submitted``: attach by id and wait. ``terminal``: download the files. ``done``.
    """

    PENDING = "pending"
    SUBMITTING = "submitting"
    IN_DOUBT = "in_doubt"
    SUBMITTED = "submitted"
    TERMINAL = "terminal"
    DONE = "done"


class Problem(enum.Enum):
    """What kind of failure a `JournalError` is."""

    DAMAGED = "damaged"
    LOCKED = "locked"
    FULL = "full"
    NEWER = "newer"
    OTHER = "other"


# SQLite's primary result codes, as Python 3.11+ names them on its exceptions.
_PROBLEMS: Final = {
    "SQLITE_NOTADB": Problem.DAMAGED,
    "SQLITE_CORRUPT": Problem.DAMAGED,
    "SQLITE_BUSY": Problem.LOCKED,
    "SQLITE_LOCKED": Problem.LOCKED,
    "SQLITE_FULL": Problem.FULL,
}


class JournalError(Exception):
    """The journal could not be read or written; ``problem`` says why.

    Attributes:
        path: the journal file.
        problem: damaged, locked by another program, disk full, newer format, other.
        reason: SQLite's or the system's own words.
    """

    def __init__(self, path: Path, problem: Problem, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.problem = problem
        self.reason = reason


def _problem(exc: BaseException) -> Problem:
    name = str(getattr(exc, "sqlite_errorname", ""))
    for prefix, problem in _PROBLEMS.items():
        if name.startswith(prefix):
            return problem
    return Problem.OTHER


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
CREATE TABLE IF NOT EXISTS replaced (
    idx INTEGER NOT NULL,
    line INTEGER NOT NULL,
    model TEXT NOT NULL,
    input TEXT NOT NULL,
    state TEXT NOT NULL,
    prediction_id TEXT,
    status TEXT,
    error TEXT,
    files TEXT NOT NULL,
    replaced REAL NOT NULL
);
"""
COLUMNS: Final = (
    "idx, line, model, input, state, sent_at, prediction_id, status, error, files, "
    "created_at, started_at, completed_at, seconds"
)


def storable(value: object) -> object:
    """A str SQLite can store: a lone surrogate (from a server's JSON) is spelled out."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


@attrs.frozen(kw_only=True)
class Entry:
    """One input of the batch and how far it got."""

    index: int
    line: int
    model: str
    input: dict[str, Any]
    state: State = attrs.field(default=State.PENDING, converter=State)
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
        finished = self.state in {State.TERMINAL, State.DONE}
        return {
            "index": self.index,
            "line": self.line,
            "model": self.model,
            "input": self.input,
            "prediction_id": self.prediction_id,
            "status": (self.status if finished else None) or self.state.value,
            "files": self.files,
            "error": self.error,
            "timings": {
                "created": self.created_at,
                "started": self.started_at,
                "completed": self.completed_at,
                "seconds": self.seconds,
            },
        }


def entry_of(row: tuple[Any, ...]) -> Entry:
    """The `Entry` of a row selected with `COLUMNS`."""
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


def _check_format(path: Path, version: int) -> None:
    if version > FORMAT:
        raise JournalError(
            path, Problem.NEWER, f"written by a newer quickrouter-async (format {version})"
        )


def _connect(path: Path) -> sqlite3.Connection:
    # Made here, not by SQLite, so that it honours the umask (SQLite's own default is
    # 0644); SQLite gives the -wal and -shm files the journal's own mode.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o666))
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        _check_format(path, version)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        if version < FORMAT:
            db.execute(f"PRAGMA user_version={FORMAT}")
    except BaseException:
        db.close()
        raise
    return db


def _guarded(path: Path, function: Callable[[], _T]) -> _T:
    """``function()``, its SQLite failures raised as `JournalError` (others untouched)."""
    try:
        return function()
    except sqlite3.Error as exc:
        raise JournalError(path, _problem(exc), str(exc) or type(exc).__name__) from exc


def _open(path: Path) -> sqlite3.Connection:
    try:
        return _guarded(path, lambda: _connect(path))
    except OSError as exc:  # the file could not be made
        raise JournalError(path, Problem.OTHER, exc.strerror or str(exc)) from exc


class Journal:
    """A batch job's journal file; open it with `Journal.open`, close with `aclose`."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._lock = anyio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path) -> Journal:
        """Open (creating if missing) the journal at ``path``, in WAL mode.

        Raises:
            JournalError: the file is damaged, locked, of a newer format, or the disk
                failed.
        """
        connection = await anyio.to_thread.run_sync(_open, path)
        return cls(connection, path)

    async def _call(self, function: Callable[[], _T]) -> _T:
        return await anyio.to_thread.run_sync(_guarded, self.path, function, limiter=self._lock)

    async def aclose(self) -> None:
        """Close the file; a later `open` continues where this one stopped."""
        with anyio.CancelScope(shield=True):
            await self._call(self._db.close)

    # -- the job ---------------------------------------------------------------------------

    async def meta(self) -> dict[str, str]:
        """What the job recorded about itself (kind, default model, input file)."""
        return await self._call(lambda: dict(self._db.execute("SELECT key, value FROM meta")))

    async def set_meta(self, values: dict[str, str]) -> None:
        """Record (or overwrite) ``values`` in the job's ``meta``."""

        def write() -> None:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

        await self._call(write)

    async def transaction(self, function: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``function(connection)`` in the worker thread inside one transaction.

        It commits when ``function`` returns and rolls back when it raises (or returns
        after calling ``connection.rollback()`` itself).
        """

        def run() -> _T:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                return function(self._db)

        return await self._call(run)

    # -- writing -------------------------------------------------------------------------

    async def update(self, index: int, **fields: Any) -> None:
        """Set ``fields`` of entry ``index`` (``files`` as a list), committed at once."""
        if "files" in fields:
            fields["files"] = json.dumps(fields["files"])
        names = list(fields)
        assignments = ", ".join(f"{name} = ?" for name in [*names, "updated"])
        values = [storable(value) for value in fields.values()] + [time.time(), index]
        statement = f"UPDATE entries SET {assignments} WHERE idx = ?"  # noqa: S608 (names are ours)
        await self._call(lambda: self._db.execute(statement, values))

    async def move(self, source: State, target: State) -> int:
        """Put every entry in state ``source`` into ``target``; return how many."""
        statement = "UPDATE entries SET state = ?, updated = ? WHERE state = ?"
        values = (target.value, time.time(), source.value)
        return await self._call(lambda: self._db.execute(statement, values).rowcount)

    # -- reading -------------------------------------------------------------------------

    async def counts(self) -> dict[str, int]:
        """How many entries are in each state (and ``succeeded`` among the done)."""

        def counts() -> dict[str, int]:
            found = dict.fromkeys(State, 0)
            for state, count in self._db.execute(
                "SELECT state, count(*) FROM entries GROUP BY state"
            ):
                found[State(state)] = count
            result: dict[str, int] = {state.value: count for state, count in found.items()}
            result["succeeded"] = self._db.execute(
                "SELECT count(*) FROM entries WHERE state = 'done' AND status = 'succeeded'"
            ).fetchone()[0]
            return result

        return await self._call(counts)

    async def page(self, *, after: int, states: tuple[str, ...], limit: int = 256) -> list[Entry]:
        """Up to ``limit`` entries past index ``after`` whose state is one of ``states``."""
        marks = ",".join("?" for _ in states)
        statement = (
            f"SELECT {COLUMNS} FROM entries WHERE idx > ? AND state IN ({marks}) "  # noqa: S608
            "ORDER BY idx LIMIT ?"
        )
        values = (after, *(str(state) for state in states), limit)

        def page() -> list[Entry]:
            return [entry_of(row) for row in self._db.execute(statement, values)]

        return await self._call(page)

    async def get(self, index: int) -> Entry:
        """The entry of input ``index``."""
        statement = f"SELECT {COLUMNS} FROM entries WHERE idx = ?"  # noqa: S608
        return await self._call(lambda: entry_of(self._db.execute(statement, (index,)).fetchone()))

    async def troubles(self, limit: int) -> list[Entry]:
        """The first ``limit`` entries, in input order, that did not succeed and say why."""
        statement = (
            f"SELECT {COLUMNS} FROM entries WHERE error IS NOT NULL "  # noqa: S608
            "AND NOT (state = 'done' AND status = 'succeeded') ORDER BY idx LIMIT ?"
        )
        return await self._call(
            lambda: [entry_of(row) for row in self._db.execute(statement, (limit,))]
        )

    async def prediction_ids(self) -> set[str]:
        """Every prediction id the journal holds."""

        def ids() -> set[str]:
            rows = self._db.execute("SELECT prediction_id FROM entries WHERE prediction_id > ''")
            return {row[0] for row in rows}

        return await self._call(ids)

    async def export(self, write: Callable[[Iterator[Entry]], _T]) -> _T:
        """Call ``write`` in the worker thread with every entry, in input order."""

        def export() -> _T:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM entries ORDER BY idx")  # noqa: S608
            return write(entry_of(row) for row in rows)

        return await self._call(export)
