"""Downloading a prediction's output files.

Each file is streamed into a temporary file beside its destination and renamed into place
when complete, so a crash never leaves a half-written image under its final name. Names
come only from the prediction id and the output's position (``{id}-{index}.{ext}``), so a
hostile URL or id can never place a file outside ``dest``. File hosts never get the API
key: the transport adds it for the API host only.
"""

from __future__ import annotations

import base64
import binascii
import logging
import mimetypes
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote_to_bytes, urlsplit

import anyio

from ._errors import InputError, ProtocolError
from ._models import Outcome, Prediction

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["DEFAULT_MAX_BYTES", "download_outputs", "file_name", "prediction_of"]

logger = logging.getLogger(__name__)

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


def _decode_data_uri(url: str, max_bytes: int) -> tuple[bytes, str]:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise ProtocolError("a data: URI output has no ',' separator")
    media = header.split(";", 1)[0] or "text/plain"
    try:
        data = (
            base64.b64decode(payload, validate=True)
            if header.endswith(";base64")
            else unquote_to_bytes(payload)
        )
    except (binascii.Error, ValueError):
        raise ProtocolError("a data: URI output is not valid base64") from None
    if len(data) > max_bytes:
        raise ProtocolError(f"output of {len(data)} bytes is larger than {max_bytes}")
    return data, media


def _check_size(size: int, max_bytes: int, index: int) -> None:
    if size > max_bytes:
        raise ProtocolError(f"output {index} is larger than {max_bytes} bytes")


class _PartFile:
    """A temporary file beside ``target``, renamed onto it only when complete."""

    def __init__(self, target: Path) -> None:
        self.target = target
        descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".part")
        self.path = Path(name)
        self.handle = os.fdopen(descriptor, "wb")

    def commit(self) -> None:
        self.handle.close()
        self.path.replace(self.target)

    def discard(self) -> None:
        self.handle.close()
        self.path.unlink(missing_ok=True)


async def _save(
    transport: Transport, url: str, folder: Path, stem: tuple[str, int], max_bytes: int
) -> Path:
    """Stream one output into ``folder``; the extension comes from its content type."""
    if url.startswith("data:"):
        data, media = _decode_data_uri(url, max_bytes)
        target = folder / file_name(*stem, _extension(media, ""))
        part = await anyio.to_thread.run_sync(_PartFile, target)
        try:
            await anyio.to_thread.run_sync(part.handle.write, data)
        except BaseException:
            await anyio.to_thread.run_sync(part.discard)
            raise
        await anyio.to_thread.run_sync(part.commit)
        return target
    if not url.startswith(("https://", "http://")):
        raise ProtocolError(f"output {stem[1]} is not an http(s) or data: URL")
    async with transport.stream(url) as (content_type, chunks):
        target = folder / file_name(*stem, _extension(content_type, url))
        part = await anyio.to_thread.run_sync(_PartFile, target)
        size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                _check_size(size, max_bytes, stem[1])
                await anyio.to_thread.run_sync(part.handle.write, chunk)
        except BaseException:
            await anyio.to_thread.run_sync(part.discard)
            raise
    await anyio.to_thread.run_sync(part.commit)
    return target


async def _save_with_retries(
    transport: Transport, url: str, folder: Path, stem: tuple[str, int], max_bytes: int
) -> Path:
    return await transport.retrying(
        lambda: _save(transport, url, folder, stem, max_bytes),
        retry_on=transport.transient,
        what=lambda: f"download of output {stem[1]}",
    )


async def download_outputs(
    transport: Transport,
    prediction: Prediction,
    dest: str | os.PathLike[str],
    *,
    concurrency: int = 4,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Path]:
    """Write every output file of ``prediction`` into ``dest`` and return the paths."""
    if concurrency < 1:
        raise InputError("concurrency must be at least 1", field="concurrency")
    folder = Path(dest)
    await anyio.to_thread.run_sync(lambda: folder.mkdir(parents=True, exist_ok=True))
    urls = prediction.output_urls
    paths: list[Path | None] = [None] * len(urls)
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(index: int, url: str) -> None:
        async with limiter:
            paths[index] = await _save_with_retries(
                transport, url, folder, (prediction.id, index), max_bytes
            )

    try:
        async with anyio.create_task_group() as group:
            for index, url in enumerate(urls):
                group.start_soon(one, index, url)
    except BaseExceptionGroup as group:
        # The first file to fail stops the others: raise its error, not a group of one.
        raise _first_error(group) from None
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
