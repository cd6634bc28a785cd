"""Local files in inputs: paths, bytes and open files, sent as ``data:`` URIs.

The API takes input files as URLs, and a ``data:`` URI is a URL that carries the file
itself. A value is a local file when it is a `pathlib.Path` (any ``os.PathLike``),
``bytes``/``bytearray``/``memoryview``, or a file opened in binary mode. Typed image
fields (`Seedream4Input.image_input`) also read a ``str`` that is not an ``http(s)://``
or ``data:`` URL as a path. In a plain-dict input a ``str`` is never read as a path: a
prompt that happens to name a file must not be uploaded by surprise.

Files are read when the create is built, in a worker thread, so the event loop never
waits on a disk. The conversion is deterministic (the same bytes give the same text), as
the client matches a create to the prediction the server echoes back by comparing inputs:
an open file is read from where it stands and put back there, so sending the same input
twice sends the same file twice.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, TypeAlias, cast

import anyio
import attrs

from ._errors import InputError, short_repr
from ._serde import input_payload

if TYPE_CHECKING:
    from ._inputs import ModelInput

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_INPUT_FILE_BYTES",
    "ImageSource",
    "contains_local_files",
    "encode_local_files",
    "image_source",
    "is_local_file",
    "media_type",
    "read_local_files",
]

#: The largest file sent inline. The API advises data URIs for files up to 256 KB and
#: an https:// URL beyond; larger ones work where the server takes large bodies.
MAX_FILE_BYTES: Final = 10 * 1024 * 1024
#: The most bytes of files one input may carry (base64 makes them a third larger): the
#: request stays under the 64 MiB a server commonly takes.
MAX_INPUT_FILE_BYTES: Final = 40 * 1024 * 1024

#: What a typed image field takes: a URL, or a local file.
ImageSource: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO

_URL_PREFIXES: Final = ("https://", "http://", "data:")
_SCALARS: Final = (str, int, float, bool, type(None))
_CONTAINERS: Final = (Mapping, list, tuple)
_FILE_VALUES: Final = (os.PathLike, bytes, bytearray, memoryview)
_MIB: Final = 1024 * 1024
# The built-in table only (not the system's mime.types): one file, one media type.
_TYPES: Final = mimetypes.MimeTypes()
_SUFFIXES: Final = {".webp": "image/webp", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_FALLBACK: Final = "application/octet-stream"


def is_url(text: str) -> bool:
    """Whether ``text`` is an ``http(s)://`` or ``data:`` URL (any case)."""
    return text[:8].lower().startswith(_URL_PREFIXES)


def _is_file_object(value: object) -> bool:
    return callable(getattr(value, "read", None))


def is_local_file(value: object) -> bool:
    """Whether ``value`` is sent as a ``data:`` URI: a path, bytes or an open file."""
    if isinstance(value, (_SCALARS, _CONTAINERS)):
        return False
    return isinstance(value, _FILE_VALUES) or _is_file_object(value)


def _size_text(size: int) -> str:
    return f"{size / _MIB:.1f} MiB" if size >= _MIB else f"{size:,} bytes"


def _field_of(where: str) -> str | None:
    """The input field a position such as ``image_input[2]`` or ``refs.a`` is in."""
    return where.partition("[")[0].partition(".")[0] or None


def _too_large(where: str, what: str, size: int) -> InputError:
    return InputError(
        f"{where}: {what} ({_size_text(size)}) is larger than {_size_text(MAX_FILE_BYTES)}, "
        "the most sent inline as a data: URI; put the file on a web server and pass its "
        "https:// URL",
        field=_field_of(where),
    )


def _check_path(path: Path, where: str, field: str) -> None:
    """Check that ``path`` names a readable-looking file of an allowed size (one stat)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(
            f"{where} is not an http(s) or data: URL, and no file {short_repr(str(path))} exists",
            field=field,
        ) from None
    except OSError as exc:
        raise InputError(
            f"{where}: cannot use {short_repr(str(path))}: {exc.strerror}", field=field
        ) from None
    if not path.is_file():
        raise InputError(f"{where}: {short_repr(str(path))} is not a file", field=field)
    if size > MAX_FILE_BYTES:
        raise _too_large(where, short_repr(str(path)), size)


def image_source(value: object, where: str, field: str) -> ImageSource:
    """One image of a typed input, checked: a URL as it is, or a local file.

    A ``str`` that is not an ``http(s)://`` or ``data:`` URL names a file and becomes a
    `Path`; bytes are copied (later changes to a ``bytearray`` change nothing sent).
    Paths are checked with one ``stat``; files are read when the create is built.
    """
    if isinstance(value, str):
        if is_url(value):
            return value
        value = Path(value)
    if isinstance(value, os.PathLike):
        try:
            path = Path(value)
        except TypeError:
            raise InputError(f"{where}: paths must be text, not bytes", field=field) from None
        _check_path(path, where, field)
        return path
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if not data:
            raise InputError(f"{where}: the bytes are empty", field=field)
        if len(data) > MAX_FILE_BYTES:
            raise _too_large(where, "the bytes", len(data))
        return data
    if isinstance(value, io.TextIOBase):
        raise InputError(f"{where}: open the file in binary mode ('rb')", field=field)
    if _is_file_object(value):
        return cast("BinaryIO", value)  # any object with read() is taken for a file
    raise InputError(
        f"{where} must be an http(s) or data: URL, a path, bytes or a file opened in binary "
        f"mode; got {short_repr(value)}",
        field=field,
    )


def media_type(data: bytes, name: str | None) -> str:
    """The media type of a file: from its first bytes for PNG, JPEG, WebP and GIF, else
    from its name's suffix, else ``application/octet-stream`` (the server decides).
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in {b"GIF87a", b"GIF89a"}:
        return "image/gif"
    if name:
        suffix = Path(name).suffix.lower()
        known = _SUFFIXES.get(suffix) or _TYPES.guess_type("file" + suffix)[0]
        if known:
            return known
    return _FALLBACK


