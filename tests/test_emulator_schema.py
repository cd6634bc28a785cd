"""Every prediction shape the emulator answers validates against Replicate's OpenAPI schemas.

The two schemas are embedded below as they appear in Replicate's OpenAPI document
(``https://api.replicate.com/openapi.json``, info.version ``1.0.0-a1``, sha256
``4500bf86...8b39``), with descriptions, examples and titles left out. When that
document is found next to the checkout (``reference/replicate-openapi.json``) or named by
``REPLICATE_OPENAPI``, a test checks that the embedded copy still matches it.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
from quickrouter_async.testing import Faults
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .test_emulator import SEEDREAM, TERMINAL, serve

pytestmark = pytest.mark.anyio

SCHEMAS: dict[str, Any] = {
    "schemas_prediction_response": {
        "properties": {
            "completed_at": {"format": "date-time", "type": "string"},
            "created_at": {"format": "date-time", "type": "string"},
            "data_removed": {"type": "boolean"},
            "deadline": {"format": "date-time", "type": "string"},
            "deployment": {"type": "string"},
            "error": {"nullable": True, "type": "string"},
            "id": {"type": "string"},
            "input": {"additionalProperties": True, "type": "object"},
            "logs": {"type": "string"},
            "metrics": {
                "additionalProperties": True,
                "properties": {"total_time": {"type": "number"}},
                "type": "object",
            },
            "model": {"type": "string"},
            "output": {},
            "source": {"enum": ["web", "api"], "type": "string"},
            "started_at": {"format": "date-time", "type": "string"},
            "status": {
                "enum": ["starting", "processing", "succeeded", "failed", "canceled", "aborted"],
                "type": "string",
            },
            "urls": {
                "properties": {
                    "cancel": {"format": "uri", "type": "string"},
                    "get": {"format": "uri", "type": "string"},
                    "stream": {"format": "uri", "type": "string"},
                    "web": {"format": "uri", "type": "string"},
                },
                "required": ["web", "get", "cancel"],
                "type": "object",
            },
            "version": {"oneOf": [{"type": "string"}, {"enum": ["hidden"], "type": "string"}]},
        },
        "required": [
            "id",
            "model",
            "version",
            "input",
            "output",
            "data_removed",
            "error",
            "status",
            "created_at",
            "urls",
        ],
        "type": "object",
    },
    "schemas_paginated_prediction_response": {
        "properties": {
            "next": {"nullable": True, "type": "string"},
            "previous": {"nullable": True, "type": "string"},
            "results": {
                "items": {"$ref": "#/components/schemas/schemas_prediction_response"},
                "type": "array",
            },
        },
        "type": "object",
    },
}

_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")
_DOCUMENT_URI = "urn:replicate-openapi"


def as_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 idioms the document still uses, as JSON Schema 2020-12 means them.

    ``nullable: true`` adds ``null`` to the type. ``oneOf`` becomes ``anyOf``: the
    ``version`` schema lists a plain string *and* the string ``"hidden"``, so a strict
    ``oneOf`` would reject the ``"hidden"`` every official model answers with.
    """
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: as_json_schema(value) for key, value in node.items()}
    if converted.pop("nullable", False):
        converted["type"] = [converted["type"], "null"]
    if "oneOf" in converted:
        converted["anyOf"] = converted.pop("oneOf")
    return converted


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date-time")
    def date_time(value: object) -> bool:
        return not isinstance(value, str) or _RFC3339.fullmatch(value) is not None

    @checker.checks("uri")
    def uri(value: object) -> bool:
        if not isinstance(value, str):
            return True
        parts = urlsplit(value)
        return bool(parts.scheme and parts.netloc)

    return checker


def validator(name: str) -> jsonschema.protocols.Validator:
    """A validator for one of the embedded schemas, with ``$ref`` resolved."""
    document = {"components": {"schemas": as_json_schema(SCHEMAS)}}
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_DOCUMENT_URI, resource)
    schema = {"$ref": f"{_DOCUMENT_URI}#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(
        schema, registry=registry, format_checker=_format_checker()
    )


PREDICTION = validator("schemas_prediction_response")
PAGE = validator("schemas_paginated_prediction_response")


def _strip(node: Any) -> Any:
    if isinstance(node, list):
        return [_strip(item) for item in node]
    if isinstance(node, dict):
        return {
            key: _strip(value)
            for key, value in node.items()
            if key not in {"description", "example", "title"}
        }
    return node


