"""Pacing creates: a token bucket whose rate is fixed, or found by adapting to 429s.

Every create of a client goes through one `CreateLimiter` (a `RateLimiter` unless the
client was given another): the client's `Creates` awaits `acquire` before each create
attempt, calls `on_throttled` when one is answered 429, `on_accepted` when one is
answered otherwise and `on_unanswered` when one got no answer.

With a fixed rate the bucket simply spaces creates out. Without one the limiter finds the
server's limit by itself, much as TCP finds a link's bandwidth:

- it starts at Replicate's documented 10 creates per second with a burst of 10 and, while
  callers are waiting for it, grows fast (slow start, about 7 times per second); until
  the first create is answered, callers queued past the burst are let through in groups
  (when the bucket is full again, at most half a second apart) rather than one by one,
  so that a job's first wave stays together once the first answer has said how many
  creates the server takes (below);
- on a 429 it stops every create until the server's ``Retry-After`` (or the body's
  ``retry_after``) has passed, and sets its rate a little below the rate the server
  accepted since the previous 429 (or over the last seconds, for the first one);
- then it probes upwards slowly (a few percent per second, and only while callers are
  waiting), so that a limit that was raised is found again.

Throttles that follow one another closely count as one event: creates already sent when
the first 429 came back say nothing new about the limit. A 429 whose
``ratelimit-remaining`` header says the server's bucket still holds creates was not
caused by the pace (a gateway's hiccup, a random refusal): only that create waits, as
its answer asks; nothing else pauses and the rate stands. Cuts that follow each other
within one episode of throttling never take the rate below a quarter of the best rate
the server was measured to accept in it, so 429s that come whatever the pace cannot
drive it to a standstill.

Until the first 429 the server's own count is used too: an accepted create whose answer
carries ``ratelimit-remaining`` (Replicate sends it on every answer) lets that many
creates, less those still awaiting their answers, through at once. A job's first wave then goes
out together as soon as the server has said it can take it, instead of being spread over
the slow start.

Callers that queue are served first come first served by one of them, the pump, which
sleeps until the bucket holds a create and then lets through every waiter the bucket
covers at once: one wake of the event loop per tick, not one per create.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Final, Protocol

import anyio

from ._errors import InputError, short_repr

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["CreateLimiter", "RateLimiter"]

# Replicate's documented create limit: 600 per minute, short bursts allowed.
INITIAL_RATE: Final = 10.0
INITIAL_BURST: Final = 10.0
# Growth of the rate per create granted while callers queue, in creates per second.
_SLOW_START_STEP: Final = 2.0
_PROBE_STEP: Final = 0.03
# Seconds without a 429 after which probing is twice as fast (four times after twice that).
_PROBE_RAMP: Final = 10.0
# The share of the measured accepted rate kept after a throttle.
_BACK_OFF: Final = 0.9
# In slow start the bucket holds this many seconds' worth of creates (at least the
# initial burst).
_SLOW_START_BURST_SECONDS: Final = 1.0
# The bucket after slow start holds this many seconds' worth of creates (at least one).
_BURST_SECONDS: Final = 0.1
# Grants remembered to measure the accepted rate, and over how long.
_WINDOW: Final = 2.0
_HISTORY: Final = 8192
# Throttles closer together than this (or than two create intervals) are one event.
_EVENT_GAP: Final = 0.25
# The pause when a 429 gave no hint, and the slowest rate the limiter falls to.
_DEFAULT_PAUSE: Final = 1.0
MIN_RATE: Final = 0.1
# Cuts within one episode of throttling (events less than this many seconds apart) keep
# at least this share of the best accepted rate measured in it.
_EPISODE_QUIET: Final = 30.0
_EPISODE_FLOOR: Final = 0.25
# The shortest pause between two wakes of a queue of callers.
_TICK: Final = 0.005
# Until the first 429, queued callers are let through in groups (as many as are queued,
# or as the bucket holds), at most this many seconds apart: the pace is still a guess,
# and creates that go out together keep the rhythm of a job whose predictions end
# together (one by one, they would be spread over every round for the rest of the job).
_GROUP_WAIT: Final = 0.5
# Waits shorter than this are rounding errors of the clock arithmetic, not waits.
_EPSILON: Final = 1e-6
# Until the first 429, without the server's count, the creates each accepted one lets
# through at once.
_ANSWER_ALLOWANCE: Final = 2.0
# The most creates one ``ratelimit-remaining`` header lets through at once.
_HEADER_ALLOWANCE_MAX: Final = 1000.0


class CreateLimiter(Protocol):
    """What the transport asks before each create and tells after (`RateLimiter` is one)."""

    async def acquire(self) -> None:
        """Wait until a create may be sent."""

    def on_throttled(self, retry_after: float | None, *, bucket_empty: bool = True) -> None:
        """A create was answered 429 (``bucket_empty``: not a ``ratelimit-remaining`` above 0)."""

    def on_accepted(self, remaining: float | None = None) -> None:
        """A create was answered with anything but 429 (``remaining``: the answer's
        ``ratelimit-remaining``, if it had a number).
        """

    def on_unanswered(self) -> None:
        """A create got no answer."""


class Ticket:
    """A caller in a `WaitingLine`: woken by its event once let through (``granted``)
    or sent elsewhere (``diverted``: the Redis limiter's fall-back to a local one).
    """

    __slots__ = ("diverted", "event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False
        self.diverted = False


class WaitingLine:
    """Callers of a limiter in arrival order, first come first served.

    The first caller in line is the pump: it runs the limiter's own ``pump`` (sleeping
    until the limit allows, then granting callers from the front with `grant_next`)
    until its own ticket is settled, and hands the pump on when it leaves. The others
    wait on their own event, so a thousand waiting callers cost no wake-up per tick.
    """

    __slots__ = ("_pumping", "tickets")

    def __init__(self) -> None:
        self.tickets: collections.deque[Ticket] = collections.deque()
        self._pumping = False

    def __len__(self) -> int:
        return len(self.tickets)

    def grant_next(self) -> None:
        """Let the first caller in line through."""
        ticket = self.tickets.popleft()
        ticket.granted = True
        ticket.event.set()

    def divert_all(self) -> None:
        """Send every caller in line elsewhere (see `Ticket`)."""
        while self.tickets:
            ticket = self.tickets.popleft()
            ticket.diverted = True
            ticket.event.set()

    async def wait(
        self, pump: Callable[[Ticket], Awaitable[None]], give_back: Callable[[], None]
    ) -> Ticket:
        """Queue a caller and return its ticket once granted or diverted.

        A caller cancelled after it was granted hands its grant back through
        ``give_back``; one cancelled before leaves the line.
        """
        ticket = Ticket()
        self.tickets.append(ticket)
        try:
            while not (ticket.granted or ticket.diverted):
                if self._pumping:
                    await ticket.event.wait()
                    ticket.event = anyio.Event()
                    continue
                self._pumping = True
                try:
                    await pump(ticket)
                finally:
                    self._pumping = False
        except BaseException:
            if ticket.granted:
                give_back()
            elif not ticket.diverted:
                self.tickets.remove(ticket)
            raise
        finally:
            if not self._pumping and self.tickets:
                self.tickets[0].event.set()  # the next in line becomes the pump
        return ticket


class RateLimiter:
    """A create-rate limiter: fixed at ``rate`` creates per second, or adaptive.

    Args:
        rate: creates per second; None adapts to the server's 429 answers.
        max_pause: the longest pause a 429 imposes, whatever wait it asks for (the
            retry policy's ``max_retry_after``).
        clock: a monotonic clock in seconds (tests pass a fake one).
        sleep: how to wait that many seconds (tests pass one that moves the fake clock).

    Attributes:
        granted: creates let through.
        throttled: creates the server answered 429.
        accepted: creates the server did not throttle.
    """

    def __init__(
        self,
        rate: float | None = None,
        *,
        max_pause: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if rate is not None and not rate > 0:
            raise InputError(
                f"rate must be positive creates per second, got {short_repr(rate)}", field="rate"
            )
        self._clock = clock
        self._max_pause = max_pause
        self._sleep = sleep
        self.fixed = rate is not None
        self._rate = INITIAL_RATE if rate is None else float(rate)
        self._slow_start = rate is None
        # At least what accrues in a tick, so waking once a tick keeps the full rate.
        self._capacity = INITIAL_BURST if rate is None else max(1.0, rate * _TICK)
        self._tokens = self._capacity
        self._stamp = clock()
        self._resume_at = -float("inf")
        self._line = WaitingLine()
        # The pump's sleep, cut short when the server's count lets callers through.
        self._nap: anyio.CancelScope | None = None
        self.granted = 0
        self.throttled = 0
        self.accepted = 0
        # Creates granted whose answer has not come back (nor ever will), and answers.
        self._outstanding = 0
        self._answers = 0
        self._grants: collections.deque[float] = collections.deque(maxlen=_HISTORY)
        self._throttles: collections.deque[float] = collections.deque(maxlen=_HISTORY)
        self._last_event: float | None = None
        self._granted_at_event = 0
        self._throttled_at_event = 0
        self._paused_at_event = 0.0
        # The best accepted rate measured in this episode of throttling.
        self._episode_best = 0.0

    def __repr__(self) -> str:
        mode = "fixed" if self.fixed else ("slow start" if self._slow_start else "adaptive")
        return f"<RateLimiter {self._rate:.2f}/s {mode}>"

    @property
    def rate(self) -> float:
        """The current pace, in creates per second."""
        return self._rate

    @property
    def paused_for(self) -> float:
        """Seconds until creates may be sent again after a 429 (0 when not paused)."""
        return max(0.0, self._resume_at - self._clock())

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            if self._tokens < self._capacity:  # an allowance above it is kept, not cut
                self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now

    def _delay(self, now: float) -> float:
        self._refill(now)
        pause = self._resume_at - now
        short = (1.0 - self._tokens) / self._rate if self._tokens < 1.0 else 0.0
        delay = max(pause, short)
        return delay if delay > _EPSILON else 0.0

    def _grant(self, now: float, *, queued: bool) -> None:
        self._tokens -= 1.0
        self.granted += 1
        self._outstanding += 1
        self._grants.append(now)
        if not queued or self.fixed:
            return
        # Callers queue: the pace, not the work, is the bottleneck, so probe upwards;
        # the longer no 429 came, the faster (a raised limit is found again).
        if self._slow_start or self._last_event is None:
            self._rate += _SLOW_START_STEP
            if self._last_event is None:
                # Nothing was ever refused: the bucket holds a second of the pace reached,
                # so the bursts of a job whose predictions end together pass at once.
                self._capacity = max(self._capacity, self._rate * _SLOW_START_BURST_SECONDS)
        else:
            quiet = (now - self._last_event) / _PROBE_RAMP
            self._rate += _PROBE_STEP * (1.0 + quiet * quiet)

    async def acquire(self) -> None:
        """Wait until a create may be sent, first come first served."""
        now = self._clock()
        if not self._line.tickets and self._delay(now) <= 0:
            self._grant(now, queued=False)
            return
        await self._line.wait(self._pump, self._give_back)

    def _give_back(self) -> None:
        """A caller granted, then cancelled before it could send: its token returns."""
        self._tokens += 1.0
        self.granted -= 1
        self._outstanding -= 1

    async def _pump(self, ticket: Ticket) -> None:
        """Let queued callers through, in order, as the bucket fills, until ``ticket`` is."""
        while not ticket.granted:
            delay = max(self._delay(now := self._clock()), self._group_wait())
            if delay > 0:
                # Not shorter than a tick: at high rates a wake lets several through.
                with anyio.CancelScope() as self._nap:
                    await self._sleep(max(delay, _TICK))
                self._nap = None
                continue
            self._release(now)

    def _release(self, now: float) -> None:
        """Grant queued callers, in order, as far as the bucket covers them."""
        line = self._line
        while line.tickets and self._delay(now) <= 0:
            self._grant(now, queued=True)
            line.grant_next()

    def _answered(self) -> None:
        self._outstanding = max(0, self._outstanding - 1)
        self._answers += 1

    def _group_wait(self) -> float:
        """Until the first 429 (adaptive): seconds until the bucket covers every queued
        caller (or is full), at most `_GROUP_WAIT`; else 0.
        """
        if self.fixed or self._last_event is not None:
            return 0.0
        wanted = min(float(len(self._line)), self._capacity)
        wait = (wanted - self._tokens) / self._rate
        return min(_GROUP_WAIT, wait) if wait > _EPSILON else 0.0

    def on_accepted(self, remaining: float | None = None) -> None:
        """A create was not throttled.

        Args:
            remaining: the answer's ``ratelimit-remaining``, creates the server's bucket
                still holds. In slow start (adaptive, and no 429 seen yet), that many
                creates, less those granted and not yet answered, may go at once (queued
                callers are let through now).
        """
        self.accepted += 1
        self._answered()
        if self.fixed or self._last_event is not None:
            return
        now = self._clock()
        self._refill(now)
        if remaining is None:
            # No count from the server: as TCP's slow start does per acknowledgement,
            # each accepted create lets two more through, so the pace doubles every
            # round and a round's creates go out together.
            allowance = min(self._tokens + _ANSWER_ALLOWANCE, self._capacity)
        elif remaining >= 1:
            allowance = min(remaining, _HEADER_ALLOWANCE_MAX) - self._outstanding
        else:
            return
        if allowance > self._tokens:
            self._tokens = allowance
            self._release(now)
            if self._nap is not None:
                self._nap.cancel()  # the pump may have been let through too

    def on_unanswered(self) -> None:
        """A create got no answer (no connection, a timeout, cancelled): the server's
        count of it is unknown, and it no longer holds back a header's allowance.
        """
        self._answered()

    def on_throttled(self, retry_after: float | None, *, bucket_empty: bool = True) -> None:
        """A create was answered 429: pause as asked and, if adaptive, slow down.

        Args:
            retry_after: the wait the answer asked for, if any.
            bucket_empty: False when the answer said the server's bucket still holds
                creates (``ratelimit-remaining`` above 0): the pace did not cause it, so
                nothing pauses and the rate stands (the create itself waits and retries).
        """
        self.throttled += 1
        self._answered()
        now = self._clock()
        self._throttles.append(now)
        if not bucket_empty:
            return
        asked = _DEFAULT_PAUSE if retry_after is None else max(0.0, retry_after)
        pause = min(asked, self._max_pause)
        self._resume_at = max(self._resume_at, now + pause)
        self._tokens = min(self._tokens, 0.0)
        if self.fixed:
            return
        last = self._last_event
        # One event per window: the pause it imposed, then two create intervals for the
        # creates already sent to come back.
        if last is not None and now - last - self._paused_at_event < max(
            _EVENT_GAP, 2.0 / self._rate
        ):
            return
        if last is None or now - last > _EPISODE_QUIET:
            self._episode_best = 0.0
        measured = self._measured_rate(now)
        if measured is not None:
            self._episode_best = max(self._episode_best, measured)
        floor = max(MIN_RATE, _EPISODE_FLOOR * self._episode_best)
        if measured is None:
            # Too little history to measure (a first burst hit a small server bucket):
            # halve, and keep growing fast.
            self._rate = max(floor, self._rate / 2)
        else:
            self._slow_start = False
            self._rate = max(floor, _BACK_OFF * min(self._rate, measured))
        self._capacity = max(1.0, self._rate * _BURST_SECONDS)
        self._last_event = now
        self._granted_at_event = self.granted
        self._throttled_at_event = self.throttled
        self._paused_at_event = pause

    def _measured_rate(self, now: float) -> float | None:
        """The rate the server accepted lately: since the last 429, else over a window.

        Between two throttles the server's bucket was empty at both ends, so what it
        accepted in between, divided by the time creates were allowed, is about its
        refill rate (what it refilled during the pause it asked for is capped by its
        burst). None when less than a second of creates is known.
        """
        last = self._last_event
        sending = None if last is None else now - last - self._paused_at_event
        if sending is not None and 1.0 <= sending <= 10 * _WINDOW:
            passed = (self.granted - self._granted_at_event) - (
                self.throttled - self._throttled_at_event
            )
            return max(MIN_RATE, passed / sending)
        since = now - _WINDOW
        recent = [t for t in self._grants if t > since]
        if not recent or now - recent[0] < 1.0:
            return None
        refused = sum(1 for t in self._throttles if t > since)
        return max(MIN_RATE, (len(recent) - refused) / (now - recent[0]))
