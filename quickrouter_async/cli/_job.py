"""A batch job's folder: who may write into it, its journal, and the input file again.

A folder holds at most one job, and one run of it at a time:

- a run takes the folder's lock first (`JobLock`); a second run exits with status 2,
  saying which process holds it;
- a new job starts only in a folder that holds no other job's output (``results.jsonl``
  or ``index.html`` without a journal), and a journal made by ``demo`` is never resumed
  by ``batch`` (nor the other way round);
- a resume matches the input file with the journal line by line (`reconcile`): new lines
  at the end are added; changed or removed lines are named and refused, unless
  ``--accept-edits`` is given.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final

import anyio
import attrs

from .._journal import JOURNAL_NAME, Journal
from .._reconcile import reconcile
from . import _lines
from ._batch import Kind
from ._gallery import GALLERY_NAME, RESULTS_NAME
from ._lock import JobLock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from .._reconcile import Changes, Lines
    from ._batch import BatchOptions

__all__ = ["OUTPUTS", "Job", "Refused", "open_job", "remove_job_files"]

# Files a finished job leaves: a folder holding them without a journal holds another job.
OUTPUTS: Final = (RESULTS_NAME, GALLERY_NAME)
_JOURNAL_FILES: Final = (JOURNAL_NAME, f"{JOURNAL_NAME}-wal", f"{JOURNAL_NAME}-shm")


class Refused(Exception):
    """The job must not start; the message says why and what to do (exit status 2)."""


@attrs.frozen
class Job:
    """An open job: its journal (locked for this run), its size, what to tell the user."""

    journal: Journal
    total: int
    notes: list[str]


def _lines_text(lines: Lines, noun: str) -> str:
    listed = ", ".join(str(n) for n in lines.numbers)
    more = lines.count - len(lines.numbers)
    return f"{noun} {listed}" + (f" and {more} more" if more > 0 else "")


async def _scan(source: Path, model: str | None) -> _lines.Scan:
    try:
        found = await anyio.to_thread.run_sync(_lines.scan, source, model)
    except OSError as exc:
        raise Refused(f"cannot read {source}: {exc.strerror}") from None
    if found.invalid:
        shown = "\n".join(found.messages(source.name))
        raise Refused(
            f"{shown}\n{found.invalid} invalid line(s) in {source}; nothing was submitted"
        )
    return found


async def _no_outputs(out: Path) -> None:
    for name in OUTPUTS:
        if await anyio.Path(out / name).exists():
            raise Refused(
                f"{out} holds {name} but no journal: it may be another job's output; "
                "use a new or empty --out folder"
            )


async def remove_job_files(out: Path) -> None:
    """Remove a job's journal, results and gallery from ``out`` (its images stay)."""
    for name in (*_JOURNAL_FILES, *OUTPUTS):
        await anyio.Path(out / name).unlink(missing_ok=True)


def _describe(changes: Changes, *, accept_edits: bool) -> str:
    parts = []
    if changes.changed.count:
        parts.append(
            _lines_text(changes.changed, "line" if changes.changed.count == 1 else "lines")
        )
        parts[-1] += " changed"
    if changes.removed.count:
        noun = "line" if changes.removed.count == 1 else "lines"
        parts.append(_lines_text(changes.removed, f"{noun} (as numbered then)") + " removed")
    edits = " and ".join(parts)
    if accept_edits:
        return (
            f"the input file was edited ({edits}), but the predictions of "
            f"{_lines_text(changes.under_way, 'line')} are under way: run once more with "
            "the file as it was to finish them, then edit it"
        )
    return (
        f"the input file was edited since this job started: {edits}. Inputs are matched "
        "by position, so add new inputs at the end. Pass --accept-edits to run changed "
        "lines as new inputs and drop removed ones (their earlier entries are kept in the "
        "journal's 'replaced' table), or use another --out folder"
    )


