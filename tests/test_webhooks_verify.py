"""Webhook signature verification (Standard Webhooks, as Replicate signs them)."""

from __future__ import annotations

import base64
import json

import pytest
import quickrouter_async as qr
from hypothesis import given
from hypothesis import strategies as st
from quickrouter_async._webhooks import sign_webhook

# The example of Replicate's documentation.
SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
BODY = json.dumps({"id": "abc", "status": "succeeded", "output": ["https://x/1.png"]}).encode()
NOW = 1_700_000_000


def headers(body: bytes = BODY, *, secret: str = SECRET, at: int = NOW) -> dict[str, str]:
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(at),
        "webhook-signature": sign_webhook(secret, "msg_1", at, body),
    }


def test_valid_signature_returns_the_prediction() -> None:
    p = qr.verify_webhook(headers(), BODY, SECRET, now=NOW)
    assert p.id == "abc"
    assert p.succeeded


def test_header_names_in_any_case_and_several_signatures() -> None:
    good = headers()
    mixed = {
        "Webhook-Id": good["webhook-id"],
        "WEBHOOK-TIMESTAMP": good["webhook-timestamp"],
        "Webhook-Signature": "v1,bm9wZQ== v2,whatever " + good["webhook-signature"],
    }
    assert qr.verify_webhook(mixed, BODY.decode(), SECRET, now=NOW).id == "abc"


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(missing: str) -> None:
    h = headers()
    del h[missing]
    with pytest.raises(qr.WebhookVerificationError, match=missing):
        qr.verify_webhook(h, BODY, SECRET, now=NOW)


def test_tampered_body_and_wrong_secret() -> None:
    with pytest.raises(qr.WebhookVerificationError, match="no webhook signature"):
        qr.verify_webhook(headers(), BODY + b" ", SECRET, now=NOW)
    other = "whsec_" + base64.b64encode(b"another key 123").decode()
    with pytest.raises(qr.WebhookVerificationError, match="no webhook signature"):
        qr.verify_webhook(headers(secret=other), BODY, SECRET, now=NOW)


def test_timestamp_tolerance() -> None:
    with pytest.raises(qr.WebhookVerificationError, match="tolerance"):
        qr.verify_webhook(headers(at=NOW - 301), BODY, SECRET, now=NOW)
    assert qr.verify_webhook(headers(at=NOW - 299), BODY, SECRET, now=NOW)
    assert qr.verify_webhook(headers(at=NOW - 10_000), BODY, SECRET, tolerance=None, now=NOW)
    h = headers() | {"webhook-timestamp": "soon"}
    with pytest.raises(qr.WebhookVerificationError, match="not a number"):
        qr.verify_webhook(h, BODY, SECRET, now=NOW)


def test_bad_secret_and_bad_body() -> None:
    with pytest.raises(qr.WebhookVerificationError, match="base64"):
        qr.verify_webhook(headers(), BODY, "whsec_***", now=NOW)
    body = b'{"not": "a prediction"}'
    with pytest.raises(qr.WebhookVerificationError, match="not a prediction"):
        qr.verify_webhook(headers(body), body, SECRET, now=NOW)
    assert qr.verify_webhook(headers(secret="c2VjcmV0"), BODY, b"secret", now=NOW)


@given(body=st.binary(max_size=200), flip=st.integers(min_value=0, max_value=199))
def test_any_change_to_the_body_is_caught(body: bytes, flip: int) -> None:
    signature = sign_webhook(SECRET, "id", NOW, body)
    if not body:
        return
    index = flip % len(body)
    changed = body[:index] + bytes([body[index] ^ 1]) + body[index + 1 :]
    h = {"webhook-id": "id", "webhook-timestamp": str(NOW), "webhook-signature": signature}
    with pytest.raises(qr.WebhookVerificationError):
        qr.verify_webhook(h, changed, SECRET, now=NOW)
