"""Small value objects that configure the client, and the environment lookup."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from typing import Final
from urllib.parse import urlsplit

import attrs

from ._errors import InputError

__all__ = [
    "DEFAULT_BASE_URL",
    "Duration",
    "PollPolicy",
    "RetryPolicy",
    "Timeouts",
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
        raise InputError(f"{name} must be seconds or a timedelta, not {value!r}", field=name)
    else:
        seconds = float(value)
    if not seconds >= 0:  # also refuses NaN
        raise InputError(f"{name} must not be negative, got {value!r}", field=name)
    return seconds


def _connect_seconds(value: Duration | None) -> float | None:
    return to_seconds(value, name="connect")


def _read_seconds(value: Duration | None) -> float | None:
    return to_seconds(value, name="read")


def _total_seconds(value: Duration | None) -> float | None:
    return to_seconds(value, name="total")


@attrs.frozen(kw_only=True)
class Timeouts:
    """Limits for one HTTP request, in seconds; None means no limit.

    Attributes:
        connect: to open a connection (including TLS).
        read: between two reads of the answer.
        total: for the whole request, answer included.
    """

    connect: float | None = attrs.field(default=10.0, converter=_connect_seconds)
    read: float | None = attrs.field(default=30.0, converter=_read_seconds)
    total: float | None = attrs.field(default=120.0, converter=_total_seconds)

    @classmethod
    def coerce(cls, value: Timeouts | Duration | None) -> Timeouts:
        """Accept a `Timeouts`, or one number of seconds used as the total limit."""
        if isinstance(value, Timeouts):
            return value
        if value is None:
            return cls()
        seconds = to_seconds(value, name="timeout")
        return cls(connect=seconds, read=seconds, total=seconds)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How the transport retries a request that failed for a passing reason.

    Back-off is exponential with full jitter: the n-th retry waits a random time between
    zero and ``min(maximum, initial * 2 ** (n - 1))``. A server hint (``Retry-After``,
    the body's ``retry_after`` or ``ratelimit-reset``) replaces it, capped at
    ``max_retry_after``.

    Attributes:
        attempts: tries in all, the first one included (1 turns retries off).
        initial: the back-off ceiling of the first retry, in seconds.
        maximum: the largest back-off ceiling, in seconds.
        max_retry_after: the longest server-requested wait that is honoured.
        retry_statuses: HTTP statuses retried for requests that may be repeated.
    """

    attempts: int = attrs.field(default=6, validator=attrs.validators.ge(1))
    initial: float = attrs.field(default=0.5, converter=float, validator=attrs.validators.ge(0))
    maximum: float = attrs.field(default=20.0, converter=float, validator=attrs.validators.ge(0))
    max_retry_after: float = attrs.field(
        default=60.0, converter=float, validator=attrs.validators.ge(0)
    )
    retry_statuses: frozenset[int] = attrs.field(
        default=frozenset({429, 500, 502, 503, 504}), converter=frozenset
    )

    def backoff_ceiling(self, retry: int) -> float:
        """The upper bound of the wait before the ``retry``-th retry (1-based)."""
        return float(min(self.maximum, self.initial * 2 ** (retry - 1)))


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How `wait()`, `watch()` and `run()` learn that a prediction finished.

    Attributes:
        sync_wait: seconds the create request of `run()` is held open with
            ``Prefer: wait`` (1-60); None sends no ``Prefer`` header.
        interval: a fixed poll interval in seconds; None lets the client learn a schedule
            per model from the predictions it has seen.
        min_interval: the shortest gap between two polls of one prediction.
        max_interval: the longest gap between two polls of one prediction.
    """

    sync_wait: float | None = attrs.field(default=60.0)
    interval: float | None = attrs.field(default=None)
    min_interval: float = attrs.field(default=0.1, converter=float)
    max_interval: float = attrs.field(default=5.0, converter=float)

    @sync_wait.validator
    def _check_sync_wait(self, _: attrs.Attribute[float | None], value: float | None) -> None:
        if value is not None and not 1 <= value <= 60:
            raise InputError("sync_wait must be between 1 and 60 seconds", field="sync_wait")

    @interval.validator
    def _check_interval(self, _: attrs.Attribute[float | None], value: float | None) -> None:
        if value is not None and not value > 0:
            raise InputError("interval must be positive", field="interval")


def resolve_api_key(api_key: str | None) -> str | None:
    """The key given, else ``QUICKROUTER_API_KEY``, else None (refused at first request)."""
    if api_key is not None:
        return api_key
    return os.environ.get(API_KEY_ENV) or None


def _is_loopback(host: str) -> bool:
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
        raise InputError(f"base_url must be an http(s) URL, got {url!r}", field="base_url")
    if parts.query or parts.fragment:
        raise InputError("base_url must not have a query or fragment", field="base_url")
    if parts.username or parts.password:
        raise InputError("base_url must not carry credentials", field="base_url")
    if parts.scheme == "http" and not allow_http and not _is_loopback(parts.hostname):
        raise InputError(
            f"refusing plain http:// for {parts.hostname}: the API key would travel unencrypted; "
            "use https:// or pass allow_http=True",
            field="base_url",
        )
    return url.rstrip("/")
