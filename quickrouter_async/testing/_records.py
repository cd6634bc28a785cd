"""What the emulator remembers: predictions, the requests it answered, file downloads.

A prediction's status is never stored: each record holds its timeline (``time.monotonic()``
moments fixed at creation) and derives the status whenever it is read. Ten thousand
running predictions therefore cost memory but no tasks and no CPU while nobody looks.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import attrs

from ._catalog import OutputPlan
from ._protocol import datetime_from_ns

if TYPE_CHECKING:
    import datetime
    from collections.abc import Callable

#: Every status a prediction can have.
Status = Literal["starting", "processing", "succeeded", "failed", "canceled", "aborted"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled", "aborted"})


@attrs.frozen(kw_only=True)
class RequestRecord:
    """One API request and how it was answered.

    Attributes:
        method: the HTTP method.
        path: the path, without the query string.
        query: the raw query string (``""`` when there is none).
        kind: ``"create"``, ``"get"``, ``"cancel"``, ``"list"``, ``"webhook_secret"``
            or ``"unknown"`` (no such route).
        status: the HTTP status answered, or ``None`` if the connection was dropped.
        time: ``time.monotonic()`` when the request arrived.
        authorized: whether it carried the right bearer token (the header itself is
            never kept).
        prediction_id: the prediction created, read or canceled, if any.
        fault: the fault injected, if any (``"throttle"``, ``"server_error"``,
            ``"reset"``, ``"server_error_after_create"``, ``"reset_after_create"``,
            ``"slow"``, ``"malformed:<variant>"``), several joined by ``","``.
    """

    method: str
    path: str
    query: str
    kind: str
    status: int | None
    time: float
    authorized: bool
    prediction_id: str | None = None
    fault: str | None = None


@attrs.frozen(kw_only=True)
class FileRequestRecord:
    """One download of an output file.

    ``had_authorization`` tells whether the request carried an ``Authorization``
    header, which a client should never send to a file host; its value is not kept.
    """

    path: str
    prediction_id: str
    index: int
    status: int
    time: float
    had_authorization: bool


@attrs.define(kw_only=True, eq=False)
class PredictionRecord:
    """The server side of one prediction: what was asked and its timeline.

    ``created``, ``starts``, ``ends``, ``deadline`` and ``canceled_at`` are
    ``time.monotonic()`` moments; the ``*_at`` properties give wall-clock datetimes.
    ``failure`` is the error the prediction will end with, or ``None`` if it will
    succeed. ``create_headers`` holds the create request's headers (lower-case names)
    except credentials.
    """

    id: str
    sequence: int
    model: str
    version: str
    input: dict[str, Any]
    plan: OutputPlan
    created_ns: int
    created: float
    starts: float
    ends: float
    seed: int
    failure: str | None = None
    deadline: float | None = None
    deployment: str | None = None
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None
    create_headers: dict[str, str] = attrs.field(factory=dict)
    canceled_at: float | None = None
    cancel_requests: int = 0
    _changed: asyncio.Event | None = attrs.field(default=None, init=False, repr=False)

    def outcome(self) -> tuple[Status, float]:
        """The terminal status this prediction reaches and the moment it does."""
        if self.canceled_at is not None:
            # A cancel is only recorded while running, so it comes before anything else.
            return "canceled", self.canceled_at
        natural: Status = "failed" if self.failure is not None else "succeeded"
        if self.deadline is not None and self.deadline < self.ends:
            return ("aborted" if self.deadline <= self.starts else "canceled"), self.deadline
        return natural, self.ends

    def status_at(self, now: float) -> Status:
        """The status at monotonic time ``now``."""
        status, moment = self.outcome()
        if now >= moment:
            return status
        return "processing" if now >= self.starts else "starting"

    @property
    def status(self) -> Status:
        """The status now."""
        return self.status_at(time.monotonic())

    @property
    def terminal(self) -> bool:
        """Whether the prediction has finished, one way or another."""
        return self.status in TERMINAL_STATUSES

    def started_by(self, now: float) -> bool:
        """Whether the prediction had started running by ``now``."""
        status, moment = self.outcome()
        return status != "aborted" and self.starts <= min(now, moment)

    def wall_ns(self, moment: float) -> int:
        """Nanoseconds since the epoch of a monotonic ``moment`` of this prediction."""
        return self.created_ns + round((moment - self.created) * 1e9)

    @property
    def created_at(self) -> datetime.datetime:
        """When the prediction was created (UTC)."""
        return datetime_from_ns(self.created_ns)

    @property
    def started_at(self) -> datetime.datetime | None:
        """When it started running, if it has."""
        if not self.started_by(time.monotonic()):
            return None
        return datetime_from_ns(self.wall_ns(self.starts))

    @property
    def completed_at(self) -> datetime.datetime | None:
        """When it reached its terminal status, if it has."""
        moment = self.outcome()[1]
        if time.monotonic() < moment:
            return None
        return datetime_from_ns(self.wall_ns(moment))

    @property
    def deadline_at(self) -> datetime.datetime | None:
        """The ``Cancel-After`` deadline, if one was given."""
        return None if self.deadline is None else datetime_from_ns(self.wall_ns(self.deadline))

    @property
    def error(self) -> str | None:
        """The error message, once the prediction has failed."""
        return self.failure if self.status == "failed" else None

    @property
    def canceled(self) -> bool:
        """Whether a cancel request stopped it (a deadline does not count)."""
        return self.canceled_at is not None

    def cancel(self, now: float) -> bool:
        """Cancel at ``now`` unless already terminal; return whether it was canceled."""
        self.cancel_requests += 1
        if self.status_at(now) in TERMINAL_STATUSES:
            return False
        self.canceled_at = now
        if self._changed is not None:
            self._changed.set()
        return True

    def changed_event(self) -> asyncio.Event:
        """An event set when the timeline changes (a cancel), for held requests."""
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed


def _sequence_of(record: PredictionRecord) -> int:
    return record.sequence


class Predictions(Sequence[PredictionRecord]):
    """The emulator's predictions in creation order; also looked up by id.

    Indexing by position and slicing work as on a list; ``get(id)`` and ``id in
    predictions`` look up by id. ``clear()`` forgets them all.
    """

    def __init__(self) -> None:
        """Start empty."""
        self._order: list[PredictionRecord] = []
        self._by_id: dict[str, PredictionRecord] = {}

    @overload
    def __getitem__(self, index: int) -> PredictionRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[PredictionRecord]: ...

    def __getitem__(self, index: int | slice) -> PredictionRecord | list[PredictionRecord]:
        """The record at a position, or a list of them for a slice."""
        return self._order[index]

    def __len__(self) -> int:
        """How many predictions there are."""
        return len(self._order)

    def __iter__(self) -> Iterator[PredictionRecord]:
        """The records, oldest first."""
        return iter(self._order)

    def __contains__(self, value: object) -> bool:
        """Whether an id (or a record) is known."""
        if isinstance(value, PredictionRecord):
            return self._by_id.get(value.id) is value
        return isinstance(value, str) and value in self._by_id

    def __repr__(self) -> str:
        """A short summary."""
        return f"<Predictions: {len(self)}>"

    def get(self, prediction_id: str) -> PredictionRecord | None:
        """The record with this id, or ``None``."""
        return self._by_id.get(prediction_id)

    def add(self, record: PredictionRecord) -> None:
        """Remember a new prediction (sequence numbers must increase)."""
        self._order.append(record)
        self._by_id[record.id] = record

    def clear(self) -> None:
        """Forget every prediction."""
        self._order.clear()
        self._by_id.clear()

    def _scan(
        self, start: int, step: int, accept: Callable[[PredictionRecord], bool], limit: int
    ) -> list[PredictionRecord]:
        found: list[PredictionRecord] = []
        position = start
        while 0 <= position < len(self._order) and len(found) < limit:
            record = self._order[position]
            if accept(record):
                found.append(record)
            position += step
        return found

    def _position(self, sequence: int) -> int:
        return bisect.bisect_left(self._order, sequence, key=_sequence_of)

    def page(
        self,
        *,
        size: int,
        accept: Callable[[PredictionRecord], bool],
        older_than: int | None = None,
        newer_than: int | None = None,
    ) -> tuple[list[PredictionRecord], bool, bool]:
        """A page newest first: ``(records, more older ones, more newer ones)``.

        With ``older_than`` (a sequence number) the page holds the newest accepted
        records created before it; with ``newer_than`` the oldest ones created after it.
        """
        if newer_than is not None:
            found = self._scan(self._position(newer_than + 1), 1, accept, size + 1)
            records = found[:size][::-1]
            newer = len(found) > size
            older = bool(records) and bool(
                self._scan(self._position(records[-1].sequence) - 1, -1, accept, 1)
            )
            return records, older, newer
        start = len(self._order) - 1 if older_than is None else self._position(older_than) - 1
        found = self._scan(start, -1, accept, size + 1)
        records = found[:size]
        older = len(found) > size
        newer = bool(records) and bool(
            self._scan(self._position(records[0].sequence) + 1, 1, accept, 1)
        )
        return records, older, newer
