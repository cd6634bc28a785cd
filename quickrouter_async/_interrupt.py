"""The stop button of a notebook stops the library's waits: SIGINT cancels waiting tasks.

ipykernel turns an interrupt into a cancel of the running cell from a Python-level SIGINT
handler, but that handler runs only when the main thread next executes Python code: the
signal mostly lands on one of the kernel's other threads, and nothing wakes the event
loop from its ``select``. A cell blocked in ``await client.run(...)`` therefore goes on
until the prediction ends (ipykernel issue 881), and the prediction is billed.

While the library waits, this module lends SIGINT to the event loop, as `asyncio.Runner`
does for ``asyncio.run``: `loop.add_signal_handler` points the signal's wakeup file
descriptor at the loop's self-pipe, so the loop wakes at once and cancels every task
waiting inside an `Interruptible` block. The waits' own clean-up then cancels their
predictions on the server. When the last such block ends, the Python-level handler, the
wakeup descriptor and the loop's handler are put back as they were.

It acts only where taking SIGINT for a moment is safe:

- in the main thread (signals are delivered there only), on Unix;
- when the handler in place is ipykernel's (the default, `cancel_on_interrupt(None)`),
  or also Python's default `KeyboardInterrupt` handler after `cancel_on_interrupt(True)`;
  never over a handler someone else installed (``asyncio.run``'s, which already cancels
  its main task; a web server's, whose Ctrl-C must stop the whole program; an event loop's
  own; ``SIG_IGN``);
- once per task: a wait inside another (or in a task started by one, like the workers of
  `run_many`) is covered by the outer one.

A second interrupt while the cancelled waits clean up (bounded, a few seconds) is
ignored, so it cannot cut the cancels on the server short.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

from ._errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from types import TracebackType

__all__ = ["INTERRUPTED", "Interruptible", "cancel_on_interrupt", "interruptible"]

P = ParamSpec("P")
T = TypeVar("T")

#: The message of the `asyncio.CancelledError` a wait ends with when interrupted.
INTERRUPTED: Final = "interrupted (SIGINT)"

# Set inside a block, and so in every task started from one: those are covered by it.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "quickrouter_async_interruptible", default=False
)


def cancel_on_interrupt(enabled: bool | None) -> bool | None:  # noqa: FBT001 (a switch)
    """Choose whether an interrupt (SIGINT) cancels the library's waits.

    The waits are those of ``await client.run(...)``, ``await client.wait(...)`` and of an
    ``async for`` over ``client.run_many(...)``. An interrupted wait ends with
    `asyncio.CancelledError`; ``run`` and ``run_many`` then cancel their predictions on
    the server (``wait`` only with ``cancel_on_exit=True``).

    Args:
        enabled: None (the default) acts only inside an IPython kernel, where the stop
            button sends SIGINT; True also acts in any program whose SIGINT handler is
            Python's default (Ctrl-C then cancels the waits instead of raising
            `KeyboardInterrupt` wherever the program happens to be); False never acts.
            Whatever the choice, a SIGINT handler installed by someone else (a web
            server, ``asyncio.run``) is never taken over, nor is SIGINT outside the main
            thread or on Windows.

    Returns:
        The previous choice, to put it back later.
    """
    if enabled is not None and not isinstance(enabled, bool):
        raise InputError("cancel_on_interrupt takes True, False or None", field="enabled")
    previous, _state.mode = _state.mode, enabled
    return previous


class _Lease:
    """SIGINT lent to one event loop, and the tasks it cancels."""

    def __init__(self, loop: asyncio.AbstractEventLoop, handler: Any, wakeup_fd: int) -> None:
        self.loop = loop
        self.handler = handler  # the Python-level handler found, put back at the end
        self.wakeup_fd = wakeup_fd
        self.installed: Any = None  # the Python-level handler the loop put in place
        self.tasks: set[asyncio.Task[Any]] = set()
        self.interrupted: set[asyncio.Task[Any]] = set()

    def interrupt(self) -> None:
        """Cancel each waiting task once (called by the loop on SIGINT)."""
        for task in self.tasks - self.interrupted:
            self.interrupted.add(task)
            task.cancel(INTERRUPTED)


class _State:
    """Process-wide, as signals are."""

    # None: only inside an IPython kernel; True: also over Python's default handler.
    mode: bool | None = None
    lease: _Lease | None = None


_state = _State()


def _from_kernel(handler: object) -> bool:
    return str(getattr(handler, "__module__", None)).startswith("ipykernel")


def _may_look() -> bool:
    """Whether a SIGINT handler could be one this module may take over, before asking
    which it is (`signal.getsignal` is slow: it names a Python handler by its repr).
    """
    return _state.mode is True or "ipykernel" in sys.modules


def _may_take(handler: object) -> bool:
    """Whether SIGINT may be lent to the loop, given the handler now in place."""
    if _state.mode is None:
        return _from_kernel(handler)
    return handler is signal.default_int_handler or _from_kernel(handler)


def _enlist(task: asyncio.Task[Any]) -> _Lease | None:
    """Have SIGINT cancel ``task``; None when that is not for this module to do."""
    loop = task.get_loop()
    lease = _state.lease
    if lease is None:
        if (
            not _may_look()
            or sys.platform == "win32"
            or threading.current_thread() is not threading.main_thread()
        ):
            return None
        handler = signal.getsignal(signal.SIGINT)
        if not _may_take(handler):
            return None
        lease = _Lease(loop, handler, _wakeup_fd())
        try:
            loop.add_signal_handler(signal.SIGINT, lease.interrupt)
        except (NotImplementedError, RuntimeError, ValueError, OSError):
            signal.signal(signal.SIGINT, handler)
            signal.set_wakeup_fd(lease.wakeup_fd)
            return None
        lease.installed = signal.getsignal(signal.SIGINT)
        _state.lease = lease
    elif lease.loop is not loop:
        return None  # lent to another loop, whose waits never finished
    lease.tasks.add(task)
    return lease


def _wakeup_fd() -> int:
    """The signal wakeup descriptor in place (only `signal.set_wakeup_fd` tells it)."""
    wakeup_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_fd)
    return wakeup_fd


def _restore(lease: _Lease) -> None:
    """Put back the handlers found: the loop's, the wakeup descriptor, the Python-level one."""
    current = signal.getsignal(signal.SIGINT)
    lease.loop.remove_signal_handler(signal.SIGINT)
    # Someone (a kernel starting another cell) may have replaced the loop's handler
    # meanwhile: theirs stays, and they put back what they found.
    signal.signal(signal.SIGINT, lease.handler if current is lease.installed else current)
    # The loop keeps its descriptor while it handles other signals.
    if lease.wakeup_fd != -1 and _wakeup_fd() == -1:
        signal.set_wakeup_fd(lease.wakeup_fd)


