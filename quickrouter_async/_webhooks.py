"""Webhook signatures: verifying that a webhook request came from the API.

The scheme is Standard Webhooks, as Replicate uses it: the headers ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature``; the signature is
``base64(HMAC-SHA256(key, f"{id}.{timestamp}.{raw body}"))``, keyed with the base64-decoded
part of the ``whsec_...`` secret after the underscore; the header holds one or more
space-separated ``v1,<signature>`` entries, any one of which may match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import TYPE_CHECKING, Final

from ._errors import ProtocolError, WebhookVerificationError
from ._serde import parse_prediction

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._models import Prediction

__all__ = ["DEFAULT_TOLERANCE", "sign_webhook", "verify_webhook"]

DEFAULT_TOLERANCE: Final = 300


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    encoded = secret.split("_", 1)[1] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the webhook secret is not valid base64") from None


def sign_webhook(
    secret: str | bytes, webhook_id: str, timestamp: int | str, body: bytes | str
) -> str:
    """The ``v1,<base64>`` signature of a webhook body (what the sender puts in the header)."""
    raw = body.encode() if isinstance(body, str) else body
    signed = f"{webhook_id}.{timestamp}.".encode() + raw
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"the webhook request has no {name} header")


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
        WebhookVerificationError: a header is missing, the timestamp is outside the
            tolerance, no signature matches, or the body is not a prediction.
    """
    webhook_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("the webhook-timestamp header is not a number") from None
    current = time.time() if now is None else now
    if tolerance is not None and abs(current - sent_at) > tolerance:
        raise WebhookVerificationError(
            f"the webhook timestamp is {abs(current - sent_at):.0f}s away from now "
            f"(tolerance {tolerance:g}s)"
        )
    expected = sign_webhook(secret, webhook_id, timestamp, body).split(",", 1)[1]
    candidates = [entry.split(",", 1) for entry in signatures.split()]
    if not any(
        len(entry) == 2 and entry[0] == "v1" and hmac.compare_digest(entry[1], expected)
        for entry in candidates
    ):
        raise WebhookVerificationError("no webhook signature matches")
    try:
        return parse_prediction(json.loads(body))
    except (ValueError, ProtocolError) as exc:
        raise WebhookVerificationError(f"the webhook body is not a prediction: {exc}") from exc
