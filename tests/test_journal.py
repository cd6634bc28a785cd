"""The batch journal: states survive a reopen, failures are typed, old journals open."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from typing import TYPE_CHECKING

import pytest
from quickrouter_async._journal import (
    JOURNAL_NAME,
    Entry,
    Journal,
    JournalError,
    Problem,
    State,
    _problem,
)
from quickrouter_async._reconcile import reconcile

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


pytestmark = pytest.mark.anyio

# The schema and meta of the journals the first release wrote (format 0).
_FIRST_RELEASE = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    idx INTEGER PRIMARY KEY, line INTEGER NOT NULL, model TEXT NOT NULL, input TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', sent_at REAL, prediction_id TEXT, status TEXT,
    error TEXT, files TEXT NOT NULL DEFAULT '[]', created_at TEXT, started_at TEXT,
    completed_at TEXT, seconds REAL, updated REAL NOT NULL
);
CREATE INDEX entries_state ON entries (state, idx);
INSERT INTO meta VALUES ('input_sha256', '1b2c'), ('model', 'acme/m');
INSERT INTO entries (idx, line, model, input, state, prediction_id, status, files, updated)
VALUES (0, 1, 'acme/m', '{"prompt": "p0"}', 'done', 'p-0', 'succeeded', '["p-0-0.jpg"]', 0),
       (1, 2, 'acme/m', '{"prompt": "p1"}', 'pending', NULL, NULL, '[]', 0);
"""


def _entries(count: int, *, start: int = 0, prefix: str = "p") -> Iterator[Entry]:
    for index in range(start, count):
        yield Entry(
            index=index, line=index + 1, model="acme/m", input={"prompt": f"{prefix}{index}"}
        )


async def test_states_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_NAME
    journal = await Journal.open(path)
    await journal.set_meta({"kind": "batch", "model": ""})
    assert (await reconcile(journal, _entries(6), accept_edits=False)).added == 6
    await journal.update(0, state=State.SUBMITTING, sent_at=1.5)
    await journal.update(1, state=State.SUBMITTED, prediction_id="p-1")
    await journal.update(2, state=State.DONE, status="succeeded", files=["p-2-0.jpg"])
    await journal.update(3, state=State.IN_DOUBT, error="may exist")
    await journal.aclose()

    journal = await Journal.open(path)
    try:
        assert await journal.meta() == {"kind": "batch", "model": ""}
        counts = await journal.counts()
        assert counts == {
            "pending": 2,
            "submitting": 1,
            "in_doubt": 1,
            "submitted": 1,
            "terminal": 0,
            "done": 1,
            "succeeded": 1,
        }
        page = await journal.page(after=-1, states=(State.PENDING, "submitting"), limit=2)
        assert [e.index for e in page] == [0, 4]
        assert page[0].state is State.SUBMITTING
        assert page[0].sent_at == 1.5
        assert (await journal.get(2)).files == ["p-2-0.jpg"]
        assert (await journal.get(2)).result()["status"] == "succeeded"
        assert (await journal.get(3)).result()["status"] == "in_doubt"
        assert (await journal.get(4)).result()["status"] == "pending"
        assert await journal.prediction_ids() == {"p-1"}
        assert await journal.export(lambda rows: [e.index for e in rows]) == list(range(6))
        assert await journal.move(State.IN_DOUBT, State.SUBMITTING) == 1
        assert (await journal.get(3)).state is State.SUBMITTING
    finally:
        await journal.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1


async def test_text_that_sqlite_cannot_store_is_spelled_out(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / JOURNAL_NAME)
    try:
        await reconcile(journal, _entries(1), accept_edits=False)
        # A server's JSON may carry a lone surrogate in an error message.
        await journal.update(0, error="bad \ud800 answer", status="st\udfffatus")
        entry = await journal.get(0)
        assert entry.error == "bad \\ud800 answer"
        assert entry.status == "st\\udfffatus"
        json.dumps(entry.result()).encode("utf-8")
    finally:
        await journal.aclose()


async def test_a_first_release_journal_opens_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_NAME
    with sqlite3.connect(path) as db:
        db.executescript(_FIRST_RELEASE)
    journal = await Journal.open(path)
    try:
        assert (await journal.get(0)).state is State.DONE
        changes = await reconcile(journal, _entries(3), accept_edits=False)
        assert (changes.added, changes.edited, changes.applied) == (1, False, True)
        assert (await journal.counts())["pending"] == 2
    finally:
        await journal.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM replaced").fetchone()[0] == 0