def _read_path(path: Path, where: str, field: str | None) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"{where}: no file {short_repr(str(path))}", field=field) from None
    except OSError as exc:
        raise InputError(
            f"{where}: cannot read {short_repr(str(path))}: {exc.strerror or exc}", field=field
        ) from None


def _read_file(handle: Any, where: str, field: str | None) -> bytes:
    """Read an open file from where it stands, and put it back there when it can seek."""
    start: int | None = None
    try:
        if handle.seekable():
            start = handle.tell()
    except (AttributeError, OSError, ValueError):
        start = None
    try:
        data = handle.read(MAX_FILE_BYTES + 1)
        if start is not None:
            handle.seek(start)
    except (OSError, ValueError) as exc:  # ValueError: the file is closed
        raise InputError(f"{where}: cannot read the file: {exc}", field=field) from None
    if not isinstance(data, bytes | bytearray):
        if hasattr(data, "close"):
            data.close()  # an async file's coroutine, never awaited
        raise InputError(f"{where}: open the file in binary mode ('rb')", field=field)
    return bytes(data)


class _Reader:
    """Turns the local files of one input into ``data:`` URIs, counting their bytes."""

    def __init__(self) -> None:
        self.total = 0

    def data_uri(self, value: object, where: str) -> str:
        field = _field_of(where)
        name: str | None = None
        if isinstance(value, os.PathLike):
            path = Path(value)
            data, name = _read_path(path, where, field), path.name
        elif isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
        else:
            data = _read_file(value, where, field)
            given = getattr(value, "name", None)
            name = given if isinstance(given, str) else None
        if not data:
            raise InputError(f"{where}: the file is empty (or was read to its end)", field=field)
        if len(data) > MAX_FILE_BYTES:
            raise _too_large(where, short_repr(name) if name else "the file", len(data))
        self.total += len(data)
        if self.total > MAX_INPUT_FILE_BYTES:
            raise InputError(
                f"the input's files add up to more than {_size_text(MAX_INPUT_FILE_BYTES)} "
                f"(at {where}); put them on a web server and pass https:// URLs",
                field=field,
            )
        encoded = base64.b64encode(data).decode("ascii")
        return f"data:{media_type(data, name)};base64,{encoded}"


def _encode(value: object, where: str, reader: _Reader) -> object:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, Mapping):
        return {
            key: _encode(item, f"{where}.{key}" if where else str(key), reader)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_encode(item, f"{where}[{index}]", reader) for index, item in enumerate(value)]
    if is_local_file(value):
        return reader.data_uri(value, where or "input")
    return value


def encode_local_files(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` with every local file, at any depth, read into a ``data:`` URI.

    Blocking (it reads files): call it in a worker thread.

    Raises:
        InputError: a file is missing, unreadable, empty or too large.
    """
    try:
        encoded = _encode(payload, "", _Reader())
    except RecursionError:
        raise InputError("input is nested too deeply", field="input") from None
    assert isinstance(encoded, dict)  # noqa: S101 (a mapping gives a dict)
    return encoded


def _children(value: object) -> tuple[object, ...] | None:
    """The values inside a container (an attrs instance counts), or None for a leaf."""
    if isinstance(value, Mapping):
        return tuple(value.values())
    if isinstance(value, list | tuple):
        return tuple(value)
    cls = type(value)
    if attrs.has(cls):
        return tuple(getattr(value, field.name) for field in attrs.fields(cls))
    return None


def contains_local_files(value: object) -> bool:
    """Whether a local file sits anywhere in ``value`` (cheap: no file is touched)."""
    pending = [value]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if isinstance(item, _SCALARS):
            continue
        children = _children(item)
        if children is None:
            if is_local_file(item):
                return True
        elif id(item) not in seen:  # a container that holds itself is looked at once
            seen.add(id(item))
            pending.extend(children)
    return False


async def read_local_files(
    model_or_input: str | ModelInput,
    input: Mapping[str, Any] | ModelInput | None,  # noqa: A002
) -> tuple[str | ModelInput, Mapping[str, Any] | ModelInput | None]:
    """The arguments of a create with its local files read into ``data:`` URIs.

    Inputs without local files come back as they are, without a trip to a thread;
    otherwise the input becomes its payload (a dict), read in a worker thread.

    Raises:
        InputError: a file is missing, unreadable, empty or too large; nothing was sent.
    """
    if input is None:
        if isinstance(model_or_input, str) or not contains_local_files(model_or_input):
            return model_or_input, input
        typed = model_or_input
        payload = await anyio.to_thread.run_sync(lambda: encode_local_files(input_payload(typed)))
        return typed.model, payload
    if not contains_local_files(input):
        return model_or_input, input
    given = input
    return model_or_input, await anyio.to_thread.run_sync(
        lambda: encode_local_files(input_payload(given))
    )
