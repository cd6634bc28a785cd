"""The work of a `run_many` call: many predictions at once, bounded, paced, one `Outcome`
per input.

Inputs are pulled lazily, one at a time and only when a worker is free, so a generator of
a million inputs is never materialized. A pool of at most ``concurrency`` workers, each
holding one token of an anyio `CapacityLimiter`, runs the inputs one at a time each
(create through the client's `Creates`, in sync mode when the poll policy says so, then
wait); the create-rate limiter paces the creates. Whatever happens to an input (a bad
tuple, a failed or canceled prediction, an HTTP error) becomes the ``error`` of its
outcome; it never stops the others. Outcomes reach the consumer through an anyio memory
object stream.

`Run.main` runs in one background task owned by the `RunMany` object (`_runmany.py`), so
the caller can leave at any point: stopping it cancels every input still in flight, and
each of them cancels its prediction on the server, shielded and bounded; a create cut
short before its answer came is settled by `Creates`, which cancels what it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Generic, TypeAlias

import anyio
import attrs

from ._errors import InputError, PredictionCanceled, PredictionError, WaitTimeout
from ._local_files import read_local_files
from ._models import InputT, Outcome
from ._polling import raise_for_outcome
from ._progressbar import close_progress
from ._request import build_create

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._client import QuickRouter
    from ._create import Creates
    from ._models import Prediction

__all__ = ["RUNNING", "SHUTDOWN_GRACE", "InputT", "Inputs", "Progress", "ProgressCallback", "Run"]

logger = logging.getLogger(__name__)

# How long leaving early may take: every in-flight prediction is canceled on the server.
SHUTDOWN_GRACE: Final = 10.0
# What `Run._pull` returns in place of an input once the inputs have ended.
_END: Final = object()
# Background tasks of run_many calls still going, so none is garbage collected midway.
RUNNING: set[asyncio.Task[None]] = set()


@attrs.frozen(kw_only=True)
class Progress:
    """A snapshot of a `run_many` call, for a progress display.

    Attributes:
        submitted: inputs taken from the iterable and started.
        running: inputs started and not yet finished.
        succeeded: predictions that succeeded.
        failed: inputs that ended with an error other than a cancel (a failed
            prediction, an invalid input, an HTTP error, a timeout).
        canceled: predictions canceled or aborted on the server.
        throttled: creates the server answered 429 since the call started (retried).
        elapsed: seconds since the first input was pulled.
        rate: finished inputs per second so far.
    """

    submitted: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    throttled: int = 0
    elapsed: float = 0.0
    rate: float = 0.0

    @property
    def finished(self) -> int:
        """Inputs with an outcome: succeeded, failed or canceled."""
        return self.succeeded + self.failed + self.canceled


Inputs: TypeAlias = Iterable[InputT] | AsyncIterable[InputT]
ProgressCallback: TypeAlias = Callable[[Progress], object]


def _arguments(item: object) -> tuple[Any, Any]:
    """The (model or typed input, input) a `QuickRouter.run` call takes for one item."""
    if isinstance(item, tuple):
        if len(item) != 2 or not isinstance(item[0], str):
            raise InputError(
                "a run_many item must be a typed input or a (model, input) pair; "
                f"got a tuple of {len(item)} item(s)",
                field="input",
            )
        return item[0], item[1]
    return item, None


class Run(Generic[InputT]):
    """The state the background task works on (it never refers to the `RunMany`)."""

    def __init__(
        self,
        client: QuickRouter,
        creates: Creates,
        inputs: Inputs[InputT],
        *,
        concurrency: int,
        ordered: bool,
        timeout: float | None,
        progress: ProgressCallback | None,
    ) -> None:
        self.client = client
        self.creates = creates
        self.timeout = timeout
        self.callback = progress
        self.limiter = creates.limiter
        self.sync_policy = client.poll.sync_wait
        # One token per worker; a worker runs one input at a time.
        self.slots = anyio.CapacityLimiter(concurrency)
        # One of the two, by the kind of iterable.
        self.iterator: Iterator[InputT] | None = None
        self.async_iterator: AsyncIterator[InputT] | None = None
        if isinstance(inputs, AsyncIterable):
            self.async_iterator = inputs.__aiter__()
        else:
            self.iterator = iter(inputs)
        self.pull_lock = asyncio.Lock()
        self.index = self.pulling = 0
        self.exhausted = False
        self.group: anyio.abc.TaskGroup
        # Ordered output holds back finished outcomes; this bounds how many.
        self.window = anyio.Semaphore(2 * concurrency) if ordered else None
        sending, receiving = anyio.create_memory_object_stream[Outcome[InputT]](concurrency)
        self.sending: MemoryObjectSendStream[Outcome[InputT]] = sending
        self.outcomes: MemoryObjectReceiveStream[Outcome[InputT]] = receiving
        self.scope = anyio.CancelScope()
        self.finished = anyio.Event()
        self.error: BaseException | None = None
        self.submitted = self.succeeded = self.failed = self.canceled = 0
        self.started = time.monotonic()
        self.throttled_before = self._throttled()

    def _throttled(self) -> int:
        return int(getattr(self.limiter, "throttled", 0))

    def snapshot(self) -> Progress:
        """The counts as they are now."""
        done = self.succeeded + self.failed + self.canceled
        elapsed = time.monotonic() - self.started
        return Progress(
            submitted=self.submitted,
            running=self.submitted - done,
            succeeded=self.succeeded,
            failed=self.failed,
            canceled=self.canceled,
            throttled=self._throttled() - self.throttled_before,
            elapsed=elapsed,
            rate=done / elapsed if elapsed > 0 else 0.0,
        )

    def _report(self) -> None:
        if self.callback is None:
            return
        try:
            self.callback(self.snapshot())
        except Exception as exc:  # noqa: BLE001 (a broken callback stops the call, not the loop)
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """Stop everything and raise ``exc`` to the consumer once the cleanup is done."""
        if self.error is None:
            self.error = exc
        self.scope.cancel()

    def stop(self) -> None:
        """Cancel the work; in-flight predictions are canceled on the server."""
        self.scope.cancel()

    async def main(self) -> None:
        """Pull inputs and run them until the inputs end or the work is stopped."""
        try:
            with self.scope:
                async with anyio.create_task_group() as group:
                    self.group = group
                    self._add_worker()
        finally:
            close_progress(self.callback)
            self.sending.close()
            self.finished.set()

    def _add_worker(self) -> None:
        """Start a worker if a token of the limiter is free (it holds it while it lives)."""
        if self.slots.available_tokens < 1:
            return  # every worker there may be is running
        token = object()
        self.slots.acquire_on_behalf_of_nowait(token)
        self.pulling += 1  # its first move is to pull
        self.group.start_soon(self._worker, token)

    async def _worker(self, token: object) -> None:
        """Pull an input, run it, hand its outcome over; again, until the inputs end.

        Each worker holds one token of the ``concurrency``-token limiter and runs one
        input at a time, so at most ``concurrency`` inputs are in flight; one more
        worker starts only when every other is busy, so an input is pulled only when it
        can start at once.
        """
        try:
            while True:
                pulled = await self._pull()
                if pulled is None:
                    return
                index, item = pulled
                self.submitted += 1
                if self.pulling == 0:
                    self._add_worker()  # it pulls the next input while this one runs
                if self.callback is not None:
                    self._report()
                outcome = await self._outcome(index, item)
                if outcome.ok:
                    self.succeeded += 1
                elif isinstance(outcome.error, PredictionCanceled):
                    self.canceled += 1
                else:
                    self.failed += 1
                if self.callback is not None:
                    self._report()
                # Nobody takes outcomes any more once the consumer left: drop it then.
                with contextlib.suppress(anyio.BrokenResourceError):
                    try:
                        self.sending.send_nowait(outcome)  # room: no trip through the loop
                    except anyio.WouldBlock:
                        await self.sending.send(outcome)
                self.pulling += 1
        finally:
            self.slots.release_on_behalf_of(token)

    async def _pull(self) -> tuple[int, InputT] | None:
        """The next input and its index; None once the inputs have ended (or raised)."""
        try:
            if self.window is not None:
                await self.window.acquire()
            item: Any
            if self.exhausted:
                item = _END
            elif self.iterator is not None:
                item = self._next_sync(self.iterator)
            else:
                async with self.pull_lock:  # an async iterator takes one `__anext__` at a time
                    item = await self._next_async()
            if item is _END and self.window is not None:
                self.window.release()
            return self._number(item)
        finally:
            self.pulling -= 1

    def _number(self, item: Any) -> tuple[int, InputT] | None:
        if item is _END:
            return None
        index = self.index
        self.index += 1
        return index, item

    def _next_sync(self, iterator: Iterator[InputT]) -> Any:
        try:
            return next(iterator)
        except StopIteration:
            self.exhausted = True
        except Exception as exc:  # noqa: BLE001 (raised to the consumer after the rest ends)
            self._inputs_raised(exc)
        return _END

    async def _next_async(self) -> Any:
        if self.exhausted or self.async_iterator is None:  # it ended while this one waited
            return _END
        try:
            return await self.async_iterator.__anext__()
        except StopAsyncIteration:
            self.exhausted = True
        except Exception as exc:  # noqa: BLE001 (raised to the consumer after the rest ends)
            self._inputs_raised(exc)
        return _END

    def _inputs_raised(self, exc: Exception) -> None:
        logger.warning("run_many: the inputs raised %r; finishing those started", exc)
        self.error = exc
        self.exhausted = True

    async def _outcome(self, index: int, item: InputT) -> Outcome[InputT]:
        prediction: Prediction | None = None
        try:
            model_or_input, payload = await read_local_files(*_arguments(item))
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            creates = self.creates
            request = build_create(
                model_or_input,
                payload,
                wait=creates.sync_wait(self.sync_policy, self.timeout),
                webhook=None,
                webhook_events_filter=None,
                cancel_after=creates.cancel_after(self.timeout),
            )
            prediction = await creates.create(request)
            if not prediction.status.terminal:  # sync mode often finished it already
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                prediction = await self.client.wait(
                    prediction, timeout=remaining, cancel_on_exit=True
                )
            raise_for_outcome(prediction)
        except (PredictionError, WaitTimeout) as exc:
            return Outcome(index, item, exc.prediction, exc)
        except Exception as exc:  # noqa: BLE001 (one input's error is its outcome, not the call's)
            return Outcome(index, item, prediction, exc)
        return Outcome(index, item, prediction, None)
