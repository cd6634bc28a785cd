"""The one cattrs converter, and every hook that turns JSON into models and back.

Reading is lenient: any field but ``id`` and ``status`` may be missing, unknown fields are
kept in `Prediction.extra`, timestamps may carry 0 to 9 fractional digits. A body that is
not a prediction at all raises `ProtocolError`. Models never call the converter
themselves; the client and the transport do.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, Final

import attrs
from cattrs.preconf.json import make_converter

from ._errors import InputError, ProtocolError, short_repr
from ._models import Prediction, PredictionPage, Status, merge_extra

__all__ = [
    "converter",
    "input_payload",
    "parse_page",
    "parse_prediction",
    "parse_timestamp",
    "prediction_to_json",
]

converter: Final = make_converter(omit_if_default=False)
# Local files in typed inputs (paths, bytes, open files) are left as they are: the JSON
# converter would turn a path into its text and bytes into base85, and both would be
# sent as if they were URLs. `_local_files` reads them into data: URIs instead.
for _local_file_type in (Path, PurePath, os.PathLike, bytes, bytearray, memoryview, io.IOBase):
    converter.register_unstructure_hook(_local_file_type, lambda value: value)

_DATETIME_FIELDS: Final = ("created_at", "started_at", "completed_at", "deadline")
_STRING_FIELDS: Final = (
    "model",
    "version",
    "logs",
    "source",
    "deployment",
    "webhook",
)
_DICT_FIELDS: Final = ("input", "metrics", "urls")
_STRING_TYPES: Final = frozenset({str, type(None)})
_STRING_KEYS: Final = frozenset({str})
_DICT_TYPES: Final = frozenset({dict, type(None)})
# The known statuses by value: a dict lookup instead of the enum's call machinery.
_STATUSES: Final[dict[str, Status]] = {member.value: member for member in Status}
_KNOWN: Final = frozenset(
    {"id", "status", "output", "error", "data_removed", "webhook_events_filter"}
    | set(_DICT_FIELDS)
    | set(_DATETIME_FIELDS)
    | set(_STRING_FIELDS)
)


def parse_timestamp(value: object, field: str = "timestamp") -> dt.datetime | None:
    """Parse an RFC 3339 timestamp with any number of fractional digits (naive = UTC)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{field} is not a timestamp string: {short_repr(value)}")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ProtocolError(f"{field} is not an RFC 3339 timestamp: {short_repr(value)}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


fromisoformat: Final = dt.datetime.fromisoformat


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _error_text(value: object) -> str | None:
    # Servers put a string here; some gateways put an object. Keep it readable either way.
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for key in ("message", "detail", "error"):
            if isinstance(value.get(key), str):
                return str(value[key])
    return str(value)


def _check_fields(values: tuple[object, ...], names: tuple[str, ...], kind: type) -> None:
    """Raise `ProtocolError` for the first of ``values`` that is neither None nor ``kind``."""
    what = "a string" if kind is str else "an object"
    for name, value in zip(names, values, strict=True):
        if value is not None and not isinstance(value, kind):
            raise ProtocolError(
                f"prediction field {name!r} should be {what}, got {short_repr(value)}"
            )


