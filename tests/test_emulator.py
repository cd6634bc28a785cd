"""The emulator over real HTTP: auth, creates, validation, lifecycle, lists and files.

These tests drive the server with a plain aiohttp session, never with the project's
client, so that each of the two checks the other.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import attrs
import pytest
from quickrouter_async.testing import (
    Emulator,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

pytestmark = pytest.mark.anyio

IMAGEN = "google/imagen-4"
SEEDREAM = "bytedance/seedream-4"
HEX = "a" * 64
TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
_NO_BODY = object()


@attrs.frozen
class Answer:
    """One HTTP answer: status, headers, the decoded JSON body (or None) and the text."""

    status: int
    headers: Mapping[str, str]
    body: Any
    text: str


@attrs.define
class Api:
    """A thin HTTP helper around an emulator and a session."""

    emulator: Emulator
    session: aiohttp.ClientSession

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = _NO_BODY,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        base: str | None = None,
    ) -> Answer:
        url = path if path.startswith("http") else (base or self.emulator.base_url) + path
        sent = {"Authorization": f"Bearer {self.emulator.api_key}"} if auth else {}
        sent.update(headers or {})
        options: dict[str, Any] = {"headers": sent}
        if body is not _NO_BODY:
            options["json"] = body
        if data is not None:
            options["data"] = data
        async with self.session.request(method, url, **options) as response:
            text = await response.text()
            try:
                decoded = json.loads(text)
            except ValueError:
                decoded = None
            return Answer(response.status, response.headers, decoded, text)

    async def create(
        self,
        values: dict[str, Any] | None = None,
        *,
        model: str = IMAGEN,
        headers: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> Answer:
        body = {"input": {"prompt": "a lighthouse"} if values is None else values, **fields}
        return await self.call(
            "POST", f"/v1/models/{model}/predictions", body=body, headers=headers
        )

    async def get(self, prediction_id: str) -> Answer:
        return await self.call("GET", f"/v1/predictions/{prediction_id}")

    async def until(self, prediction_id: str, *statuses: str, timeout: float = 3.0) -> Any:
        """Poll until the prediction has one of ``statuses``; return its body."""
        with anyio.fail_after(timeout):
            while True:
                answer = await self.get(prediction_id)
                if answer.body["status"] in statuses:
                    return answer.body
                await anyio.sleep(0.005)


async def eventually(condition: Callable[[], object], *, timeout: float = 3.0) -> None:
    """Wait, polling briefly, until ``condition()`` is true."""
    with anyio.fail_after(timeout):
        while True:
            if condition():
                return
            await anyio.sleep(0.005)


@contextlib.asynccontextmanager
async def serve(**options: Any) -> AsyncIterator[Api]:
    """An emulator (50 ms predictions by default) and a session to talk to it."""
    options.setdefault("duration", 0.05)
    options.setdefault("seed", 7)
    async with Emulator(**options) as emulator, aiohttp.ClientSession() as session:
        yield Api(emulator, session)


# -- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Token secret-key-123"}],
)
async def test_requests_without_the_right_token_get_401(headers: dict[str, str]) -> None:
    async with serve(api_key="secret-key-123") as api:
        answer = await api.call("GET", "/v1/predictions", headers=headers, auth=False)
        assert answer.status == 401
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert answer.body == {
            "title": "Unauthenticated",
            "detail": "You did not pass a valid authentication token",
            "status": 401,
        }
        [record] = api.emulator.requests
        assert not record.authorized
        assert record.kind == "list"
        assert record.status == 401


async def test_the_token_is_never_recorded() -> None:
    async with serve(api_key="secret-key-123") as api:
        created = await api.create(headers={"Prefer": "wait=1"})
        assert created.status == 201
        record = api.emulator.predictions[0]
        assert "authorization" not in record.create_headers
        assert record.create_headers["prefer"] == "wait=1"
        everything = repr(api.emulator.requests) + repr(list(api.emulator.predictions))
        assert "secret-key-123" not in everything
        assert api.emulator.requests[0].authorized


# -- creates -------------------------------------------------------------------------------


async def test_create_by_model_answers_201_with_the_prediction() -> None:
    async with serve(duration=30.0) as api:
        answer = await api.create({"prompt": "a lighthouse", "aspect_ratio": "16:9"})
        assert answer.status == 201
        body = answer.body
        assert body["status"] == "starting"
        assert body["model"] == IMAGEN
        assert body["version"] == "hidden"
        assert body["input"] == {"prompt": "a lighthouse", "aspect_ratio": "16:9"}
        assert body["output"] is None
        assert body["error"] is None
        assert body["logs"] == ""
        assert body["data_removed"] is False
        assert body["source"] == "api"
        assert "started_at" not in body
        assert "metrics" not in body
        assert len(body["id"]) == 26
        assert body["id"].isalnum()
        assert body["id"] == body["id"].lower()
        assert body["created_at"].endswith("Z")
        assert body["urls"] == {
            "get": f"https://api.replicate.com/v1/predictions/{body['id']}",
            "cancel": f"https://api.replicate.com/v1/predictions/{body['id']}/cancel",
            "web": f"https://replicate.com/p/{body['id']}",
        }
        assert answer.headers["ratelimit-remaining"] == "599"
        assert answer.headers["ratelimit-reset"] == "1"
        location = answer.headers["Location"]
        assert location == f"{api.emulator.base_url}/v1/predictions/{body['id']}"
        again = await api.call("GET", location)
        assert again.body["id"] == body["id"]
        assert again.headers["ratelimit-remaining"] == "59999"
        record = api.emulator.requests[0]
        assert (record.kind, record.prediction_id, record.status) == ("create", body["id"], 201)


async def test_local_urls_point_at_the_emulator() -> None:
    async with serve(passthrough_urls=False) as api:
        body = (await api.create()).body
        assert body["urls"]["get"] == f"{api.emulator.base_url}/v1/predictions/{body['id']}"
        assert (await api.call("POST", body["urls"]["cancel"])).status == 200


async def test_the_api_also_answers_without_the_replicate_prefix() -> None:
    async with serve() as api:
        answer = await api.create(headers=None)
        url = api.emulator.url + "/v1/models/google/imagen-4/predictions"
        direct = await api.call("POST", url, body={"input": {"prompt": "x"}})
        assert direct.status == 201
        assert direct.headers["Location"].startswith(api.emulator.url + "/v1/predictions/")
        listed = await api.call("GET", "/v1/predictions", base=api.emulator.url)
        assert {p["id"] for p in listed.body["results"]} == {answer.body["id"], direct.body["id"]}


@pytest.mark.parametrize(
    ("version", "model", "expected_version"),
    [
        (IMAGEN, IMAGEN, "hidden"),
        (f"someone/custom:{HEX}", "someone/custom", HEX),
        (
            "3ee3b70df63b39e425ccb0188d3c14961177c11fa20516d9dfd30a868b41b2d5",
            SEEDREAM,
            "3ee3b70df63b39e425ccb0188d3c14961177c11fa20516d9dfd30a868b41b2d5",
        ),
    ],
)
async def test_create_by_version(version: str, model: str, expected_version: str) -> None:
    async with serve() as api:
        body = {"version": version, "input": {"prompt": "a"}}
        answer = await api.call("POST", "/v1/predictions", body=body)
        assert answer.status == 201, answer.text
        assert (answer.body["model"], answer.body["version"]) == (model, expected_version)


async def test_a_version_id_seen_once_resolves_alone() -> None:
    async with serve() as api:
        unknown = await api.call("POST", "/v1/predictions", body={"version": HEX, "input": {}})
        assert unknown.status == 422
        assert unknown.body["title"] == "Invalid version or not permitted"
        first = {"version": f"someone/custom:{HEX}", "input": {}}
        assert (await api.call("POST", "/v1/predictions", body=first)).status == 201
        again = await api.call("POST", "/v1/predictions", body={"version": HEX, "input": {}})
        assert again.body["model"] == "someone/custom"


@pytest.mark.parametrize("version", ["nonsense", "a/b:123", f"bad name/x:{HEX}", "A" * 64])
async def test_invalid_versions_are_refused(version: str) -> None:
    async with serve() as api:
        answer = await api.call("POST", "/v1/predictions", body={"version": version, "input": {}})
        assert answer.status == 422
        assert answer.body["detail"].startswith("The specified version does not exist")


async def test_create_by_deployment() -> None:
    async with serve() as api:
        path = "/v1/deployments/acme/my-imagen/predictions"
        answer = await api.call("POST", path, body={"input": {"anything": 1}})
        assert answer.status == 201
        assert answer.body["deployment"] == "acme/my-imagen"
        assert answer.body["model"] == "acme/my-imagen"
        assert answer.body["version"].startswith("dp-")
        bad = await api.call("POST", "/v1/deployments/-bad/x/predictions", body={"input": {}})
        assert bad.status == 404
        missing = await api.call("POST", path, body={})
        assert missing.status == 422


async def test_models_it_does_not_know_are_not_found_unless_any_is_accepted() -> None:
    async with serve(duration=0.0) as api:
        for model in ("acme/thing", "google/imagen4"):
            missing = await api.create({"prompt": "x"}, model=model)
            assert missing.status == 404
            assert missing.body["detail"] == "Model not found"
        by_name = await api.call(
            "POST", "/v1/predictions", body={"version": "acme/thing", "input": {"prompt": "x"}}
        )
        assert by_name.status == 422
    assert len(api.emulator.predictions) == 0


async def test_unknown_models_accept_any_input_and_return_one_png() -> None:
    async with serve(duration=0.0, accept_any_model=True) as api:
        answer = await api.create({"whatever": [1, 2]}, model="acme/thing")
        assert answer.status == 201
        done = await api.until(answer.body["id"], "succeeded")
        assert len(done["output"]) == 1
        assert done["output"][0].endswith(".png")
        bad = await api.call("POST", "/v1/models/-x/y/predictions", body={"input": {}})
        assert bad.status == 404


async def test_webhook_fields_are_stored_and_echoed() -> None:
    async with serve() as api:
        answer = await api.create(
            webhook="https://example.com/hook", webhook_events_filter=["start", "completed"]
        )
        assert answer.body["webhook"] == "https://example.com/hook"
        assert answer.body["webhook_events_filter"] == ["start", "completed"]
        record = api.emulator.predictions[0]
        assert record.webhook == "https://example.com/hook"
        assert record.webhook_events_filter == ["start", "completed"]


async def test_the_webhook_secret_is_stable_for_a_seed() -> None:
    async with serve(seed=3) as first, serve(seed=3) as second:
        answer = await first.call("GET", "/v1/webhooks/default/secret")
        assert answer.status == 200
        key = answer.body["key"]
        assert key.startswith("whsec_")
        assert len(base64.b64decode(key.removeprefix("whsec_"))) == 24
        assert key == first.emulator.webhook_secret == second.emulator.webhook_secret


# -- validation ----------------------------------------------------------------------------


async def test_imagen_enum_error_has_replicates_shape() -> None:
    async with serve() as api:
        answer = await api.create(
            {"prompt": "a", "aspect_ratio": "2:1"}, model="google/imagen-4-fast"
        )
        assert answer.status == 422
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        description = (
            'aspect_ratio must be one of the following: "1:1", "9:16", "16:9", "3:4", "4:3"'
        )
        assert answer.body == {
            "title": "Input validation failed",
            "detail": f"- input.aspect_ratio: {description}\n",
            "status": 422,
            "invalid_fields": [
                {"type": "enum", "field": "input.aspect_ratio", "description": description}
            ],
        }
        assert not api.emulator.predictions


@pytest.mark.parametrize(
    ("model", "values", "kind", "field"),
    [
        (IMAGEN, {}, "required", "input"),
        (IMAGEN, {"prompt": 3}, "type", "input.prompt"),
        (IMAGEN, {"prompt": "a", "output_format": "webp"}, "enum", "input.output_format"),
        (
            "google/imagen-4-ultra",
            {"prompt": "a", "safety_filter_level": 1},
            "enum",
            "input.safety_filter_level",
        ),
        (SEEDREAM, {"prompt": "a", "size": "8K"}, "enum", "input.size"),
        (SEEDREAM, {"prompt": "a", "width": 512}, "number_gte", "input.width"),
        (SEEDREAM, {"prompt": "a", "height": 5000}, "number_lte", "input.height"),
        (SEEDREAM, {"prompt": "a", "width": 2048.5}, "type", "input.width"),
        (SEEDREAM, {"prompt": "a", "width": True}, "type", "input.width"),
        (SEEDREAM, {"prompt": "a", "max_images": 0}, "number_gte", "input.max_images"),
        (SEEDREAM, {"prompt": "a", "max_images": 16}, "number_lte", "input.max_images"),
        (SEEDREAM, {"prompt": "a", "enhance_prompt": "yes"}, "type", "input.enhance_prompt"),
        (SEEDREAM, {"prompt": "a", "image_input": "x"}, "type", "input.image_input"),
        (SEEDREAM, {"prompt": "a", "image_input": [1]}, "type", "input.image_input.0"),
        (SEEDREAM, {"prompt": "a", "image_input": ["nope"]}, "format", "input.image_input.0"),
        (
            SEEDREAM,
            {"prompt": "a", "image_input": ["https://x/i.png"] * 11},
            "array_max_items",
            "input.image_input",
        ),
        (
            SEEDREAM,
            {"prompt": "a", "sequential_image_generation": "always"},
            "enum",
            "input.sequential_image_generation",
        ),
        (
            SEEDREAM,
            {
                "prompt": "a",
                "image_input": ["data:image/png;base64,AAAA"] * 10,
                "sequential_image_generation": "auto",
                "max_images": 6,
            },
            "number_lte",
            "input.max_images",
        ),
    ],
)
async def test_invalid_inputs_get_422(
    model: str, values: dict[str, Any], kind: str, field: str
) -> None:
    async with serve() as api:
        answer = await api.create(values, model=model)
        assert answer.status == 422, answer.text
        assert answer.body["title"] == "Input validation failed"
        [problem] = answer.body["invalid_fields"]
        assert (problem["type"], problem["field"]) == (kind, field)
        assert answer.body["detail"] == f"- {field}: {problem['description']}\n"


@pytest.mark.parametrize(
    ("value", "given"), [(None, "null"), (1.5, "number"), ({}, "object"), ([], "array")]
)
async def test_type_errors_name_the_json_type(value: Any, given: str) -> None:
    async with serve() as api:
        answer = await api.create({"prompt": value})
        assert answer.body["invalid_fields"][0]["description"] == (
            f"Invalid type. Expected: string, given: {given}"
        )


async def test_valid_seedream_inputs_with_the_limits_are_accepted() -> None:
    async with serve() as api:
        values = {
            "prompt": "a",
            "image_input": ["https://example.com/a.png"] * 5,
            "sequential_image_generation": "auto",
            "max_images": 10,
            "size": "custom",
            "width": 4096,
            "height": 1024.0,
            "enhance_prompt": False,
            "unknown_field": "ignored, as Replicate does",
        }
        assert (await api.create(values, model=SEEDREAM)).status == 201


@pytest.mark.parametrize(
    ("body", "kind", "field"),
    [
        ({"input": {"prompt": "a"}, "version": "x"}, "additional_property_not_allowed", ""),
        ({}, "required", ""),
        ({"input": "a prompt"}, "type", "input"),
        ({"input": {"prompt": "a"}, "webhook": 5}, "type", "webhook"),
        (
            {"input": {"prompt": "a"}, "webhook_events_filter": "start"},
            "type",
            "webhook_events_filter",
        ),
        (
            {"input": {"prompt": "a"}, "webhook_events_filter": ["begin"]},
            "enum",
            "webhook_events_filter.0",
        ),
        ({"input": {"prompt": "a"}, "stream": "yes"}, "type", "stream"),
        ([{"input": {}}], "type", ""),
    ],
)
async def test_invalid_bodies_get_422(body: Any, kind: str, field: str) -> None:
    async with serve() as api:
        answer = await api.call("POST", f"/v1/models/{IMAGEN}/predictions", body=body)
        assert answer.status == 422, answer.text
        [problem] = answer.body["invalid_fields"]
        assert (problem["type"], problem["field"]) == (kind, field)
        if field == "":
            assert answer.body["detail"].startswith("- (root): ")


async def test_a_version_create_requires_a_string_version() -> None:
    async with serve() as api:
        missing = await api.call("POST", "/v1/predictions", body={"input": {}})
        assert missing.body["invalid_fields"] == [
            {"type": "required", "field": "", "description": "version is required"}
        ]
        number = await api.call("POST", "/v1/predictions", body={"input": {}, "version": 3})
        assert number.body["invalid_fields"][0]["field"] == "version"


async def test_a_body_that_is_not_json_gets_400() -> None:
    async with serve() as api:
        answer = await api.call("POST", f"/v1/models/{IMAGEN}/predictions", data=b"{not json")
        assert answer.status == 400
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert answer.body["title"] == "Invalid JSON"


async def test_unknown_routes_and_methods_get_problem_json() -> None:
    async with serve() as api:
        missing = await api.call("GET", "/v1/nothing/here")
        assert (missing.status, missing.body["title"]) == (404, "Not found")
        wrong = await api.call("PUT", "/v1/predictions")
        assert (wrong.status, wrong.body["title"]) == (405, "Method not allowed")
        assert [r.kind for r in api.emulator.requests] == ["unknown", "unknown"]


async def test_a_failing_handler_answers_500_problem_json(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("quickrouter_async.testing._handlers.render", broken)
    async with serve() as api:
        answer = await api.create()
        assert answer.status == 500
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert answer.body["title"] == "Internal Server Error"
