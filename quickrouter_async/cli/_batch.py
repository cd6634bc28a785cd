"""The batch engine behind ``quickrouter-async batch`` (and ``demo``).

Built on the client's public methods (`create`, `wait`, `download`, `list_predictions`)
with its own anyio task group and `CapacityLimiter`, so the journal can record each step
the moment it happens: ``submitting`` before the create is sent, the prediction id as
soon as the create answers, the final prediction, the files. Inputs are fed from the
journal a page at a time, so memory stays flat however long the file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs

from .._errors import APIError, QuickRouterError
from .._journal import JOURNAL_NAME, Entry, Journal, JournalMismatch
from .._lookup import Wanted, find_created, window_start
from .._polling import cancel_quietly
from . import _lines
from ._gallery import GALLERY_NAME, RESULTS_NAME, write_gallery, write_results
from ._progress import Display, Tally

if TYPE_CHECKING:
    import datetime as dt
    from typing import IO

    from .._client import QuickRouter
    from .._models import Prediction

__all__ = ["BatchOptions", "run_batch"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

# A create is shielded from Ctrl-C for at most this long, so its prediction can be
# recorded (and canceled) instead of left running unknown.
_CREATE_GRACE: Final = 30.0
_UNFINISHED: Final = ("pending", "submitting", "submitted", "terminal")
# Answers to a create that say the input or model is wrong: final, a re-run won't help.
# Other error answers (401/402/403: the account; 429, 5xx: passing) leave it pending.
_REFUSED: Final = frozenset({400, 404, 422})


@attrs.frozen(kw_only=True)
class BatchOptions:
    """What the ``batch`` command was asked to do."""

    source: Path
    out: Path
    model: str | None = None
    concurrency: int = 16
    resume: bool = False
    detach: bool = False
    progress: bool = False


def _when(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _timings(prediction: Prediction) -> dict[str, Any]:
    seconds = None
    if prediction.created_at is not None and prediction.completed_at is not None:
        seconds = (prediction.completed_at - prediction.created_at).total_seconds()
    return {
        "created_at": _when(prediction.created_at),
        "started_at": _when(prediction.started_at),
        "completed_at": _when(prediction.completed_at),
        "seconds": seconds,
    }


class Batch:
    """One run of a batch job over an open journal."""

    def __init__(
        self,
        client: QuickRouter,
        journal: Journal,
        out: Path,
        tally: Tally,
        *,
        concurrency: int,
        detach: bool,
        results: IO[str],
        folder: Path | None = None,
    ) -> None:
        self.client = client
        self.journal = journal
        self.out = out
        self.tally = tally
        self.detach = detach
        self.slots = anyio.CapacityLimiter(concurrency)
        self.results = results
        self._writer = anyio.CapacityLimiter(1)
        # Inputs left in doubt whose lookup failed: not sent again in this run.
        self.skip: set[int] = set()
        # The input file's folder: "@path" values are relative to it.
        self.folder = folder or Path()

    async def run(self) -> None:
        """Resolve creates left in doubt, then take every unfinished input to the end."""
        await self.resolve_in_doubt()
        async with anyio.create_task_group() as group:
            after = -1
            while page := await self.journal.page(after=after, states=_UNFINISHED):
                for entry in page:
                    if entry.index in self.skip:
                        continue
                    await self.slots.acquire_on_behalf_of(entry.index)
                    group.start_soon(self._one, entry)
                after = page[-1].index

    async def resolve_in_doubt(self) -> None:
        """Attach the inputs a crash left ``submitting`` to the predictions they made.

        One lookup (`find_created`) over the account's predictions, newest first, back
        to the earliest such create (less a clock allowance), matched on model and
        input; ids the journal already holds are never matched. Inputs certainly not
        found stay ``submitting`` and are sent again: they never reached the server.
        Where the lookup is impossible (no list route) or fails, they are not sent again
        in this run.
        """
        doubts: list[Entry] = []
        after = -1
        while page := await self.journal.page(after=after, states=("submitting",)):
            doubts.extend(page)
            after = page[-1].index
        if not doubts:
            return
        wanted = [
            Wanted.of(
                entry.model,
                await _lines.input_as_sent(entry.input, self.folder),
                window_start(entry.sent_at or 0.0, None),
            )
            for entry in doubts
        ]
        since = min(want.since for want in wanted)
        try:
            taken = await self.journal.prediction_ids()
            found = await find_created(
                self.client.list_predictions(created_after=since), wanted, taken=taken
            )
        except QuickRouterError as exc:
            # Sending these again might create their predictions twice: skip them now.
            for entry in doubts:
                self.skip.add(entry.index)
                await self._keep(entry.index, exc)
                self.tally.finish(ok=False, started=False)
            return
        for entry, prediction in zip(doubts, found.predictions, strict=True):
            if prediction is not None:
                await self.journal.update(
                    entry.index, state="submitted", prediction_id=prediction.id, error=None
                )
            elif not found.complete:
                self.skip.add(entry.index)  # not looked at far enough back: unknown

    async def _one(self, entry: Entry) -> None:
        try:
            await self._advance(entry)
        finally:
            self.slots.release_on_behalf_of(entry.index)

    async def _advance(self, entry: Entry) -> None:
        index = entry.index
        state, prediction_id, status = entry.state, entry.prediction_id, entry.status
        prediction: Prediction | None = None
        started = False
        try:
            if state in {"pending", "submitting"}:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CREATE_GRACE):
                    await self.journal.update(index, state="submitting", sent_at=time.time())
                    payload = _lines.local_files(entry.input, self.folder)
                    prediction = await self.client.create(entry.model, payload)
                    prediction_id = prediction.id
                    await self.journal.update(
                        index,
                        state="submitted",
                        prediction_id=prediction_id,
                        created_at=_when(prediction.created_at),
                        error=None,
                    )
                    state = "submitted"
            if state in {"submitted", "terminal"} and prediction_id is not None:
                self.tally.start()
                started = True
                if state == "submitted":
                    # Ctrl-C during the create lands in here: the prediction is canceled.
                    prediction = await self._wait(index, prediction_id)
                    status = prediction.status.value
                    await self.journal.update(
                        index,
                        state="terminal",
                        status=prediction.status.value,
                        error=prediction.error
                        or (None if prediction.succeeded else prediction.status.value),
                        **_timings(prediction),
                    )
                files: list[str] = []
                if status == "succeeded":
                    target = prediction or prediction_id
                    files = [path.name for path in await self.client.download(target, self.out)]
                done = await self._finish(index, files=files)
                self.tally.finish(ok=done.status == "succeeded")
        except APIError as exc:
            if state in {"pending", "submitting"}:
                # The server answered the create with an error: no prediction was made.
                if exc.status in _REFUSED:  # the input or model is wrong: final
                    await self.journal.update(
                        index, state="terminal", status="failed", error=str(exc)
                    )
                    await self._finish(index, files=[])
                else:
                    await self.journal.update(index, state="pending")
                    await self._keep(index, exc)
            else:
                await self._keep(index, exc)
            self.tally.finish(ok=False, started=started)
        except QuickRouterError as exc:
            await self._keep(index, exc)
            self.tally.finish(ok=False, started=started)

    async def _wait(self, index: int, prediction_id: str) -> Prediction:
        """Wait for the prediction; on Ctrl-C cancel it on the server unless detached."""
        try:
            return await self.client.wait(prediction_id)
        except anyio.get_cancelled_exc_class():
            if not self.detach:
                with anyio.CancelScope(shield=True):
                    answer = await cancel_quietly(self.client.cancel, prediction_id)
                    if answer is not None and answer.status.value in {"canceled", "aborted"}:
                        # We canceled it: a resumed run must make a new one.
                        await self.journal.update(
                            index, state="pending", prediction_id=None, error="interrupted"
                        )
            raise

    async def _keep(self, index: int, exc: QuickRouterError) -> None:
        """Note an error that a re-run may get past; the state stays where it was."""
        await self.journal.update(index, error=str(exc))
        await self._stream(await self.journal.get(index))

    async def _finish(self, index: int, *, files: list[str]) -> Entry:
        await self.journal.update(index, state="done", files=files)
        entry = await self.journal.get(index)
        await self._stream(entry)
        return entry

    async def _stream(self, entry: Entry) -> None:
        line = json.dumps(entry.result()) + "\n"

        def write() -> None:
            self.results.write(line)
            self.results.flush()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(write, limiter=self._writer)


def _say(text: str, *, error: bool = True) -> None:
    print(text, file=sys.stderr if error else sys.stdout)


async def _prepare(options: BatchOptions) -> tuple[Journal, int] | int:
    """Validate the input file and open (or create) the journal; an int is an exit code."""
    try:
        found = await anyio.to_thread.run_sync(_lines.scan, options.source, options.model)
    except OSError as exc:
        _say(f"error: cannot read {options.source}: {exc.strerror}")
        return EXIT_USAGE
    if found.errors:
        for message in found.errors:
            _say(message)
        _say(f"error: {len(found.errors)} invalid line(s); nothing was submitted")
        return EXIT_USAGE
    path = options.out / JOURNAL_NAME
    exists = await anyio.Path(path).exists()
    if options.resume and not exists:
        _say(f"error: nothing to resume: {path} does not exist")
        return EXIT_USAGE
    await anyio.Path(options.out).mkdir(parents=True, exist_ok=True)
    journal = await Journal.open(path)
    identity = {"input_sha256": found.digest, "model": options.model or ""}
    try:
        new = await journal.bind(identity)
    except JournalMismatch as exc:
        await journal.aclose()
        _say(f"error: {exc}")
        return EXIT_USAGE
    if new or not sum((await journal.counts()).values()):  # killed while filling it?
        await journal.add(lambda: _lines.entries(options.source, options.model))
    return journal, found.count


async def run_batch(
    client: QuickRouter, options: BatchOptions, *, interrupt: anyio.Event | None = None
) -> int:
    """Run (or resume) a batch job; return the exit code.

    Args:
        client: the client to run it with.
        options: the input file, output folder and knobs.
        interrupt: set to stop the job as Ctrl-C does (predictions canceled on the
            server unless ``detach``, the journal left resumable, exit code 130).
    """
    prepared = await _prepare(options)
    if isinstance(prepared, int):
        return prepared
    journal, total = prepared
    interrupted = False
    try:
        counts = await journal.counts()
        tally = Tally(total, done_before=counts["done"], succeeded_before=counts["succeeded"])
        results = await anyio.open_file(options.out / RESULTS_NAME, "a", encoding="utf-8")
        try:
            batch = Batch(
                client,
                journal,
                options.out,
                tally,
                concurrency=options.concurrency,
                detach=options.detach,
                results=results.wrapped,
                folder=options.source.parent,
            )
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
                await results.aclose()
        with anyio.CancelScope(shield=True):
            await journal.export(lambda e: write_results(options.out / RESULTS_NAME, e))
            await journal.export(lambda e: write_gallery(options.out / GALLERY_NAME, e))
            counts = await journal.counts()
    finally:
        await journal.aclose()
    _say(
        f"{counts['succeeded']} of {total} succeeded, {counts['done'] - counts['succeeded']} "
        f"failed, {total - counts['done']} unfinished; results: {options.out / RESULTS_NAME}, "
        f"gallery: {options.out / GALLERY_NAME}",
        error=False,
    )
    if interrupted:
        _say("interrupted: run the same command again to resume")
        return EXIT_INTERRUPTED
    return EXIT_OK if counts["succeeded"] == total else EXIT_FAILED
