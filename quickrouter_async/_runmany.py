"""`RunMany`, what `QuickRouter.run_many` returns, and the checks of its arguments.

It starts the work (`_fanout.Run`) in a background task on first iteration, hands the
outcomes over in finishing or input order, and stops the work when the caller leaves:
`aclose` (called by ``async with``, `contextlib.aclosing`, a cancelled ``__anext__``)
waits until every prediction still in flight has been canceled on the server; after a
plain ``break`` the garbage collector stops it without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Iterable, Mapping
from typing import TYPE_CHECKING, Generic, Self

import anyio

from ._errors import InputError, short_repr
from ._fanout import RUNNING, SHUTDOWN_GRACE, Progress, Run
from ._interrupt import interruptible
from ._models import InputT

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from anyio.streams.memory import MemoryObjectReceiveStream

    from ._models import Outcome

__all__ = ["RunMany", "check_inputs", "concurrency_of"]


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

    def __init__(self, make_run: Callable[[], Run[InputT]]) -> None:
        self._make_run = make_run
        self._run: Run[InputT] | None = None
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

    def _start(self) -> Run[InputT]:
        if self._run is None:
            self._run = self._make_run()
            task = asyncio.get_running_loop().create_task(self._run.main())
            RUNNING.add(task)
            task.add_done_callback(RUNNING.discard)
        return self._run

    def __aiter__(self) -> Self:
        return self

    @interruptible  # the stop button of a notebook ends the wait (_interrupt.py)
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

    async def _next(self, run: Run[InputT]) -> Outcome[InputT]:
        if run.window is None:  # in finishing order
            return await _receive(run.outcomes)
        while self._next_index not in self._pending:
            outcome = await _receive(run.outcomes)
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
        with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE):
            if not run.finished.is_set():
                run.stop()
                await run.finished.wait()
            # Creates cut short are settled (what they made canceled) by `Creates`.
            await run.creates.drain(SHUTDOWN_GRACE)
        run.outcomes.close()

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
        run.outcomes.close()


async def _receive(outcomes: MemoryObjectReceiveStream[Outcome[InputT]]) -> Outcome[InputT]:
    """The next outcome: one already waiting is taken without a trip through the loop."""
    try:
        return outcomes.receive_nowait()
    except anyio.WouldBlock:
        return await outcomes.receive()


def check_inputs(inputs: object) -> None:
    """Check the ``inputs`` argument of `run_many`: an iterable of inputs, not one input."""
    if isinstance(inputs, str | bytes | Mapping) or not isinstance(
        inputs, Iterable | AsyncIterable
    ):
        raise InputError(
            "inputs must be an iterable or async iterable of typed inputs or "
            f"(model, input) pairs, not {type(inputs).__name__}",
            field="inputs",
        )
    if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], str):
        raise InputError(
            "inputs is one (model, input) pair; pass an iterable of them, e.g. [pair]",
            field="inputs",
        )


def concurrency_of(value: int | None, default: int) -> int:
    """Check the ``concurrency`` argument of `run_many`."""
    if value is None:
        return default
    checked: object = value
    if isinstance(checked, bool) or not isinstance(checked, int) or checked < 1:
        raise InputError(
            f"concurrency must be a positive integer, got {short_repr(value)}", field="concurrency"
        )
    return value
