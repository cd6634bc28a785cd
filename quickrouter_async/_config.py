"""Small value objects that configure the client, and the environment lookup."""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import os
import random
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import urlsplit

import attrs

from ._errors import InputError, short_repr

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "DEFAULT_BASE_URL",
    "Duration",
    "PollPolicy",
    "RetryPolicy",
    "Timeouts",
    "is_loopback",
    "resolve_api_key",
    "resolve_base_url",
    "to_seconds",
]

DEFAULT_BASE_URL: Final = "https://api.quickrouter.ai/replicate"
API_KEY_ENV: Final = "QUICKROUTER_API_KEY"
BASE_URL_ENV: Final = "QUICKROUTER_BASE_URL"

Duration = float | int | dt.timedelta


def to_seconds(value: Duration | None, *, name: str) -> float | None:
    """Turn a duration given as seconds or a `timedelta` into seconds, checking its sign."""
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(
            f"{name} must be seconds or a timedelta, not {short_repr(value)}", field=name
        )
    else:
        seconds = float(value)
    if not seconds >= 0:  # also refuses NaN
        raise InputError(f"{name} must not be negative, got {short_repr(value)}", field=name)
    return seconds


def _positive(value: Duration | None, name: str) -> float | None:
    """A time limit: seconds or a timedelta, positive, or None for no limit."""
    seconds = to_seconds(value, name=name)
    if seconds is not None and not seconds > 0:
        # aiohttp reads a zero limit as none at all: refuse it rather than surprise.
        raise InputError(f"{name} must be positive (None means no limit)", field=name)
    return seconds


def _connect_limit(value: Duration | None) -> float | None:
    return _positive(value, "connect")


def _read_limit(value: Duration | None) -> float | None:
    return _positive(value, "read")


def _total_limit(value: Duration | None) -> float | None:
    return _positive(value, "total")


def _wait(value: object, name: str) -> float:
    """A wait: seconds or a timedelta, zero or more."""
    if not isinstance(value, int | float | dt.timedelta):
        raise InputError(
            f"{name} must be seconds or a timedelta, not {short_repr(value)}", field=name
        )
    seconds = to_seconds(value, name=name)
    assert seconds is not None  # noqa: S101 (to_seconds keeps None only for None)
    return seconds


def _initial_wait(value: object) -> float:
    return _wait(value, "initial")


def _maximum_wait(value: object) -> float:
    return _wait(value, "maximum")


def _max_retry_after(value: object) -> float:
    return _wait(value, "max_retry_after")


def _attempts(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"attempts must be an integer of 1 or more, got {short_repr(value)}")
    return value


def _statuses(value: Iterable[object]) -> frozenset[int]:
    statuses = frozenset(value)
    if not all(isinstance(s, int) and 400 <= s <= 599 for s in statuses):
        raise InputError("retry_statuses must be HTTP error statuses (400-599)")
    return frozenset(s for s in statuses if isinstance(s, int))


