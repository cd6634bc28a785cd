"""The endpoint handlers: create, get, cancel, list, the webhook secret and files."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import hashlib
import json
import re
import time
from typing import TYPE_CHECKING, Any, Final

import attrs
from aiohttp import web

from . import _faults
from ._catalog import (
    KNOWN_MODELS,
    InvalidField,
    invalid,
    parse_version,
    type_error,
    valid_model_name,
    validate_input,
)
from ._images import PillowMissingError, draw
from ._protocol import (
    gateway_not_found,
    json_response,
    not_found,
    parse_cancel_after,
    parse_prefer_wait,
    parse_timestamp,
    problem,
    validation_problem,
)
from ._records import FileRequestRecord
from ._render import output_visible, render

if TYPE_CHECKING:
    import datetime

    from ._emulator import Emulator
    from ._records import PredictionRecord
    from ._runtime import Runtime

_BODY_FIELDS: Final = frozenset({"input", "webhook", "webhook_events_filter", "stream"})
_WEBHOOK_EVENTS: Final = ("start", "output", "logs", "completed")
_CURSOR: Final = re.compile(r"([ab]):(\d+)")
_FILE_NAME: Final = re.compile(r"out-(\d+)\.([a-z]+)")
_INVALID_VERSION: Final = (
    "Invalid version or not permitted",
    "The specified version does not exist (or perhaps you don't have permission to use it?)",
)


@attrs.define
class Exchange:
    """What handlers tell the middleware about one API request."""

    kind: str
    faults: list[str] = attrs.field(factory=list)
    prediction_id: str | None = None
    body: Any = None


# Each request is handled in its own task, so a context variable is per request.
current_exchange: contextvars.ContextVar[Exchange] = contextvars.ContextVar("exchange")


def exchange_of(_request: web.Request) -> Exchange:
    """The exchange the middleware opened for the request being handled."""
    return current_exchange.get()


def _body_problems(body: dict[str, Any], *, version: bool) -> list[InvalidField]:
    """Problems of a create body against the request schemas (additionalProperties false)."""
    allowed = _BODY_FIELDS | {"version"} if version else _BODY_FIELDS
    problems = [
        invalid("additional_property_not_allowed", "", f"Additional property {name} is not allowed")
        for name in body
        if name not in allowed
    ]
    required = ("version", "input") if version else ("input",)
    problems += [
        invalid("required", "", f"{name} is required") for name in required if name not in body
    ]
    for name, expected, kind in (
        ("version", "string", str),
        ("input", "object", dict),
        ("webhook", "string", str),
        ("webhook_events_filter", "array", list),
        ("stream", "boolean", bool),
    ):
        if name in body and name in allowed and not isinstance(body[name], kind):
            problems.append(type_error(name, expected, body[name]))
    events = body.get("webhook_events_filter")
    if isinstance(events, list):
        listed = ", ".join(json.dumps(event) for event in _WEBHOOK_EVENTS)
        problems += [
            invalid(
                "enum",
                f"webhook_events_filter.{position}",
                f"webhook_events_filter.{position} must be one of the following: {listed}",
            )
            for position, event in enumerate(events)
            if event not in _WEBHOOK_EVENTS
        ]
    return problems


def _encode_cursor(direction: str, sequence: int) -> str:
    return base64.urlsafe_b64encode(f"{direction}:{sequence}".encode()).decode().rstrip("=")


def _decode_cursor(token: str) -> tuple[str, int] | None:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    match = _CURSOR.fullmatch(text)
    return (match.group(1), int(match.group(2))) if match else None


class Handlers:
    """The request handlers of one emulator."""

    def __init__(self, emulator: Emulator, runtime: Runtime) -> None:
        """Serve ``emulator``'s state."""
        self.emulator = emulator
        self.runtime = runtime

    def _prediction(
        self,
        request: web.Request,
        record: PredictionRecord,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        body = render(record, time.monotonic(), self.emulator.render_context())
        exchange = exchange_of(request)
        exchange.prediction_id = record.id
        exchange.body = body
        return json_response(body, status=status, headers=headers)

    async def _read_body(
        self, request: web.Request, *, version: bool
    ) -> dict[str, Any] | web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return problem(400, "Invalid JSON", "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return validation_problem([type_error("", "object", body)])
        problems = _body_problems(body, version=version)
        return validation_problem(problems) if problems else body

    def _known(self, model: str) -> bool:
        return self.emulator.accept_any_model or model in KNOWN_MODELS

    async def create_for_model(self, request: web.Request) -> web.Response:
        """``POST /v1/models/{owner}/{name}/predictions``."""
        owner, name = request.match_info["owner"], request.match_info["name"]
        if not valid_model_name(owner, name) or not self._known(f"{owner}/{name}"):
            return not_found("Model not found")
        body = await self._read_body(request, version=False)
        if isinstance(body, web.Response):
            return body
        return await self._create(request, body, model=f"{owner}/{name}", version="hidden")

    async def create_for_version(self, request: web.Request) -> web.Response:
        """``POST /v1/predictions`` with ``version`` as ``owner/name[:id]`` or ``id``."""
        body = await self._read_body(request, version=True)
        if isinstance(body, web.Response):
            return body
        parsed = parse_version(body["version"], self.runtime.versions)
        # A version id names a model the emulator cannot know of (a private one, say).
        if parsed is None or (parsed[1] == "hidden" and not self._known(parsed[0])):
            return problem(422, *_INVALID_VERSION)
        model, version = parsed
        if version != "hidden":
            self.runtime.versions.setdefault(version, model)
        return await self._create(request, body, model=model, version=version)

    async def create_for_deployment(self, request: web.Request) -> web.Response:
        """``POST /v1/deployments/{owner}/{name}/predictions``."""
        if self.emulator.profile == "gateway":
            return gateway_not_found(request)
        owner, name = request.match_info["owner"], request.match_info["name"]
        if not valid_model_name(owner, name):
            return not_found("Deployment not found")
        body = await self._read_body(request, version=False)
        if isinstance(body, web.Response):
            return body
        deployment = f"{owner}/{name}"
        version = "dp-" + hashlib.sha256(deployment.encode()).hexdigest()[:32]
        return await self._create(
            request, body, model=deployment, version=version, deployment=deployment
        )

    async def _create(
        self,
        request: web.Request,
        body: dict[str, Any],
        *,
        model: str,
        version: str,
        deployment: str | None = None,
    ) -> web.Response:
        emulator, runtime = self.emulator, self.runtime
        values: dict[str, Any] = body["input"]
        problems = validate_input(model, values)
        if problems:
            return validation_problem(problems)
        cancel_after = None
        header = request.headers.get("Cancel-After")
        if header is not None:
            cancel_after = parse_cancel_after(header)
            if cancel_after is None or cancel_after < emulator.min_cancel_after:
                return problem(
                    400,
                    "Invalid Cancel-After header",
                    f"Cancel-After must be a duration of at least {emulator.min_cancel_after:g} "
                    "seconds, such as 30s, 5m or 1h30m45s.",
                )
        events = body.get("webhook_events_filter")
        record = runtime.create(
            emulator,
            model=model,
            version=version,
            values=values,
            headers=dict(request.headers),
            cancel_after=cancel_after,
            deployment=deployment,
            webhook=body.get("webhook"),
            webhook_events_filter=None if events is None else list(events),
        )
        exchange = exchange_of(request)
        exchange.prediction_id = record.id
        if record.webhook is not None and emulator.webhooks:
            runtime.webhooks.schedule(emulator, record)
        for faults in emulator.faults_for("create"):
            if _faults.chance(runtime.rng, faults.reset_after_create):
                exchange.faults.append("reset_after_create")
                raise _faults.DroppedError
            if _faults.chance(runtime.rng, faults.server_error_after_create):
                exchange.faults.append("server_error_after_create")
                return _faults.server_error(runtime.rng.choice((502, 500)))
        prefix = "/replicate/v1" if request.path.startswith("/replicate/") else "/v1"
        location = request.url.origin().with_path(f"{prefix}/predictions/{record.id}")
        headers = {"Location": str(location)}
        prefer = None
        if emulator.honor_prefer_wait:
            prefer = parse_prefer_wait(request.headers.get("Prefer"))
        if prefer is not None:
            applied, seconds = prefer
            await runtime.hold(record, seconds, early=emulator.early_output)
            headers["Preference-Applied"] = applied
        return self._prediction(request, record, status=201, headers=headers)

    async def get(self, request: web.Request) -> web.Response:
        """``GET /v1/predictions/{id}``."""
        record = self.emulator.predictions.get(request.match_info["prediction_id"])
        if record is None:
            return not_found()
        return self._prediction(request, record)

    async def cancel(self, request: web.Request) -> web.Response:
        """``POST /v1/predictions/{id}/cancel``: terminal predictions stay as they are."""
        record = self.emulator.predictions.get(request.match_info["prediction_id"])
        if record is None:
            return not_found()
        record.cancel(time.monotonic())
        return self._prediction(request, record)

    async def list_predictions(self, request: web.Request) -> web.Response:
        """``GET /v1/predictions``: newest first, cursor pages, ``created_*`` filters."""
        query = request.query
        bounds: dict[str, datetime.datetime | None] = {}
        for name in ("created_after", "created_before"):
            text = query.get(name)
            bounds[name] = None if text is None else parse_timestamp(text)
            if text is not None and bounds[name] is None:
                return problem(400, "Invalid query", f"{name} must be an ISO 8601 timestamp.")
        after, before = bounds["created_after"], bounds["created_before"]
        cursor = None
        if "cursor" in query:
            cursor = _decode_cursor(query["cursor"])
            if cursor is None:
                return problem(400, "Invalid cursor", "The cursor is not valid.")

        def accept(record: PredictionRecord) -> bool:
            created = record.created_at
            return (after is None or created > after) and (before is None or created < before)

        direction, sequence = cursor if cursor is not None else ("b", None)
        records, older, newer = self.emulator.predictions.page(
            size=self.emulator.page_size,
            accept=accept,
            older_than=sequence if direction == "b" else None,
            newer_than=sequence if direction == "a" else None,
        )
        now, context = time.monotonic(), self.emulator.render_context()
        body: dict[str, Any] = {
            "next": None,
            "previous": None,
            "results": [render(record, now, context) for record in records],
        }
        if older:
            body["next"] = str(
                request.url.update_query(cursor=_encode_cursor("b", records[-1].sequence))
            )
        if newer:
            body["previous"] = str(
                request.url.update_query(cursor=_encode_cursor("a", records[0].sequence))
            )
        exchange_of(request).body = body
        return json_response(body)

    async def webhook_secret(self, _request: web.Request) -> web.Response:
        """``GET /v1/webhooks/default/secret``."""
        return json_response({"key": self.emulator.webhook_secret})

    async def file(self, request: web.Request) -> web.Response:
        """``GET /files/{id}/out-{index}.{ext}``: an output image; no auth needed."""
        arrived = time.monotonic()
        emulator = self.emulator
        prediction_id = request.match_info["prediction_id"]
        match = _FILE_NAME.fullmatch(request.match_info["name"])
        index = int(match.group(1)) if match else -1
        record = emulator.predictions.get(prediction_id)
        response: web.Response
        if (
            match is None
            or record is None
            or not output_visible(record, time.monotonic(), emulator.render_context())
            or index >= record.plan.count
            or match.group(2) != record.plan.extension
        ):
            response = not_found("File not found")
        else:
            response = await self._image(record, index)
        emulator.file_requests.append(
            FileRequestRecord(
                path=request.path,
                prediction_id=prediction_id,
                index=index,
                status=response.status,
                time=arrived,
                had_authorization="Authorization" in request.headers,
            )
        )
        return response

    async def _image(self, record: PredictionRecord, index: int) -> web.Response:
        cache, plan = self.runtime.images, record.plan
        data = cache.get((record.id, index))
        if data is None:
            seed = f"{record.input.get('prompt', record.model)}\x00{index}"
            try:
                # Encoding can take milliseconds for large sizes: keep it off the loop.
                data = await asyncio.to_thread(draw, seed, plan.width, plan.height, plan.extension)
            except PillowMissingError as exc:
                return problem(503, "Service Unavailable", str(exc))
            cache.put((record.id, index), data)
        return web.Response(body=data, content_type=plan.content_type)
