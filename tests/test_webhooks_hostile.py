"""Hostile webhook requests: refused with a 400, without touching the API.

A `WebhookReceiver` attached to a client pointed at a small server whose secret endpoint
fails: a request that is not a well-formed webhook must not make the receiver fetch the
secret, and a failing secret endpoint is asked once, not once per webhook. Malformed
headers of every kind raise `WebhookVerificationError` and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

import aiohttp
import anyio
import pytest
import quickrouter_async as qr
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quickrouter_async import _receiver
from quickrouter_async._webhooks import sign_webhook
from quickrouter_async.testing import Emulator

from .conftest import FAST_POLL
from .http_servers import Scripted, prediction_json, reply

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
SECRET_PATH = "/replicate/v1/webhooks/default/secret"
BODY = json.dumps(prediction_json("p1")).encode()
# Six tries in all, like the default policy, without its real back-off.
SIX_TRIES = qr.RetryPolicy(attempts=6, initial=0.001, maximum=0.01)


def signed(
    body: bytes = BODY, *, webhook_id: str = "msg_1", secret: str = SECRET
) -> dict[str, str]:
    """The headers of a webhook signed with ``secret``, timestamped now."""
    at = int(time.time())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(at),
        "webhook-signature": sign_webhook(secret, webhook_id, at, body),
    }


@contextlib.asynccontextmanager
async def receiving(
    client: qr.QuickRouter | None = None, **options: object
) -> AsyncIterator[tuple[qr.WebhookReceiver, str]]:
    """A receiver's `handle` served on 127.0.0.1 (a free port), and its URL."""
    receiver = qr.WebhookReceiver(client, **options)  # type: ignore[arg-type]
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield receiver, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def failing_secret(api_key: str = "k") -> AsyncIterator[tuple[Scripted, qr.QuickRouter]]:
    """A server whose secret endpoint answers 503, and a client pointed at it."""
    async with Scripted() as server:
        server.always("GET", SECRET_PATH, reply(503, {"detail": "secret store down"}))
        async with qr.QuickRouter(api_key, base_url=server.base_url, retry=SIX_TRIES) as client:
            yield server, client


async def send(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes = BODY
) -> int:
    async with session.post(url, data=body, headers=headers) as answer:
        return answer.status


# Requests no sender of the API makes: each is refused before the secret is needed.
NOW = str(int(time.time()))
GOOD_SIGNATURE = "v1," + "A" * 43 + "="
MALFORMED: dict[str, dict[str, str]] = {
    "no headers": {},
    "no webhook-id": {"webhook-timestamp": NOW, "webhook-signature": GOOD_SIGNATURE},
    "no webhook-timestamp": {"webhook-id": "m", "webhook-signature": GOOD_SIGNATURE},
    "no webhook-signature": {"webhook-id": "m", "webhook-timestamp": NOW},
    "an oversized id": {
        "webhook-id": "m" * 1000,  # under aiohttp's own limit on a header (8190 bytes)
        "webhook-timestamp": NOW,
        "webhook-signature": GOOD_SIGNATURE,
    },
    "an id with spaces": {
        "webhook-id": "m 1",
        "webhook-timestamp": NOW,
        "webhook-signature": GOOD_SIGNATURE,
    },
    "a timestamp of 10**400": {
        "webhook-id": "m",
        "webhook-timestamp": str(10**400),
        "webhook-signature": GOOD_SIGNATURE,
    },
    "a timestamp that is not a number": {
        "webhook-id": "m",
        "webhook-timestamp": "1e9",
        "webhook-signature": GOOD_SIGNATURE,
    },
    "a stale timestamp": {
        "webhook-id": "m",
        "webhook-timestamp": "1000000000",
        "webhook-signature": GOOD_SIGNATURE,
    },
    "a signature that is not base64": {
        "webhook-id": "m",
        "webhook-timestamp": NOW,
        "webhook-signature": "v1,not-base64!",
    },
    "a non-ASCII signature": {
        "webhook-id": "m",
        "webhook-timestamp": NOW,
        "webhook-signature": "v1,ü" + "A" * 42 + "=",
    },
    "an oversized signature": {
        "webhook-id": "m",
        "webhook-timestamp": NOW,
        "webhook-signature": " ".join([GOOD_SIGNATURE] * 100),
    },
    "only a v2 signature": {
        "webhook-id": "m",
        "webhook-timestamp": NOW,
        "webhook-signature": "v2," + "A" * 43 + "=",
    },
}


