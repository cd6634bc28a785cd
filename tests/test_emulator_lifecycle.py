"""The emulator over real HTTP: lifecycle, cancel, sync mode, deadlines, lists, files."""

from __future__ import annotations

import base64
import datetime
import io
import logging
import sys
import time
from typing import Any

import anyio
import pytest
from quickrouter_async.testing import (
    Emulator,
    FileRequestRecord,
    PredictionRecord,
    Predictions,
    RequestRecord,
)
from quickrouter_async.testing._images import ImageCache
from quickrouter_async.testing._protocol import (
    parse_cancel_after,
    parse_prefer_wait,
    parse_timestamp,
    rfc3339,
)

from .test_emulator import IMAGEN, SEEDREAM, TERMINAL, Answer, Api, eventually, serve

pytestmark = pytest.mark.anyio


# -- get, lifecycle, cancel ----------------------------------------------------------------


async def test_an_unknown_prediction_is_404() -> None:
    async with serve() as api:
        for answer in (
            await api.get("doesnotexist"),
            await api.call("POST", "/v1/predictions/doesnotexist/cancel"),
        ):
            assert answer.status == 404
            assert answer.body == {
                "title": "Not found",
                "detail": "Prediction not found",
                "status": 404,
            }


async def test_a_prediction_goes_from_starting_to_processing_to_succeeded() -> None:
    async with serve(duration=0.3, start_delay=0.1) as api:
        created = (await api.create({"prompt": "a", "aspect_ratio": "4:3"})).body
        assert created["status"] == "starting"
        running = await api.until(created["id"], "processing")
        assert running["started_at"] > running["created_at"]
        assert running["logs"].startswith("Using seed: ")
        assert running["output"] is None
        assert "completed_at" not in running
        record = api.emulator.predictions[0]
        assert record.status == "processing"
        assert record.completed_at is None
        assert record.changed_event() is record.changed_event()
        done = await api.until(created["id"], "succeeded")
        assert isinstance(done["output"], str)
        assert done["output"].endswith(".jpg")
        assert done["completed_at"] >= done["started_at"]
        assert done["metrics"]["image_count"] == 1
        assert done["metrics"]["total_time"] == pytest.approx(0.3, abs=0.01)
        assert done["metrics"]["predict_time"] == pytest.approx(0.2, abs=0.01)
        assert "Generated 1 image in" in done["logs"]
        assert done["logs"].startswith(running["logs"].splitlines()[0])
        record = api.emulator.predictions[0]
        assert record.terminal
        assert record.error is None
        assert record.started_at is not None
        assert record.completed_at is not None
        assert record.created_at <= record.started_at <= record.completed_at
        assert record.deadline_at is None


async def test_durations_are_drawn_from_a_range() -> None:
    async with serve(duration=(0.1, 0.2), start_delay=(0.0, 0.05), seed=11) as api:
        for _ in range(5):
            await api.create()
        for record in api.emulator.predictions:
            assert 0.1 <= record.ends - record.created <= 0.2
            assert 0.0 <= record.starts - record.created <= 0.05


async def test_prompts_flagged_by_fail_prompts_fail() -> None:
    async with serve(fail_prompts=["forbidden"]) as api:
        created = (await api.create({"prompt": "something forbidden here"})).body
        done = await api.until(created["id"], "failed", "succeeded")
        assert done["status"] == "failed"
        assert done["error"] == "Prediction failed: the prompt was flagged as sensitive (E005)"
        assert done["output"] is None
        assert "image_count" not in done["metrics"]
        assert done["logs"].endswith("(E005)\n")
        assert api.emulator.predictions[0].error == done["error"]
        fine = (await api.create({"prompt": "a cat"})).body
        assert (await api.until(fine["id"], *TERMINAL))["status"] == "succeeded"


async def test_a_failure_rate_of_one_fails_everything() -> None:
    async with serve(failure_rate=1.0, fail_prompts="unused") as api:
        created = (await api.create()).body
        done = await api.until(created["id"], *TERMINAL)
        assert done["status"] == "failed"
        assert "E6716" in done["error"]
        assert api.emulator.fail_prompts == ("unused",)


