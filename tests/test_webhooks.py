"""Webhooks end to end: the emulator delivers them, a `WebhookReceiver` completes waits.

Every test runs a real receiving aiohttp app on 127.0.0.1 (port 0) that the emulator
POSTs to, and a client pointed at the emulator.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import anyio
import pytest
import quickrouter_async as qr
from aiohttp import web
from quickrouter_async._webhooks import sign_webhook
from quickrouter_async.testing import Emulator

from .conftest import FAST_POLL, FAST_RETRY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

pytestmark = pytest.mark.anyio

PATH = "/hooks/quickrouter"
# No poll while webhooks arrive: the fallback poll comes only after a long quiet period.
QUIET = 30.0


@contextlib.asynccontextmanager
async def serve(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port) and yield the webhook URL."""
    app = web.Application()
    app.router.add_post(PATH, handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}{PATH}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def setup(
    emulator: Emulator, *, fallback_interval: float = QUIET, **options: object
) -> AsyncIterator[tuple[qr.QuickRouter, qr.WebhookReceiver, str]]:
    # A fixed, high create rate: the adaptive one starts slow, which is not the point here.
    async with qr.QuickRouter(
        emulator.api_key,
        base_url=emulator.base_url,
        poll=FAST_POLL,
        retry=FAST_RETRY,
        rate_limit=1000.0,
    ) as client:
        receiver = qr.WebhookReceiver(client, fallback_interval=fallback_interval, **options)  # type: ignore[arg-type]
        async with serve(receiver.handle) as url:
            yield client, receiver, url


async def test_one_hundred_predictions_complete_by_push_with_zero_polls() -> None:
    async with Emulator(duration=(0.02, 0.2), seed=11) as emulator:
        async with setup(emulator) as (client, _receiver, url):
            done: list[qr.Prediction] = []

            async def one(number: int) -> None:
                done.append(
                    await client.run(
                        qr.Imagen4Input(prompt=f"lighthouse {number}"), webhook=url, timeout=10
                    )
                )

            async with anyio.create_task_group() as group:
                for number in range(100):
                    group.start_soon(one, number)
            await emulator.drain_webhooks()
        assert len(done) == 100
        assert all(p.succeeded and p.output_urls for p in done)
        assert emulator.count("create") == 100
        assert emulator.count("get") == 0  # not a single poll
        assert emulator.count("webhook_secret") == 1  # fetched once, through the client
        completed = [d for d in emulator.webhook_deliveries if d.event == "completed"]
        assert len(completed) == 100
        assert all(d.ok for d in emulator.webhook_deliveries)


async def test_wait_and_watch_complete_by_push() -> None:
    async with Emulator(duration=0.1, seed=2) as emulator:
        async with setup(emulator) as (client, _receiver, url):
            first = await client.create(qr.Imagen4Input(prompt="a"), webhook=url)
            second = await client.create(qr.Imagen4Input(prompt="b"), webhook=url)
            statuses = [snapshot.status async for snapshot in client.watch(first)]
            assert statuses[0] is qr.Status.STARTING
            assert statuses[-1] is qr.Status.SUCCEEDED
            assert qr.Status.PROCESSING in statuses
            assert (await client.wait(second, timeout=5)).succeeded
        assert emulator.count("get") == 0


async def test_the_events_filter_is_honoured() -> None:
    async with Emulator(duration=0.05, seed=3) as emulator:
        async with setup(emulator) as (client, _receiver, url):
            await client.run(
                qr.Imagen4Input(prompt="only the end"),
                webhook=url,
                webhook_events_filter=["completed"],
            )
            await client.run(qr.Imagen4Input(prompt="everything"), webhook=url)
            await emulator.drain_webhooks()
        first, second = (p.id for p in emulator.predictions)
        assert [d.event for d in emulator.webhook_deliveries if d.prediction_id == first] == [
            "completed"
        ]
        events = [d.event for d in emulator.webhook_deliveries if d.prediction_id == second]
        assert events[0] == "start"
        assert events[-1] == "completed"
        assert "logs" in events


async def test_early_output_is_sent_as_an_output_event() -> None:
    async with Emulator(duration=0.05, seed=4, early_output=True) as emulator:
        async with setup(emulator) as (client, _receiver, url):
            await client.run(
                qr.Imagen4Input(prompt="x"),
                webhook=url,
                webhook_events_filter=["output", "completed"],
            )
            await emulator.drain_webhooks()
        assert [d.event for d in emulator.webhook_deliveries] == ["output", "completed"]
        assert emulator.webhook_deliveries[0].prediction_status == "processing"


