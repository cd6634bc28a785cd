"""Reading and validating the inputs of the command line.

A batch file holds one input a line: a bare input object (the model comes from
``--model``) or ``{"model": ..., "input": {...}}``. Blank lines are skipped. Inputs of
the models the library knows (Imagen 4, Seedream 4) are checked with their typed input
classes, so a typo is found before anything is sent; other models only need an object.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import attrs

from .._errors import InputError
from .._inputs import IMAGEN4_MODELS, SEEDREAM4_MODEL, Imagen4Input, Seedream4Input
from .._inputs import validate_model_name as _validate_model_name
from .._journal import Entry

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["Scan", "entries", "parse_setting", "scan", "validate"]

_TYPED: dict[str, type[Imagen4Input] | type[Seedream4Input]] = {
    **dict.fromkeys(IMAGEN4_MODELS, Imagen4Input),
    SEEDREAM4_MODEL: Seedream4Input,
}


def validate(model: str, payload: object) -> None:
    """Check ``payload`` as the input of ``model``.

    Raises:
        InputError: the model name or the input is invalid; the message says why.
    """
    _validate_model_name(model)
    if not isinstance(payload, dict):
        raise InputError(f"the input must be a JSON object, not {type(payload).__name__}")
    typed = _TYPED.get(model.partition(":")[0])
    if typed is None:
        return
    fields = {field.name for field in attrs.fields(typed)} - {"model"}
    unknown = sorted(set(payload) - fields)
    if unknown:
        raise InputError(
            f"unknown field(s) {', '.join(unknown)} for {model}; known: {', '.join(sorted(fields))}"
        )
    if "prompt" not in payload:
        raise InputError(f"{model} needs a prompt", field="prompt")
    arguments: dict[str, Any] = dict(payload)
    if typed is Imagen4Input:
        arguments["model"] = model.partition(":")[0]
    typed(**arguments)


def _split(data: object, default_model: str | None) -> tuple[str, object]:
    """The model and input a parsed line names."""
    if isinstance(data, dict) and "input" in data and "model" in data:
        extra = sorted(set(data) - {"model", "input"})
        if extra:
            raise InputError(f"unknown key(s) beside model and input: {', '.join(extra)}")
        model: object = data["model"]
        if not isinstance(model, str):
            raise InputError("model must be a string 'owner/name'")
        return model, data["input"]
    if default_model is None:
        raise InputError('no model: pass --model, or write {"model": ..., "input": {...}}')
    return default_model, data


def _parse(text: str, default_model: str | None) -> tuple[str, dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON: {exc.msg} (column {exc.colno})") from None
    model, payload = _split(data, default_model)
    validate(model, payload)
    assert isinstance(payload, dict)  # noqa: S101 (validate checked it)
    return model, payload


@attrs.frozen
class Scan:
    """What one pass over a batch file found."""

    digest: str
    count: int
    errors: list[str]


def scan(path: Path, default_model: str | None) -> Scan:
    """Validate every line of ``path`` (blocking: call it in a worker thread).

    Returns:
        The file's SHA-256, the number of inputs and one message per invalid line.
    """
    digest = hashlib.sha256()
    count = 0
    errors: list[str] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            digest.update(raw)
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            count += 1
            try:
                _parse(text, default_model)
            except (InputError, TypeError) as exc:
                errors.append(f"{path.name}:{number}: {exc}")
    return Scan(digest=digest.hexdigest(), count=count, errors=errors)


def entries(path: Path, default_model: str | None) -> Iterator[Entry]:
    """The inputs of a file `scan` found valid, one `Entry` each (blocking)."""
    index = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.decode("utf-8", errors="replace").strip()
            if text:
                model, payload = _parse(text, default_model)
                yield Entry(index=index, line=number, model=model, input=payload)
                index += 1


def parse_setting(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``: the value as JSON when it parses, else a string.

    Raises:
        InputError: there is no ``=`` or no key.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set takes KEY=VALUE, got {text!r}")
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed
