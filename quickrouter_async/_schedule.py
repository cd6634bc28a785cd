"""The learned poll schedule: when to ask again whether a prediction has finished.

For each model the client keeps a `DurationSummary`: on a log scale of ages (seconds
since ``created_at``, 3% wide bins), how many predictions finished at each age and how
long predictions were watched running at each age. Their ratio (pooled over neighbouring
bins while data is scarce) is the hazard ``h(t)``, the chance per second that a
prediction still running at age ``t`` finishes now; counting the time watched, not only
the durations, keeps the estimate unbiased while the first predictions of a model are
still running. Older observations fade, so a model that got slower or faster is
relearned within a few dozen predictions.

Polls are placed with density ``sqrt(cost * h(t) / 2)``, the rule that minimizes
``polls + cost * delay`` (the delay being the time between the server finishing and the
client noticing): no polls while nothing can finish, dense polls where predictions
usually finish, and sparser ones as the chance of finishing fades. ``cost`` is
`PollPolicy.delay_cost`.

A vague prior, one pseudo-prediction with hazard ``1 / (t + 5 s)``, is mixed in. Before a
model has any data it alone sets the schedule: a first poll after about 0.9 s, then gaps
that grow with the square root of the age. Past the oldest age seen, the schedule follows
the hazard of the last quarter of the data, fading like the prior, so a slow outlier is
neither polled in a tight loop nor forgotten.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from typing import TYPE_CHECKING, Final

from ._clock import ServerClock
from ._models import Status

if TYPE_CHECKING:
    from ._config import PollPolicy
    from ._models import Prediction

__all__ = ["DurationSummary", "PollPlan", "Schedule", "Track"]

# Bins: [0, _FLOOR), then each 3% wider than the one before, up to two hours (the API
# stops predictions after 30 minutes): at most ~400 bins per model.
_FLOOR: Final = 0.05
_RATIO: Final = 1.03
_LOG_RATIO: Final = math.log(_RATIO)
_MAX_AGE: Final = 7200.0
_MAX_BIN: Final = 1 + int(math.log(_MAX_AGE / _FLOOR) / _LOG_RATIO)
# Each finished prediction fades the older observations by 1%: about 100 are remembered.
_DECAY: Final = 0.99
_RESCALE: Final = 1e12
_NEGLIGIBLE: Final = 1e-6
# The prior: survival c / (t + c), i.e. hazard 1 / (t + c), worth one prediction.
PRIOR_SCALE: Final = 5.0
# Past the oldest age seen, the data's hazard over its last quarter is carried on.
_TAIL_WINDOW: Final = 1.3
_TAIL_EVENTS: Final = 0.5  # one event, faded a little
# Bins pooled either side when estimating the hazard: _SMOOTH / sqrt(predictions seen).
_SMOOTH: Final = 6.0
_SMOOTH_MAX: Final = 9
# Gaps are spread by up to 10% either way: predictions created together do not poll at once.
JITTER: Final = 0.1
# Clock offsets are learned from the smallest gap seen between a server timestamp and
# the local clock; a stale minimum may creep up by a millisecond per second, so a clock
# Finished predictions that are learned from: a cancel says nothing about the model.
_LEARNED: Final = frozenset({Status.SUCCEEDED, Status.FAILED})


def _bin_of(age: float) -> int:
    if age < _FLOOR:
        return 0
    return min(_MAX_BIN, 1 + int(math.log(age / _FLOOR) / _LOG_RATIO))


def _lower_edge(index: int) -> float:
    return 0.0 if index == 0 else _FLOOR * _RATIO ** (index - 1)


# Every bin's lower edge, and the upper edge of the last: looked up, not computed, when
# the time a prediction was watched is spread over the bins.
_EDGES: Final = tuple(_lower_edge(index) for index in range(_MAX_BIN + 2))


def _prior(low: float, high: float) -> tuple[float, float]:
    """The prior's pseudo-events and pseudo-exposure (seconds at risk) in [low, high)."""
    c = PRIOR_SCALE
    return c / (low + c) - c / (high + c), c * math.log((high + c) / (low + c))


class PollPlan:
    """How many polls are due by each age, for one model's data and one cost.

    ``polls_by(t)`` integrates the poll density from age 0 to ``t``; a prediction of age
    ``t`` is next polled where that count has grown by one. The hazard is constant within
    each bin, so the count is piecewise linear; past the last bin the hazard is
    ``1 / (t + k)`` and the count grows like ``sqrt(2 * cost * (t + k))``.
    """

    __slots__ = ("_cum", "_edges", "_rate", "_slope", "_tail_offset", "_tail_start")

    def __init__(
        self,
        events: dict[int, float],
        exposure: dict[int, float],
        cost: float,
        *,
        scale: float = 1.0,
    ) -> None:
        self._rate = math.sqrt(2.0 * cost)
        top = max(max(exposure, default=-1), max(events, default=-1))
        # Cumulative events and exposure, data and prior, to pool neighbouring bins.
        seen, watched = [0.0], [0.0]
        for index in range(top + 1):
            prior_events, prior_exposure = _prior(_lower_edge(index), _lower_edge(index + 1))
            seen.append(seen[-1] + events.get(index, 0.0) + scale * prior_events)
            watched.append(watched[-1] + exposure.get(index, 0.0) + scale * prior_exposure)
        # Few data: pool more bins (up to +-30% of the age), so a handful of finished
        # predictions give a smooth hazard rather than a few spikes.
        count = sum(events.values()) / scale
        width = min(_SMOOTH_MAX, int(_SMOOTH / math.sqrt(max(count, 0.25))))
        edges: list[float] = []
        cum: list[float] = []
        slope: list[float] = []
        total = 0.0
        for index in range(top + 1):
            first, last = max(0, index - width), min(top, index + width) + 1
            hazard = (seen[last] - seen[first]) / (watched[last] - watched[first])
            per_second = self._rate * math.sqrt(hazard) / 2.0
            low = _lower_edge(index)
            edges.append(low)
            cum.append(total)
            slope.append(per_second)
            total += per_second * (_lower_edge(index + 1) - low)
        self._tail_start = _lower_edge(top + 1)
        edges.append(self._tail_start)
        cum.append(total)
        self._edges, self._cum, self._slope = edges, cum, slope
        self._tail_offset = self._tail(events, exposure, top, scale)

    def _tail(
        self, events: dict[int, float], exposure: dict[int, float], top: int, scale: float
    ) -> float:
        """``k`` of the hazard ``1 / (t + k)`` past the last bin: the prior's, or the data's."""
        first = _bin_of(self._tail_start / _TAIL_WINDOW)
        seen = sum(events.get(index, 0.0) for index in range(first, top + 1))
        watched = sum(exposure.get(index, 0.0) for index in range(first, top + 1))
        if seen < _TAIL_EVENTS * scale or watched <= 0:
            return PRIOR_SCALE
        return min(PRIOR_SCALE, watched / seen - self._tail_start)

    def polls_by(self, age: float) -> float:
        """The number of polls the plan places between age 0 and ``age``."""
        age = max(age, 0.0)
        if age >= self._tail_start:
            start = math.sqrt(self._tail_start + self._tail_offset)
            return self._cum[-1] + self._rate * (math.sqrt(age + self._tail_offset) - start)
        index = bisect.bisect_right(self._edges, age) - 1
        return self._cum[index] + self._slope[index] * (age - self._edges[index])

    def age_at(self, polls: float) -> float:
        """The age by which ``polls`` polls are due: the inverse of `polls_by`."""
        if polls >= self._cum[-1]:
            start = math.sqrt(self._tail_start + self._tail_offset)
            return (start + (polls - self._cum[-1]) / self._rate) ** 2 - self._tail_offset
        index = bisect.bisect_right(self._cum, polls) - 1
        return self._edges[index] + (polls - self._cum[index]) / self._slope[index]

    def next_poll(self, age: float) -> float:
        """The age at which a prediction now ``age`` seconds old is polled next."""
        return max(self.age_at(self.polls_by(age) + 1.0), age)


class DurationSummary:
    """What the client learned about how long one model's predictions take.

    Per 3%-wide bin of age: the (fading) number of predictions that finished at that
    age, and the seconds predictions were watched running at that age. Never the
    samples themselves: the summary stays within a few hundred numbers.

    Fading is done by weighing each new observation more (``1 / 0.99`` per finished
    prediction) instead of touching the old ones; now and then everything is scaled
    back down and negligible bins are dropped. Learning a duration costs O(1).
    """

    __slots__ = ("_events", "_exposure", "_fresh", "_plan", "_plan_cost", "_scale", "_total")

    def __init__(self) -> None:
        self._events: dict[int, float] = {}
        self._exposure: dict[int, float] = {}
        self._scale = 1.0  # the weight of an observation made now
        self._total = 0.0  # the sum of _events
        self._plan: PollPlan | None = None
        self._plan_cost = 0.0
        self._fresh = 0

    @property
    def weight(self) -> float:
        """The effective number of finished predictions (older ones count less)."""
        return self._total / self._scale

    @property
    def size(self) -> int:
        """How many numbers the summary holds."""
        return len(self._events) + len(self._exposure)

    def running(self, start: float, end: float) -> None:
        """Note that a prediction was running from age ``start`` to age ``end``."""
        start, end = max(start, 0.0), min(end, _MAX_AGE)
        if not end > start:
            return
        index = _bin_of(start)
        exposure, scale, edges = self._exposure, self._scale, _EDGES
        low = max(start, edges[index])
        while True:
            high = edges[index + 1]
            if end <= high or index >= _MAX_BIN:
                exposure[index] = exposure.get(index, 0.0) + scale * (end - low)
                return
            exposure[index] = exposure.get(index, 0.0) + scale * (high - low)
            index += 1
            low = high

    def finish(self, duration: float, *, watched_from: float = 0.0) -> None:
        """Learn that a prediction finished at age ``duration``.

        Args:
            duration: its age when it finished, in seconds.
            watched_from: the age up to which its running time was already noted with
                `running` (0 if never).
        """
        if not math.isfinite(duration) or duration < 0:
            return
        self._scale /= _DECAY
        self.running(min(watched_from, duration), duration)
        index = _bin_of(min(duration, _MAX_AGE))
        self._events[index] = self._events.get(index, 0.0) + self._scale
        self._total += self._scale
        self._fresh += 1
        if self._scale > _RESCALE:
            self._rescale()

    def _rescale(self) -> None:
        scale = self._scale
        for table in (self._events, self._exposure):
            for index in list(table):
                table[index] /= scale
                if table[index] < _NEGLIGIBLE:
                    del table[index]
        self._total = sum(self._events.values())
        self._scale = 1.0

    def quantile(self, fraction: float) -> float | None:
        """The age by which ``fraction`` of the (weighted) predictions had finished."""
        if self._total <= 0:
            return None
        goal, seen, last = fraction * self._total, 0.0, max(self._events)
        for index, weight in sorted(self._events.items()):
            if seen + weight >= goal or index == last:
                low, high = _lower_edge(index), _lower_edge(index + 1)
                return low + (high - low) * min(1.0, (goal - seen) / weight)
            seen += weight
        raise AssertionError("unreachable")  # pragma: no cover

    def plan(self, cost: float) -> PollPlan:
        """The poll plan at ``cost`` (the polls one second of delay is worth).

        It is rebuilt once the finished predictions learned since number a tenth of the
        effective count (each one, at first): no rebuild per prediction at high throughput.
        """
        plan = self._plan
        if plan is None or cost != self._plan_cost or self._fresh >= max(1.0, self.weight / 10):
            plan = PollPlan(self._events, self._exposure, cost, scale=self._scale)
            self._plan, self._plan_cost, self._fresh = plan, cost, 0
        return plan