async def test_duplicates_and_out_of_order_webhooks_are_dropped() -> None:
    async with Emulator(
        duration=0.05, seed=5, webhook_duplicate_rate=1.0, webhook_reorder_rate=1.0
    ) as emulator:
        async with setup(emulator) as (client, receiver, _url):
            seen: list[qr.Prediction | None] = []

            async def record(request: web.Request) -> web.Response:
                seen.append(await receiver.receive(request.headers, await request.read()))
                return web.Response(text="ok")

            async with serve(record) as recording_url:
                prediction = await client.run(qr.Imagen4Input(prompt="x"), webhook=recording_url)
                await emulator.drain_webhooks()
        assert prediction.succeeded
        deliveries = emulator.webhook_deliveries
        assert any(d.duplicate for d in deliveries)
        assert any(d.late for d in deliveries)
        # Intermediate webhooks were all held past completion: the terminal one came
        # first and everything after it (late or duplicate) was dropped.
        assert deliveries[0].event == "completed"
        assert seen[0] is not None
        assert seen[0].status is qr.Status.SUCCEEDED
        assert seen[1:] == [None] * (len(seen) - 1)
        assert emulator.count("get") == 0


async def test_the_completed_webhook_is_retried_until_accepted() -> None:
    async with Emulator(duration=0.02, seed=6, webhook_retry_delay=0.001) as emulator:
        answers = iter([500, 502, 200])

        async def flaky(_request: web.Request) -> web.Response:
            return web.Response(status=next(answers))

        async with (
            qr.QuickRouter(emulator.api_key, base_url=emulator.base_url) as client,
            serve(flaky) as url,
        ):
            await client.create(
                qr.Imagen4Input(prompt="x"), webhook=url, webhook_events_filter=["completed"]
            )
            await emulator.drain_webhooks()
        deliveries = emulator.webhook_deliveries
        assert [(d.attempt, d.status) for d in deliveries] == [(1, 500), (2, 502), (3, 200)]
        assert len({d.webhook_id for d in deliveries}) == 1


async def test_intermediate_webhooks_are_not_retried_and_connection_errors_are() -> None:
    async with Emulator(
        duration=0.02, seed=7, webhook_retries=2, webhook_retry_delay=0.001
    ) as emulator:
        async with serve(_not_found) as url:
            pass  # the server is gone: connections are refused
        async with qr.QuickRouter(emulator.api_key, base_url=emulator.base_url) as client:
            await client.create(qr.Imagen4Input(prompt="x"), webhook=url)
            await emulator.drain_webhooks()
        deliveries = emulator.webhook_deliveries
        assert all(d.status is None and d.error for d in deliveries)
        assert [d.attempt for d in deliveries if d.event == "completed"] == [1, 2, 3]
        assert all(d.attempt == 1 for d in deliveries if d.event != "completed")


async def _not_found(_request: web.Request) -> web.Response:
    return web.Response(status=404)


async def _accept(_request: web.Request) -> web.Response:
    return web.Response(status=200)


async def test_a_cancel_sends_the_completed_webhook_at_once() -> None:
    async with Emulator(duration=30, seed=8) as emulator:
        async with setup(emulator) as (client, _receiver, url):
            prediction = await client.create(qr.Imagen4Input(prompt="x"), webhook=url)
            with anyio.fail_after(5):
                await client.cancel(prediction)
                done = await client.wait(prediction)
        assert done.status is qr.Status.CANCELED
        assert emulator.count("get") == 0


async def test_a_lost_webhook_falls_back_to_a_poll() -> None:
    async with Emulator(duration=0.02, seed=9) as emulator:
        async with (
            setup(emulator, fallback_interval=0.05) as (client, _receiver, _url),
            serve(_accept) as black_hole,
        ):
            done = await client.run(qr.Imagen4Input(prompt="x"), webhook=black_hole)
        assert done.succeeded
        assert emulator.count("get") >= 1


async def test_without_a_webhook_the_client_polls_as_before() -> None:
    async with Emulator(duration=0.02, seed=10) as emulator:
        async with setup(emulator) as (client, _receiver, _url):
            assert (await client.run(qr.Imagen4Input(prompt="x"))).succeeded
        assert emulator.count("get") >= 1