def _spec_path() -> Path | None:
    named = os.environ.get("REPLICATE_OPENAPI")
    if named:
        return Path(named)
    for folder in Path(__file__).resolve().parents:
        for candidate in (
            folder / "reference" / "replicate-openapi.json",
            folder / "shared" / "reference" / "replicate-openapi.json",
        ):
            if candidate.is_file():
                return candidate
    return None


def test_the_embedded_schemas_match_the_openapi_document() -> None:
    path = _spec_path()
    if path is None:
        pytest.skip("Replicate's OpenAPI document is not next to this checkout")
    schemas = json.loads(path.read_text(encoding="utf-8"))["components"]["schemas"]
    assert {name: _strip(schemas[name]) for name in SCHEMAS} == SCHEMAS


def test_the_validators_catch_what_the_schema_forbids() -> None:
    assert not PREDICTION.is_valid({"id": "x", "status": "done"})
    assert not PAGE.is_valid({"results": [{"id": "x"}]})
    assert not PREDICTION.is_valid(
        {
            "id": "x",
            "model": "a/b",
            "version": "hidden",
            "input": {},
            "output": None,
            "data_removed": False,
            "error": None,
            "status": "starting",
            "created_at": "yesterday",
            "urls": {"get": "/relative", "cancel": "x", "web": "y"},
        }
    )
    assert PAGE.is_valid({"next": None, "previous": None, "results": []})
    assert as_json_schema({"nullable": False, "type": "string"}) == {"type": "string"}


def check(body: Any) -> None:
    errors = [error.message for error in PREDICTION.iter_errors(body)]
    assert not errors, (errors, body)


async def test_every_status_validates() -> None:
    async with serve(duration=30.0, start_delay=10.0, min_cancel_after=0) as api:
        emulator = api.emulator
        seen: dict[str, Any] = {}
        starting = await api.create(
            webhook="https://example.com/hook", webhook_events_filter=["completed"]
        )
        seen["starting"] = starting.body
        aborted = await api.create(headers={"Cancel-After": "1ms"})
        seen["aborted"] = await api.until(aborted.body["id"], *TERMINAL)
        canceled = await api.create()
        cancel_path = f"/v1/predictions/{canceled.body['id']}/cancel"
        seen["canceled"] = (await api.call("POST", cancel_path)).body
        emulator.start_delay = 0.0
        seen["processing"] = (await api.create({"prompt": "a"}, model=SEEDREAM)).body
        emulator.duration = 0.0
        emulator.fail_prompts = ("bad",)
        seen["failed"] = (await api.create({"prompt": "bad"}, headers={"Prefer": "wait"})).body
        deployment = await api.call(
            "POST", "/v1/deployments/acme/model/predictions", body={"input": {}}
        )
        seen["succeeded"] = await api.until(deployment.body["id"], *TERMINAL)
        version = await api.call(
            "POST", "/v1/predictions", body={"version": f"acme/x:{'0' * 64}", "input": {}}
        )
        seen["version"] = await api.until(version.body["id"], *TERMINAL)
        emulator.data_retention = 0.0
        emulator.passthrough_urls = False
        seen["removed"] = (await api.create(headers={"Prefer": "wait"})).body
        assert {body["status"] for body in seen.values()} == {
            "starting",
            "processing",
            "succeeded",
            "failed",
            "canceled",
            "aborted",
        }
        assert seen["removed"]["data_removed"] is True
        for body in seen.values():
            check(body)
        page = (await api.call("GET", "/v1/predictions")).body
        assert len(page["results"]) == len(seen)
        assert not [error.message for error in PAGE.iter_errors(page)]


async def test_early_output_validates() -> None:
    async with serve(duration=0.2, start_delay=0.0, early_output=True) as api:
        body = (await api.create(headers={"Prefer": "wait=5"})).body
        assert body["status"] == "processing"
        assert body["output"] is not None
        check(body)


async def test_a_status_that_is_not_a_string_fails_the_schema() -> None:
    async with serve(duration=30.0) as api:
        prediction_id = (await api.create()).body["id"]
        api.emulator.faults = Faults(malformed=1.0)
        for _ in range(40):
            answer = await api.get(prediction_id)
            if api.emulator.requests[-1].fault == "malformed:status":
                broken = copy.deepcopy(answer.body)
                assert not PREDICTION.is_valid(broken)
                return
        pytest.fail("no malformed status in 40 answers")
