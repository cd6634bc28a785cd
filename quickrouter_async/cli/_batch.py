"""The batch engine behind ``quickrouter-async batch`` (and ``demo``).

Built on the client's public methods (`create`, `wait`, `download`, `list_predictions`)
with its own anyio task group and `CapacityLimiter`, so the journal can record each step
the moment it happens: ``submitting`` before the create is sent, the prediction id as
soon as the create answers, the final prediction, the files. Inputs are fed from the
journal a page at a time, so memory stays flat however long the file.

Three things stop the feeding of new creates early:

- an answer that says the account cannot create predictions (401, 402, 403): the
  inputs not yet sent stay ``pending`` for a resume with a working key. Until the first
  create has been answered, no more than the rate limiter's first burst is sent, so a
  wrong key costs that many refused requests, not one per input;
- a failure of the journal or of the disk (`JournalError`, an ``OSError``): the run
  stops at once, leaves running predictions running (as ``--detach`` does, since the
  journal may not be able to record a cancel) and a resume takes over;
- Ctrl-C (handled by the caller, which cancels `Batch.run`).
"""

from __future__ import annotations

import enum
import errno
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs

from .._errors import APIError, CreateInDoubt, QuickRouterError
from .._journal import Entry, JournalError, State
from .._lookup import Wanted, find_created, window_start
from .._polling import cancel_quietly
from .._ratelimit import INITIAL_BURST
from . import _lines

if TYPE_CHECKING:
    import datetime as dt
    from typing import IO

    from .._client import QuickRouter
    from .._journal import Journal
    from .._models import Prediction
    from ._progress import Tally

__all__ = ["ACCOUNT_ERRORS", "Batch", "BatchOptions", "Kind", "disk_error"]

# A create is shielded from Ctrl-C for at most this long, so its prediction can be
# recorded (and canceled) instead of left running unknown.
_CREATE_GRACE: Final = 30.0
_CREATES: Final = (State.PENDING, State.SUBMITTING)
_UNFINISHED: Final = (State.PENDING, State.SUBMITTING, State.SUBMITTED, State.TERMINAL)
# Answers to a create that say the input or model is wrong: final, a re-run won't help.
# Other error answers (401/402/403: the account; 429, 5xx: passing) leave it pending.
_REFUSED: Final = frozenset({400, 404, 422})
# Answers that say no create of this account can succeed now: the job stops creating.
ACCOUNT_ERRORS: Final = frozenset({401, 402, 403})
# Creates sent before the server has answered any: the limiter's own first burst.
_FIRST_WAVE: Final = int(INITIAL_BURST)
# Errors of the file system that no other input can get past either.
_DISK_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class Kind(enum.StrEnum):
    """What made a job folder: the value of its journal's ``kind``."""

    BATCH = "batch"
    DEMO = "demo"


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
    accept_edits: bool = False
    resend_in_doubt: bool = False
    kind: Kind = Kind.BATCH


