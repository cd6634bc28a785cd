"""Reading and validating the inputs of the command line.

A batch file holds one input a line: a bare input object (the model comes from
``--model``) or ``{"model": ..., "input": {...}}``. Blank lines are skipped. Inputs of
the models the library knows (Imagen 4, Seedream 4) are checked with their typed input
classes, so a typo is found before anything is sent; other models only need an object.

A string value that starts with ``@`` names a local file, sent as a ``data:`` URI (the
convention of Replicate's and cog's command lines): ``"image_input": ["@ref.jpg"]``,
``--set image_input=@ref.jpg``. ``@@`` stands for a literal leading ``@``. Paths are
relative to the input file (``batch``) or the current folder (``run``); each file is
checked when the input is, and read only when its create is built, so the journal keeps
the line as written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs

from .._errors import InputError, short_repr
from .._inputs import IMAGEN4_MODELS, SEEDREAM4_MODEL, Imagen4Input, Seedream4Input
from .._inputs import validate_model_name as _validate_model_name
from .._journal import Entry
from .._local_files import MAX_FILE_BYTES, encode_local_files

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "Scan",
    "entries",
    "image_lists",
    "input_as_sent",
    "local_files",
    "parse_setting",
    "scan",
    "validate",
]

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
            f"unknown field(s) {short_repr(', '.join(unknown))} for {model}; "
            f"known: {', '.join(sorted(fields))}"
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


def _parse(
    text: str, default_model: str | None, folder: Path | None = None
) -> tuple[str, dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON: {exc.msg} (column {exc.colno})") from None
    model, payload = _split(data, default_model)
    validate(model, payload if folder is None else local_files(payload, folder, check=True))
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
                _parse(text, default_model, path.parent)
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
                model, payload = _parse(text, default_model, path.parent)
                yield Entry(index=index, line=number, model=model, input=payload)
                index += 1


def parse_setting(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``: the value as JSON when it parses, else a string.

    Raises:
        InputError: there is no ``=`` or no key.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set takes KEY=VALUE, got {short_repr(text)}")
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


# -- local files: values that start with "@" ----------------------------------------

_FILE_MARK: Final = "@"
# Fields of the typed models that take a list of images: `--set KEY=@file` gives one.
_IMAGE_LISTS: Final[dict[str, frozenset[str]]] = {SEEDREAM4_MODEL: frozenset({"image_input"})}


def _check_file(path: Path, where: str) -> None:
    """Check that ``path`` is a file this process can read, small enough to send inline."""
    hint = f"(a value starting with {_FILE_MARK} names a local file; write @@ for a literal @)"
    try:
        with path.open("rb"):
            size = path.stat().st_size
    except OSError as exc:
        raise InputError(
            f"{where}: cannot read {short_repr(str(path))}: {exc.strerror or exc} {hint}"
        ) from None
    if size > MAX_FILE_BYTES:
        raise InputError(
            f"{where}: {short_repr(str(path))} is larger than {MAX_FILE_BYTES // 2**20} MiB, "
            "the most sent inline; put it on a web server and pass its https:// URL"
        )


def _expand(value: object, folder: Path, where: str, *, check: bool) -> object:
    if isinstance(value, str) and value.startswith(_FILE_MARK):
        if value.startswith(_FILE_MARK * 2):
            return value[1:]
        path = folder / value[1:]
        if check:
            _check_file(path, where)
        return path
    if isinstance(value, dict):
        return {
            key: _expand(item, folder, f"{where}.{key}", check=check) for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _expand(item, folder, f"{where}[{index}]", check=check)
            for index, item in enumerate(value)
        ]
    return value


def local_files(payload: object, folder: Path, *, check: bool = False) -> Any:
    """``payload`` with each ``@path`` string, at any depth, as a `Path` under ``folder``.

    ``@@text`` becomes ``@text``. The client reads the paths into ``data:`` URIs when the
    create is built.

    Args:
        payload: the input as written (a line's input, or ``--set`` values).
        folder: the folder relative paths start from.
        check: also check that each file is readable and small enough (blocking).

    Raises:
        InputError: with ``check``, a file is missing, unreadable or too large.
    """
    if not isinstance(payload, dict):
        return payload
    try:
        return _expand(payload, folder, "input", check=check)
    except RecursionError:
        raise InputError("the input is nested too deeply") from None


def image_lists(model: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with a single file given to a list-of-images field made a list of one."""
    fields = _IMAGE_LISTS.get(model.partition(":")[0], frozenset())
    return {
        key: [value] if key in fields and isinstance(value, Path) else value
        for key, value in payload.items()
    }


async def input_as_sent(payload: dict[str, Any], folder: Path) -> Any:
    """A line's input as the server echoes it back: ``@path`` files read into ``data:``
    URIs (in a worker thread), for matching a create in doubt to its prediction.

    A file that can no longer be read is left as its path: that input's create then
    fails before anything is sent.
    """
    expanded = local_files(payload, folder)
    if expanded == payload:
        return expanded
    try:
        return await anyio.to_thread.run_sync(encode_local_files, expanded)
    except InputError:
        return expanded
