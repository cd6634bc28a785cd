"""`Ledger`: which predictions one client's creates made, and which creates are under way.

Two submissions of the same input must never attach to one prediction. The ids a
client's creates were answered with (or attached to) are claimed and never matched by a
lookup again, and a lookup for an input first waits until no other create of that same
input is under way (and holds new ones back), so every prediction the lookup can see
belongs either to a claimed create or to one whose fate is in doubt.
"""

from __future__ import annotations

import time
from typing import Final

import anyio

__all__ = ["Ledger"]

# Claimed ids are kept this long; lookups only consider younger predictions.
CLAIM_SECONDS: Final = 3600.0


class Creating:
    """The creates of one input: how many are under way, and the gate lookups hold.

    The lock and the event are made only when a lookup needs them: a create that meets
    no lookup costs no synchronization object and no trip through the event loop.
    """

    __slots__ = ("_gate", "_idle", "sending", "users")

    def __init__(self) -> None:
        self.users = 0
        self.sending = 0
        self._gate: anyio.Lock | None = None
        self._idle: anyio.Event | None = None

    @property
    def gate(self) -> anyio.Lock:
        """Held by a lookup for this input: no create of it starts meanwhile."""
        if self._gate is None:
            self._gate = anyio.Lock()
        return self._gate

    def begin_nowait(self) -> bool:
        """Count a create as under way, unless a lookup for this input runs (False)."""
        if self._gate is not None and self._gate.locked():
            return False
        self.sending += 1
        return True

    async def begin(self) -> None:
        """Count a create as under way, once no lookup for this input runs."""
        if not self.begin_nowait():
            async with self.gate:
                self.sending += 1

    def end(self) -> None:
        self.sending -= 1
        if self.sending == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def settle(self) -> None:
        """Wait until no create of this input is under way (the gate is held)."""
        while self.sending:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()


class Ledger:
    """One client's claimed prediction ids, and its creates under way by input."""

    def __init__(self) -> None:
        self.claimed: dict[str, float] = {}
        self.inputs: dict[str, Creating] = {}

    def claim(self, prediction_id: str) -> None:
        """Note that a create of this client made (or attached to) ``prediction_id``."""
        now = time.monotonic()
        claimed = self.claimed
        if claimed and now - next(iter(claimed.values())) >= CLAIM_SECONDS:
            self._forget(now)
        claimed.pop(prediction_id, None)
        claimed[prediction_id] = now

    def _forget(self, now: float) -> None:
        """Forget, oldest first (insertion order), the ids no lookup can match any more."""
        stale = []
        for old, claimed_at in self.claimed.items():
            if now - claimed_at < CLAIM_SECONDS:
                break
            stale.append(old)
        for old in stale:
            del self.claimed[old]

    def enter(self, key: str) -> Creating:
        """Register a create of the input ``key`` (see `leave`)."""
        entry = self.inputs.get(key)
        if entry is None:
            entry = self.inputs[key] = Creating()
        entry.users += 1
        return entry

    def leave(self, key: str, entry: Creating) -> None:
        """The create registered with `enter` is over."""
        entry.users -= 1
        if entry.users == 0:
            del self.inputs[key]