class _Opening:
    """The checks and steps of opening one job, in order."""

    def __init__(self, options: BatchOptions) -> None:
        self.options = options
        self.out = options.out
        self.path = options.out / JOURNAL_NAME
        self.notes: list[str] = []

    async def folder(self) -> bool:
        """Check ``--out`` before touching it; True when it holds a journal."""
        out = anyio.Path(self.out)
        if await out.exists() and not await out.is_dir():
            raise Refused(f"--out {self.out} is a file, not a folder")
        exists = await anyio.Path(self.path).exists()
        if self.options.resume and not exists:
            raise Refused(f"nothing to resume: {self.path} does not exist")
        return exists

    async def model(self, journal: Journal) -> str | None:
        """Record a new job's identity, or check it; the default model to read lines with."""
        options = self.options
        meta = await journal.meta()
        if not meta:  # a new journal
            await journal.set_meta(
                {
                    "kind": options.kind.value,
                    "model": options.model or "",
                    "source": str(options.source.resolve()),
                }
            )
            return options.model
        kind = meta.get("kind", Kind.BATCH.value)  # the first release wrote no kind
        if kind != options.kind.value:
            raise Refused(
                f"{self.out} holds a {kind} job, not a {options.kind.value}; "
                "use another --out folder"
            )
        recorded = meta.get("model") or None
        if options.model is None:
            if recorded is not None:
                self.notes.append(
                    f"reading bare lines as inputs of {recorded} (this job's --model)"
                )
            return recorded
        if recorded is not None and recorded != options.model:
            raise Refused(
                f"{self.out} holds a job run with --model {recorded}, not {options.model}; "
                f"pass --model {recorded} (or leave --model out), or use another --out folder"
            )
        if recorded is None:
            await journal.set_meta({"model": options.model})
        return options.model

    async def lines(self, journal: Journal, model: str | None, *, new: bool) -> int:
        """Match the file with the journal; return the number of inputs."""
        options = self.options
        found = await _scan(options.source, model)
        # A line that turns invalid while this runs (the file edited meanwhile) raises
        # InputError naming it: the transaction is rolled back, the command says so.
        entries = _lines.entries(options.source, model)
        changes = await reconcile(journal, entries, accept_edits=options.accept_edits)
        if not changes.applied:
            meta = await journal.meta()
            started = meta.get("source")
            message = _describe(changes, accept_edits=options.accept_edits)
            if started and started != str(options.source.resolve()):
                message += f"\n(this job was started from {started})"
            raise Refused(message)
        if changes.added and not new:
            self.notes.append(f"{changes.added} new input(s) added to the job")
        if changes.edited:
            self.notes.append(
                f"{changes.changed.count} changed input(s) will run anew and "
                f"{changes.removed.count} removed one(s) left the job"
            )
        return found.count


@contextlib.asynccontextmanager
async def open_job(options: BatchOptions, *, locked: bool = False) -> AsyncIterator[Job]:
    """Lock ``options.out``, open its journal and bring it in line with the input file.

    Args:
        options: the job.
        locked: the caller already holds the folder's lock (``demo`` does).

    Raises:
        Refused: the job must not start (the message says why); nothing was changed.
        Locked: another run holds the folder.
        JournalError: the journal cannot be opened.
    """
    opening = _Opening(options)
    exists = await opening.folder()
    if not exists:
        # Before the folder is made: an invalid file leaves nothing behind.
        await _scan(options.source, options.model)
        await _no_outputs(options.out)
    try:
        await anyio.Path(options.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Refused(f"cannot make --out {options.out}: {exc.strerror}") from None
    lock = contextlib.nullcontext() if locked else JobLock(options.out)
    async with lock:
        # Another run may have started or finished the job while this one waited.
        exists = await anyio.Path(opening.path).exists()
        if not exists:
            await _no_outputs(options.out)
        journal = await Journal.open(opening.path)
        try:
            model = await opening.model(journal)
            total = await opening.lines(journal, model, new=not exists)
            yield Job(journal=journal, total=total, notes=opening.notes)
        finally:
            await journal.aclose()