@attrs.frozen(kw_only=True)
class Timeouts:
    """Limits for one HTTP request, in seconds (or timedeltas); None means no limit.

    A hung server never hangs the client: a request that passes a limit raises
    `RequestTimeout`, after the retries a GET is allowed (see `RetryPolicy`). A create
    held open with ``Prefer: wait`` gets its wait added to ``read`` and ``total``.

    Attributes:
        connect: to open a connection (including TLS).
        read: the wait for an answer. An API answer is a few kilobytes that comes in
            one piece, so this bounds the whole answer; for an output file download it
            is the longest pause between two chunks.
        total: for the whole request, answer included.
    """

    connect: float | None = attrs.field(default=10.0, converter=_connect_limit)
    read: float | None = attrs.field(default=30.0, converter=_read_limit)
    total: float | None = attrs.field(default=120.0, converter=_total_limit)

    @classmethod
    def coerce(cls, value: Timeouts | Duration | None) -> Timeouts:
        """Accept a `Timeouts`, or one number of seconds used for every limit."""
        if isinstance(value, Timeouts):
            return value
        if value is None:
            return cls()
        seconds = to_seconds(value, name="timeout")
        return cls(connect=seconds, read=seconds, total=seconds)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How the transport retries a request that failed for a passing reason.

    GETs and cancels are retried on ``retry_statuses``, on a broken answer, on a failed
    or reset connection and on a timeout. A create is retried only when the server
    certainly did not act on it: a 429, or a connection that was never opened; any other
    failure is resolved by looking the prediction up, never by sending it blindly again.

    Back-off is exponential with full jitter: retry ``n`` waits a random time between
    zero and ``min(maximum, initial * 2 ** (n - 1))``. A server hint (``Retry-After`` in
    seconds or as an HTTP date, the body's ``retry_after``, ``ratelimit-reset``) is the
    shortest wait, capped at ``max_retry_after``.

    A create whose fate is unknown (a 5xx, a timeout or a reset after it was sent) is
    looked up in the list of recent predictions where the server has that route. Where
    it has not, or the lookup fails, ``in_doubt`` decides: ``"raise"`` (the default:
    at most once) raises `CreateInDoubt`, which carries the input; ``"resend"`` sends
    the create again, for those who would rather pay twice than lose an image.

    Attributes:
        attempts: tries in all, the first one included (1 turns retries off).
        initial: the back-off ceiling of the first retry, in seconds.
        maximum: the largest back-off ceiling, in seconds.
        max_retry_after: the longest server-requested wait that is honoured.
        retry_statuses: HTTP statuses retried for requests that may be repeated.
        in_doubt: ``"raise"`` or ``"resend"``: what to do with a create in doubt that
            cannot be looked up.
    """

    attempts: int = attrs.field(default=6, converter=_attempts)
    initial: float = attrs.field(default=0.5, converter=_initial_wait)
    maximum: float = attrs.field(default=20.0, converter=_maximum_wait)
    max_retry_after: float = attrs.field(default=60.0, converter=_max_retry_after)
    retry_statuses: frozenset[int] = attrs.field(
        default=frozenset({429, 500, 502, 503, 504}), converter=_statuses
    )
    in_doubt: Literal["raise", "resend"] = attrs.field(default="raise")

    @in_doubt.validator
    def _check_in_doubt(self, _: attrs.Attribute[str], value: object) -> None:
        if value not in {"raise", "resend"}:
            raise InputError(
                f'in_doubt must be "raise" or "resend", got {value!r}', field="in_doubt"
            )

    def backoff_ceiling(self, retry: int) -> float:
        """The upper bound of the wait before the ``retry``-th retry (1-based)."""
        # min() on the exponent first: 2 ** 2000 is an OverflowError as a float.
        return float(min(self.maximum, self.initial * 2 ** min(retry - 1, 64)))

    def delay(self, retry: int, hint: float | None = None) -> float:
        """Seconds to wait before the ``retry``-th retry, given the server's hint."""
        jittered = random.uniform(0.0, self.backoff_ceiling(retry))  # noqa: S311 (jitter)
        if hint is None:
            return jittered
        return max(min(hint, self.max_retry_after), jittered)


AUTO: Final = "auto"
# The sync waits "auto" chooses: long where a caller that gives up can find its
# prediction at once (the server lists predictions), short elsewhere.
SYNC_WAIT_LISTED: Final = 60.0
SYNC_WAIT_UNLISTED: Final = 5.0


def _optional_sync_wait(value: Duration | str | None) -> float | str | None:
    if value == AUTO:
        return AUTO
    if isinstance(value, str):
        raise InputError(
            f'sync_wait must be seconds, "auto" or None, got {value!r}', field="sync_wait"
        )
    return to_seconds(value, name="sync_wait")


def _optional_interval(value: Duration | None) -> float | None:
    return to_seconds(value, name="interval")


def _min_interval(value: object) -> float:
    return _wait(value, "min_interval")


def _max_interval(value: object) -> float:
    return _wait(value, "max_interval")


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How `wait()`, `watch()` and `run()` learn that a prediction finished.

    By default `run()` first holds its create open with ``Prefer: wait``, then polls on a
    schedule learned per model: the client notes how long that model's predictions take
    and polls little while none can be done, densely around the time they usually
    finish, and less and less often past it. ``interval`` replaces the learned schedule
    by a fixed one. A server's ``Retry-After`` on a poll is always honoured.

    While a create is held open its prediction's id is not known yet: a caller that
    gives up meanwhile cannot reach the prediction until the create answers (the client
    then cancels it by id), unless the server lists predictions, where the client finds
    and cancels it at once. So ``"auto"`` holds creates 60 s where the server is known
    to list predictions, and 5 s elsewhere (then polls).

    Attributes:
        sync_wait: seconds the create of `run()` is held open with ``Prefer: wait``
            (1-60; never past the deadline); ``"auto"`` (the default) as above; None
            sends no ``Prefer`` header.
        interval: a fixed gap between two polls, in seconds; None learns a schedule per
            model.
        min_interval: the shortest gap between two polls of one prediction.
        max_interval: the longest gap between two polls of one prediction.
        delay_cost: how many polls one second of delay (between the server finishing
            and the client noticing) is worth to the learned schedule. Higher notices
            sooner at the price of more requests: the mean delay falls roughly as one
            over its square root and the polls grow as its square root.
    """

    sync_wait: float | Literal["auto"] | None = attrs.field(
        default=AUTO, converter=_optional_sync_wait
    )
    interval: float | None = attrs.field(default=None, converter=_optional_interval)
    min_interval: float = attrs.field(default=0.1, converter=_min_interval)
    max_interval: float = attrs.field(default=5.0, converter=_max_interval)
    delay_cost: float = attrs.field(default=15.0, converter=float)

    @sync_wait.validator
    def _check_sync_wait(self, _: attrs.Attribute[object], value: object) -> None:
        if isinstance(value, float) and not 1 <= value <= 60:
            raise InputError("sync_wait must be between 1 and 60 seconds", field="sync_wait")

    @interval.validator
    def _check_interval(self, _: attrs.Attribute[float | None], value: float | None) -> None:
        if value is not None and not value > 0:
            raise InputError("interval must be positive", field="interval")

    @max_interval.validator
    def _check_max_interval(self, _: attrs.Attribute[float], value: float) -> None:
        if not value > 0 or value < self.min_interval:
            raise InputError(
                "max_interval must be positive and at least min_interval", field="max_interval"
            )

    @delay_cost.validator
    def _check_delay_cost(self, _: attrs.Attribute[float], value: float) -> None:
        if not 0 < value < math.inf:
            raise InputError("delay_cost must be a positive number", field="delay_cost")


def resolve_api_key(api_key: str | None) -> str | None:
    """The key given, else ``QUICKROUTER_API_KEY``, else None (refused at first request)."""
    if api_key is not None:
        return api_key
    return os.environ.get(API_KEY_ENV) or None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` (or under it) or a loopback address."""
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_base_url(base_url: str | None, *, allow_http: bool = False) -> str:
    """The base URL given, else ``QUICKROUTER_BASE_URL``, else QuickRouter's, checked.

    A plain ``http://`` URL is refused unless its host is loopback or ``allow_http`` is set:
    the API key would cross the network in clear text.
    """
    url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        # Not quoted whole: a malformed URL may carry credentials.
        shown = f"{parts.scheme}://{parts.hostname or ''}" if parts.scheme else "no scheme"
        raise InputError(f"base_url must be an http(s) URL, got {shown}", field="base_url")
    if parts.query or parts.fragment:
        raise InputError("base_url must not have a query or fragment", field="base_url")
    if parts.username or parts.password:
        raise InputError("base_url must not carry credentials", field="base_url")
    if parts.scheme == "http" and not allow_http and not is_loopback(parts.hostname):
        raise InputError(
            f"refusing plain http:// for {parts.hostname}: the API key would travel unencrypted; "
            "use https:// or pass allow_http=True",
            field="base_url",
        )
    return url.rstrip("/")
