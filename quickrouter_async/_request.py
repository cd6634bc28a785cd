"""A create, validated and encoded before anything is sent: `build_create`.

The arguments of `QuickRouter.create` (a typed input, or a model and a mapping; the
wait, webhook and deadline options) are checked and turned into a `CreateRequest`: the
path, the headers, and the body encoded once. The input is encoded with its keys sorted,
so the same text is the body's ``input`` and, with the model, the key that matches a
create to the prediction the server echoes back (`input_key`).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._errors import InputError, short_repr
from ._inputs import ModelInput, validate_model_name
from ._serde import input_payload

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["CreateRequest", "build_create", "input_key"]


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
    def key(self) -> str:
        """Model (version aside) and input as one string: equal for two submissions
        that one lookup could take for each other.
        """
        return self.model.partition(":")[0] + "\n" + self.input_json


def _not_json(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _sorted_encoder(*, allow_nan: bool) -> Callable[[object], str]:
    """JSON with keys sorted, no spaces, Unicode kept: one text for one value.

    `json.JSONEncoder.encode` builds json's C encoder anew on every call; here it is
    built once and reused. It keeps no record of the containers it is inside (a record
    shared between calls would outlive a failed one), so a value that contains itself
    raises `RecursionError` rather than `ValueError`.
    """
    if c_make_encoder is None:  # an interpreter without json's C speedups
        encoder = json.JSONEncoder(
            sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan
        )
        return encoder.encode
    sort_keys, skip_keys = True, False
    chunks = c_make_encoder(
        None,  # no record of enclosing containers (see above)
        _not_json,
        encode_basestring,
        None,  # no indent
        ":",
        ",",
        sort_keys,
        skip_keys,
        allow_nan,
    )

    def encode(value: object) -> str:
        return "".join(chunks(value, 0))

    return encode


_SORTED: Final = _sorted_encoder(allow_nan=True)
_SORTED_STRICT: Final = _sorted_encoder(allow_nan=False)


def _encode(payload: object, *, strict: bool = False) -> str:
    """``payload`` as JSON with its keys sorted: one text for one value."""
    return (_SORTED_STRICT if strict else _SORTED)(payload)


def input_key(model: str | None, payload: object) -> str:
    """Model (version aside) and input as one string: equal for a create and the
    prediction it made (``model`` None for a prediction that does not name it).
    """
    return (model or "").partition(":")[0] + "\n" + _encode(payload)


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


def _cancel_after(value: float | dt.timedelta | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    if not seconds >= 5:
        raise InputError("cancel_after must be at least 5 seconds", field="cancel_after")
    return f"{round(seconds)}s"


def _input_json(payload: dict[str, Any]) -> str:
    """The input as JSON, checked before sending: JSON types only, no NaN or infinity."""
    try:
        try:
            return _encode(payload, strict=True)
        except TypeError:
            # Keys of several types cannot be sorted; as JSON they are all strings.
            return _encode(json.loads(json.dumps(payload, allow_nan=False)), strict=True)
    except RecursionError:
        raise InputError(
            "input is not JSON: it contains itself or is nested too deeply", field="input"
        ) from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"input is not JSON: {str(exc)[:200]}", field="input") from None


def _body(input_json: str, fields: dict[str, Any]) -> bytes:
    """The create's body: the input as already encoded, then the other fields."""
    parts = ['{"input":', input_json]
    for name, value in fields.items():
        parts += [',"', name, '":', json.dumps(value, ensure_ascii=False)]
    parts.append("}")
    try:
        return "".join(parts).encode()
    except UnicodeEncodeError as exc:  # a lone surrogate in a string
        raise InputError(f"input is not valid Unicode: {exc.reason}", field="input") from None


# Model names already validated (a bulk job names a few models many times over).
_VALID_MODELS: set[str] = set()
_VALID_MODELS_KEPT: Final = 1024


def _model_name(model: object) -> str:
    if isinstance(model, str) and model in _VALID_MODELS:
        return model
    name = validate_model_name(model)
    if len(_VALID_MODELS) < _VALID_MODELS_KEPT:
        _VALID_MODELS.add(name)
    return name


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
        model = _model_name(model_or_input)
        if input is None:
            raise InputError(f"create({short_repr(model)}, ...) needs an input", field="input")
        payload = input_payload(input)
    elif isinstance(model_or_input, ModelInput):
        if input is not None:
            raise InputError("pass either a typed input or a model and an input", field="input")
        model = _model_name(model_or_input.model)
        payload = input_payload(model_or_input)
    else:
        raise InputError(
            f"expected a model name or a typed input, not {type(model_or_input).__name__}",
            field="model",
        )
    input_json = _input_json(payload)
    fields: dict[str, Any] = {}
    if ":" in model or "/" not in model:
        path = "/v1/predictions"
        fields["version"] = model
    else:
        owner, name = model.split("/")
        path = f"/v1/models/{owner}/{name}/predictions"
    if webhook is not None:
        if not webhook.startswith(("https://", "http://")):
            raise InputError("webhook must be an http(s) URL", field="webhook")
        fields["webhook"] = webhook
    if webhook_events_filter is not None:
        allowed = {"start", "output", "logs", "completed"}
        events = list(webhook_events_filter)
        if not events or not set(events) <= allowed:
            raise InputError(
                f"webhook_events_filter takes some of {sorted(allowed)}, got {short_repr(events)}",
                field="webhook_events_filter",
            )
        fields["webhook_events_filter"] = events
    headers: dict[str, str] = {}
    sync = _sync_wait(wait)
    if sync is not None:
        headers["Prefer"] = f"wait={sync}"
    if (deadline := _cancel_after(cancel_after)) is not None:
        headers["Cancel-After"] = deadline
    return CreateRequest(
        model=model,
        path=path,
        input_json=input_json,
        body=_body(input_json, fields),
        headers=headers,
        sync_wait=sync,
    )