async def test_cancel_stops_a_running_prediction_for_good() -> None:
    async with serve(duration=30.0, start_delay=0.0) as api:
        created = (await api.create()).body
        await api.until(created["id"], "processing")
        answer = await api.call("POST", f"/v1/predictions/{created['id']}/cancel")
        assert answer.status == 200
        assert answer.body["status"] == "canceled"
        assert "completed_at" in answer.body
        assert "predict_time" in answer.body["metrics"]
        again = await api.call("POST", f"/v1/predictions/{created['id']}/cancel")
        assert again.body["status"] == "canceled"
        assert again.body["completed_at"] == answer.body["completed_at"]
        record = api.emulator.predictions[0]
        assert record.canceled
        assert record.cancel_requests == 2
        assert record.status == "canceled"
        assert api.emulator.count("cancel") == 2


async def test_canceling_before_the_start_means_it_never_started() -> None:
    async with serve(duration=30.0, start_delay=10.0) as api:
        created = (await api.create()).body
        answer = await api.call("POST", f"/v1/predictions/{created['id']}/cancel")
        assert answer.body["status"] == "canceled"
        assert "started_at" not in answer.body
        assert answer.body["logs"] == ""
        assert "predict_time" not in answer.body["metrics"]
        assert api.emulator.predictions[0].started_at is None


async def test_canceling_a_finished_prediction_changes_nothing() -> None:
    async with serve(duration=0.0) as api:
        created = (await api.create()).body
        done = await api.until(created["id"], "succeeded")
        answer = await api.call("POST", f"/v1/predictions/{created['id']}/cancel")
        assert answer.body["status"] == "succeeded"
        assert answer.body["output"] == done["output"]
        assert not api.emulator.predictions[0].canceled


# -- Prefer: wait and Cancel-After ---------------------------------------------------------


@pytest.mark.parametrize(("prefer", "applied"), [("wait", "wait"), ("wait=5", "wait=5")])
async def test_prefer_wait_answers_once_the_prediction_is_done(prefer: str, applied: str) -> None:
    async with serve(duration=0.05) as api:
        answer = await api.create(headers={"Prefer": prefer})
        assert answer.status == 201
        assert answer.body["status"] == "succeeded"
        assert answer.headers["Preference-Applied"] == applied
        assert api.emulator.count("get") == 0


async def test_prefer_wait_gives_up_after_n_seconds() -> None:
    async with serve(duration=30.0, start_delay=0.5) as api:
        started = time.monotonic()
        answer = await api.create(headers={"Prefer": "respond-async, wait=1"})
        assert 0.9 <= time.monotonic() - started < 3
        assert answer.status == 201
        assert answer.body["status"] == "processing"
        assert answer.headers["Preference-Applied"] == "wait=1"


async def test_a_cancel_releases_a_held_create() -> None:
    async with serve(duration=30.0) as api, anyio.create_task_group() as group:
        answers: list[Answer] = []

        async def create() -> None:
            answers.append(await api.create(headers={"Prefer": "wait=60"}))

        group.start_soon(create)
        with anyio.fail_after(3):
            await eventually(lambda: api.emulator.predictions)
            await anyio.sleep(0.02)
            prediction_id = api.emulator.predictions[0].id
            await api.call("POST", f"/v1/predictions/{prediction_id}/cancel")
            await eventually(lambda: answers)
        assert answers[0].body["status"] == "canceled"


async def test_stopping_the_emulator_releases_a_held_create() -> None:
    async with serve(duration=30.0) as api, anyio.create_task_group() as group:
        answers: list[Answer] = []

        async def create() -> None:
            answers.append(await api.create(headers={"Prefer": "wait"}))

        group.start_soon(create)
        with anyio.fail_after(3):
            await eventually(lambda: api.emulator.predictions)
            await anyio.sleep(0.02)
            await api.emulator.aclose()
            await eventually(lambda: answers)
        assert answers[0].status == 201
        assert answers[0].body["status"] in {"starting", "processing"}


@pytest.mark.parametrize("prefer", ["wait=0", "wait=61", "wait=abc", "respond-async"])
async def test_prefer_values_outside_the_grammar_are_ignored(prefer: str) -> None:
    async with serve(duration=30.0) as api:
        answer = await api.create(headers={"Prefer": prefer})
        assert answer.body["status"] == "starting"
        assert "Preference-Applied" not in answer.headers


