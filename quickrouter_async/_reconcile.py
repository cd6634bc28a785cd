"""Matching a batch job's journal with its input file again, when the job resumes.

Inputs are matched by position: the journal's entry ``n`` belongs to the file's ``n``-th
input (blank lines do not count). Lines past the journal's end are new inputs and are
added. A line whose model or input differs from its entry is *changed*; an entry past
the file's end is *removed*. Inputs are compared as canonical JSON, so reformatting a
line or reordering its keys changes nothing, while ``1`` and ``1.0`` or ``true`` stay
different values, as the server sees them.

Edits are applied only when asked for, and never to an input whose prediction is under
way (``submitting``, ``submitted``, ``terminal``): a changed line then starts afresh as
``pending`` and a removed one leaves the job, and in both cases the old entry is first
copied to the ``replaced`` table, so the record of a prediction already paid for is
kept. Everything happens in one transaction: a refused edit writes nothing.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._journal import COLUMNS, State

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable

    from ._journal import Entry, Journal

__all__ = ["Changes", "reconcile"]

# Line numbers kept for the messages; the counts are always whole.
SAMPLE: Final = 10
_PAGE: Final = 512
_UNDER_WAY: Final = frozenset({State.SUBMITTING, State.SUBMITTED, State.TERMINAL})
_ARCHIVE: Final = (
    "INSERT INTO replaced SELECT idx, line, model, input, state, prediction_id, status, "
    "error, files, ? FROM entries WHERE idx = ?"
)
_RESET: Final = (
    "UPDATE entries SET line = ?, model = ?, input = ?, state = 'pending', sent_at = NULL, "
    "prediction_id = NULL, status = NULL, error = NULL, files = '[]', created_at = NULL, "
    "started_at = NULL, completed_at = NULL, seconds = NULL, updated = ? WHERE idx = ?"
)
_ADD: Final = "INSERT INTO entries (idx, line, model, input, updated) VALUES (?, ?, ?, ?, ?)"


@attrs.define
class Lines:
    """How many lines are of one kind, and the numbers of the first `SAMPLE` of them."""

    count: int = 0
    numbers: list[int] = attrs.Factory(list)

    def note(self, number: int) -> None:
        """Count line ``number``."""
        self.count += 1
        if len(self.numbers) < SAMPLE:
            self.numbers.append(number)


@attrs.define
class Changes:
    """What resuming found in the input file, and whether it was applied.

    Attributes:
        added: inputs added past the journal's end.
        changed: lines (numbered as in the file now) whose input differs.
        removed: entries past the file's end (numbered as they were recorded).
        under_way: changed or removed lines whose prediction is under way.
        applied: whether the journal was brought in line with the file.
    """

    added: int = 0
    changed: Lines = attrs.Factory(Lines)
    removed: Lines = attrs.Factory(Lines)
    under_way: Lines = attrs.Factory(Lines)
    applied: bool = False

    @property
    def edited(self) -> bool:
        """Whether any line was changed or removed (not just added)."""
        return bool(self.changed.count or self.removed.count)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _same(row: tuple[Any, ...], entry: Entry) -> bool:
    if row[2] != entry.model:
        return False
    text = json.dumps(entry.input)
    return bool(row[3] == text) or _canonical(json.loads(row[3])) == _canonical(entry.input)


def _walk(db: sqlite3.Connection, entries: Iterable[Entry], *, accept_edits: bool) -> Changes:
    changes = Changes()
    now = time.time()
    fresh = iter(entries)
    after = -1
    select = f"SELECT {COLUMNS} FROM entries WHERE idx > ? ORDER BY idx LIMIT {_PAGE}"  # noqa: S608
    while rows := db.execute(select, (after,)).fetchall():
        for row in rows:
            index, line, state = row[0], row[1], State(row[4])
            entry = next(fresh, None)
            if entry is not None and _same(row, entry):
                if entry.line != line:  # blank lines came or went above it
                    db.execute("UPDATE entries SET line = ? WHERE idx = ?", (entry.line, index))
                continue
            if entry is None:
                changes.removed.note(line)
            else:
                changes.changed.note(entry.line)
            if state in _UNDER_WAY:
                changes.under_way.note(line if entry is None else entry.line)
            if accept_edits:
                db.execute(_ARCHIVE, (now, index))
                if entry is None:
                    db.execute("DELETE FROM entries WHERE idx = ?", (index,))
                else:
                    text = json.dumps(entry.input)
                    db.execute(_RESET, (entry.line, entry.model, text, now, index))
        after = rows[-1][0]
    added = ((e.index, e.line, e.model, json.dumps(e.input), now) for e in fresh)
    changes.added = db.executemany(_ADD, added).rowcount
    return changes


async def reconcile(journal: Journal, entries: Iterable[Entry], *, accept_edits: bool) -> Changes:
    """Bring ``journal`` in line with the input file's ``entries``, in one transaction.

    New inputs are always added. Changed and removed lines are applied only with
    ``accept_edits`` and when none of them is under way; otherwise nothing at all is
    written and the returned `Changes` (``applied`` False) names them. ``entries`` is
    consumed in the journal's worker thread, a page at a time, so it may read a file
    lazily and memory stays flat however long the job.
    """

    def walk(db: sqlite3.Connection) -> Changes:
        changes = _walk(db, entries, accept_edits=accept_edits)
        if changes.edited and (not accept_edits or changes.under_way.count):
            db.rollback()
            return changes
        changes.applied = True
        return changes

    return await journal.transaction(walk)
