"""Creating a prediction exactly once.

A create whose fate is unknown (a 5xx, a timeout or a reset after the request was sent)
is never sent again blindly: the recent predictions are listed and matched on model,
input and creation time. A match is attached to; only when the prediction is certainly
absent is the input sent once more; when the lookup itself fails, `CreateInDoubt`
carries the input to the caller.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._errors import CreateInDoubt, InputError, QuickRouterError
from ._inputs import ModelInput, validate_model_name
from ._serde import input_payload, parse_page, parse_prediction
from ._transport import create_in_doubt

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._models import Prediction
    from ._transport import Transport

__all__ = ["CreateRequest", "build_create", "send_create"]

logger = logging.getLogger(__name__)

# Clocks differ: a prediction created a little "before" the client sent it still matches.
_CLOCK_SKEW: Final = dt.timedelta(seconds=120)
_LOOKUP_PAGES: Final = 3
_RESENDS: Final = 1


@attrs.frozen(kw_only=True)
class CreateRequest:
    """A validated create: where it goes and what it sends."""

    model: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    sync_wait: int | None

    @property
    def input(self) -> dict[str, Any]:
        """The ``input`` object sent."""
        payload: dict[str, Any] = self.body["input"]
        return payload


def _sync_wait(wait: bool | float | None) -> int | None:  # noqa: FBT001 (mirrors create(wait=))
    if wait is None or wait is False:
        return None
    if wait is True:
        return 60
    value: object = wait
    if isinstance(value, int | float) and 1 <= value <= 60:
        return math.ceil(value)
    raise InputError(f"wait must be True, False or 1-60 seconds, got {wait!r}", field="wait")


def _cancel_after(value: float | dt.timedelta | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    if seconds < 5:
        raise InputError("cancel_after must be at least 5 seconds", field="cancel_after")
    return f"{round(seconds)}s"


def build_create(
    model_or_input: str | ModelInput,
    input: Mapping[str, Any] | ModelInput | None,  # noqa: A002
    *,
    wait: bool | float | None,
    webhook: str | None,
    webhook_events_filter: list[str] | tuple[str, ...] | None,
    cancel_after: float | dt.timedelta | str | None,
) -> CreateRequest:
    """Validate the arguments of `QuickRouter.create` and build the request."""
    if isinstance(model_or_input, str):
        model = validate_model_name(model_or_input)
        if input is None:
            raise InputError(f"create({model!r}, ...) needs an input", field="input")
        payload = input_payload(input)
    elif isinstance(model_or_input, ModelInput):
        if input is not None:
            raise InputError("pass either a typed input or a model and an input", field="input")
        model = validate_model_name(model_or_input.model)
        payload = input_payload(model_or_input)
    else:
        raise InputError(
            f"expected a model name or a typed input, not {type(model_or_input).__name__}",
            field="model",
        )
    body: dict[str, Any] = {"input": payload}
    if ":" in model or "/" not in model:
        path = "/v1/predictions"
        body["version"] = model
    else:
        owner, name = model.split("/")
        path = f"/v1/models/{owner}/{name}/predictions"
    if webhook is not None:
        if not webhook.startswith(("https://", "http://")):
            raise InputError("webhook must be an http(s) URL", field="webhook")
        body["webhook"] = webhook
    if webhook_events_filter is not None:
        allowed = {"start", "output", "logs", "completed"}
        events = list(webhook_events_filter)
        if not events or not set(events) <= allowed:
            raise InputError(
                f"webhook_events_filter takes some of {sorted(allowed)}, got {events!r}",
                field="webhook_events_filter",
            )
        body["webhook_events_filter"] = events
    headers: dict[str, str] = {}
    sync = _sync_wait(wait)
    if sync is not None:
        headers["Prefer"] = f"wait={sync}"
    if (deadline := _cancel_after(cancel_after)) is not None:
        headers["Cancel-After"] = deadline
    return CreateRequest(model=model, path=path, body=body, headers=headers, sync_wait=sync)


def _matches(prediction: Prediction, request: CreateRequest, since: dt.datetime) -> bool:
    model = request.model.split(":", 1)[0]
    if prediction.model is not None and prediction.model != model:
        return False
    if prediction.created_at is not None and prediction.created_at < since - _CLOCK_SKEW:
        return False
    return prediction.input == request.input


async def _look_up(
    transport: Transport, request: CreateRequest, since: dt.datetime, taken: set[str]
) -> Prediction | None:
    """Find the prediction a create in doubt made, newest first; None if certainly absent."""
    url: str | None = transport.url("/v1/predictions")
    for _ in range(_LOOKUP_PAGES):
        if url is None:
            return None
        page = parse_page((await transport.request("GET", url)).data)
        for prediction in page.results:
            if prediction.id not in taken and _matches(prediction, request, since):
                return prediction
        oldest = page.results[-1].created_at if page.results else None
        if oldest is None or oldest < since - _CLOCK_SKEW:
            return None
        url = transport.cursor_url(page.next)
    raise CreateInDoubt(
        "could not tell whether the prediction was created: too many recent predictions",
        model=request.model,
        input=request.input,
    )


async def send_create(
    transport: Transport, request: CreateRequest, *, taken: set[str] | None = None
) -> Prediction:
    """Send a create once, resolving any doubt about its fate by looking it up.

    Args:
        transport: the transport.
        request: the validated create.
        taken: ids already claimed by other submissions of the same input, so two
            identical inputs submitted together never attach to the same prediction.
    """
    taken = set() if taken is None else taken
    for resend in range(_RESENDS + 1):
        since = dt.datetime.now(dt.UTC)
        extra = 0.0 if request.sync_wait is None else request.sync_wait + 5.0
        try:
            answer = await transport.request(
                "POST",
                transport.url(request.path),
                json_body=request.body,
                headers=request.headers,
                create=True,
                read_extra=extra,
            )
        except QuickRouterError as exc:
            if not create_in_doubt(exc):
                raise
            logger.info("create of %s in doubt (%s); looking it up", request.model, exc)
            try:
                found = await _look_up(transport, request, since, taken)
            except CreateInDoubt:
                raise
            except QuickRouterError as lookup_error:
                raise CreateInDoubt(
                    f"the create failed ({exc}) and looking the prediction up failed too "
                    f"({lookup_error}); it may exist",
                    model=request.model,
                    input=request.input,
                ) from exc
            if found is not None:
                logger.info("attached to prediction %s after a create in doubt", found.id)
                taken.add(found.id)
                return found
            if resend == _RESENDS:
                raise
            continue
        prediction = parse_prediction(answer.data)
        taken.add(prediction.id)
        return prediction
    raise AssertionError("unreachable")  # pragma: no cover