async def test_the_handler_rejects_bad_signatures_and_stale_timestamps() -> None:
    secret = "whsec_c2VjcmV0IGtleSBmb3IgdGVzdHM="
    receiver = qr.WebhookReceiver(secret=secret)
    body = b'{"id": "p1", "status": "succeeded"}'
    good = {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": sign_webhook(secret, "msg_1", 1700000000, body),
    }
    with pytest.raises(qr.WebhookVerificationError, match="tolerance"):
        await receiver.receive(good, body)
    lenient = qr.WebhookReceiver(secret=secret, tolerance=None)
    received = await lenient.receive(good, body)
    assert received is not None
    assert received.id == "p1"
    assert await lenient.receive(good, body) is None  # the same webhook-id again
    async with serve(lenient.handle) as url, qr.QuickRouter("k", base_url=url) as client:
        session = client._transport.session
        async with session.post(url, data=body, headers=good | {"webhook-id": "m2"}) as answer:
            assert answer.status == 400
        signed = good | {
            "webhook-id": "m3",
            "webhook-signature": sign_webhook(secret, "m3", 1700000000, body),
        }
        async with session.post(url, data=body, headers=signed) as answer:
            assert answer.status == 200  # after a terminal webhook: accepted, ignored


async def test_the_handler_answers_500_when_the_secret_cannot_be_fetched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        Emulator(duration=0.02, api_key="right") as emulator,
        qr.QuickRouter("wrong", base_url=emulator.base_url, retry=FAST_RETRY) as client,
    ):
        receiver = qr.WebhookReceiver(client)
        body = b'{"id": "p1", "status": "succeeded"}'
        now = int(time.time())
        # Well formed, so worth the secret; signed with a key the receiver cannot know yet.
        headers = {
            "webhook-id": "x",
            "webhook-timestamp": str(now),
            "webhook-signature": sign_webhook("whsec_AAAA", "x", now, body),
        }
        async with (
            serve(receiver.handle) as url,
            client._transport.session.post(url, data=body, headers=headers) as answer,
        ):
            assert answer.status == 500
        assert emulator.count("webhook_secret") == 1
    assert "wrong" not in caplog.text


def test_the_receiver_needs_a_client_or_a_secret_and_sane_knobs() -> None:
    with pytest.raises(qr.InputError, match="client or a secret"):
        qr.WebhookReceiver()
    with pytest.raises(qr.InputError, match="fallback_interval"):
        qr.WebhookReceiver(secret="whsec_AAAA", fallback_interval=0)
    with pytest.raises(qr.InputError, match="remember"):
        qr.WebhookReceiver(secret="whsec_AAAA", remember=0)
    shown = repr(qr.WebhookReceiver(secret="whsec_AAAA"))
    assert "detached" in shown
    assert "whsec" not in shown


async def test_memory_is_bounded() -> None:
    secret = "whsec_c2VjcmV0IGtleSBmb3IgdGVzdHM="
    receiver = qr.WebhookReceiver(secret=secret, tolerance=None, remember=3)
    for number in range(10):
        body = f'{{"id": "p{number}", "status": "processing"}}'.encode()
        headers = {
            "webhook-id": f"m{number}",
            "webhook-timestamp": "1",
            "webhook-signature": sign_webhook(secret, f"m{number}", 1, body),
        }
        assert await receiver.receive(headers, body) is not None
    assert len(receiver._seen_ids) == 3
    assert receiver.hub.latest("p0") is None
    assert receiver.hub.latest("p9") is not None


async def test_the_emulator_stops_with_deliveries_pending() -> None:
    async with (
        Emulator(duration=30, seed=12) as emulator,
        qr.QuickRouter(emulator.api_key, base_url=emulator.base_url) as client,
    ):
        await client.create(qr.Imagen4Input(prompt="x"), webhook="http://127.0.0.1:9/h")
    assert not emulator.running
    assert emulator.webhook_deliveries == []


def test_emulator_webhook_knobs_are_validated() -> None:
    with pytest.raises(ValueError, match="webhook_duplicate_rate"):
        Emulator(webhook_duplicate_rate=2)
    with pytest.raises(ValueError, match="webhook_reorder_rate"):
        Emulator(webhook_reorder_rate=-1)
    with pytest.raises(ValueError, match="webhook_retries"):
        Emulator(webhook_retries=-1)
    assert Emulator(webhook_retry_delay=0.5).webhook_retry_delay == 0.5


def test_emulator_webhook_flags() -> None:
    from quickrouter_async.testing import _cli  # noqa: PLC0415 (only this test needs it)

    argv = [
        "--webhook-duplicate-rate", "0.1", "--webhook-reorder-rate", "0.2",
        "--webhook-retries", "2", "--webhook-retry-delay", "0.5",
    ]  # fmt: skip
    parsed = _cli.emulator_options(_cli.build_parser().parse_args(argv))
    emulator = Emulator(**parsed)
    assert emulator.webhook_duplicate_rate == 0.1
    assert emulator.webhook_reorder_rate == 0.2
    assert emulator.webhook_retries == 2
    assert emulator.webhook_retry_delay == 0.5
