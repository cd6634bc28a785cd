"""Downloading a prediction's output files.

Each file is streamed into a temporary file beside its destination and renamed into place
when complete, so a crash never leaves a half-written image under its final name, and
the temporary file is removed whatever ends the download (an error, a full disk, a
cancellation). Names come only from the prediction id and the output's position
(``{id}-{index}.{ext}``), so a hostile URL or id can never place a file outside
``dest``. File hosts never get the API key: the transport adds it for the API host only.
Which hosts and addresses may be reached at all is `_output_hosts`' policy. ``data:``
outputs are decoded in a worker thread, a piece at a time, after checking that they
cannot exceed ``max_bytes``. File system failures become `DownloadError`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import functools
import logging
import mimetypes
import os
import re
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar
from urllib.parse import unquote_to_bytes, urlsplit

import aiohttp
import anyio
import attrs

from ._errors import DownloadError, InputError, OutputURLRefused, ProtocolError
from ._models import Outcome, Prediction
from ._output_hosts import OutputPolicy, on_loopback, output_middleware

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from ._transport import Transport

__all__ = ["DEFAULT_MAX_BYTES", "download_outputs", "file_name", "prediction_of"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
_SAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
_EXTENSIONS: Final = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "application/octet-stream": "bin",
}
_KNOWN_SUFFIXES: Final = frozenset({"jpg", "jpeg", "png", "webp", "gif", "mp4", "wav", "mp3"})
# A data: URI's payload is decoded this many characters at a time (a multiple of 4).
_DATA_PIECE: Final = 64 * 1024


def _extension(content_type: str | None, url: str) -> str:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in _EXTENSIONS:
        return _EXTENSIONS[media]
    suffix = Path(urlsplit(url).path).suffix.lstrip(".").lower()
    if suffix in _KNOWN_SUFFIXES:
        return "jpg" if suffix == "jpeg" else suffix
    guessed = mimetypes.guess_extension(media) if media else None
    return guessed.lstrip(".") if guessed else "bin"


def file_name(prediction_id: str, index: int, extension: str) -> str:
    """The file name of output ``index``: only letters, digits, ``-`` and ``_`` survive."""
    safe_id = _SAFE.sub("_", prediction_id)[:100] or "prediction"
    safe_ext = _SAFE.sub("", extension)[:10] or "bin"
    return f"{safe_id}-{index}.{safe_ext}"


@attrs.frozen
class _Rules:
    """What every file of one download is held to."""

    max_bytes: int
    middlewares: tuple[aiohttp.ClientMiddlewareType, ...]


def _too_large(index: int, max_bytes: int) -> ProtocolError:
    return ProtocolError(f"output {index} is larger than {max_bytes} bytes (max_bytes)")


def _disk_error(exc: OSError, path: Path) -> DownloadError:
    """The library's error for a file system failure, saying what to do."""
    code = exc.errno
    if code in {errno.ENOSPC, errno.EDQUOT}:
        advice = "the disk is full: free some space or choose another dest, then download again"
    elif code == errno.EFBIG:
        advice = "the file is larger than the file system or a limit (ulimit -f) allows"
    elif isinstance(exc, PermissionError) or code == errno.EROFS:
        advice = "there is no permission to write there: choose a dest folder you can write to"
    elif isinstance(exc, IsADirectoryError):
        advice = "a directory has the file's name: move it away or choose another dest"
    elif isinstance(exc, NotADirectoryError | FileExistsError):
        advice = "dest is not a folder: choose another dest"
    else:
        advice = "check the dest folder and download again"
    return DownloadError(
        f"could not save {path}: {exc.strerror or type(exc).__name__}; {advice}",
        errno=code,
        strerror=exc.strerror,
        filename=str(path),
    )


def open_part(target: Path) -> tuple[int, Path]:
    """A new hidden ``.part`` file beside ``target``, opened for writing: its descriptor
    and path. Created with mode 0666 less the umask, as any file a program writes.

    Its 64 random bits make a name that is already taken (``O_EXCL`` then fails with
    `FileExistsError`) a practical impossibility.
    """
    path = target.with_name(f".{target.name}.{secrets.token_hex(8)}.part")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path


class _PartFile:
    """A temporary file beside ``target``, renamed onto it only when complete."""

    def __init__(self, target: Path) -> None:
        self.target = target
        descriptor, self.path = open_part(target)
        self.handle = os.fdopen(descriptor, "wb")

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def commit(self) -> None:
        self.handle.close()  # flushes: a full disk may fail it here
        self.path.replace(self.target)

    def discard(self) -> None:
        # Closing flushes, and fails again on a full disk: the file goes all the same.
        with contextlib.suppress(OSError):
            self.handle.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


async def _on_disk(call: Callable[[], T], path: Path) -> T:
    """Run a file system call in a worker thread; its failure becomes `DownloadError`."""
    try:
        return await anyio.to_thread.run_sync(call)
    except OSError as exc:
        raise _disk_error(exc, path) from exc


async def _write(target: Path, fill: Callable[[_PartFile], Awaitable[None]]) -> Path:
    """Write ``target`` through a part file that ``fill`` fills; no part file survives.

    The clean-up is shielded: a cancelled download (a task group, Ctrl-C in a batch)
    still removes its part file. (A worker thread's result is handed over with no
    checkpoint after it, so a part file made is always in hand here.)
    """
    part = await _on_disk(functools.partial(_PartFile, target), target.parent)
    try:
        await fill(part)
        await _on_disk(part.commit, target)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(part.discard)
        raise
    return target


