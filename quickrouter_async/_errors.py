"""The exception tree of quickrouter_async.

Every error the library raises on purpose derives from `QuickRouterError`::

    QuickRouterError
    ├── InputError (also ValueError)       bad input, caught before any request
    ├── APIError (.status, .retry_after)   the API answered with an HTTP error
    │   ├── BadRequestError                400
    │   ├── AuthenticationError            401
    │   ├── PaymentRequiredError           402
    │   ├── PermissionDeniedError          403
    │   ├── NotFoundError                  404
    │   ├── InvalidInputError              422 (.invalid_fields)
    │   ├── RateLimitError                 429 (.retry_after)
    │   └── ServerError                    5xx
    ├── TransportError                     no usable answer: connection failed or reset
    │   ├── RequestTimeout                 one HTTP request took too long
    │   └── CreateInDoubt                  a create may have happened; carries the input
    ├── ProtocolError                      an answer that is not what the API promises
    │   └── OutputURLRefused               an output URL's host or address is not allowed
    ├── DownloadError (also OSError)       an output file could not be saved to disk
    ├── PredictionError (.prediction)      a prediction ended badly
    │   ├── PredictionFailed               status "failed"
    │   └── PredictionCanceled             status "canceled" or "aborted"
    ├── WaitTimeout (.prediction)          the deadline of wait()/run() passed
    └── WebhookVerificationError           a webhook failed signature checks

Messages never contain the API key: they are built from the answer's body (with any echo
of the key replaced) and the request's method and path only, and no exception of the HTTP
library (whose request details hold the key) is ever chained as a cause or context. Any
value a message quotes goes through `short_repr`, so no message quotes more than a few
hundred characters of it.
"""

from __future__ import annotations

import builtins
import reprlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._models import Prediction

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "CreateInDoubt",
    "DownloadError",
    "InputError",
    "InvalidInputError",
    "NotFoundError",
    "OutputURLRefused",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "PredictionCanceled",
    "PredictionError",
    "PredictionFailed",
    "ProtocolError",
    "QuickRouterError",
    "RateLimitError",
    "RequestTimeout",
    "ServerError",
    "TransportError",
    "WaitTimeout",
    "WebhookVerificationError",
    "short_repr",
]


class QuickRouterError(Exception):
    """The base of every error quickrouter_async raises on purpose."""


