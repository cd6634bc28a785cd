"""The counts of a batch job, and their live display on a terminal (rich)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from rich.console import Console
    from rich.text import Text

__all__ = ["Display", "Tally", "interactive"]


class Tally:
    """How far a batch job got: counts for this run, plus what earlier runs finished."""

    def __init__(self, total: int, *, done_before: int = 0, succeeded_before: int = 0) -> None:
        self.total = total
        self.done_before = done_before
        self.submitted = 0
        self.running = 0
        self.succeeded = succeeded_before
        self.failed = done_before - succeeded_before
        self.in_doubt = 0
        self.finished_now = 0
        self.started = time.monotonic()

    def rebase(self, counts: Mapping[str, int]) -> None:
        """Take the finished counts from the journal's (``done``, ``succeeded``, ``in_doubt``)."""
        self.succeeded = counts["succeeded"]
        self.failed = counts["done"] - counts["succeeded"]
        self.in_doubt = counts["in_doubt"]

    def start(self) -> None:
        """An input started (created, or re-attached to)."""
        self.submitted += 1
        self.running += 1

    def finish(self, *, ok: bool, started: bool = True) -> None:
        """An input finished this run (``started``: it had been counted as running)."""
        if started:
            self.running -= 1
        self.finished_now += 1
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1

    def doubt(self) -> None:
        """An input's create ended in doubt: its prediction may exist (it never ran here)."""
        self.finished_now += 1
        self.in_doubt += 1

    @property
    def rate(self) -> float:
        """Inputs finished per second in this run."""
        elapsed = time.monotonic() - self.started
        return self.finished_now / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every input is finished at the current rate; None if unknown."""
        left = self.total - self.succeeded - self.failed - self.in_doubt
        rate = self.rate
        return left / rate if rate > 0 else None

    def line(self) -> str:
        """One line of text: the counts, the rate and the time left."""
        eta = self.eta
        left = "?" if eta is None else f"{int(eta) // 60}:{int(eta) % 60:02d}"
        doubt = f" · in doubt {self.in_doubt}" if self.in_doubt else ""
        return (
            f"{self.succeeded + self.failed}/{self.total} done · submitted {self.submitted} · "
            f"running {self.running} · succeeded {self.succeeded} · failed {self.failed}"
            f"{doubt} · {self.rate:.1f}/s · ETA {left}"
        )

    def __rich__(self) -> Text:
        from rich.text import Text  # noqa: PLC0415 (rich is only needed on a terminal)

        return Text(self.line(), style="bold")


def interactive() -> bool:
    """Whether both standard output and standard error are terminals."""
    return sys.stdout.isatty() and sys.stderr.isatty()


class Display:
    """A live line on standard error while the job runs; nothing when not a terminal."""

    def __init__(self, tally: Tally, *, console: Console | None = None, enabled: bool) -> None:
        self.tally = tally
        self._live: Any = None
        if enabled:
            from rich.console import Console  # noqa: PLC0415 (optional dependency)
            from rich.live import Live  # noqa: PLC0415

            self._live = Live(
                tally,
                console=console or Console(stderr=True),
                refresh_per_second=4,
                transient=False,
            )

    def __enter__(self) -> Self:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()
