"""`client.download`: real files over HTTP, data: URIs, hostile names, errors and retries."""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING

import pytest
import quickrouter_async as qr
from aiohttp import web

from .conftest import FAST_RETRY
from .http_servers import Scripted, reply

if TYPE_CHECKING:
    from pathlib import Path

    from quickrouter_async.testing import Emulator

pytestmark = pytest.mark.anyio

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def done(prediction_id: str, output: object) -> qr.Prediction:
    return qr.Prediction(id=prediction_id, status=qr.Status.SUCCEEDED, output=output)


def everything_in(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


async def test_three_seedream_images_land_on_disk(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path
) -> None:
    prediction = await client.run(
        qr.Seedream4Input(prompt="three moons", sequential_image_generation="auto", max_images=3)
    )
    assert len(prediction.output_urls) == 3
    dest = tmp_path / "new" / "folder"
    files = await client.download(prediction, dest)
    assert [path.name for path in files] == [f"{prediction.id}-{index}.jpg" for index in range(3)]
    for path in files:
        assert path.parent == dest
        assert path.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, as the extension says
    assert everything_in(dest) == sorted(path.name for path in files)  # no .part left
    assert len(emulator.file_requests) == 3
    assert not any(record.had_authorization for record in emulator.file_requests)


async def test_an_outcome_and_an_id_are_downloaded_too(
    client: qr.QuickRouter, tmp_path: Path
) -> None:
    prediction = await client.run(qr.Imagen4Input(prompt="one lighthouse"))
    by_id = await client.download(prediction.id, tmp_path / "id")
    outcome = qr.Outcome(index=0, input=None, prediction=prediction, error=None)
    by_outcome = await client.download(outcome, tmp_path / "outcome")
    assert [path.name for path in by_id] == [path.name for path in by_outcome]
    assert by_id[0].suffix in {".png", ".jpg", ".webp"}


async def test_a_data_uri_output_is_decoded(client: qr.QuickRouter, tmp_path: Path) -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    files = await client.download(done("p1", [uri, "data:,plain%20text"]), tmp_path)
    assert [path.name for path in files] == ["p1-0.png", "p1-1.txt"]
    assert files[0].read_bytes() == PNG
    assert files[1].read_bytes() == b"plain text"


async def test_hostile_names_stay_inside_dest(tmp_path: Path) -> None:
    hostile = {"Content-Disposition": 'attachment; filename="../../etc/passwd"'}
    async with Scripted() as files:
        # Whatever the server makes of the path, it answers with the hostile header.
        files.default = reply(200, raw=PNG, headers=hostile, content_type="image/png")
        async with qr.QuickRouter("key", base_url=files.base_url, retry=FAST_RETRY) as client:
            dest = tmp_path / "dest"
            paths = await client.download(
                done(
                    "../../evil/..",
                    [
                        f"{files.url}/files/..%2F..%2Fetc%2Fpasswd",
                        f"{files.url}/files/%2E%2E/x.png",
                    ],
                ),
                dest,
            )
        assert not any("Authorization" in seen.headers for seen in files.seen)
    assert all(path.resolve().parent == dest.resolve() for path in paths)
    assert everything_in(tmp_path) == ["dest", *(f"dest/{path.name}" for path in paths)]
    assert [path.name for path in paths] == ["______evil___-0.png", "______evil___-1.png"]


async def test_a_failed_file_raises_one_plain_error_and_leaves_no_part_files(
    tmp_path: Path,
) -> None:
    async with Scripted() as files:
        files.always("GET", "/a.png", reply(200, raw=PNG, content_type="image/png"))
        files.always("GET", "/missing.png", reply(404, {"detail": "File not found"}))
        async with qr.QuickRouter("key", base_url=files.base_url, retry=FAST_RETRY) as client:
            urls = [f"{files.url}/a.png", f"{files.url}/missing.png", f"{files.url}/a.png"]
            with pytest.raises(qr.NotFoundError) as caught:
                await client.download(done("p1", urls), tmp_path, concurrency=1)
    assert not isinstance(caught.value, BaseExceptionGroup)
    assert not [name for name in everything_in(tmp_path) if name.endswith(".part")]


async def trickle(request: web.Request) -> web.StreamResponse:
    """A file sent in ten pieces, 50 ms apart: half a second in all."""
    answer = web.StreamResponse(headers={"Content-Type": "image/png"})
    answer.content_length = len(PNG) * 10
    await answer.prepare(request)
    for _ in range(10):
        await answer.write(PNG)
        await asyncio.sleep(0.05)
    return answer


async def test_a_download_may_take_longer_than_read_while_data_flows(tmp_path: Path) -> None:
    # For a file, `read` is the longest pause between two chunks, not the whole download.
    async with Scripted() as files:
        files.always("GET", "/slow.png", trickle)
        timeouts = qr.Timeouts(read=0.3, total=None)
        async with qr.QuickRouter(
            "key", base_url=files.base_url, retry=FAST_RETRY, timeout=timeouts
        ) as client:
            paths = await client.download(done("p1", f"{files.url}/slow.png"), tmp_path)
    assert paths[0].read_bytes() == PNG * 10


async def test_transient_errors_are_retried(tmp_path: Path) -> None:
    async with Scripted() as files:
        files.queue(
            "GET",
            "/a.png",
            reply(503, {"detail": "busy"}),
            reply(502, raw=b"<html>bad gateway</html>", content_type="text/html"),
        )
        files.always("GET", "/a.png", reply(200, raw=PNG, content_type="image/png"))
        async with qr.QuickRouter("key", base_url=files.base_url, retry=FAST_RETRY) as client:
            paths = await client.download(done("p1", f"{files.url}/a.png"), tmp_path)
        assert files.count("GET", "/a.png") == 3
    assert paths[0].read_bytes() == PNG


async def test_retries_end_with_the_file_hosts_error(tmp_path: Path) -> None:
    async with Scripted() as files:
        files.always("GET", "/a.png", reply(503, {"detail": "busy"}))
        async with qr.QuickRouter("key", base_url=files.base_url, retry=FAST_RETRY) as client:
            with pytest.raises(qr.ServerError):
                await client.download(done("p1", [f"{files.url}/a.png"]), tmp_path)
        assert files.count("GET", "/a.png") == FAST_RETRY.attempts


async def test_outputs_that_are_not_files_are_refused(
    client: qr.QuickRouter, tmp_path: Path
) -> None:
    with pytest.raises(qr.ProtocolError, match="not an http"):
        await client.download(done("p1", ["ftp://files.example/a.png"]), tmp_path)
    with pytest.raises(qr.ProtocolError, match="larger than"):
        await client.download(done("p1", ["data:,0123456789"]), tmp_path, max_bytes=5)
    with pytest.raises(qr.InputError, match="no prediction"):
        await client.download(
            qr.Outcome(index=0, input=None, prediction=None, error=None), tmp_path
        )
    assert await client.download(done("p1", None), tmp_path) == []
