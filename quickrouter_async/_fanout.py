"""`run_many`: many predictions at once, bounded, paced, one `Outcome` per input.

Inputs are pulled lazily, one at a time and only when a slot is free, so a generator of a
million inputs is never materialized. Each input runs as its own task (create, then wait,
through `QuickRouter.run`); an anyio `CapacityLimiter` bounds how many are in flight, and
the transport's create limiter (`_ratelimit.py`) paces the creates. Whatever happens to
an input (a bad tuple, a failed or canceled prediction, an HTTP error) becomes the
``error`` of its outcome; it never stops the others.

The work runs in one background task owned by the `RunMany` object, so the caller can
leave at any point: `aclose` (called by ``async with``, `contextlib.aclosing`, a cancelled
``__anext__``, or the garbage collector after a plain ``break``) cancels every input still
in flight, and each of them cancels its prediction on the server, shielded and bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import AsyncIterable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Generic, Self, TypeAlias

import anyio
import attrs

from ._create import build_create
from ._errors import InputError, PredictionCanceled, PredictionError, WaitTimeout
from ._models import InputT, Outcome
from ._polling import cancel_quietly, raise_for_outcome

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from ._client import QuickRouter
    from ._models import Prediction
    from ._transport import CreateLimiter

__all__ = ["InputT", "Inputs", "Progress", "ProgressCallback", "RunMany", "concurrency_of"]

logger = logging.getLogger(__name__)

# How long leaving early may take: every in-flight prediction is canceled on the server.
SHUTDOWN_GRACE: Final = 10.0
# Server clocks differ: a prediction stamped a little before the call started may be ours.
_CLOCK_SKEW: Final = dt.timedelta(seconds=120)
# Background tasks of run_many calls still going, so none is garbage collected midway.
_RUNNING: set[asyncio.Task[None]] = set()


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


class _Run(Generic[InputT]):
    """The state the background task works on (it never refers to the `RunMany`)."""

    def __init__(
        self,
        client: QuickRouter,
        inputs: Inputs[InputT],
        *,
        concurrency: int,
        ordered: bool,
        timeout: float | None,
        progress: ProgressCallback | None,
        limiter: CreateLimiter | None,
    ) -> None:
        self.client = client
        self.inputs = inputs
        self.timeout = timeout
        self.callback = progress
        self.limiter = limiter
        self.slots = anyio.CapacityLimiter(concurrency)
        # Ordered output holds back finished outcomes; this bounds how many.
        self.window = anyio.Semaphore(2 * concurrency) if ordered else None
        self.send, self.receive = anyio.create_memory_object_stream[Outcome[InputT]](concurrency)
        self.scope = anyio.CancelScope()
        self.finished = anyio.Event()
        self.error: BaseException | None = None
        self.submitted = self.succeeded = self.failed = self.canceled = 0
        self.started = time.monotonic()
        self.started_at = dt.datetime.now(dt.UTC)
        self.cut_short: list[tuple[Any, Any]] = []
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
                    await self._feed(group)
        finally:
            try:
                if self.cut_short:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE):
                        await self._sweep()
            except Exception as exc:  # noqa: BLE001 (cleanup is best effort; say what failed)
                logger.warning("run_many: could not look up creates cut short: %s", exc)
            finally:
                self.send.close()
                self.finished.set()

    async def _take_slot(self, index: int) -> None:
        # The non-blocking forms first: a free slot costs no trip through the event loop.
        try:
            self.slots.acquire_on_behalf_of_nowait(index)
        except anyio.WouldBlock:
            await self.slots.acquire_on_behalf_of(index)
        if self.window is not None:
            await self.window.acquire()

    def _give_back(self, index: int) -> None:
        self.slots.release_on_behalf_of(index)

    async def _feed(self, group: anyio.abc.TaskGroup) -> None:
        next_item = _puller(self.inputs)
        index = 0
        while True:
            # Take a slot before pulling, so no input is pulled that cannot start.
            await self._take_slot(index)
            try:
                item = await next_item()
            except StopAsyncIteration:
                self._give_back(index)
                return
            except Exception as exc:  # noqa: BLE001 (raised to the consumer after the rest ends)
                logger.warning("run_many: the inputs raised %r; finishing those started", exc)
                self.error = exc
                self._give_back(index)
                return
            self.submitted += 1
            group.start_soon(self._one, index, item)
            self._report()
            index += 1

    async def _one(self, index: int, item: InputT) -> None:
        try:
            outcome = await self._outcome(index, item)
            if outcome.ok:
                self.succeeded += 1
            elif isinstance(outcome.error, PredictionCanceled):
                self.canceled += 1
            else:
                self.failed += 1
            self._report()
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                try:
                    self.send.send_nowait(outcome)
                except anyio.WouldBlock:
                    await self.send.send(outcome)
        finally:
            self._give_back(index)

    async def _outcome(self, index: int, item: InputT) -> Outcome[InputT]:
        prediction: Prediction | None = None
        try:
            model_or_input, payload = _arguments(item)
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            prediction = await self._create(model_or_input, payload)
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

    async def _create(self, model_or_input: Any, payload: Any) -> Prediction:
        """Create with ``Prefer: wait`` as the poll policy says, capped by the deadline.

        A create cut short by leaving early may have made a prediction whose id never
        came back; it is noted, and looked up and canceled when the work ends.
        """
        sync = self.client.poll.sync_wait
        if sync is not None and self.timeout is not None:
            sync = max(1.0, min(sync, self.timeout))
        try:
            return await self.client.create(model_or_input, payload, wait=sync)
        except anyio.get_cancelled_exc_class():
            self.cut_short.append((model_or_input, payload))
            raise

    async def _sweep(self) -> None:
        """Cancel what the creates cut short made: recent, running, same model and input."""
        wanted: list[tuple[str, dict[str, Any]]] = []
        for model_or_input, payload in self.cut_short:
            with contextlib.suppress(InputError):
                request = build_create(
                    model_or_input,
                    payload,
                    wait=None,
                    webhook=None,
                    webhook_events_filter=None,
                    cancel_after=None,
                )
                wanted.append((request.model.split(":", 1)[0], request.input))
        since = self.started_at - _CLOCK_SKEW
        async with anyio.create_task_group() as group:
            async for prediction in self.client.list_predictions():
                if prediction.created_at is not None and prediction.created_at < since:
                    break
                key = (prediction.model, prediction.input)
                if not prediction.status.terminal and key in wanted:
                    wanted.remove(key)
                    group.start_soon(cancel_quietly, self.client.cancel, prediction.id)
                if not wanted:
                    break


async def _receive(run: _Run[InputT]) -> Outcome[InputT]:
    """The next outcome, without a trip through the event loop when one is ready."""
    try:
        return run.receive.receive_nowait()
    except anyio.WouldBlock:
        return await run.receive.receive()


def _puller(inputs: Iterable[Any] | AsyncIterable[Any]) -> Callable[[], Any]:
    """A coroutine function returning the next input, StopAsyncIteration at the end."""
    if isinstance(inputs, AsyncIterable):
        return inputs.__aiter__().__anext__
    iterator: Iterator[Any] = iter(inputs)

    async def pull() -> Any:
        try:
            return next(iterator)
        except StopIteration:
            raise StopAsyncIteration from None

    return pull


class RunMany(Generic[InputT]):
    """The outcomes of `QuickRouter.run_many`: an async iterator and an async context manager.

    Iterate it with ``async for``. To leave early and be sure every prediction still in
    flight has been canceled on the server before going on, use it as a context manager
    (or wrap it in `contextlib.aclosing`)::

        async with client.run_many(prompts) as outcomes:
            async for outcome in outcomes:
                if enough(outcome):
                    break
        # nothing of this call is running any more

    A plain ``break`` also cancels the work, when the iterator is garbage collected, but
    without waiting for the cancels to finish.
    """

    def __init__(
        self,
        client: QuickRouter,
        inputs: Inputs[InputT],
        *,
        concurrency: int,
        ordered: bool,
        timeout: float | None,
        progress: ProgressCallback | None,
        limiter: CreateLimiter | None,
    ) -> None:
        self._make_run = functools.partial(
            _Run,
            client,
            inputs,
            concurrency=concurrency,
            ordered=ordered,
            timeout=timeout,
            progress=progress,
            limiter=limiter,
        )
        self._ordered = ordered
        self._run: _Run[InputT] | None = None
        self._closed = False
        self._pending: dict[int, Outcome[InputT]] = {}
        self._next_index = 0

    def __repr__(self) -> str:
        return f"<RunMany {self.progress}>"

    @property
    def progress(self) -> Progress:
        """The counts so far (all zero before iteration starts)."""
        if self._run is None:
            return Progress()
        return self._run.snapshot()

    def _start(self) -> _Run[InputT]:
        if self._run is None:
            self._run = self._make_run()
            task = asyncio.get_running_loop().create_task(self._run.main())
            _RUNNING.add(task)
            task.add_done_callback(_RUNNING.discard)
        return self._run

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Outcome[InputT]:
        if self._closed:
            raise StopAsyncIteration
        run = self._start()
        try:
            outcome = await self._next(run)
        except anyio.EndOfStream:
            await self.aclose()
            if run.error is not None:
                raise run.error from None
            raise StopAsyncIteration from None
        except BaseException:
            # Cancelled while waiting (a deadline, a cancelled task): leave nothing running.
            await self.aclose()
            raise
        return outcome

    async def _next(self, run: _Run[InputT]) -> Outcome[InputT]:
        if not self._ordered:
            return await _receive(run)
        while self._next_index not in self._pending:
            outcome = await _receive(run)
            self._pending[outcome.index] = outcome
        outcome = self._pending.pop(self._next_index)
        self._next_index += 1
        if run.window is not None:
            run.window.release()
        return outcome

    async def aclose(self) -> None:
        """Stop: cancel inputs still in flight (and their predictions on the server)."""
        self._closed = True
        run = self._run
        if run is None:
            return
        if not run.finished.is_set():
            run.stop()
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE):
                await run.finished.wait()
        run.receive.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        run = self._run
        if run is None or self._closed:
            return
        # Left with a plain `break`: stop the work; the task cancels what it started.
        with contextlib.suppress(RuntimeError):
            run.stop()
        run.receive.close()


def concurrency_of(value: int | None, default: int) -> int:
    """Check the ``concurrency`` argument of `run_many`."""
    if value is None:
        return default
    checked: object = value
    if isinstance(checked, bool) or not isinstance(checked, int) or checked < 1:
        raise InputError(
            f"concurrency must be a positive integer, got {value!r}", field="concurrency"
        )
    return value