async def test_header_less_webhooks_make_no_api_request() -> None:
    async with failing_secret() as (server, client), receiving(client) as (_receiver, url):
        session = client._transport.session
        with anyio.fail_after(10):
            statuses = [await send(session, url, {}) for _ in range(5)]
        assert statuses == [400] * 5
        assert server.count() == 0  # not one request to the API


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_webhooks_are_refused_without_the_secret(case: str) -> None:
    async with failing_secret() as (server, client), receiving(client) as (_receiver, url):
        status = await send(client._transport.session, url, MALFORMED[case])
        assert status == 400
        assert server.count() == 0


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe", b"[" * 100_000])
async def test_a_body_that_is_not_a_json_object_is_refused_without_the_secret(
    body: bytes,
) -> None:
    async with failing_secret() as (server, client), receiving(client) as (_receiver, url):
        assert await send(client._transport.session, url, signed(body), body) == 400
        assert server.count() == 0


async def test_a_failing_secret_endpoint_is_asked_once_for_many_webhooks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not "k": the secret's answer, {"key": ...}, must come back as sent.
    async with (
        failing_secret("sk-test") as (server, client),
        receiving(client) as (receiver, url),
    ):
        session = client._transport.session
        statuses: list[int] = []

        async def one(number: int) -> None:
            statuses.append(await send(session, url, signed(webhook_id=f"m{number}")))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for number in range(5):
                    group.start_soon(one, number)
        assert statuses == [500] * 5
        assert server.count("GET", SECRET_PATH) == 6  # one fetch, six tries, for all five
        with pytest.raises(qr.QuickRouterError, match="could not be fetched") as caught:
            await receiver.secret()
        assert "503" in str(caught.value)
        assert server.count("GET", SECRET_PATH) == 6

        # Once the pause is over, the next webhook fetches the secret again.
        server.always("GET", SECRET_PATH, reply(200, {"key": SECRET}))
        monkeypatch.setattr(_receiver, "SECRET_RETRY_AFTER", 0.0)
        assert await send(session, url, signed(webhook_id="m9")) == 200
        assert server.count("GET", SECRET_PATH) == 7


async def test_malformed_headers_answer_400_through_the_handler() -> None:
    async with receiving(secret=SECRET) as (_receiver, url), aiohttp.ClientSession() as session:
        for case in ("a timestamp of 10**400", "a non-ASCII signature"):
            assert await send(session, url, MALFORMED[case]) == 400, case
        assert await send(session, url, signed()) == 200


def test_verify_webhook_raises_its_own_error_for_the_timestamp_and_signature_cases() -> None:
    for case in ("a timestamp of 10**400", "a non-ASCII signature", "an oversized id"):
        with pytest.raises(qr.WebhookVerificationError):
            qr.verify_webhook(MALFORMED[case], BODY, SECRET)


NAMES = ("webhook-id", "webhook-timestamp", "webhook-signature")


HEADER_VALUES = st.one_of(
    st.text(),
    st.from_regex(r"\A[0-9]{1,500}\Z"),  # timestamps, however long
    st.builds("v1,{}".format, st.text()),  # signatures, however malformed
    st.just(GOOD_SIGNATURE),
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.fixed_dictionaries({}, optional=dict.fromkeys(NAMES, HEADER_VALUES)),
    upper=st.booleans(),
    body=st.one_of(st.binary(max_size=300), st.text(max_size=300)),
    secret=st.one_of(st.just(SECRET), st.text(max_size=40), st.binary(max_size=40)),
    tolerance=st.sampled_from([None, 300, 1e300]),
)
def test_any_headers_and_body_give_a_prediction_or_a_verification_error(
    values: dict[str, str],
    upper: bool,
    body: bytes | str,
    secret: str | bytes,
    tolerance: float | None,
) -> None:
    headers = {name.upper() if upper else name: value for name, value in values.items()}
    with contextlib.suppress(qr.WebhookVerificationError):
        assert qr.verify_webhook(headers, body, secret, tolerance=tolerance).id


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(
    data=st.dictionaries(
        st.sampled_from(["id", "status", "created_at", "output", "logs", "input", "urls", "x"]),
        JSON,
    )
)
def test_any_signed_json_object_gives_a_prediction_or_a_verification_error(
    data: dict[str, object],
) -> None:
    body = json.dumps(data).encode()
    with contextlib.suppress(qr.WebhookVerificationError):
        assert qr.verify_webhook(signed(body), body, SECRET).id


async def test_a_webhook_url_the_api_cannot_reach_is_named_once_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="quickrouter_async._receiver")
    unreachable = "http://127.0.0.1:9/hook"  # the discard port: connections are refused
    async with (
        Emulator(duration=0.3, seed=31, webhook_retries=0) as emulator,
        qr.QuickRouter(emulator.api_key, base_url=emulator.base_url, poll=FAST_POLL) as client,
        receiving(client, fallback_interval=0.5) as (receiver, url),
    ):
        with anyio.fail_after(30):
            first = await client.run(qr.Imagen4Input(prompt="a"), webhook=unreachable)
            assert receiver.hub.silent  # the waits poll now
            polls = emulator.count("get")
            later = [
                await client.run(qr.Imagen4Input(prompt=prompt), webhook=unreachable)
                for prompt in "bc"
            ]
        assert first.succeeded
        assert all(p.succeeded for p in later)
        assert emulator.count("get") > polls  # polled on the ordinary schedule
        warnings = [
            r
            for r in caplog.records
            if r.name == "quickrouter_async._receiver" and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 1  # once per receiver, not per prediction
        assert unreachable in warnings[0].getMessage()
        # Webhooks arrive again: the receiver trusts them again.
        with anyio.fail_after(30):
            await client.run(qr.Imagen4Input(prompt="d"), webhook=url)
            await emulator.drain_webhooks()
        assert not receiver.hub.silent


async def test_waits_on_webhooks_poll_at_once_when_the_receiver_falls_silent() -> None:
    hub = qr.WebhookReceiver(secret=SECRET, fallback_interval=30).hub
    waiting = qr.Prediction(id="w", status=qr.Status.STARTING, webhook="http://h/")
    quiet = qr.Prediction(id="q", status=qr.Status.STARTING, webhook="http://h/")
    results: list[qr.Prediction | None] = []

    async def wait_long() -> None:
        results.append(await hub.next(waiting, 30))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(wait_long)
            await anyio.wait_all_tasks_blocked()
            assert await hub.next(quiet, 0.01) is None  # nothing came: silent
            assert hub.silent
    assert results == [None]  # woken at once, not after 30 s
    assert not hub.covers(waiting)


async def test_a_receiver_warns_once_and_only_when_no_webhook_came_at_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = qr.WebhookReceiver(secret=SECRET).hub
    hook = "http://127.0.0.1:9/hook"
    only_completed = qr.Prediction(
        id="c", status=qr.Status.STARTING, webhook=hook, webhook_events_filter=["completed"]
    )
    assert await hub.next(only_completed, 0.01) is None
    assert not hub.silent  # no "start" webhook was asked for: a quiet period proves nothing

    waiting = qr.Prediction(id="w", status=qr.Status.STARTING, webhook=hook)
    async with anyio.create_task_group() as group:
        group.start_soon(hub.next, waiting, 0.2)
        await anyio.wait_all_tasks_blocked()
        hub.publish(qr.Prediction(id="other", status=qr.Status.PROCESSING))
    assert not hub.silent  # webhooks arrive, if not for this prediction yet

    with caplog.at_level(logging.WARNING, logger="quickrouter_async._receiver"):
        for number in range(3):  # silent, heard again, silent again...
            assert (
                await hub.next(
                    qr.Prediction(id=f"s{number}", status=qr.Status.STARTING, webhook=hook), 0.01
                )
                is None
            )
            assert hub.silent
            hub.publish(qr.Prediction(id=f"s{number}", status=qr.Status.PROCESSING))
            assert not hub.silent
    assert len(caplog.records) == 1
    assert hook in caplog.records[0].getMessage()


def test_header_values_that_are_not_text_and_bodies_that_are_not_unicode() -> None:
    with pytest.raises(qr.WebhookVerificationError, match="not text"):
        qr.verify_webhook({"webhook-id": 5, "webhook-timestamp": NOW}, BODY, SECRET)  # type: ignore[dict-item]
    with pytest.raises(qr.WebhookVerificationError, match="not valid text"):
        qr.verify_webhook(signed(b"x"), '{"id": "\ud800"}', SECRET)


async def test_a_secret_answer_without_a_key_answers_500() -> None:
    async with Scripted() as server:
        server.always("GET", SECRET_PATH, reply(200, {"secret": "whsec_AAAA"}))
        async with (
            qr.QuickRouter("sk-test", base_url=server.base_url) as client,
            receiving(client) as (_receiver, url),
        ):
            assert await send(client._transport.session, url, signed()) == 500
        assert server.count("GET", SECRET_PATH) == 1


async def test_a_wait_is_not_woken_by_news_older_than_it_has() -> None:
    hub = qr.WebhookReceiver(secret=SECRET).hub
    hub.publish(qr.Prediction(id="p", status=qr.Status.STARTING, webhook="http://h/"))
    seen = qr.Prediction(id="p", status=qr.Status.PROCESSING, webhook="http://h/")
    assert await hub.next(seen, 0.01) is None  # the polled snapshot is further along
    assert not hub.silent  # a webhook did come for it
