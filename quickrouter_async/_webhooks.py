"""Webhook signatures: verifying that a webhook request came from the API.

The scheme is Standard Webhooks, as Replicate uses it: the headers ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature``; the signature is
``base64(HMAC-SHA256(key, f"{id}.{timestamp}.{raw body}"))``, keyed with the base64-decoded
part of the ``whsec_...`` secret after the underscore; the header holds one or more
space-separated ``v1,<signature>`` entries, any one of which may match.

Verification comes in two steps. `check_webhook` does everything that needs no secret:
the three headers are there, short and well formed, the timestamp is within the
tolerance, and the body is a JSON object. Only a request that passes is worth the secret
(which a receiver may have to fetch from the API), and `check_signature` then compares
the signatures and reads the prediction. Whatever the headers and body hold, both raise
nothing but `WebhookVerificationError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from typing import TYPE_CHECKING, Final

import attrs

from ._errors import ProtocolError, WebhookVerificationError
from ._serde import parse_prediction

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._models import Prediction

__all__ = [
    "DEFAULT_TOLERANCE",
    "SignedWebhook",
    "check_signature",
    "check_webhook",
    "sign_webhook",
    "verify_webhook",
]

DEFAULT_TOLERANCE: Final = 300
# Limits on what a sender may put in the headers, far above what the API sends
# (a ``msg_...`` id of about 30 characters, a 10-digit timestamp, a few 47-character
# signatures during a key rotation), so nothing hostile reaches the HMAC or `int`.
MAX_ID_LENGTH: Final = 256
MAX_SIGNATURE_LENGTH: Final = 4096
_ID: Final = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_ID_LENGTH)  # noqa: UP031 (a regex)
# Unix seconds as ASCII digits: `int` alone would take "+1_0", Arabic-Indic digits, or
# 10**400 (whose distance from now overflows a float).
_TIMESTAMP: Final = re.compile(r"[0-9]{1,15}")
_DIGEST_SIZE: Final = hashlib.sha256().digest_size


@attrs.frozen
class SignedWebhook:
    """A webhook request that passed every check short of its signature.

    Attributes:
        webhook_id: the ``webhook-id`` header.
        timestamp: the ``webhook-timestamp`` header, ASCII digits.
        signatures: the decoded ``v1`` signatures of the ``webhook-signature`` header.
        body: the raw body.
        data: the body's JSON object.
    """

    webhook_id: str
    timestamp: str
    signatures: tuple[bytes, ...]
    body: bytes = attrs.field(repr=False)
    data: dict[str, object] = attrs.field(repr=False)


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    encoded = secret.split("_", 1)[1] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the webhook secret is not valid base64") from None


def _digest(secret: str | bytes, webhook_id: str, timestamp: int | str, body: bytes) -> bytes:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return hmac.new(_key(secret), signed, hashlib.sha256).digest()


def sign_webhook(
    secret: str | bytes, webhook_id: str, timestamp: int | str, body: bytes | str
) -> str:
    """The ``v1,<base64>`` signature of a webhook body (what the sender puts in the header)."""
    raw = body.encode() if isinstance(body, str) else body
    return "v1," + base64.b64encode(_digest(secret, webhook_id, timestamp, raw)).decode()


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            if not isinstance(value, str):
                raise WebhookVerificationError(f"the {name} header is not text")
            return value
    raise WebhookVerificationError(f"the webhook request has no {name} header")


def _signatures(header: str) -> tuple[bytes, ...]:
    """The ``v1`` signatures of the header, decoded; entries of other versions are skipped."""
    if len(header) > MAX_SIGNATURE_LENGTH:
        raise WebhookVerificationError(
            f"the webhook-signature header is longer than {MAX_SIGNATURE_LENGTH} characters"
        )
    found: list[bytes] = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            digest = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):  # not base64, or not ASCII
            continue
        if len(digest) == _DIGEST_SIZE:
            found.append(digest)
    if not found:
        raise WebhookVerificationError("the webhook-signature header holds no v1 signature")
    return tuple(found)


def _json_object(body: bytes) -> dict[str, object]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        raise WebhookVerificationError("the webhook body is not JSON") from None
    if not isinstance(data, dict):
        raise WebhookVerificationError("the webhook body is not a JSON object")
    return data


def check_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> SignedWebhook:
    """Check everything about a webhook request that needs no secret.

    Args:
        headers: the request headers (any mapping; names are matched in any case).
        body: the raw request body, exactly as received.
        tolerance: the largest difference in seconds between the webhook's timestamp and
            now; None skips the check.
        now: the current Unix time, for tests; defaults to the clock.

    Returns:
        The parts `check_signature` needs.

    Raises:
        WebhookVerificationError: a header is missing, too long or malformed, the
            timestamp is outside the tolerance, or the body is not a JSON object.
    """
    webhook_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    signature = _header(headers, "webhook-signature")
    if not _ID.fullmatch(webhook_id):
        raise WebhookVerificationError(
            f"the webhook-id header is not 1 to {MAX_ID_LENGTH} visible ASCII characters"
        )
    if not _TIMESTAMP.fullmatch(timestamp):
        raise WebhookVerificationError(
            "the webhook-timestamp header is not a number of seconds (Unix time)"
        )
    current = time.time() if now is None else now
    distance = abs(current - int(timestamp))
    if tolerance is not None and not distance <= tolerance:
        raise WebhookVerificationError(
            f"the webhook timestamp is {distance:.0f}s away from now (tolerance {tolerance:g}s)"
        )
    signatures = _signatures(signature)
    if isinstance(body, str):
        try:
            body = body.encode()
        except UnicodeEncodeError:  # lone surrogates: no request carries those
            raise WebhookVerificationError("the webhook body is not valid text") from None
    return SignedWebhook(webhook_id, timestamp, signatures, body, _json_object(body))


def check_signature(webhook: SignedWebhook, secret: str | bytes) -> Prediction:
    """Check a webhook's signatures against ``secret`` and return its prediction.

    Raises:
        WebhookVerificationError: no signature matches, the secret is not valid base64,
            or the body is not a prediction.
    """
    expected = _digest(secret, webhook.webhook_id, webhook.timestamp, webhook.body)
    if not any(hmac.compare_digest(given, expected) for given in webhook.signatures):
        raise WebhookVerificationError("no webhook signature matches")
    try:
        return parse_prediction(webhook.data)
    except ProtocolError as exc:
        raise WebhookVerificationError(f"the webhook body is not a prediction: {exc}") from exc


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    secret: str | bytes,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> Prediction:
    """Check a webhook request's signature and return the prediction it carries.

    Args:
        headers: the request headers (any mapping; names are matched in any case).
        body: the raw request body, exactly as received; never re-serialized JSON.
        secret: the signing secret, ``whsec_...`` (from ``GET /v1/webhooks/default/secret``).
        tolerance: the largest difference in seconds between the webhook's timestamp and
            now; None skips the check (replays then pass).
        now: the current Unix time, for tests; defaults to the clock.

    Returns:
        The `Prediction` in the body.

    Raises:
        WebhookVerificationError: a header is missing or malformed, the timestamp is
            outside the tolerance, no signature matches, or the body is not a
            prediction. No other exception, whatever the headers and body hold.
    """
    return check_signature(check_webhook(headers, body, tolerance=tolerance, now=now), secret)
