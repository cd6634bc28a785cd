"""The emulator's create rate limit and injected faults, over real HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import anyio
import pytest
from quickrouter_async.testing import FAULT_ENDPOINTS, Faults, RateLimit
from quickrouter_async.testing._options import seconds
from quickrouter_async.testing._ratelimit import TokenBucket

from .test_emulator import eventually, serve

pytestmark = pytest.mark.anyio


# -- rate limit ----------------------------------------------------------------------------


async def test_creates_beyond_the_burst_are_throttled() -> None:
    async with serve(rate_limit=RateLimit(rate=0.5, burst=2)) as api:
        first, second, third = [await api.create() for _ in range(3)]
        assert (first.status, second.status, third.status) == (201, 201, 429)
        assert first.headers["ratelimit-remaining"] == "1"
        assert second.headers["ratelimit-remaining"] == "0"
        assert third.headers["Retry-After"] == "2"
        assert third.headers["Content-Type"].startswith("application/problem+json")
        assert third.body == {
            "detail": "Request was throttled. Your rate limit resets in ~2s.",
            "status": 429,
            "title": "Too Many Requests",
            "retry_after": 2,
        }
        assert int(third.headers["ratelimit-reset"]) >= 2
        assert len(api.emulator.predictions) == 2
        polled = await api.get(first.body["id"])
        assert polled.status == 200
        assert polled.headers["ratelimit-remaining"] == "59999"
        listed = await api.call("GET", "/v1/predictions")
        assert listed.headers["ratelimit-remaining"] == "2999"
        assert api.emulator.count("create", status=429) == 1


async def test_the_rate_limit_can_change_at_runtime() -> None:
    async with serve() as api:
        api.emulator.rate_limit = RateLimit(rate=0.001, burst=1, retry_after=False)
        assert (await api.create()).status == 201
        throttled = await api.create()
        assert throttled.status == 429
        assert "Retry-After" not in throttled.headers
        assert throttled.body["retry_after"] == 1000
        api.emulator.rate_limit = None
        assert (await api.create()).status == 201


def test_the_bucket_refills_over_time() -> None:
    bucket = TokenBucket(RateLimit(rate=2.0, burst=4), now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [None] * 4
    assert bucket.take(0.0) == 1
    assert bucket.remaining(0.0) == 0
    assert bucket.reset(0.0) == 2
    assert bucket.take(0.5) is None
    assert bucket.remaining(100.0) == 4
    assert bucket.reset(100.0) == 1


@pytest.mark.parametrize(
    "options", [{"rate": 0}, {"rate": -1}, {"rate": "fast"}, {"burst": 0}, {"burst": 1.5}]
)
def test_invalid_rate_limits_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RateLimit(**options)


# -- faults --------------------------------------------------------------------------------


async def test_throttle_answers_429_with_retry_after() -> None:
    async with serve(faults=Faults(throttle=1.0)) as api:
        answer = await api.create()
        assert answer.status == 429
        assert answer.headers["Retry-After"] == "1"
        assert answer.body["retry_after"] == 1
        assert not api.emulator.predictions
        assert api.emulator.requests[0].fault == "throttle"


async def test_faults_apply_only_to_the_chosen_endpoints() -> None:
    async with serve(faults=Faults(throttle=1.0, endpoints="get")) as api:
        created = await api.create()
        assert created.status == 201
        assert (await api.get(created.body["id"])).status == 429
        assert (await api.call("GET", "/v1/predictions")).status == 200
        assert (await api.call("GET", "/v1/webhooks/default/secret")).status == 200
        api.emulator.faults = None
        assert (await api.get(created.body["id"])).status == 200


async def test_several_fault_sets_each_apply_to_their_endpoints() -> None:
    mix = [
        Faults(throttle=1.0, endpoints="get"),
        Faults(server_error_after_create=1.0, endpoints="create"),
    ]
    async with serve(faults=mix) as api:
        created = await api.create()
        assert created.status in {500, 502}
        [record] = api.emulator.predictions
        assert (await api.get(record.id)).status == 429
        assert (await api.call("GET", "/v1/predictions")).status == 200
        assert api.emulator.faults == tuple(mix)
        with pytest.raises(TypeError):
            api.emulator.faults = [mix[0], "reset"]  # type: ignore[list-item]
        with pytest.raises(TypeError):
            api.emulator.faults = []


async def test_unauthenticated_requests_see_no_faults() -> None:
    async with serve(faults=Faults(reset=1.0)) as api:
        answer = await api.call("GET", "/v1/predictions", auth=False)
        assert answer.status == 401


async def test_server_errors_come_in_three_shapes() -> None:
    async with serve(faults=Faults(server_error=1.0), seed=5) as api:
        answers = [await api.call("GET", "/v1/predictions") for _ in range(30)]
        by_status = {answer.status: answer for answer in answers}
        assert set(by_status) == {500, 502, 503}
        assert by_status[502].headers["Content-Type"].startswith("text/html")
        assert "502 Bad Gateway" in by_status[502].text
        assert by_status[503].headers["Retry-After"] == "1"
        assert by_status[500].body["status"] == 500
        assert all(r.fault == "server_error" for r in api.emulator.requests)


async def test_a_server_error_after_create_leaves_the_prediction_running() -> None:
    async with serve(faults=Faults(server_error_after_create=1.0), seed=3) as api:
        statuses = {(await api.create()).status for _ in range(12)}
        assert statuses == {500, 502}
        assert len(api.emulator.predictions) == 12
        record = api.emulator.requests[0]
        assert record.fault == "server_error_after_create"
        assert record.prediction_id == api.emulator.predictions[0].id


async def test_a_reset_drops_the_connection() -> None:
    async with serve(faults=Faults(reset=1.0)) as api:
        with pytest.raises(aiohttp.ClientConnectionError):
            await api.call("GET", "/v1/predictions")
        # aiohttp retries an idempotent request once on a dropped connection.
        records = api.emulator.requests
        assert records
        assert {(r.status, r.fault) for r in records} == {(None, "reset")}


async def test_a_reset_after_create_leaves_the_prediction_running() -> None:
    async with serve(faults=Faults(reset_after_create=1.0)) as api:
        with pytest.raises(aiohttp.ClientConnectionError):
            await api.create()
        [prediction] = api.emulator.predictions
        [record] = api.emulator.requests
        assert (record.status, record.fault) == (None, "reset_after_create")
        assert record.prediction_id == prediction.id
        api.emulator.faults = None
        assert (await api.get(prediction.id)).status == 200


async def test_slow_answers_are_held_back() -> None:
    async with serve(faults=Faults(slow=1.0, slow_seconds=0.05)) as api:
        started = time.monotonic()
        assert (await api.create()).status == 201
        assert time.monotonic() - started >= 0.05
        assert api.emulator.requests[0].fault == "slow"


async def test_stopping_cuts_a_slow_answer_short() -> None:
    async with serve(faults=Faults(slow=1.0, slow_seconds=30)) as api:
        answers: list[int] = []

        async def create() -> None:
            answers.append((await api.create()).status)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(create)
                # The create is committed before its answer is held back.
                await eventually(lambda: api.emulator.predictions)
                await api.emulator.aclose()
        assert answers == [201]


async def test_malformed_bodies_take_every_shape() -> None:
    async with serve(duration=30.0) as api:
        prediction_id = (await api.create()).body["id"]
        api.emulator.faults = Faults(malformed=1.0)
        seen: dict[str, Any] = {}
        for _ in range(40):
            answer = await api.get(prediction_id)
            assert answer.status == 200
            fault = api.emulator.requests[-1].fault
            assert fault is not None
            seen[fault] = answer
        assert set(seen) == {
            "malformed:truncated",
            "malformed:html",
            "malformed:array",
            "malformed:status",
        }
        with pytest.raises(ValueError, match=r"Expecting|Unterminated"):
            json.loads(seen["malformed:truncated"].text)
        assert seen["malformed:html"].headers["Content-Type"].startswith("text/html")
        assert isinstance(seen["malformed:array"].body, list)
        assert seen["malformed:array"].body[0]["id"] == prediction_id
        assert not isinstance(seen["malformed:status"].body["status"], str)
        listed = {(await api.call("GET", "/v1/predictions")).status for _ in range(10)}
        assert listed == {200}
        kinds = {r.fault for r in api.emulator.requests if r.kind == "list"}
        assert "malformed:status" not in kinds


async def test_malformed_never_touches_errors() -> None:
    async with serve(faults=Faults(malformed=1.0)) as api:
        answer = await api.get("missing")
        assert answer.body["status"] == 404
        assert api.emulator.requests[0].fault is None


@pytest.mark.parametrize(
    "options",
    [
        {"throttle": 1.5},
        {"reset": -0.1},
        {"slow": True},
        {"malformed": "often"},
        {"endpoints": ["create", "upload"]},
    ],
)
def test_invalid_faults_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must be|unknown fault endpoints"):
        Faults(**options)


def test_fault_defaults() -> None:
    faults = Faults()
    assert faults.endpoints == FAULT_ENDPOINTS
    assert faults.slow_seconds == 5.0
    assert Faults(endpoints=("get", "list")).endpoints == frozenset({"get", "list"})
    with pytest.raises(TypeError):
        seconds("5")  # type: ignore[arg-type]