def disk_error(exc: BaseException) -> OSError | None:
    """The file-system failure behind ``exc`` (disk full, quota, read-only), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


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
        resend_in_doubt: bool = False,
    ) -> None:
        self.client = client
        self.journal = journal
        self.out = out
        self.tally = tally
        self.detach = detach
        self.slots = anyio.CapacityLimiter(concurrency)
        self.results = results
        self.resend_in_doubt = resend_in_doubt
        self._writer = anyio.CapacityLimiter(1)
        # Inputs left in doubt whose lookup failed: not sent again in this run.
        self.skip: set[int] = set()
        # The input file's folder: "@path" values are relative to it.
        self.folder = folder or Path()
        # The first answer that said the account cannot create: no create is sent after it.
        self.refused: APIError | None = None
        # The journal or disk failure that stopped the run.
        self.fatal: JournalError | OSError | None = None
        self._answered = anyio.Event()
        self._wave = _FIRST_WAVE
        self._scope: anyio.CancelScope | None = None

    async def run(self) -> None:
        """Resolve creates left in doubt, then take every unfinished input to the end.

        Never raises a journal or disk failure: it stops the run and is kept in `fatal`.
        """
        try:
            await self._look_up_doubts()
            async with anyio.create_task_group() as group:
                self._scope = group.cancel_scope
                after = -1
                while page := await self.journal.page(after=after, states=_UNFINISHED):
                    for entry in page:
                        if entry.index in self.skip or (
                            self.refused is not None and entry.state in _CREATES
                        ):
                            continue
                        await self.slots.acquire_on_behalf_of(entry.index)
                        group.start_soon(self._one, entry)
                    after = page[-1].index
        except (JournalError, OSError) as exc:
            self._fail(exc)

    async def _look_up_doubts(self) -> None:
        """Look up the creates in doubt, of a crash or of earlier runs, then sort them.

        Inputs ``in_doubt`` are looked up again on every run, with those a crash left
        ``submitting``: the server may list them now. Those whose lookup failed go (back)
        to ``in_doubt``, or to ``pending`` with ``resend_in_doubt``.
        """
        await self.journal.move(State.IN_DOUBT, State.SUBMITTING)
        await self.resolve_in_doubt()
        target = State.PENDING if self.resend_in_doubt else State.IN_DOUBT
        for index in sorted(self.skip):
            await self.journal.update(index, state=target)
        if self.resend_in_doubt:
            self.skip.clear()
        self.tally.rebase(await self.journal.counts())

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

    def _fail(self, exc: JournalError | OSError) -> None:
        """Stop the run on a journal or disk failure; the first one is reported."""
        if self.fatal is None:
            self.fatal = exc
        if self._scope is not None:
            self._scope.cancel()

    async def _one(self, entry: Entry) -> None:
        try:
            await self._advance(entry)
        except (JournalError, OSError) as exc:
            self._fail(exc)
        finally:
            self.slots.release_on_behalf_of(entry.index)

    async def _may_create(self) -> bool:
        """Wait for a turn to create; False once the account was refused (or the run failed).

        Until the first create is answered, only the first wave goes; the rest wait for
        that answer here, where waiting can still be cancelled.
        """
        if not self._answered.is_set():
            if self._wave > 0:
                self._wave -= 1
            else:
                await self._answered.wait()
        return self.refused is None and self.fatal is None

    async def _create(self, entry: Entry) -> Prediction | None:
        """Send the create of ``entry`` and record its prediction; None if not sent."""
        if not await self._may_create():
            return None
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CREATE_GRACE):
                await self.journal.update(entry.index, state=State.SUBMITTING, sent_at=time.time())
                payload = _lines.local_files(entry.input, self.folder)
                prediction = await self.client.create(entry.model, payload)
                await self.journal.update(
                    entry.index,
                    state=State.SUBMITTED,
                    prediction_id=prediction.id,
                    created_at=_when(prediction.created_at),
                    error=None,
                )
                return prediction
        finally:
            self._answered.set()  # whatever the answer, the first wave is over
        return None  # pragma: no cover (the grace of a create ran out)

    async def _advance(self, entry: Entry) -> None:
        index = entry.index
        state, prediction_id, status = entry.state, entry.prediction_id, entry.status
        prediction: Prediction | None = None
        started = False
        try:
            if state in _CREATES:
                prediction = await self._create(entry)
                if prediction is None:
                    return
                state, prediction_id = State.SUBMITTED, prediction.id
            if state in {State.SUBMITTED, State.TERMINAL} and prediction_id is not None:
                self.tally.start()
                started = True
                if state == State.SUBMITTED:
                    # Ctrl-C during the create lands in here: the prediction is canceled.
                    prediction = await self._wait(index, prediction_id)
                    status = prediction.status.value
                    await self.journal.update(
                        index,
                        state=State.TERMINAL,
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
        except CreateInDoubt as exc:
            # The prediction may exist and could not be looked up: neither sent again
            # nor forgotten; later runs look it up, and --resend-in-doubt sends it.
            await self.journal.update(index, state=State.IN_DOUBT, error=str(exc))
            await self._stream(await self.journal.get(index))
            self.tally.doubt()
        except APIError as exc:
            if state in _CREATES:
                # The server answered the create with an error: no prediction was made.
                if exc.status in _REFUSED:  # the input or model is wrong: final
                    await self.journal.update(
                        index, state=State.TERMINAL, status="failed", error=str(exc)
                    )
                    await self._finish(index, files=[])
                else:
                    if exc.status in ACCOUNT_ERRORS and self.refused is None:
                        self.refused = exc
                    await self.journal.update(index, state=State.PENDING)
                    await self._keep(index, exc)
            else:
                await self._keep(index, exc)
            self.tally.finish(ok=False, started=started)
        except QuickRouterError as exc:
            if isinstance(exc, OSError) and disk_error(exc) is not None:
                raise  # a full disk (`DownloadError`) stops the whole run: see `_one`
            await self._keep(index, exc)
            self.tally.finish(ok=False, started=started)

    async def _wait(self, index: int, prediction_id: str) -> Prediction:
        """Wait for the prediction; on Ctrl-C cancel it on the server unless detached."""
        try:
            return await self.client.wait(prediction_id)
        except anyio.get_cancelled_exc_class():
            # After a journal or disk failure it is left running: a resume attaches to it.
            if not self.detach and self.fatal is None:
                with anyio.CancelScope(shield=True):
                    answer = await cancel_quietly(self.client.cancel, prediction_id)
                    if answer is not None and answer.status.value in {"canceled", "aborted"}:
                        # We canceled it: a resumed run must make a new one.
                        await self.journal.update(
                            index, state=State.PENDING, prediction_id=None, error="interrupted"
                        )
            raise

    async def _keep(self, index: int, exc: QuickRouterError) -> None:
        """Note an error that a re-run may get past; the state stays where it was."""
        await self.journal.update(index, error=str(exc))
        await self._stream(await self.journal.get(index))

    async def _finish(self, index: int, *, files: list[str]) -> Entry:
        await self.journal.update(index, state=State.DONE, files=files)
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
