"""`ServerClock`: what time it is on the server, as far as this client can tell.

Two kinds of evidence arrive with the answers. A ``Date`` header gives the server's time
to the whole second. A prediction's timestamps (``created_at``, ``started_at``,
``completed_at``) are precise, and each happened before the answer carrying it was
received, so ``received - stamp`` is never less than the true offset: the smallest such
sample is the best estimate (allowing the two clocks to drift apart slowly). Timestamps
win over dates once there are any.

Lookups of creates compare creation times on the server's clock; the poll schedule
measures predictions' ages with it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from ._http import http_date

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable

__all__ = ["ServerClock"]

# How fast the two clocks may drift apart, in seconds per second.
_DRIFT: Final = 0.001
# A Date header has whole seconds: the server's time was half a second later on average.
_DATE_ROUNDING: Final = 0.5


class ServerClock:
    """The offset of this machine's wall clock from the server's.

    Args:
        clock: the local wall clock (seconds since the epoch); tests pass a fake one.

    Attributes:
        offset: the local clock minus the server's, in seconds; None until learned.
        precise: whether `offset` comes from prediction timestamps (else ``Date``).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.offset: float | None = None
        self.precise = False
        self._learned_at = 0.0
        self._last_date: str | None = None

    def __repr__(self) -> str:
        shown = "unknown" if self.offset is None else f"{self.offset:+.3f}s"
        return f"<ServerClock offset={shown}>"

    def note_date(self, value: str | None) -> None:
        """Learn from a ``Date`` header, unless timestamps already said more."""
        if value is None or value == self._last_date or self.precise:
            return
        when = http_date(value)
        if when is not None:
            self._last_date = value
            self.offset = self.clock() - (when + _DATE_ROUNDING)

    def note_stamps(self, *stamps: dt.datetime | None, received: float | None = None) -> None:
        """Learn from server timestamps seen in an answer received at ``received``."""
        latest = max((stamp.timestamp() for stamp in stamps if stamp is not None), default=None)
        if latest is None:
            return
        received = self.clock() if received is None else received
        sample = received - latest
        if (
            not self.precise
            or self.offset is None
            or sample <= self.offset + _DRIFT * (received - self._learned_at)
        ):
            self.offset, self._learned_at, self.precise = sample, received, True

    def server_time(self, local: float | None = None) -> float:
        """The server's Unix time at local time ``local`` (now by default)."""
        local = self.clock() if local is None else local
        return local - (self.offset or 0.0)

    def age(self, stamp: dt.datetime, local: float | None = None) -> float:
        """Seconds from server time ``stamp`` to local time ``local`` (now), at least 0."""
        return max(0.0, self.server_time(local) - stamp.timestamp())