async def test_reconcile_names_edits_and_applies_them_only_when_asked(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / JOURNAL_NAME)
    try:
        await reconcile(journal, _entries(30), accept_edits=False)
        await journal.update(3, state=State.DONE, prediction_id="p-3", files=["p-3-0.jpg"])
        edited = [
            *(e for e in _entries(25) if e.index not in {3, 20}),
            Entry(index=3, line=4, model="acme/m", input={"prompt": "new"}),
            Entry(index=20, line=21, model="acme/other", input={"prompt": "p20"}),
        ]
        edited.sort(key=lambda e: e.index)
        refused = await reconcile(journal, edited, accept_edits=False)
        assert not refused.applied
        assert (refused.changed.count, refused.changed.numbers) == (2, [4, 21])
        assert (refused.removed.count, refused.removed.numbers[:2]) == (5, [26, 27])
        assert (await journal.get(3)).input == {"prompt": "p3"}  # nothing was written
        assert (await journal.counts())["pending"] == 29

        accepted = await reconcile(journal, edited, accept_edits=True)
        assert accepted.applied
        entry = await journal.get(3)
        assert (entry.input, entry.state, entry.prediction_id) == (
            {"prompt": "new"},
            "pending",
            None,
        )
        counts = await journal.counts()
        assert sum(n for state, n in counts.items() if state != "succeeded") == 25
    finally:
        await journal.aclose()
    with sqlite3.connect(tmp_path / JOURNAL_NAME) as db:
        kept = db.execute("SELECT idx, prediction_id, files FROM replaced ORDER BY idx").fetchall()
    assert kept[0] == (3, "p-3", '["p-3-0.jpg"]')
    assert len(kept) == 2 + 5


async def test_reconcile_sees_values_not_formatting(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / JOURNAL_NAME)
    try:
        first = Entry(index=0, line=1, model="acme/m", input={"a": 1, "b": True})
        await reconcile(journal, [first], accept_edits=False)
        reordered = Entry(index=0, line=3, model="acme/m", input={"b": True, "a": 1})
        changes = await reconcile(journal, [reordered], accept_edits=False)
        assert (changes.applied, changes.edited) == (True, False)
        assert (await journal.get(0)).line == 3  # blank lines came above it
        for value in (1.0, True):
            other = Entry(index=0, line=3, model="acme/m", input={"b": True, "a": value})
            assert (await reconcile(journal, [other], accept_edits=False)).changed.count == 1
    finally:
        await journal.aclose()


async def test_edits_of_inputs_under_way_are_refused_even_when_accepted(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / JOURNAL_NAME)
    try:
        await reconcile(journal, _entries(3), accept_edits=False)
        await journal.update(1, state=State.SUBMITTED, prediction_id="p-1")
        changes = await reconcile(journal, _entries(3, prefix="x"), accept_edits=True)
        assert not changes.applied
        assert changes.under_way.numbers == [2]
        assert (await journal.get(1)).prediction_id == "p-1"
    finally:
        await journal.aclose()


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"this is not a database, only text\n" * 200, Problem.DAMAGED), (None, Problem.NEWER)],
)
async def test_failures_are_typed(tmp_path: Path, content: bytes | None, problem: Problem) -> None:
    path = tmp_path / JOURNAL_NAME
    if content is None:
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA user_version=99")
    else:
        path.write_bytes(content)
    with pytest.raises(JournalError) as info:
        await Journal.open(path)
    assert info.value.problem is problem
    assert str(path) in str(info.value)


async def test_a_journal_held_by_another_program_is_locked(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_NAME
    journal = await Journal.open(path)
    try:
        await reconcile(journal, _entries(1), accept_edits=False)
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            journal._db.execute("PRAGMA busy_timeout=0")  # not the 5 s a user gets
            with pytest.raises(JournalError) as info:
                await journal.update(0, error="x")
            assert info.value.problem is Problem.LOCKED
        finally:
            other.close()
        await journal.update(0, error="x")
    finally:
        await journal.aclose()


async def test_the_journal_honours_the_umask(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_NAME
    old = os.umask(0o002)
    try:
        journal = await Journal.open(path)
        try:
            await reconcile(journal, _entries(1), accept_edits=False)
            wal = tmp_path / f"{JOURNAL_NAME}-wal"
            assert stat.S_IMODE(path.stat().st_mode) == 0o664
            assert stat.S_IMODE(wal.stat().st_mode) == 0o664
        finally:
            await journal.aclose()
    finally:
        os.umask(old)


async def test_a_journal_that_cannot_be_made(tmp_path: Path) -> None:
    with pytest.raises(JournalError) as info:
        await Journal.open(tmp_path / "missing" / JOURNAL_NAME)
    assert info.value.problem is Problem.OTHER
    assert "No such file or directory" in info.value.reason


async def test_many_edits_are_counted_whole_and_named_by_the_first(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / JOURNAL_NAME)
    try:
        await reconcile(journal, _entries(40), accept_edits=False)
        changes = await reconcile(journal, _entries(40, prefix="x"), accept_edits=False)
        assert changes.changed.count == 40
        assert changes.changed.numbers == list(range(1, 11))
    finally:
        await journal.aclose()


def test_sqlite_failures_of_other_kinds_are_other() -> None:
    assert _problem(sqlite3.OperationalError("disk I/O error")) is Problem.OTHER
