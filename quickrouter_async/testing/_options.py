"""The emulator's value objects: a create rate limit and the faults it injects.

Both are frozen and validated on construction, so an emulator can swap them at runtime
(``emulator.faults = Faults(reset=0.1)``) without ever holding a half-valid setting.
"""

from __future__ import annotations

import datetime
import math
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable

#: The kinds of API endpoint a fault can apply to.
FAULT_ENDPOINTS: frozenset[str] = frozenset({"create", "get", "cancel", "list"})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def probability(value: object, name: str) -> float:
    """``value`` as a probability from 0 to 1.

    Raises:
        ValueError: it is not a number from 0 to 1.
    """
    if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    raise ValueError(f"{name} must be a probability from 0 to 1, got {value!r}")


def seconds(value: float | datetime.timedelta) -> float:
    """A duration in seconds from a number or a ``timedelta``.

    Raises:
        TypeError: the duration is not a number.
        ValueError: the duration is negative or not a number (NaN).
    """
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if not _is_number(value):
        raise TypeError(f"a duration must be a number of seconds, not {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"a duration must be at least 0 seconds, got {value!r}")
    return float(value)


def _probability(_instance: Any, attribute: attrs.Attribute[float], value: object) -> None:
    probability(value, attribute.name)


def _positive(_instance: Any, attribute: attrs.Attribute[float], value: object) -> None:
    if not (isinstance(value, int | float) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def _endpoint_set(value: Iterable[str]) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    endpoints = frozenset(value)
    unknown = endpoints - FAULT_ENDPOINTS
    if unknown:
        raise ValueError(
            f"unknown fault endpoints {sorted(unknown)}; choose from {sorted(FAULT_ENDPOINTS)}"
        )
    return endpoints


@attrs.frozen(kw_only=True)
class RateLimit:
    """A token bucket on the create endpoints, like the server's per-account limit.

    ``burst`` creates may arrive at once; after that, ``rate`` creates per second are
    allowed. A create beyond the limit is answered ``429 Too Many Requests`` with
    Replicate's body (``detail``, ``status``, ``title``, ``retry_after``) and, when
    ``retry_after`` is true, a ``Retry-After`` header in whole seconds.

    Args:
        rate: creates per second the bucket refills (positive).
        burst: the bucket's size, the number of creates allowed at once (at least 1).
        retry_after: whether throttled answers carry a ``Retry-After`` header.
    """

    rate: float = attrs.field(default=10.0, validator=_positive)
    burst: int = attrs.field(default=10)
    retry_after: bool = True

    @burst.validator
    def _check_burst(self, _attribute: attrs.Attribute[int], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"burst must be an integer of at least 1, got {value!r}")


@attrs.frozen(kw_only=True)
class Faults:
    """Misbehaviour the emulator injects, each knob a probability from 0 to 1.

    Faults apply only to authenticated API requests of the endpoint kinds listed in
    ``endpoints``; the ``*_after_create`` knobs only to creates. Each request draws from
    the emulator's random generator, so a seeded emulator injects the same faults in
    the same order.

    Args:
        throttle: chance of a ``429`` (with ``Retry-After: 1``) before acting.
        server_error: chance of a ``500``, ``502`` or ``503`` before acting.
        server_error_after_create: chance that a create is committed (the prediction
            exists and runs) but answered ``502`` or ``500``.
        reset: chance the connection is dropped without an answer, before acting.
        reset_after_create: chance a create is committed, then the connection dropped.
        slow: chance an answer is held back ``slow_seconds`` after acting.
        slow_seconds: how long a slow answer is held back.
        malformed: chance a successful answer has a broken body: truncated JSON, an
            HTML page, a JSON array instead of an object, or a ``status`` that is not a
            string.
        endpoints: the endpoint kinds faults apply to, a subset of ``{"create", "get",
            "cancel", "list"}`` given as an iterable or one name (all by default).
    """

    throttle: float = attrs.field(default=0.0, validator=_probability)
    server_error: float = attrs.field(default=0.0, validator=_probability)
    server_error_after_create: float = attrs.field(default=0.0, validator=_probability)
    reset: float = attrs.field(default=0.0, validator=_probability)
    reset_after_create: float = attrs.field(default=0.0, validator=_probability)
    slow: float = attrs.field(default=0.0, validator=_probability)
    slow_seconds: float = attrs.field(default=5.0, converter=seconds)
    malformed: float = attrs.field(default=0.0, validator=_probability)
    endpoints: frozenset[str] = attrs.field(default=FAULT_ENDPOINTS, converter=_endpoint_set)
