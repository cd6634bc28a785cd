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

A line is read strictly, so that what is sent is exactly what the file says: bytes that
are not UTF-8, a lone surrogate (``"\\ud800"``), ``NaN`` or ``Infinity``, a number out of
range, an integer of more than `MAX_DIGITS` digits and nesting deeper than `MAX_DEPTH`
are each refused with the line's number, before anything is sent.
"""

from __future__ import annotations

import json
import math
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
    "MAX_DEPTH",
    "MAX_DIGITS",
    "Scan",
    "entries",
    "image_lists",
    "input_as_sent",
    "local_files",
    "parse_setting",
    "scan",
    "validate",
]

# No input of an image model nests this deep or needs a longer integer; a line that does
# is a mistake, and refusing it keeps parsing, the journal and the request bounded.
MAX_DEPTH: Final = 32
MAX_DIGITS: Final = 64
# Distinct messages shown for an invalid file; the count of invalid lines is always whole.
_SHOWN: Final = 20
_LINES_SHOWN: Final = 5
_SHAPE: Final = (
    'each line is an input such as {"prompt": "..."} (its model from --model), '
    'or {"model": "owner/name", "input": {"prompt": "..."}}'
)

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
        hint = f"; {_SHAPE}" if {"model", "input"} & set(unknown) else ""
        raise InputError(
            f"unknown field(s) {short_repr(', '.join(unknown))} for {model}; known: "
            f"{', '.join(sorted(fields))}{hint}"
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
            raise InputError(f"unknown key(s) {', '.join(extra)} beside model and input; {_SHAPE}")
        model: object = data["model"]
        if not isinstance(model, str):
            raise InputError("model must be a string 'owner/name'")
        return model, data["input"]
    if default_model is None:
        if isinstance(data, dict) and "model" in data:
            raise InputError(f'this line names a model but has no "input" to wrap; {_SHAPE}')
        raise InputError(f"no model: pass --model owner/name; {_SHAPE}")
    return default_model, data


def _no_constant(name: str) -> Any:
    raise InputError(f"{name} is not a number JSON allows (nor the API)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"the number {text[:40]} is out of range")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise InputError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_DIGITS})")
    return int(text)


def _check_values(data: object) -> None:
    """Refuse nesting deeper than `MAX_DEPTH` and strings that are not valid Unicode.

    Iterative, so that no input can exhaust the stack.
    """
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise InputError(f"nested more than {MAX_DEPTH} levels deep")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                stack.append((key, depth + 1))
                stack.append((item, depth + 1))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                code = ord(value[exc.start])
                raise InputError(
                    f"a lone surrogate \\u{code:04x} in a string: not valid Unicode, "
                    "the API cannot receive it"
                ) from None


def _decode(raw: bytes, number: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line; "
            "save the file as UTF-8"
        ) from None
    # A byte order mark some editors put at the start of a UTF-8 file is not part of it.
    return text.removeprefix("\ufeff") if number == 1 else text


def _parse(
    text: str, default_model: str | None, folder: Path | None = None
) -> tuple[str, dict[str, Any]]:
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_float, parse_int=_int)
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise InputError(f"nested more than {MAX_DEPTH} levels deep") from None
    _check_values(data)
    model, payload = _split(data, default_model)
    validate(model, payload if folder is None else local_files(payload, folder, check=True))
    assert isinstance(payload, dict)  # noqa: S101 (validate checked it)
    return model, payload


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        yield from enumerate(handle, start=1)


@attrs.define
class Scan:
    """What one pass over a batch file found.

    Attributes:
        count: the inputs (lines that are not blank).
        invalid: the invalid lines.
        messages: one message per distinct problem (the first few), with its lines.
    """

    count: int = 0
    invalid: int = 0
    problems: dict[str, list[int]] = attrs.Factory(dict)

    def note(self, number: int, message: str) -> None:
        """Count invalid line ``number``; keep its message if it is among the first."""
        self.invalid += 1
        lines = self.problems.get(message)
        if lines is None and len(self.problems) < _SHOWN:
            lines = self.problems[message] = []
        if lines is not None:
            lines.append(number)

    def messages(self, name: str) -> list[str]:
        """What to print: one line per distinct problem, naming its lines."""
        shown: list[str] = []
        for message, numbers in self.problems.items():
            if len(numbers) == 1:
                shown.append(f"{name}:{numbers[0]}: {message}")
                continue
            listed = ", ".join(str(n) for n in numbers[:_LINES_SHOWN])
            more = len(numbers) - _LINES_SHOWN
            listed += f" and {more} more" if more > 0 else ""
            shown.append(f"{name}: lines {listed}: {message}")
        unlisted = self.invalid - sum(len(numbers) for numbers in self.problems.values())
        if unlisted:
            shown.append(f"{name}: {unlisted} more invalid line(s) not shown")
        return shown


def scan(path: Path, default_model: str | None) -> Scan:
    """Validate every line of ``path`` (blocking: call it in a worker thread).

    Memory stays flat: only the first few distinct messages are kept.
    """
    found = Scan()
    for number, raw in _lines(path):
        try:
            text = _decode(raw, number).strip()
            if not text:
                continue
            found.count += 1
            _parse(text, default_model, path.parent)
        except (InputError, TypeError, ValueError) as exc:
            found.note(number, str(exc))
    return found


def entries(path: Path, default_model: str | None) -> Iterator[Entry]:
    """The inputs of a file `scan` found valid, one `Entry` each (blocking).

    Raises:
        InputError: a line is invalid after all (the file changed since the scan).
    """
    index = 0
    for number, raw in _lines(path):
        text = _decode(raw, number).strip()
        if text:
            try:
                model, payload = _parse(text, default_model, path.parent)
            except (InputError, TypeError, ValueError) as exc:
                raise InputError(f"{path.name}:{number}: {exc}") from None
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