def _data_chunks(url: str, start: int, *, is_base64: bool) -> Iterator[bytes]:
    """The bytes of a ``data:`` URI's payload (from ``start``), a piece at a time.

    Decoding piece by piece keeps memory flat: `unquote_to_bytes` on a whole payload
    of escapes holds a list of millions of small objects (over a gigabyte for 16 MiB).
    """
    end = len(url)
    while start < end:
        stop = min(start + _DATA_PIECE, end)
        if is_base64:
            yield base64.b64decode(url[start:stop], validate=True)
        else:
            # An escape ("%41") cut by the piece's end moves whole into the next piece.
            cut = url.rfind("%", max(start, stop - 2), stop)
            if cut > start and stop < end:
                stop = cut
            yield unquote_to_bytes(url[start:stop])
        start = stop


def _decode_into(
    part: _PartFile, url: str, start: int, *, is_base64: bool, index: int, max_bytes: int
) -> None:
    """Decode a ``data:`` URI's payload into ``part`` (blocking: runs in a worker thread)."""
    size = 0
    try:
        for data in _data_chunks(url, start, is_base64=is_base64):
            size += len(data)
            if size > max_bytes:
                raise _too_large(index, max_bytes)
            part.write(data)
            # Decoding holds the GIL: hand it to the event loop's thread between pieces.
            time.sleep(0)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"output {index} is a data: URI that is not valid base64") from None


async def _save_data_uri(url: str, folder: Path, stem: tuple[str, int], max_bytes: int) -> Path:
    """Decode a ``data:`` URI output into ``folder``, never more than ``max_bytes``."""
    index = stem[1]
    comma = url.find(",")
    if comma < 0:
        raise ProtocolError(f"output {index} is a data: URI with no ',' separator")
    header = url[5:comma]
    media = header.split(";", 1)[0] or "text/plain"
    is_base64 = header.lower().endswith(";base64")
    # The least the payload can decode to, known before decoding any of it.
    length = len(url) - comma - 1
    least = length // 4 * 3 - 2 if is_base64 else length - 2 * url.count("%", comma + 1)
    if least > max_bytes:
        raise _too_large(index, max_bytes)
    target = folder / file_name(*stem, _extension(media, ""))

    async def fill(part: _PartFile) -> None:
        decode = functools.partial(
            _decode_into,
            part,
            url,
            comma + 1,
            is_base64=is_base64,
            index=index,
            max_bytes=max_bytes,
        )
        await _on_disk(decode, target)

    return await _write(target, fill)


async def _save(
    transport: Transport, url: str, folder: Path, stem: tuple[str, int], rules: _Rules
) -> Path:
    """Stream one output into ``folder``; the extension comes from its content type."""
    if url.startswith("data:"):
        return await _save_data_uri(url, folder, stem, rules.max_bytes)
    if not url.startswith(("https://", "http://")):
        raise ProtocolError(f"output {stem[1]} is not an http(s) or data: URL")
    async with transport.stream(url, middlewares=rules.middlewares) as (content_type, chunks):
        target = folder / file_name(*stem, _extension(content_type, url))

        async def fill(part: _PartFile) -> None:
            size = 0
            async for chunk in chunks:
                size += len(chunk)
                if size > rules.max_bytes:
                    raise _too_large(stem[1], rules.max_bytes)
                await _on_disk(functools.partial(part.write, chunk), target)

        return await _write(target, fill)


async def _save_with_retries(
    transport: Transport, url: str, folder: Path, stem: tuple[str, int], rules: _Rules
) -> Path:
    return await transport.retrying(
        _save,
        transport,
        url,
        folder,
        stem,
        rules,
        # A refused address or a disk error comes back the same however often asked.
        retry_on=lambda exc: transport.transient(exc) and not isinstance(exc, OutputURLRefused),
        what=f"download of output {stem[1]}",
    )


async def download_outputs(
    transport: Transport,
    prediction: Prediction,
    dest: str | os.PathLike[str],
    *,
    concurrency: int = 4,
    max_bytes: int = DEFAULT_MAX_BYTES,
    output_hosts: tuple[str, ...] | None = None,
) -> list[Path]:
    """Write every output file of ``prediction`` into ``dest`` and return the paths.

    Raises:
        OutputURLRefused: an output's host or address may not be reached.
        DownloadError: a file could not be saved (full disk, permissions...).
        ProtocolError: an output is not a URL, or is larger than ``max_bytes``.
        TransportError: a file could not be fetched after retries.
    """
    if concurrency < 1:
        raise InputError("concurrency must be at least 1", field="concurrency")
    policy = OutputPolicy(output_hosts, allow_loopback=on_loopback(transport.base_url))
    rules = _Rules(max_bytes=max_bytes, middlewares=(output_middleware(policy),))
    folder = Path(dest)
    await _on_disk(lambda: folder.mkdir(parents=True, exist_ok=True), folder)
    urls = prediction.output_urls
    paths: list[Path | None] = [None] * len(urls)
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(index: int, url: str) -> None:
        async with limiter:
            paths[index] = await _save_with_retries(
                transport, url, folder, (prediction.id, index), rules
            )

    try:
        async with anyio.create_task_group() as group:
            for index, url in enumerate(urls):
                group.start_soon(one, index, url)
    except BaseExceptionGroup as group:
        # The first file to fail stops the others: raise its error, not a group of one,
        # with its own cause (an OSError behind a DownloadError) kept.
        error = _first_error(group)
        raise error from error.__cause__
    return [path for path in paths if path is not None]


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error of a task group that is not the cancellation of a sibling."""
    cancelled = anyio.get_cancelled_exc_class()
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_error(error)
        if not isinstance(error, cancelled):
            return error
    return group


def prediction_of(target: Prediction | Outcome[object]) -> Prediction:
    """The prediction behind a `Prediction` or an `Outcome`."""
    if isinstance(target, Outcome):
        if target.prediction is None:
            raise InputError("this outcome has no prediction to download", field="target")
        return target.prediction
    return target