async def test_prefer_wait_can_be_ignored_like_a_gateway() -> None:
    async with serve(duration=0.05, honor_prefer_wait=False) as api:
        answer = await api.create(headers={"Prefer": "wait=5"})
        assert answer.body["status"] == "starting"
        assert "Preference-Applied" not in answer.headers
        api.emulator.honor_prefer_wait = True
        answer = await api.create(headers={"Prefer": "wait=5"})
        assert answer.body["status"] == "succeeded"


async def test_early_output_shows_files_while_processing() -> None:
    async with serve(duration=0.5, start_delay=0.0, early_output=True) as api:
        answer = await api.create(headers={"Prefer": "wait=5"})
        assert answer.body["status"] == "processing"
        assert answer.body["output"] is not None
        async with api.session.get(answer.body["output"]) as response:
            assert response.status == 200


async def test_a_deadline_before_the_start_aborts() -> None:
    async with serve(duration=30.0, start_delay=10.0, min_cancel_after=0) as api:
        created = await api.create(headers={"Cancel-After": "20ms"})
        assert "deadline" in created.body
        assert created.body["deadline"] > created.body["created_at"]
        done = await api.until(created.body["id"], *TERMINAL)
        assert done["status"] == "aborted"
        assert "started_at" not in done
        assert "predict_time" not in done["metrics"]
        record = api.emulator.predictions[0]
        assert record.deadline_at is not None
        assert not record.canceled


async def test_a_deadline_while_running_cancels() -> None:
    async with serve(duration=30.0, start_delay=0.0, min_cancel_after=0) as api:
        created = await api.create(headers={"Cancel-After": "0.02"})
        done = await api.until(created.body["id"], *TERMINAL)
        assert done["status"] == "canceled"
        assert "started_at" in done


@pytest.mark.parametrize("value", ["soon", "3s", "-5s", ""])
async def test_invalid_cancel_after_values_get_400(value: str) -> None:
    async with serve() as api:
        answer = await api.create(headers={"Cancel-After": value})
        assert answer.status == 400
        assert answer.body["title"] == "Invalid Cancel-After header"
        assert "at least 5 seconds" in answer.body["detail"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30),
        ("30s", 30),
        ("5m", 300),
        ("1h30m45s", 5445),
        ("2h30m", 9000),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        (" 7 ", 7),
        ("", None),
        ("5x", None),
        ("m5", None),
        ("5s trailing", None),
    ],
)
def test_cancel_after_durations_parse(text: str, seconds: float | None) -> None:
    assert parse_cancel_after(text) == seconds


