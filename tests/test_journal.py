"""The batch journal: states survive a reopen, identity is checked, rows stream out."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pytest
from quickrouter_async._journal import JOURNAL_NAME, Entry, Journal, JournalMismatch

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


pytestmark = pytest.mark.anyio


def _entries(count: int) -> Iterator[Entry]:
    for index in range(count):
        yield Entry(index=index, line=index + 1, model="acme/m", input={"prompt": f"p{index}"})


async def test_states_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_NAME
    journal = await Journal.open(path)
    assert await journal.bind({"input_sha256": "abc", "model": ""}) is True
    await journal.add(lambda: _entries(5))
    await journal.update(0, state="submitting", sent_at=1.5)
    await journal.update(1, state="submitted", prediction_id="p-1")
    await journal.update(2, state="done", status="succeeded", files=["p-2-0.jpg"])
    await journal.aclose()

    journal = await Journal.open(path)
    try:
        assert await journal.bind({"input_sha256": "abc", "model": ""}) is False
        counts = await journal.counts()
        assert counts == {
            "pending": 2,
            "submitting": 1,
            "submitted": 1,
            "terminal": 0,
            "done": 1,
            "succeeded": 1,
        }
        page = await journal.page(after=-1, states=("pending", "submitting"), limit=2)
        assert [e.index for e in page] == [0, 3]
        assert page[0].sent_at == 1.5
        assert (await journal.get(2)).files == ["p-2-0.jpg"]
        assert (await journal.get(2)).result()["status"] == "succeeded"
        assert (await journal.get(3)).result()["status"] == "pending"
        assert await journal.prediction_ids() == {"p-1"}
        assert await journal.export(lambda rows: [e.index for e in rows]) == list(range(5))
    finally:
        await journal.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_another_job_is_refused(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / JOURNAL_NAME)
    try:
        await journal.bind({"input_sha256": "abc", "model": ""})
        with pytest.raises(JournalMismatch, match="input_sha256"):
            await journal.bind({"input_sha256": "def", "model": ""})
    finally:
        await journal.aclose()
