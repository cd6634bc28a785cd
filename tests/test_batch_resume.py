"""Resuming a batch job: an edited input file, creates in doubt, a refused key, a full disk."""

from __future__ import annotations

import errno
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import quickrouter_async as qr
from quickrouter_async._journal import JOURNAL_NAME, JournalError, Problem
from quickrouter_async.cli._batch import BatchOptions, disk_error
from quickrouter_async.cli._execute import failure_message, run_batch
from quickrouter_async.testing import Faults

from .conftest import FAST_POLL, FAST_RETRY

if TYPE_CHECKING:
    from quickrouter_async.testing import Emulator

pytestmark = pytest.mark.anyio

MODEL = "google/imagen-4"


def _write(path: Path, prompts: list[str], *, blank_first: bool = False) -> Path:
    lines = [json.dumps({"prompt": prompt}) + "\n" for prompt in prompts]
    path.write_text(("\n" if blank_first else "") + "".join(lines), encoding="utf-8")
    return path


def _results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _states(out: Path) -> dict[str, int]:
    with sqlite3.connect(out / JOURNAL_NAME) as db:
        return dict(db.execute("SELECT state, count(*) FROM entries GROUP BY state"))


def _per_input(emulator: Emulator) -> Counter[str]:
    return Counter(str((p.input or {}).get("prompt")) for p in emulator.predictions)