def test_prefer_and_timestamp_parsing() -> None:
    assert parse_prefer_wait(None) is None
    assert parse_prefer_wait("wait") == ("wait", 60.0)
    assert parse_prefer_wait("handling=lenient, wait=60") == ("wait=60", 60.0)
    moment = parse_timestamp("2025-01-02T03:04:05.123456789Z")
    assert moment == datetime.datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=datetime.UTC)
    assert parse_timestamp("2025-01-02") == datetime.datetime(2025, 1, 2, tzinfo=datetime.UTC)
    assert parse_timestamp("yesterday") is None
    assert rfc3339(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert rfc3339(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"


# -- list ----------------------------------------------------------------------------------


async def test_the_list_pages_newest_first_with_cursor_urls() -> None:
    async with serve(page_size=3, duration=30.0) as api:
        ids = [(await api.create({"prompt": f"p{n}"})).body["id"] for n in range(7)]
        pages: list[Any] = []
        url: str | None = "/v1/predictions"
        while url is not None:
            answer = await api.call("GET", url)
            assert answer.status == 200
            pages.append(answer.body)
            url = answer.body["next"]
            assert url is None or url.startswith(api.emulator.base_url + "/v1/predictions?")
        assert [len(page["results"]) for page in pages] == [3, 3, 1]
        assert [p["id"] for page in pages for p in page["results"]] == ids[::-1]
        assert pages[0]["previous"] is None
        assert pages[2]["next"] is None
        back = await api.call("GET", pages[1]["previous"])
        assert [p["id"] for p in back.body["results"]] == ids[::-1][:3]
        assert back.body["previous"] is None
        assert back.body["next"] is not None
        middle = await api.call("GET", pages[2]["previous"])
        assert middle.body["results"] == pages[1]["results"]
        assert middle.body["previous"] is not None
        assert api.emulator.count("list") == 5


async def test_the_list_filters_on_creation_time() -> None:
    async with serve(duration=30.0) as api:
        first = (await api.create()).body
        await anyio.sleep(0.01)
        second = (await api.create()).body
        await anyio.sleep(0.01)
        third = (await api.create()).body
        query = {"created_after": first["created_at"], "created_before": third["created_at"]}
        answer = await api.session.get(
            api.emulator.base_url + "/v1/predictions",
            params=query,
            headers={"Authorization": f"Bearer {api.emulator.api_key}"},
        )
        async with answer:
            body = await answer.json()
        assert [p["id"] for p in body["results"]] == [second["id"]]
        empty = await api.call("GET", "/v1/predictions?created_after=2999-01-01T00:00:00Z")
        assert empty.body == {"next": None, "previous": None, "results": []}


@pytest.mark.parametrize(
    "query",
    [
        "cursor=%%%",
        "cursor=" + base64.urlsafe_b64encode(b"x:1").decode(),
        "cursor=%FF%FE",
        "created_after=yesterday",
        "created_before=soon",
    ],
)
async def test_bad_list_queries_get_400(query: str) -> None:
    async with serve() as api:
        answer = await api.call("GET", f"/v1/predictions?{query}")
        assert answer.status == 400
        assert answer.headers["Content-Type"].startswith("application/problem+json")


# -- files ---------------------------------------------------------------------------------


async def _image(api: Api, url: str, **headers: str) -> tuple[str, Any]:
    from PIL import Image  # noqa: PLC0415 (an optional test dependency)

    async with api.session.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        data = await response.read()
        image = Image.open(io.BytesIO(data))
        image.load()
        return response.content_type, image


@pytest.mark.parametrize(
    ("model", "values", "content_type", "image_format", "size"),
    [
        (IMAGEN, {"aspect_ratio": "16:9", "output_format": "png"}, "image/png", "PNG", (256, 144)),
        (IMAGEN, {}, "image/jpeg", "JPEG", (256, 256)),
        (IMAGEN, {"aspect_ratio": "3:4"}, "image/jpeg", "JPEG", (192, 256)),
        (SEEDREAM, {"aspect_ratio": "21:9"}, "image/jpeg", "JPEG", (256, 110)),
        (SEEDREAM, {"aspect_ratio": "9:16"}, "image/jpeg", "JPEG", (144, 256)),
        (
            SEEDREAM,
            {"size": "custom", "width": 3072, "height": 1024},
            "image/jpeg",
            "JPEG",
            (256, 85),
        ),
        (SEEDREAM, {"size": "custom", "height": 4096}, "image/jpeg", "JPEG", (128, 256)),
        ("acme/thing", {}, "image/png", "PNG", (256, 256)),
    ],
)
async def test_output_files_are_real_images(
    model: str,
    values: dict[str, Any],
    content_type: str,
    image_format: str,
    size: tuple[int, int],
) -> None:
    async with serve(duration=0.0, accept_any_model=True) as api:
        answer = await api.create(
            {"prompt": "a", **values}, model=model, headers={"Prefer": "wait"}
        )
        output = answer.body["output"]
        url = output if isinstance(output, str) else output[0]
        assert url.startswith(api.emulator.url + "/files/")
        seen_type, image = await _image(api, url)
        assert (seen_type, image.format, image.size) == (content_type, image_format, size)


async def test_sequential_seedream_returns_max_images_files() -> None:
    async with serve(duration=0.0, image_size=64) as api:
        values = {"prompt": "a", "sequential_image_generation": "auto", "max_images": 3}
        answer = await api.create(values, model=SEEDREAM, headers={"Prefer": "wait"})
        output = answer.body["output"]
        assert isinstance(output, list)
        assert len(output) == 3
        assert answer.body["metrics"]["image_count"] == 3
        images = [await _image(api, url) for url in output]
        assert {image.size for _, image in images} == {(64, 64)}
        assert len({image.tobytes() for _, image in images}) == 3


async def test_file_downloads_need_no_auth_and_record_whether_it_was_sent() -> None:
    async with serve(duration=0.0) as api:
        url = (await api.create(headers={"Prefer": "wait"})).body["output"]
        first = await api.session.get(url)
        async with first:
            data = await first.read()
        second = await api.session.get(url, headers={"Authorization": "Bearer leaked"})
        async with second:
            assert await second.read() == data
        records = api.emulator.file_requests
        assert [r.had_authorization for r in records] == [False, True]
        assert records[0].index == 0
        assert records[0].status == 200
        assert "leaked" not in repr(records)
        assert api.emulator.count() == 1


async def test_files_that_do_not_exist_are_404() -> None:
    async with serve(duration=30.0) as api:
        running = (await api.create()).body["id"]
        api.emulator.duration = 0.0
        done = (await api.create(headers={"Prefer": "wait"})).body["id"]
        origin = api.emulator.url
        for path in (
            f"/files/{running}/out-0.jpg",
            f"/files/{done}/out-1.jpg",
            f"/files/{done}/out-0.png",
            f"/files/{done}/picture.jpg",
            "/files/nothing/out-0.jpg",
        ):
            async with api.session.get(origin + path) as response:
                assert response.status == 404, path
                assert (await response.json())["detail"] == "File not found"
        assert [r.status for r in api.emulator.file_requests] == [404] * 5
        assert api.emulator.file_requests[3].index == -1


async def test_without_pillow_files_are_503(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve(duration=0.0) as api:
        url = (await api.create(headers={"Prefer": "wait"})).body["output"]
        monkeypatch.setitem(sys.modules, "PIL", None)
        async with api.session.get(url) as response:
            assert response.status == 503
            assert "Pillow" in (await response.json())["detail"]


def test_the_image_cache_evicts_the_least_recently_used() -> None:
    cache = ImageCache(size=2)
    cache.put(("a", 0), b"a")
    cache.put(("b", 0), b"b")
    assert cache.get(("a", 0)) == b"a"
    cache.put(("c", 0), b"c")
    assert cache.get(("b", 0)) is None
    assert cache.get(("a", 0)) == b"a"
    cache.clear()
    assert cache.get(("a", 0)) is None


async def test_data_is_removed_after_the_retention_period() -> None:
    async with serve(duration=0.0, data_retention=datetime.timedelta(0)) as api:
        answer = await api.create(headers={"Prefer": "wait"})
        body = (await api.get(answer.body["id"])).body
        assert body["status"] == "succeeded"
        assert body["data_removed"] is True
        assert body["output"] is None
        assert body["input"] == {}
        url = f"{api.emulator.url}/files/{body['id']}/out-0.jpg"
        async with api.session.get(url) as response:
            assert response.status == 404


# -- records, knobs, lifecycle -------------------------------------------------------------


async def test_counts_and_records() -> None:
    async with serve() as api:
        created = (await api.create()).body
        await api.get(created["id"])
        await api.get(created["id"])
        await api.get("missing")
        emulator = api.emulator
        assert emulator.count("create") == 1
        assert emulator.count("get") == 3
        assert emulator.count("get", status=404) == 1
        assert emulator.count(method="get") == 3
        assert emulator.count(path_prefix="/replicate/v1/predictions/") == 3
        assert all(isinstance(r, RequestRecord) for r in emulator.requests)
        assert emulator.requests[1].prediction_id == created["id"]
        assert emulator.requests[0].time <= emulator.requests[1].time
        emulator.clear()
        assert emulator.count() == 0
        assert len(emulator.predictions) == 0
        assert emulator.file_requests == []


async def test_the_predictions_container() -> None:
    async with serve() as api:
        for _ in range(3):
            await api.create()
        predictions = api.emulator.predictions
        assert isinstance(predictions, Predictions)
        first = predictions[0]
        assert isinstance(first, PredictionRecord)
        assert predictions[-1].sequence == 3
        assert [r.sequence for r in predictions[:2]] == [1, 2]
        assert [r.sequence for r in predictions] == [1, 2, 3]
        assert first.id in predictions
        assert first in predictions
        assert "missing" not in predictions
        assert 3 not in predictions
        assert predictions.get(first.id) is first
        assert predictions.get("missing") is None
        assert repr(predictions) == "<Predictions: 3>"


async def test_latency_is_added_before_every_answer() -> None:
    async with serve(latency=0.05) as api:
        started = time.monotonic()
        await api.call("GET", "/v1/predictions")
        assert time.monotonic() - started >= 0.05
        api.emulator.latency = datetime.timedelta(0)
        assert api.emulator.latency == 0.0


async def test_lifecycle_and_addresses() -> None:
    emulator = Emulator(duration=datetime.timedelta(milliseconds=10))
    assert emulator.duration == (0.01, 0.01)
    assert not emulator.running
    assert "not running" in repr(emulator)
    with pytest.raises(RuntimeError):
        _ = emulator.base_url
    await emulator.start()
    try:
        assert emulator.running
        assert emulator.port > 0
        assert emulator.base_url == f"http://127.0.0.1:{emulator.port}/replicate"
        assert emulator.base_url in repr(emulator)
        with pytest.raises(RuntimeError):
            await emulator.start()
        taken = Emulator(port=emulator.port)
        with pytest.raises(OSError, match="in use"):
            await taken.start()
        assert not taken.running
    finally:
        await emulator.aclose()
    await emulator.aclose()
    assert not emulator.running


async def test_any_address_is_advertised_as_loopback() -> None:
    async with Emulator(host="0.0.0.0") as emulator:  # noqa: S104 (a test of that case)
        assert emulator.url.startswith("http://127.0.0.1:")


async def test_serve_forever_runs_until_cancelled() -> None:
    emulator = Emulator()
    async with anyio.create_task_group() as group:
        group.start_soon(emulator.serve_forever)
        await eventually(lambda: emulator.running)
        group.cancel_scope.cancel()
    assert not emulator.running
    await emulator.start()
    async with anyio.create_task_group() as group:
        group.start_soon(emulator.serve_forever)
        await anyio.sleep(0.01)
        await emulator.aclose()
    assert not emulator.running


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"duration": -1}, ValueError),
        ({"duration": (2, 1)}, ValueError),
        ({"duration": "1s"}, TypeError),
        ({"duration": float("nan")}, ValueError),
        ({"start_delay": -1}, ValueError),
        ({"image_size": 0}, ValueError),
        ({"page_size": True}, ValueError),
        ({"port": -1}, ValueError),
        ({"failure_rate": 1.5}, ValueError),
        ({"failure_rate": "half"}, ValueError),
        ({"rate_limit": {"rate": 1}}, TypeError),
        ({"faults": {"reset": 1}}, TypeError),
        ({"latency": -0.1}, ValueError),
        ({"min_cancel_after": None}, TypeError),
        ({"data_retention": -1}, ValueError),
    ],
)
def test_invalid_knobs_are_refused(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Emulator(**options)


def test_knobs_are_normalised() -> None:
    emulator = Emulator(start_delay=0.5, data_retention=60, fail_prompts={"x"})
    assert emulator.start_delay == (0.5, 0.5)
    assert emulator.data_retention == 60.0
    assert emulator.fail_prompts == ("x",)
    assert emulator.failure_rate == 0.0
    assert emulator.image_size == 256
    assert emulator.page_size == 100
    assert emulator.min_cancel_after == 5.0
    assert emulator.rate_limit is None
    assert emulator.faults is None
    emulator.start_delay = None
    assert emulator.start_delay is None


def test_record_types_are_exported() -> None:
    record = FileRequestRecord(
        path="/files/x/out-0.jpg",
        prediction_id="x",
        index=0,
        status=200,
        time=0.0,
        had_authorization=False,
    )
    assert record.status == 200


async def test_a_client_that_dies_mid_request_is_not_an_emulator_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serve() as api:
        url = api.emulator.base_url.removeprefix("http://")
        host, _, rest = url.partition(":")
        port, _, prefix = rest.partition("/")
        head = (
            f"POST /{prefix}/v1/models/google/imagen-4/predictions HTTP/1.1\r\n"
            f"Host: {host}\r\nAuthorization: Bearer {api.emulator.api_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        with caplog.at_level(logging.DEBUG, "quickrouter_async.testing"):
            stream = await anyio.connect_tcp(host, int(port))
            await stream.send(head.encode() + b'{"input": {"pro')  # 15 of the 100 bytes
            await stream.aclose()  # and the client is gone
            await eventually(lambda: "the client left" in caplog.text)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(api.emulator.predictions) == 0
        assert not [r for r in api.emulator.requests if r.kind == "create"], "never arrived whole"