class Schedule:
    """The poll schedule of one client: a fixed interval, or learned per model.

    Args:
        policy: the client's `PollPolicy`.
        clock: the server's clock (`ServerClock`), to measure predictions' ages.
        rng: the source of jitter.
        models: how many models' summaries are kept (the least recently used go first).

    Attributes:
        watching: the ids of the predictions being waited on.
    """

    def __init__(
        self,
        policy: PollPolicy,
        *,
        clock: ServerClock | None = None,
        rng: random.Random | None = None,
        models: int = 64,
    ) -> None:
        self.policy = policy
        self.server = clock or ServerClock()
        self.clock = self.server.clock
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not security)
        self.models = models
        self.watching: set[str] = set()
        self._summaries: dict[str, DurationSummary] = {}  # least recently used first

    def summary(self, model: str) -> DurationSummary:
        """What was learned about ``model`` (a new, empty summary if nothing)."""
        summary = self._summaries.pop(model, None) or DurationSummary()
        self._summaries[model] = summary
        if len(self._summaries) > self.models:
            del self._summaries[next(iter(self._summaries))]
        return summary

    def observe(self, prediction: Prediction, received: float) -> None:
        """Learn the server's clock from the timestamps of one answer."""
        self.server.note_stamps(
            prediction.created_at,
            prediction.started_at,
            prediction.completed_at,
            received=received,
        )

    def age(self, prediction: Prediction, now: float) -> float | None:
        """Seconds since the server created ``prediction``, at local wall time ``now``."""
        if prediction.created_at is None:
            return None
        return self.server.age(prediction.created_at, now)

    def track(self, prediction: Prediction, *, watched_from: float | None = None) -> Track:
        """Start following ``prediction``; see `Track`.

        Args:
            prediction: the prediction as first seen.
            watched_from: the age from which it is known to have been running (0 for a
                prediction this client just created); by default, its age now.
        """
        return Track(self, prediction, watched_from)


class Track:
    """One prediction being waited on: its age, how long it was watched, its next poll.

    With a fixed `PollPolicy.interval` nothing is learned: the schedule is not used.
    """

    def __init__(self, schedule: Schedule, prediction: Prediction, watched_from: float | None):
        self.schedule = schedule
        self.prediction = prediction
        self.polls = 0
        self.watched = 0.0
        self._learning = schedule.policy.interval is None
        if not self._learning:
            return
        self.summary = schedule.summary(prediction.model or prediction.version or "")
        self._first_seen = time.monotonic()
        self._anchored = prediction.created_at is not None
        now = schedule.clock()
        schedule.observe(prediction, now)
        age = self._age(prediction, now)
        if prediction.status.terminal:  # seen only finished: as good as watched throughout
            watched_from = 0.0
        self.watched = age if watched_from is None else min(watched_from, age)
        self._take(prediction, now)

    def _age(self, prediction: Prediction, now: float) -> float:
        age = self.schedule.age(prediction, now) if self._anchored else None
        return time.monotonic() - self._first_seen if age is None else age

    def next_delay(self, *, hint: float | None = None) -> float:
        """Seconds to sleep before the next poll.

        Args:
            hint: a server's ``Retry-After`` on the last answer: the next poll is no
                sooner than that.
        """
        policy = self.schedule.policy
        if policy.interval is not None:
            delay = policy.interval
        else:
            age = self._age(self.prediction, self.schedule.clock())
            delay = self.summary.plan(policy.delay_cost).next_poll(age) - age
            delay *= 1.0 + JITTER * self.schedule.rng.uniform(-1.0, 1.0)
            delay = min(policy.max_interval, max(policy.min_interval, delay))
        return delay if hint is None else max(delay, hint)

    def update(self, prediction: Prediction) -> None:
        """Take in the answer to a poll."""
        self.polls += 1
        if not self._learning:
            self.prediction = prediction
            return
        now = self.schedule.clock()
        self.schedule.observe(prediction, now)
        self._take(prediction, now)

    def _take(self, prediction: Prediction, now: float) -> None:
        """Note the time watched running, or learn from a finished prediction."""
        self.prediction = prediction
        age = self._age(prediction, now)
        if not prediction.status.terminal:
            self.summary.running(self.watched, age)
            self.watched = max(self.watched, age)
            return
        if prediction.status not in _LEARNED:
            return
        if prediction.created_at is not None and prediction.completed_at is not None:
            duration = (prediction.completed_at - prediction.created_at).total_seconds()
        else:  # finished somewhere between the last two looks
            duration = (self.watched + age) / 2
        self.summary.finish(duration, watched_from=self.watched)