async def test_appended_lines_run_and_finished_ones_stay(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = [f"first {n}" for n in range(4)]
    source = _write(tmp_path / "in.jsonl", prompts)
    out = tmp_path / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    before = {r["index"]: r["prediction_id"] for r in _results(out)}
    # More prompts at the end, and a blank line on top that moves every line down.
    prompts += [f"appended {n}" for n in range(3)]
    _write(source, prompts, blank_first=True)
    options = BatchOptions(source=source, out=out, model=MODEL, resume=True)
    assert await run_batch(client, options) == 0
    assert "3 new input(s) added to the job" in capsys.readouterr().err
    results = _results(out)
    assert [r["line"] for r in results] == list(range(2, 9))
    assert {r["index"]: r["prediction_id"] for r in results[:4]} == before
    assert all(r["status"] == "succeeded" for r in results)
    assert _per_input(emulator) == Counter(dict.fromkeys(prompts, 1))


async def test_changed_lines_are_named_and_run_anew_only_when_accepted(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(tmp_path / "in.jsonl", ["a", "b", "c", "d"])
    out = tmp_path / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    first = _results(out)
    journal = (out / JOURNAL_NAME).read_bytes()
    _write(source, ["a", "B", "c"])
    creates = emulator.count("create")
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 2
    err = capsys.readouterr().err
    assert "line 2 changed and line (as numbered then) 4 removed" in err
    assert "--accept-edits" in err
    assert emulator.count("create") == creates
    assert (out / JOURNAL_NAME).read_bytes() == journal

    options = BatchOptions(source=source, out=out, model=MODEL, accept_edits=True)
    assert await run_batch(client, options) == 0
    assert emulator.count("create") == creates + 1
    results = _results(out)
    assert [r["input"]["prompt"] for r in results] == ["a", "B", "c"]
    assert results[0]["prediction_id"] == first[0]["prediction_id"]
    assert results[1]["prediction_id"] != first[1]["prediction_id"]
    with sqlite3.connect(out / JOURNAL_NAME) as db:
        kept = db.execute("SELECT prediction_id FROM replaced ORDER BY idx").fetchall()
    # The predictions paid for are still on record.
    assert kept == [(first[1]["prediction_id"],), (first[3]["prediction_id"],)]


# Every create is stored and then answered 500, and every listing is broken: the client
# cannot tell whether its create made a prediction (it did).
IN_DOUBT = Faults(server_error_after_create=1.0, malformed=1.0, endpoints=["create", "list"])


async def test_creates_in_doubt_keep_a_state_of_their_own(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(tmp_path / "in.jsonl", ["x", "y", "z"])
    out = tmp_path / "out"
    emulator.faults = IN_DOUBT
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 1
    printed = capsys.readouterr()
    assert "0 of 3 succeeded, 0 failed, 3 in doubt, 0 unfinished" in printed.out
    assert "--resend-in-doubt" in printed.err
    assert _states(out) == {"in_doubt": 3}
    assert {r["status"] for r in _results(out)} == {"in_doubt"}
    assert len(emulator.predictions) == 3

    # The listing works again: each run looks them up, and attaches instead of sending.
    emulator.faults = None
    creates = emulator.count("create")
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    assert emulator.count("create") == creates
    assert _per_input(emulator) == Counter({"x": 1, "y": 1, "z": 1})


async def test_resend_in_doubt_sends_them_again_at_the_documented_cost(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path
) -> None:
    source = _write(tmp_path / "in.jsonl", ["x", "y"])
    out = tmp_path / "out"
    emulator.faults = IN_DOUBT
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 1
    # Still no listing: without the flag nothing is sent; with it, both are.
    emulator.faults = Faults(malformed=1.0, endpoints=["list"])
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 1
    assert _states(out) == {"in_doubt": 2}
    assert len(emulator.predictions) == 2
    options = BatchOptions(source=source, out=out, model=MODEL, resend_in_doubt=True)
    assert await run_batch(client, options) == 0
    assert _states(out) == {"done": 2}
    assert _per_input(emulator) == Counter({"x": 2, "y": 2})  # each paid for twice


async def test_a_refused_key_stops_after_the_first_wave(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(tmp_path / "in.jsonl", [f"p{n}" for n in range(200)])
    out = tmp_path / "out"
    async with qr.QuickRouter("wrong", base_url=emulator.base_url, retry=FAST_RETRY) as bad:
        options = BatchOptions(source=source, out=out, model=MODEL, concurrency=32)
        assert await run_batch(bad, options) == 1
    assert 1 <= emulator.count("create") <= 10
    assert emulator.count("create") == emulator.count("create", status=401)
    err = capsys.readouterr().err
    assert "the server does not accept the API key" in err
    assert "401" in err
    assert "200 input(s) are left pending" in err
    assert _states(out) == {"pending": 200}
    async with qr.QuickRouter(
        emulator.api_key, base_url=emulator.base_url, poll=FAST_POLL, retry=FAST_RETRY
    ) as good:
        assert await run_batch(good, BatchOptions(source=source, out=out, model=MODEL)) == 0
    assert len(emulator.predictions) == 200


@pytest.mark.skipif(
    not Path("/dev/full").exists(), reason="needs /dev/full, where every write fails with ENOSPC"
)
async def test_a_full_disk_stops_the_run_and_a_resume_finishes_it(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = [f"p{n}" for n in range(12)]
    source = _write(tmp_path / "in.jsonl", prompts)
    out = tmp_path / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    _write(source, [*prompts, "more", "and more"])
    # results.jsonl is where the next line goes: the device says the disk is full.
    (out / "results.jsonl").unlink()
    (out / "results.jsonl").symlink_to("/dev/full")
    # One at a time: the stop then cancels no download half-way (downloads are not ours).
    options = BatchOptions(source=source, out=out, model=MODEL, concurrency=1)
    assert await run_batch(client, options) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err
    assert "free some space, then run the same command again" in err
    with sqlite3.connect(out / JOURNAL_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    assert _per_input(emulator) == Counter(dict.fromkeys([*prompts, "more", "and more"], 1))


async def test_a_gallery_that_cannot_be_written_is_a_warning(
    client: qr.QuickRouter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(tmp_path / "in.jsonl", ["a"])
    out = tmp_path / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    (out / "index.html").unlink()
    (out / "index.html").mkdir()
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    assert "warning: could not write" in capsys.readouterr().err
    assert _results(out)[0]["status"] == "succeeded"


async def test_edits_are_described_by_what_they_did(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(tmp_path / "in.jsonl", ["a", "b", "c"])
    out = tmp_path / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    _write(source, ["a"])
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 2
    assert "lines (as numbered then) 2, 3 removed" in capsys.readouterr().err
    # A prediction under way is never dropped, even when edits are accepted.
    with sqlite3.connect(out / JOURNAL_NAME) as db:
        db.execute("UPDATE entries SET state = 'submitted' WHERE idx = 2")
    options = BatchOptions(source=source, out=out, model=MODEL, accept_edits=True)
    assert await run_batch(client, options) == 2
    assert "but the predictions of line 3 are under way" in capsys.readouterr().err
    assert emulator.count("create") == 3


async def test_a_prediction_the_server_lost_is_kept_with_its_error(
    client: qr.QuickRouter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(tmp_path / "in.jsonl", ["a", "b"])
    out = tmp_path / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    with sqlite3.connect(out / JOURNAL_NAME) as db:
        db.execute("UPDATE entries SET state = 'submitted', prediction_id = 'gone' WHERE idx = 1")
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 1
    err = capsys.readouterr().err
    assert "in.jsonl:2: submitted: 404" in err
    assert f"(every input's status and error: {out / 'results.jsonl'})" in err
    assert _results(out)[1]["status"] == "submitted"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_a_full_disk_while_looking_up_stops_the_run(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(tmp_path / "in.jsonl", ["a", "b"])
    out = tmp_path / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    with sqlite3.connect(out / JOURNAL_NAME) as db:
        db.execute("UPDATE entries SET state = 'submitting', prediction_id = NULL WHERE idx = 0")
    emulator.faults = Faults(malformed=1.0, endpoints=["list"])
    (out / "results.jsonl").unlink()
    (out / "results.jsonl").symlink_to("/dev/full")
    creates = emulator.count("create")
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert emulator.count("create") == creates
    assert _states(out) == {"submitting": 1, "done": 1}


async def test_results_that_cannot_be_opened_stop_before_anything_is_sent(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(tmp_path / "in.jsonl", ["a"])
    out = tmp_path / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    _write(source, ["a", "b"])
    (out / "results.jsonl").unlink()
    (out / "results.jsonl").mkdir()
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 1
    assert "error: could not write" in capsys.readouterr().err
    assert emulator.count("create") == 1


def test_disk_errors_are_found_behind_library_errors() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    wrapped = qr.TransportError("download failed")
    wrapped.__cause__ = full
    assert disk_error(wrapped) is full
    assert disk_error(qr.TransportError("reset")) is None
    assert disk_error(ConnectionResetError(errno.ECONNRESET, "reset")) is None


def test_failure_messages_say_what_to_do(tmp_path: Path) -> None:
    damaged = JournalError(tmp_path / JOURNAL_NAME, Problem.DAMAGED, "file is not a database")
    assert "restore it from a backup" in failure_message(damaged)
    assert "left running" not in failure_message(damaged)
    full = JournalError(tmp_path / JOURNAL_NAME, Problem.FULL, "database or disk is full")
    assert "free some space" in failure_message(full)
    assert "the resume attaches to them" in failure_message(full)
    read_only = OSError(errno.EROFS, "Read-only file system")
    assert "the file system is read-only" in failure_message(read_only)


async def test_a_job_of_the_first_release_resumes_with_lines_appended(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path
) -> None:
    source = _write(tmp_path / "in.jsonl", ["a", "b"])
    out = tmp_path / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    # Made into what the first release left: its meta, no `replaced` table, format 0.
    db = sqlite3.connect(out / JOURNAL_NAME, isolation_level=None)
    db.executescript(
        "DELETE FROM meta; DROP TABLE replaced; PRAGMA user_version=0;"
        "INSERT INTO meta VALUES ('input_sha256', '1b2c'), ('model', 'google/imagen-4');"
    )
    db.close()
    _write(source, ["a", "b", "c"])
    options = BatchOptions(source=source, out=out, model=MODEL, resume=True)
    assert await run_batch(client, options) == 0
    assert _per_input(emulator) == Counter({"a": 1, "b": 1, "c": 1})
    with sqlite3.connect(out / JOURNAL_NAME) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)


async def test_a_folder_whose_lock_cannot_be_made_is_refused(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(tmp_path / "in.jsonl", ["a"])
    out = tmp_path / "out"
    (out / "journal.lock").mkdir(parents=True)
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 2
    assert "journal.lock: Is a directory" in capsys.readouterr().err
    assert emulator.count() == 0


async def test_a_file_that_cannot_be_saved_is_kept_with_its_error(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(tmp_path / "in.jsonl", ["a", "b"])
    out = tmp_path / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    name = _results(out)[0]["files"][0]
    (out / name).unlink()
    (out / name).mkdir()  # a folder where the image goes: that input only, not the disk
    with sqlite3.connect(out / JOURNAL_NAME) as db:
        db.execute("UPDATE entries SET state = 'terminal', files = '[]' WHERE idx = 0")
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 1
    assert "in.jsonl:1: succeeded: " in capsys.readouterr().err
    assert _states(out) == {"terminal": 1, "done": 1}
    assert _results(out)[0]["error"]
    assert emulator.count("create") == 2
