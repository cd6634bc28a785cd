"""A create, validated and encoded before anything is sent: `build_create`.

The arguments of `QuickRouter.create` (a typed input, or a model and a mapping; the
wait, webhook and deadline options) are checked and turned into a `CreateRequest`: the
path, the headers, and the body encoded once. The input is encoded with its keys sorted
(`input_json`), so the same text is the body's ``input`` and what a lookup compares with
the input a prediction echoes back.

Model names and prediction ids become path segments: each is checked to be one plain
segment (letters, digits, ``.``, ``_``, ``-``; not ``.`` or ``..``), so no name or id can
steer a request to another route of the API host, which receives the key.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._errors import InputError, short_repr
from ._inputs import ModelInput, validate_model_name
from ._serde import input_payload

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "MIN_CANCEL_AFTER",
    "CreateRequest",
    "build_create",
    "cancel_after_header",
    "input_json",
    "prediction_path",
]

# Replicate's smallest Cancel-After (API.md §2).
MIN_CANCEL_AFTER: Final = 5
_SEGMENT: Final = re.compile(r"[A-Za-z0-9._-]{1,200}")
# Cancel-After as Replicate reads it: "30s", "5m", "1h30m45s", "500ms", or bare seconds.
_DURATION: Final = re.compile(r"\d+(?:\.\d+)?|(?:\d+(?:\.\d+)?(?:h|ms|m|s))+")
_WEBHOOK_EVENTS: Final = frozenset({"start", "output", "logs", "completed"})


@attrs.frozen(kw_only=True)
class CreateRequest:
    """A validated create: where it goes and what it sends.

    Attributes:
        model: ``owner/name`` or ``owner/name:version`` (or a bare version id).
        path: the API path the create is posted to.
        input_json: the ``input`` object as sent: JSON, keys sorted, no spaces.
        body: the whole request body, encoded once.
        headers: the extra headers (``Prefer``, ``Cancel-After``).
        sync_wait: the ``Prefer: wait`` seconds, if any.
    """

    model: str
    path: str
    input_json: str
    body: bytes
    headers: dict[str, str]
    sync_wait: int | None

    @functools.cached_property
    def input(self) -> dict[str, Any]:
        """The ``input`` object sent (as JSON would give it back)."""
        payload: dict[str, Any] = json.loads(self.input_json)
        return payload

    @property
    def deadline_sent(self) -> bool:
        """Whether the create carries ``Cancel-After`` (the server stops it by itself)."""
        return "Cancel-After" in self.headers


# One encoder for every input: keys sorted, no spaces, Unicode kept, no NaN. No record
# of enclosing containers: a value that contains itself recurses until RecursionError,
# as one nested too deeply does, and both get one message.
_INPUT_ENCODER: Final = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
    check_circular=False,
)


def input_json(value: object) -> str:
    """An input as JSON with its keys sorted, no spaces, Unicode kept: one text for one
    value, compared with the input a prediction echoes back.

    Raises:
        ValueError: NaN or infinity; TypeError: not JSON; RecursionError: nested too deep.
    """
    return _INPUT_ENCODER.encode(value)


def _segment(value: str, what: str, field: str) -> str:
    if not _SEGMENT.fullmatch(value) or not value.strip("."):
        raise InputError(
            f"{what} must be letters, digits, '.', '_' and '-' (not '.' or '..'), "
            f"got {short_repr(value)}",
            field=field,
        )
    return value


def prediction_path(prediction_id: str) -> str:
    """The API path of a prediction: ``/v1/predictions/{id}``, the id checked."""
    return "/v1/predictions/" + _segment(prediction_id, "a prediction id", "prediction")


def _model_path(model: str) -> str:
    owner, _, name = model.partition("/")
    _segment(owner, "a model's owner", "model")
    _segment(name, "a model's name", "model")
    return f"/v1/models/{owner}/{name}/predictions"


def _sync_wait(wait: bool | float | None) -> int | None:  # noqa: FBT001 (mirrors create(wait=))
    if wait is None or wait is False:
        return None
    if wait is True:
        return 60
    value: object = wait
    if isinstance(value, int | float) and 1 <= value <= 60:
        return math.ceil(value)
    raise InputError(
        f"wait must be True, False or 1-60 seconds, got {short_repr(wait)}", field="wait"
    )


def cancel_after_header(value: float | dt.timedelta | str | None) -> str | None:
    """The ``Cancel-After`` header for a deadline: whole seconds, at least 5."""
    if value is None:
        return None
    if isinstance(value, str):
        if not _DURATION.fullmatch(value):
            raise InputError(
                f"cancel_after must be seconds or a duration such as 30s, 5m or 1h30m, "
                f"got {short_repr(value)}",
                field="cancel_after",
            )
        return value
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    if not seconds >= MIN_CANCEL_AFTER or not math.isfinite(seconds):
        raise InputError("cancel_after must be at least 5 seconds", field="cancel_after")
    return f"{math.ceil(seconds)}s"


def _input_json(payload: dict[str, Any]) -> str:
    """The input as JSON, checked before sending: JSON types only, no NaN or infinity."""
    try:
        try:
            text = input_json(payload)
        except TypeError:
            # Keys of several types cannot be sorted; as JSON they are all strings.
            text = input_json(json.loads(json.dumps(payload, allow_nan=False)))
    except RecursionError:
        raise InputError(
            "input is not JSON: it contains itself or is nested too deeply", field="input"
        ) from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"input is not JSON: {str(exc)[:200]}", field="input") from None
    return text


def _body(input_text: str, fields: dict[str, Any]) -> bytes:
    """The create's body: the input as already encoded, then the other fields."""
    parts = ['{"input":', input_text]
    for name, value in fields.items():
        parts += [',"', name, '":', json.dumps(value, ensure_ascii=False)]
    parts.append("}")
    try:
        return "".join(parts).encode()
    except UnicodeEncodeError as exc:  # a lone surrogate in a string
        raise InputError(f"input is not valid Unicode: {exc.reason}", field="input") from None


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
            raise InputError(f"create({short_repr(model)}, ...) needs an input", field="input")
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
    text = _input_json(payload)
    fields: dict[str, Any] = {}
    if ":" in model or "/" not in model:
        path = "/v1/predictions"
        fields["version"] = model
    else:
        path = _model_path(model)
    if webhook is not None:
        if not webhook.startswith(("https://", "http://")):
            raise InputError("webhook must be an http(s) URL", field="webhook")
        fields["webhook"] = webhook
    if webhook_events_filter is not None:
        events = list(webhook_events_filter)
        if not events or not set(events) <= _WEBHOOK_EVENTS:
            raise InputError(
                f"webhook_events_filter takes some of {sorted(_WEBHOOK_EVENTS)}, "
                f"got {short_repr(events)}",
                field="webhook_events_filter",
            )
        fields["webhook_events_filter"] = events
    headers: dict[str, str] = {}
    sync = _sync_wait(wait)
    if sync is not None:
        headers["Prefer"] = f"wait={sync}"
    if (deadline := cancel_after_header(cancel_after)) is not None:
        headers["Cancel-After"] = deadline
    return CreateRequest(
        model=model,
        path=path,
        input_json=text,
        body=_body(text, fields),
        headers=headers,
        sync_wait=sync,
    )
