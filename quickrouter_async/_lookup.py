"""`find_created`: the one way to find the predictions that creates made.

A create whose answer never came (a 5xx, a timeout, a crash of the process that sent it)
may or may not have made its prediction. Where the server lists predictions (newest
first), the prediction is found by what the create sent: the same model and input (as
the server echoes it), created no earlier than the create was sent, less an allowance
for the two clocks. Ids already taken (by this client's other creates, by the batch
journal, by predictions being watched) are never matched, so two identical inputs never
share a prediction.

Every caller goes through here: a create in doubt, a create its caller gave up on, and
the command line's resume of a batch.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Final

import attrs

from ._models import Prediction
from ._request import input_json

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Container, Sequence

__all__ = [
    "CLOCK_SKEW",
    "DATE_MARGIN",
    "LOOKUP_LIMIT",
    "Found",
    "Wanted",
    "find_created",
    "window_start",
]

# Without any evidence of the server's clock, the local one may be this far off: a
# prediction stamped this much before its create was sent may still be the one it made.
CLOCK_SKEW: Final = dt.timedelta(seconds=120)
# With it: its resolution, the network's delay, and a clock per server.
DATE_MARGIN: Final = dt.timedelta(seconds=10)
# How many predictions one lookup reads at most (ten pages of Replicate's list).
LOOKUP_LIMIT: Final = 1000


@attrs.frozen(kw_only=True)
class Wanted:
    """A create to find: its model, its input as sent, and the earliest creation time.

    Attributes:
        model: ``owner/name``, ``owner/name:version`` or a version id, as sent.
        input_json: the input as `input_json` encodes it.
        since: the earliest ``created_at`` (on the server's clock) its prediction may have.
    """

    model: str
    input_json: str
    since: dt.datetime

    @classmethod
    def of(cls, model: str, input: object, since: dt.datetime) -> Wanted:  # noqa: A002
        """The create of ``input`` for ``model``, sent no earlier than ``since``."""
        return cls(model=model, input_json=input_json(input), since=since)

    def accepts(self, prediction: Prediction) -> bool:
        """Whether ``prediction`` may be the one this create made (its input aside).

        Whatever the prediction leaves out (a model, a version, a creation time, or a
        version hidden as ``"hidden"``) is not held against it.
        """
        name, _, version = self.model.partition(":")
        if "/" not in name:  # a bare version id
            name, version = "", name
        if name and prediction.model is not None and prediction.model != name:
            return False
        if version and prediction.version not in {None, "hidden", version}:
            return False
        return prediction.created_at is None or prediction.created_at >= self.since


@attrs.frozen
class Found:
    """What a lookup found: a prediction (or None) per create wanted, in order.

    Attributes:
        predictions: the prediction each create made, or None where none was found.
        complete: the listing went back past every create's window (or ended), so a
            None means the create certainly made no prediction (yet).
    """

    predictions: tuple[Prediction | None, ...]
    complete: bool


async def find_created(
    listing: AsyncIterable[Prediction],
    wanted: Sequence[Wanted],
    *,
    taken: Container[str] = frozenset(),
    limit: int = LOOKUP_LIMIT,
) -> Found:
    """Find the prediction each of ``wanted`` made, in one pass over ``listing``.

    Args:
        listing: the account's predictions, newest first (``list_predictions``,
            preferably with ``created_after`` the earliest ``since``).
        wanted: the creates to find; identical ones each get a prediction of their own.
        taken: ids that must not be matched.
        limit: the most predictions read before giving up (the result is then not
            complete).

    Raises:
        QuickRouterError: listing failed.
    """
    found: list[Prediction | None] = [None] * len(wanted)
    pending: dict[str, list[int]] = {}
    for position, want in enumerate(wanted):
        pending.setdefault(want.input_json, []).append(position)
    left = len(wanted)
    earliest = min((want.since for want in wanted), default=None)
    read = 0
    if not left:
        return Found((), complete=True)
    async for prediction in listing:
        created = prediction.created_at
        if earliest is not None and created is not None and created < earliest:
            break
        read += 1
        echoed = None if prediction.id in taken else _echoed(prediction)
        positions = pending.get(echoed, []) if echoed is not None else []
        for position in positions:
            if wanted[position].accepts(prediction):
                positions.remove(position)
                found[position] = prediction
                left -= 1
                break
        if not left:
            break
        if read >= limit:
            return Found(tuple(found), complete=False)
    return Found(tuple(found), complete=True)


def _echoed(prediction: Prediction) -> str | None:
    """The input a prediction echoes, as `input_json` encodes it (None if it has none)."""
    if prediction.input is None:
        return None
    try:
        return input_json(prediction.input)
    except (TypeError, ValueError, RecursionError):
        return None


def window_start(sent_at: float, offset: float | None) -> dt.datetime:
    """The earliest server time a prediction of a create sent at local time ``sent_at``
    may carry, given the local clock's offset from the server's (None if unknown).
    """
    if offset is None:
        return dt.datetime.fromtimestamp(sent_at, dt.UTC) - CLOCK_SKEW
    return dt.datetime.fromtimestamp(sent_at - offset, dt.UTC) - DATE_MARGIN