def parse_prediction(data: object) -> Prediction:
    """Turn a decoded JSON body into a `Prediction`, or raise `ProtocolError`."""
    if type(data) is not dict and not isinstance(data, Mapping):
        raise ProtocolError(f"expected a prediction object, got {type(data).__name__}")
    get = data.get
    pid = get("id")
    status = get("status")
    if not isinstance(pid, str) or not pid:
        raise ProtocolError("the answer is not a prediction: it has no string 'id'")
    if not isinstance(status, str):
        raise ProtocolError(
            f"prediction {short_repr(pid)} has no string 'status' (got {short_repr(status)})"
        )
    filters = get("webhook_events_filter")
    if filters is not None and not (
        isinstance(filters, list) and all(isinstance(f, str) for f in filters)
    ):
        raise ProtocolError("prediction field 'webhook_events_filter' should be a string list")
    data_removed = get("data_removed")
    if data_removed is not None and not isinstance(data_removed, bool):
        raise ProtocolError("prediction field 'data_removed' should be a boolean")
    # The types are checked in one pass each; the field at fault is named only on failure.
    strings = tuple(map(get, _STRING_FIELDS))
    if not _STRING_TYPES.issuperset(map(type, strings)):
        _check_fields(strings, _STRING_FIELDS, str)
    dicts = tuple(map(get, _DICT_FIELDS))
    if not _DICT_TYPES.issuperset(map(type, dicts)):
        _check_fields(dicts, _DICT_FIELDS, dict)
    model, version, logs, source, deployment, webhook = strings
    input_, metrics, urls = dicts
    stamps = tuple(map(get, _DATETIME_FIELDS))
    try:
        created_at, started_at, completed_at, deadline = (
            None if stamp is None else _aware(fromisoformat(stamp)) for stamp in stamps
        )
    except (TypeError, ValueError):  # the field at fault is named only on failure
        created_at, started_at, completed_at, deadline = map(
            parse_timestamp, stamps, _DATETIME_FIELDS
        )
    unknown = () if _KNOWN.issuperset(data) else data.keys() - _KNOWN
    return Prediction(
        id=pid,
        status=_STATUSES.get(status) or Status(status),
        model=model,
        version=version,
        input=input_,
        output=get("output"),
        logs=logs,
        error=_error_text(get("error")),
        created_at=created_at,
        started_at=started_at,
        completed_at=completed_at,
        data_removed=data_removed,
        source=source,
        metrics=metrics,
        urls=urls,
        deadline=deadline,
        deployment=deployment,
        webhook=webhook,
        webhook_events_filter=filters,
        extra={k: v for k, v in data.items() if k in unknown} if unknown else {},
    )


def parse_page(data: object) -> PredictionPage:
    """Turn a decoded ``GET /predictions`` body into a `PredictionPage`."""
    if not isinstance(data, Mapping) or not isinstance(data.get("results"), list):
        raise ProtocolError("expected a page of predictions with a 'results' list")
    next_url, previous = data.get("next"), data.get("previous")
    if not isinstance(next_url, str | None) or not isinstance(previous, str | None):
        raise ProtocolError("the page's 'next' and 'previous' should be URLs or null")
    return PredictionPage(
        results=[parse_prediction(item) for item in data["results"]],
        next=next_url or None,
        previous=previous or None,
    )


def _timestamp_text(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def prediction_to_json(prediction: Prediction) -> dict[str, Any]:
    """The prediction as a JSON object, unknown fields included, None fields left out."""
    known: dict[str, Any] = {}
    for field in attrs.fields(Prediction):
        if field.name == "extra":
            continue
        value = getattr(prediction, field.name)
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            value = _timestamp_text(value)
        elif isinstance(value, Status):
            value = value.value
        known[field.name] = value
    return merge_extra(known, prediction.extra)


def input_payload(value: object) -> dict[str, Any]:
    """The request's ``input`` object for a typed input or a mapping, None left out.

    A typed input's ``model`` attribute names the model and is not sent.
    """
    if type(value) is dict and _STRING_KEYS.issuperset(map(type, value)):
        return {key: item for key, item in value.items() if item is not None}
    if isinstance(value, Mapping):
        payload: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputError(
                    f"input keys must be strings, got {short_repr(key)}", field="input"
                )
            if item is not None:
                payload[key] = item
        return payload
    if attrs.has(type(value)):
        payload = converter.unstructure(value)
        payload.pop("model", None)
        return {key: item for key, item in payload.items() if item is not None}
    raise InputError(
        f"input must be a typed input or a mapping, not {type(value).__name__}",
        field="input",
    )