class InputError(QuickRouterError, ValueError):
    """Input that the API would refuse, caught before any request was sent.

    Attributes:
        field: the name of the offending input field, when one is to blame.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class APIError(QuickRouterError):
    """The API answered with an HTTP error status.

    Attributes:
        status: the HTTP status code.
        title: the problem's short title (RFC 7807 ``title``), if any.
        detail: the human-readable explanation, if any.
        body: the parsed JSON body (a dict), the raw text, or None.
        method: the HTTP method of the request.
        path: the path of the request (never the query's secrets nor the key).
        retry_after: seconds the server asked to wait before trying again
            (``Retry-After``, the body's ``retry_after``), when it said so.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        title: str | None = None,
        detail: str | None = None,
        body: object = None,
        method: str = "",
        path: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.detail = detail
        self.body = body
        self.method = method
        self.path = path
        self.retry_after = retry_after


class BadRequestError(APIError):
    """HTTP 400: the request was malformed."""


class AuthenticationError(APIError):
    """HTTP 401: the API key is missing or wrong."""


class PaymentRequiredError(APIError):
    """HTTP 402: billing is not set up, or the credit ran out."""


class PermissionDeniedError(APIError):
    """HTTP 403: the key may not use this model or endpoint."""


class NotFoundError(APIError):
    """HTTP 404: no such prediction, model or endpoint."""


class InvalidInputError(APIError):
    """HTTP 422: the server refused the input or the model version.

    Attributes:
        invalid_fields: the server's list of ``{"type", "field", "description"}`` entries.
    """

    def __init__(
        self,
        message: str,
        *,
        invalid_fields: Sequence[Mapping[str, Any]] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.invalid_fields: list[dict[str, Any]] = [dict(f) for f in invalid_fields]


class RateLimitError(APIError):
    """HTTP 429: the request was throttled.

    ``retry_after`` is the wait the server asked for, read from ``Retry-After``, the
    body's ``retry_after``, the "resets in ~30s" detail or ``ratelimit-reset``.

    Attributes:
        remaining: the answer's ``ratelimit-remaining``, when it had one: above 0, the
            refusal was not caused by the pace of requests.
    """

    def __init__(self, message: str, *, remaining: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.remaining = remaining


class ServerError(APIError):
    """HTTP 5xx: the server failed."""


class TransportError(QuickRouterError):
    """No usable answer arrived: the connection failed, was reset or timed out.

    Attributes:
        request_sent: False only when the request certainly never reached the server
            (the connection could not be opened), so sending it again is safe.
    """

    def __init__(self, message: str, *, request_sent: bool = True) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class RequestTimeout(TransportError):
    """One HTTP request took longer than its timeout."""


class CreateInDoubt(TransportError):
    """A create may or may not have produced a prediction, and it could not be looked up.

    The prediction may exist on the server and may be billed. Where the server lists
    predictions, look it up with ``client.list_predictions()`` before sending the input
    again; ``RetryPolicy(in_doubt="resend")`` sends such creates again by itself, at the
    risk of paying twice. The error that made the create doubtful is its ``__cause__``.

    Attributes:
        model: the model the create was for.
        input: the input that was sent.
    """

    def __init__(self, message: str, *, model: str, input: Mapping[str, Any]) -> None:  # noqa: A002
        super().__init__(message, request_sent=True)
        self.model = model
        self.input = dict(input)


class ProtocolError(QuickRouterError):
    """The server's answer is not what the API promises (wrong shape, type or encoding)."""


class OutputURLRefused(ProtocolError):
    """An output URL leads to a host or an address downloads may not reach.

    Refused: a host outside ``output_hosts`` (when given), and link-local or loopback
    addresses (loopback only while the API itself is elsewhere), whether the URL names
    the address, a host name resolves to it, or a redirect leads there.

    Attributes:
        url: the refused URL, without its query (which may carry a token).
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class DownloadError(QuickRouterError, OSError):
    """An output file could not be saved: the disk is full, a folder is not writable, a
    directory is in the way...

    It is an `OSError` too, with the ``errno``, ``strerror`` and ``filename`` of the
    failure behind it (its ``__cause__``); the message says what to do. No partial file
    is left behind.
    """

    def __init__(
        self,
        message: str,
        *,
        errno: int | None = None,
        strerror: str | None = None,
        filename: str | None = None,
    ) -> None:
        super().__init__(message)
        self.errno = errno
        self.strerror = strerror
        self.filename = filename

    def __str__(self) -> str:
        # OSError's own __str__ would show "[Errno 28] ..." instead of the message.
        return str(self.args[0])


class PredictionError(QuickRouterError):
    """A prediction reached a terminal status other than ``succeeded``.

    Attributes:
        prediction: the terminal prediction.
    """

    def __init__(self, message: str, *, prediction: Prediction) -> None:
        super().__init__(message)
        self.prediction = prediction


class PredictionFailed(PredictionError):
    """The prediction ended with status ``failed``; ``prediction.error`` says why."""


class PredictionCanceled(PredictionError):
    """The prediction ended with status ``canceled`` or ``aborted``."""


class WaitTimeout(QuickRouterError, TimeoutError):
    """The deadline of ``wait()`` or ``run()`` passed before the prediction finished.

    Attributes:
        prediction: the last prediction seen, or None if none was seen.
    """

    def __init__(self, message: str, *, prediction: Prediction | None) -> None:
        super().__init__(message)
        self.prediction = prediction


class WebhookVerificationError(QuickRouterError):
    """A webhook request failed verification (signature, timestamp or body)."""


# What `short_repr` shows of one value: enough to recognise it, never megabytes of it.
SHORT_REPR_CHARS: Final = 200


class _ShortRepr(reprlib.Repr):
    """`reprlib.Repr` that slices byte strings before quoting them, says how long a cut
    string was, and survives integers too long to print (reprlib already survives a
    broken ``__repr__``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = 80
        self.maxother = 80
        self.maxlong = 40
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 5
        self.maxdict = 5

    def _quoted(self, x: str | bytes, unit: str) -> str:
        # Sliced before quoting; escapes (a NUL byte quotes as four characters) can make
        # even a short one long, so the quoted text is cut again.
        quoted = builtins.repr(x[: self.maxstring])
        if len(x) <= self.maxstring and len(quoted) <= self.maxstring:
            return quoted
        return f"{quoted[: self.maxstring]}... ({len(x):,} {unit})"

    # reprlib's methods take the nesting level; these leaves have no use for it.
    def repr_str(self, x: str, level: int) -> str:  # noqa: ARG002
        return self._quoted(x, "characters")

    def repr_bytes(self, x: bytes, level: int) -> str:  # noqa: ARG002
        return self._quoted(x, "bytes")

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return f"bytearray({self.repr_bytes(bytes(x[: self.maxstring]), level)})" + (
            f", {len(x):,} bytes in all" if len(x) > self.maxstring else ""
        )

    def repr_memoryview(self, x: memoryview, level: int) -> str:  # noqa: ARG002
        return f"<memoryview of {x.nbytes:,} bytes>"

    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:  # more digits than int-to-str conversion allows
            return f"<int of {x.bit_length():,} bits>"


_SHORT_REPR: Final = _ShortRepr()


def short_repr(value: object, limit: int = SHORT_REPR_CHARS) -> str:
    """The repr of ``value`` for an error message: at most ``limit`` characters.

    Long strings and byte strings show their start and their length; containers show
    their first few items, a few levels deep.
    """
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
