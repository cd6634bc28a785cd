"""One run of a batch job: the engine, the files it leaves, the summary and exit status.

Every way a run can end is said in words, never with a traceback: the summary line
counts each kind of input, and a run stopped early (the account refused, the journal
or the disk failed, another run holds the folder) says what happened and what to do.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Final

import anyio

from .._journal import JournalError, Problem
from ._batch import ACCOUNT_ERRORS, Batch
from ._gallery import GALLERY_NAME, RESULTS_NAME, write_gallery
from ._job import Refused, open_job
from ._lock import Locked
from ._output import write_results
from ._progress import Display, Tally
from ._status import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, clip, say

if TYPE_CHECKING:
    from .._client import QuickRouter
    from .._errors import APIError
    from ._batch import BatchOptions
    from ._job import Job

__all__ = ["failure_message", "journal_message", "run_batch"]

# Inputs that did not succeed listed after the summary, and the characters of an error.
_TROUBLES_SHOWN: Final = 5
_ERROR_SHOWN: Final = 300
_RESUME: Final = "then run the same command again: the job resumes where it stopped"
_ACCOUNT: Final = {
    401: ("the server does not accept the API key", "check QUICKROUTER_API_KEY or --api-key-file"),
    402: ("the account cannot pay for predictions", "add credit or set up billing"),
    403: ("the API key may not create these predictions", "use a key allowed to run the model"),
}
_JOURNAL: Final = {
    Problem.DAMAGED: (
        "is damaged",
        (
            "restore it from a backup, or move it aside and run the job in a new --out "
            "folder (inputs it had finished would then be run, and paid for, again)"
        ),
    ),
    Problem.LOCKED: (
        "is locked by another program",
        "close whatever holds it (a sqlite3 shell or viewer in a transaction), " + _RESUME,
    ),
    Problem.FULL: ("could not be written: the disk is full", "free some space, " + _RESUME),
    Problem.NEWER: ("is of a newer format", "run it with a newer quickrouter-async"),
    Problem.OTHER: ("could not be read or written", "check the folder and the disk, " + _RESUME),
}
_DISK: Final = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (the disk quota is used up)",
    errno.EROFS: "make the folder writable (the file system is read-only)",
    errno.EACCES: "make the folder writable",
}


def journal_message(exc: JournalError) -> str:
    """What a journal failure means and what to do, in one message."""
    what, fix = _JOURNAL[exc.problem]
    return f"error: the journal {exc.path} {what} ({exc.reason}); {fix}"


def failure_message(exc: JournalError | OSError) -> str:
    """The message of a run stopped by a failure of the journal or of the disk."""
    if isinstance(exc, JournalError):
        message = journal_message(exc)
        if exc.problem in {Problem.DAMAGED, Problem.NEWER}:
            return message
    else:
        where = f" {exc.filename}" if exc.filename else ""
        fix = _DISK.get(exc.errno or 0, "check the folder and the disk")
        message = f"error: could not write{where}: {exc.strerror or exc}; {fix}, {_RESUME}"
    return f"{message} (predictions still running were left running: the resume attaches to them)"


def _refusal(exc: APIError, pending: int) -> str:
    what, fix = _ACCOUNT[exc.status]
    return (
        f"error: {what}: {exc}. No more predictions were created; {pending} input(s) are "
        f"left pending. {fix[0].upper()}{fix[1:]}, {_RESUME}"
    )


async def run_batch(
    client: QuickRouter,
    options: BatchOptions,
    *,
    interrupt: anyio.Event | None = None,
    locked: bool = False,
) -> int:
    """Run (or resume) a batch job; return the exit status.

    Args:
        client: the client to run it with.
        options: the input file, output folder and knobs.
        interrupt: set to stop the job as Ctrl-C does (predictions canceled on the
            server unless ``detach``, the journal left resumable, exit status 130).
        locked: the caller already holds the folder's lock.
    """
    try:
        async with open_job(options, locked=locked) as job:
            for note in job.notes:
                say(f"note: {note}")
            code = await _run(client, job, options, interrupt)
    except (Refused, Locked) as exc:
        for line in str(exc).splitlines():
            say(f"error: {line}")
        return EXIT_USAGE
    except JournalError as exc:
        say(journal_message(exc))
        return EXIT_USAGE
    except OSError as exc:  # the folder or its lock file could not be made
        say(f"error: {exc.filename or options.out}: {exc.strerror or exc}")
        return EXIT_USAGE
    return code


async def _run(
    client: QuickRouter, job: Job, options: BatchOptions, interrupt: anyio.Event | None
) -> int:
    journal = job.journal
    counts = await journal.counts()
    tally = Tally(job.total, done_before=counts["done"], succeeded_before=counts["succeeded"])
    try:
        results = await anyio.open_file(options.out / RESULTS_NAME, "a", encoding="utf-8")
    except OSError as exc:
        say(failure_message(exc))
        return EXIT_FAILED
    batch = Batch(
        client,
        journal,
        options.out,
        tally,
        concurrency=options.concurrency,
        detach=options.detach,
        results=results.wrapped,
        folder=options.source.parent,
        resend_in_doubt=options.resend_in_doubt,
    )
    interrupted = False
    try:
        with Display(tally, enabled=options.progress):
            async with anyio.create_task_group() as group:
                if interrupt is not None:

                    async def stop() -> None:
                        nonlocal interrupted
                        await interrupt.wait()
                        interrupted = True
                        group.cancel_scope.cancel()

                    group.start_soon(stop)
                await batch.run()
                group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            try:
                await results.aclose()
            except OSError as exc:  # what was still buffered could not be written
                batch.fatal = batch.fatal or exc
    with anyio.CancelScope(shield=True):
        code = await _conclude(batch, job, options, interrupted=interrupted)
    return code  # noqa: RET504 (mypy: a cancel scope's exit might swallow a return)


async def _write_files(batch: Batch, options: BatchOptions) -> None:
    """Rewrite ``results.jsonl`` and ``index.html`` from the journal, in input order."""
    journal, out = batch.journal, options.out
    try:
        await journal.export(lambda entries: write_results(out / RESULTS_NAME, entries))
        try:
            await journal.export(lambda entries: write_gallery(out / GALLERY_NAME, entries))
        except (OSError, UnicodeError, ValueError) as exc:
            # The gallery is a view of results.jsonl: the job is whole without it.
            say(f"warning: could not write {out / GALLERY_NAME}: {exc}")
    except (JournalError, OSError) as exc:
        batch.fatal = batch.fatal or exc


async def _show_troubles(batch: Batch, options: BatchOptions) -> None:
    """The first inputs that did not succeed, with why (results.jsonl has them all)."""
    troubles = await batch.journal.troubles(_TROUBLES_SHOWN)
    for entry in troubles:
        status = entry.result()["status"]
        say(f"{options.source.name}:{entry.line}: {status}: {clip(str(entry.error), _ERROR_SHOWN)}")
    if troubles:
        say(f"(every input's status and error: {options.out / RESULTS_NAME})")


async def _conclude(batch: Batch, job: Job, options: BatchOptions, *, interrupted: bool) -> int:
    await _write_files(batch, options)
    counts = await batch.journal.counts()
    total, done, succeeded = job.total, counts["done"], counts["succeeded"]
    doubt = counts["in_doubt"]
    say(
        f"{succeeded} of {total} succeeded, {done - succeeded} failed, {doubt} in doubt, "
        f"{total - done - doubt} unfinished; results: {options.out / RESULTS_NAME}, "
        f"gallery: {options.out / GALLERY_NAME}",
        error=False,
    )
    if doubt:
        say(
            f"note: {doubt} input(s) in doubt: their creates may have made predictions (and "
            "been billed) that the server could not be asked about. Each run looks them up "
            "again; --resend-in-doubt sends them again instead, which may pay for a "
            "prediction twice"
        )
    if batch.fatal is not None:
        say(failure_message(batch.fatal))
        return EXIT_FAILED
    if succeeded != total and batch.refused is None:
        await _show_troubles(batch, options)
    if batch.refused is not None and batch.refused.status in ACCOUNT_ERRORS:
        say(_refusal(batch.refused, counts["pending"] + counts["submitting"]))
        return EXIT_FAILED
    if interrupted:
        say("interrupted: run the same command again to resume")
        return EXIT_INTERRUPTED
    return EXIT_OK if succeeded == total else EXIT_FAILED