def _discharge(lease: _Lease, task: asyncio.Task[Any]) -> None:
    """``task`` no longer waits; the last one to go gives SIGINT back."""
    lease.tasks.discard(task)
    lease.interrupted.discard(task)
    if not lease.tasks:
        _state.lease = None
        _restore(lease)


class Interruptible:
    """A block during which SIGINT cancels the current task (see the module's docstring).

    Entering it costs a dictionary lookup where it cannot act (outside an IPython
    kernel, by default), a context variable lookup when an outer block covers the task,
    and a look at the SIGINT handler otherwise.
    """

    __slots__ = ("_lease", "_task", "_token")

    def __init__(self) -> None:
        self._token: contextvars.Token[bool] | None = None
        self._lease: _Lease | None = None
        self._task: asyncio.Task[Any] | None = None

    def __enter__(self) -> None:
        if _state.mode is False or not _may_look() or _inside.get():
            return
        self._token = _inside.set(True)
        task = asyncio.current_task()
        if task is not None:
            self._lease = _enlist(task)
            self._task = task

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._lease is not None and self._task is not None:
            _discharge(self._lease, self._task)
        if self._token is not None:
            _inside.reset(self._token)
        self._token = self._lease = self._task = None


def interruptible(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Run a coroutine function inside an `Interruptible` block."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with Interruptible():
            return await method(*args, **kwargs)

    return wrapper
