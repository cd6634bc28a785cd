"""Downloads against hostile servers: huge data: URIs, cut-short downloads, where URLs lead."""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import shutil
import sys
import tracemalloc
from typing import TYPE_CHECKING

import aiohttp
import anyio
import pytest
import quickrouter_async as qr
from aiohttp import web
from quickrouter_async._files import _disk_error
from quickrouter_async._output_hosts import OutputPolicy, on_loopback

from .conftest import FAST_RETRY
from .http_servers import RELEASE, Scripted, prediction_json, reply

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
MIB = 1024 * 1024
# An API that is not on loopback (and never contacted: downloads of a given prediction
# need no API call), so loopback addresses are refused.
REMOTE_API = "https://api.example.com/replicate"


def done(prediction_id: str, output: object) -> qr.Prediction:
    return qr.Prediction(id=prediction_id, status=qr.Status.SUCCEEDED, output=output)


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if path.name.endswith(".part"))


async def part_file_in(folder: Path) -> None:
    """Return once a download has its part file open in ``folder`` (there is no event
    for it: the folder is looked at until it shows one).
    """
    with anyio.fail_after(10):
        while not leftovers(folder):  # noqa: ASYNC110 (a folder has no event to wait on)
            await anyio.sleep(0.01)


async def measured_peak(work: object) -> tuple[BaseException | None, int]:
    """Run ``work`` (an awaitable) under tracemalloc: its error, and the peak growth."""
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        error: BaseException | None = None
        try:
            await work  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 (returned to the test)
            error = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return error, peak - base


# -- 16.3: percent-encoded data: outputs ---------------------------------------------


async def test_a_percent_encoded_data_uri_past_max_bytes_is_refused_before_decoding(
    tmp_path: Path,
) -> None:
    escapes = 1_000_000  # 3 MB of "%41": under the API's 16 MiB cap
    output = "data:image/png," + "%41" * escapes
    async with Scripted() as api:
        api.always(
            "GET", "/replicate/v1/predictions/p1", reply(200, prediction_json("p1", output=output))
        )
        async with qr.QuickRouter("k", base_url=api.base_url, retry=FAST_RETRY) as client:
            prediction = await client.get("p1")  # the URI arrives over HTTP
            error, peak = await measured_peak(
                client.download(prediction, tmp_path, max_bytes=64 * 1024)
            )
    assert peak < 4 * MIB  # decoding it whole took over 100 MiB
    assert isinstance(error, qr.ProtocolError)
    assert "larger than 65536 bytes" in str(error)
    assert leftovers(tmp_path) == []


async def test_a_percent_encoded_data_uri_is_decoded_in_bounded_memory(tmp_path: Path) -> None:
    escapes = 400_000
    # Escapes and plain text mixed, so escapes fall across the decoder's piece boundaries.
    output = "data:text/plain," + "%41bc" * escapes
    async with Scripted() as api:
        api.always(
            "GET", "/replicate/v1/predictions/p1", reply(200, prediction_json("p1", output=output))
        )
        async with qr.QuickRouter("k", base_url=api.base_url, retry=FAST_RETRY) as client:
            prediction = await client.get("p1")
            error, peak = await measured_peak(client.download(prediction, tmp_path))
    assert error is None
    assert (tmp_path / "p1-0.txt").read_bytes() == b"Abc" * escapes
    assert peak < 16 * MIB  # decoding it whole took over 60 MiB


async def test_data_uris_are_checked_and_decoded_in_pieces(tmp_path: Path) -> None:
    async with qr.QuickRouter("k", base_url=REMOTE_API) as client:
        big = base64.b64encode(PNG * 100_000).decode()  # several pieces
        files = await client.download(done("p1", ["data:image/png;base64," + big]), tmp_path)
        assert files[0].read_bytes() == PNG * 100_000
        with pytest.raises(qr.ProtocolError, match="larger than"):
            await client.download(done("p2", ["data:;base64," + big]), tmp_path, max_bytes=1000)
        with pytest.raises(qr.ProtocolError, match="not valid base64"):
            await client.download(done("p3", ["data:image/png;base64,AB$="]), tmp_path)
        with pytest.raises(qr.ProtocolError, match="no ',' separator"):
            await client.download(done("p4", ["data:image/png;base64"]), tmp_path)
        # Nothing in the URI's length says it is too large; the count while decoding does.
        with pytest.raises(qr.ProtocolError, match="larger than"):
            await client.download(done("p5", ["data:," + "%41%4" * 500]), tmp_path, max_bytes=999)
    assert names(tmp_path) == ["p1-0.png"]


async def test_a_file_past_max_bytes_stops_mid_stream(tmp_path: Path) -> None:
    async with Scripted() as files:
        files.always("GET", "/big.png", reply(200, raw=PNG * 100, content_type="image/png"))
        async with qr.QuickRouter("k", base_url=files.base_url, retry=FAST_RETRY) as client:
            with pytest.raises(qr.ProtocolError, match="larger than 100 bytes"):
                await client.download(done("p1", f"{files.url}/big.png"), tmp_path, max_bytes=100)
    assert names(tmp_path) == []


# -- 16.10: part files and file system errors ----------------------------------------


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk is full"),
        (OSError(errno.EFBIG, "File too large"), "ulimit -f"),
        (PermissionError(errno.EACCES, "Permission denied"), "no permission"),
        (OSError(errno.EROFS, "Read-only file system"), "no permission"),
        (IsADirectoryError(errno.EISDIR, "Is a directory"), "a directory has the file's name"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory"), "dest is not a folder"),
        (OSError(errno.EIO, "Input/output error"), "check the dest folder"),
        (OSError("no errno"), "check the dest folder"),
    ],
)
def test_each_file_system_error_says_what_to_do(
    error: OSError, advice: str, tmp_path: Path
) -> None:
    mapped = _disk_error(error, tmp_path / "x.png")
    assert advice in str(mapped)
    assert str(tmp_path / "x.png") in str(mapped)
    assert mapped.errno == error.errno
    assert mapped.strerror == error.strerror
    assert isinstance(mapped, OSError)
    assert isinstance(mapped, qr.QuickRouterError)


def stalled(started: asyncio.Event) -> object:
    """A file that sends its first bytes, then nothing until the server stops."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(PNG) * 100
        await response.prepare(request)
        await response.write(PNG)
        started.set()
        await request.app[RELEASE].wait()
        return response

    return answer


async def test_a_cancelled_download_leaves_no_part_file(tmp_path: Path) -> None:
    started = asyncio.Event()
    async with Scripted() as files:
        files.always("GET", "/slow.png", stalled(started))  # type: ignore[arg-type]
        async with (
            qr.QuickRouter("k", base_url=files.base_url, retry=FAST_RETRY) as client,
            anyio.create_task_group() as group,
        ):
            group.start_soon(client.download, done("p1", f"{files.url}/slow.png"), tmp_path)
            await started.wait()
            await part_file_in(tmp_path)
            group.cancel_scope.cancel()
    assert names(tmp_path) == []


async def test_ctrl_c_in_a_batch_leaves_no_part_file(tmp_path: Path) -> None:
    from quickrouter_async.cli._batch import BatchOptions  # noqa: PLC0415
    from quickrouter_async.cli._execute import run_batch  # noqa: PLC0415

    started = asyncio.Event()
    async with Scripted() as api:
        output = [f"{api.url}/slow.png"]
        created = prediction_json("p1", status="succeeded", model="acme/m", output=output)
        api.always("POST", "/replicate/v1/models/acme/m/predictions", reply(201, created))
        api.always("GET", "/replicate/v1/predictions/p1", reply(200, created))
        api.always("GET", "/slow.png", stalled(started))  # type: ignore[arg-type]
        source = tmp_path / "in.jsonl"
        source.write_text('{"prompt": "x"}\n')
        out = tmp_path / "out"
        interrupt = anyio.Event()
        async with (
            qr.QuickRouter("k", base_url=api.base_url, retry=FAST_RETRY) as client,
            anyio.create_task_group() as group,
        ):

            async def ctrl_c() -> None:
                await started.wait()
                await part_file_in(out)
                interrupt.set()

            group.start_soon(ctrl_c)
            options = BatchOptions(source=source, out=out, model="acme/m")
            code = await run_batch(client, options, interrupt=interrupt)
    assert code == 130
    assert leftovers(out) == []


async def test_a_directory_in_the_way_is_a_download_error(tmp_path: Path) -> None:
    (tmp_path / "p1-0.png").mkdir()
    async with Scripted() as files:
        files.always("GET", "/a.png", reply(200, raw=PNG, content_type="image/png"))
        async with qr.QuickRouter("k", base_url=files.base_url, retry=FAST_RETRY) as client:
            with pytest.raises(qr.DownloadError, match="a directory has the file's name") as caught:
                await client.download(done("p1", f"{files.url}/a.png"), tmp_path)
            with pytest.raises(qr.DownloadError, match="move it away"):
                await client.download(done("p1", "data:image/png;base64,iVBO"), tmp_path)
            (tmp_path / "afile").write_text("x")
            with pytest.raises(qr.DownloadError, match="dest is not a folder") as not_folder:
                await client.download(done("p2", f"{files.url}/a.png"), tmp_path / "afile")
    assert isinstance(caught.value, OSError)
    assert caught.value.errno == errno.EISDIR
    assert caught.value.filename == str(tmp_path / "p1-0.png")
    assert isinstance(caught.value.__cause__, IsADirectoryError)
    assert isinstance(not_folder.value, qr.QuickRouterError)
    assert leftovers(tmp_path) == []


# -- 16.11: where output URLs may lead -----------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://[fe80::1]/x.png", "link-local"),
        ("http://[::ffff:169.254.169.254]/x.png", "link-local"),
        ("http://127.0.0.1:9/x.png", "loopback"),
        ("http://[::1]:9/x.png", "loopback"),
        ("http://0.0.0.0:9/x.png?token=secret", "loopback"),
    ],
)
async def test_link_local_and_loopback_urls_are_refused(url: str, why: str, tmp_path: Path) -> None:
    async with qr.QuickRouter("k", base_url=REMOTE_API, retry=FAST_RETRY) as client:
        with pytest.raises(qr.OutputURLRefused, match=why) as caught:
            await client.download(done("p1", [url]), tmp_path)
    assert "secret" not in str(caught.value)
    assert caught.value.url.startswith("http://")
    assert isinstance(caught.value, qr.ProtocolError)
    assert names(tmp_path) == []


async def test_a_host_name_resolving_to_loopback_gets_no_request(tmp_path: Path) -> None:
    async with Scripted() as files:
        files.always("GET", "/a.png", reply(200, raw=PNG, content_type="image/png"))
        async with qr.QuickRouter("k", base_url=REMOTE_API, retry=FAST_RETRY) as client:
            with pytest.raises(qr.OutputURLRefused, match=r"localhost resolves to 127\.0\.0\.1"):
                await client.download(done("p1", f"http://localhost:{files.port}/a.png"), tmp_path)
        assert files.count() == 0  # refused before connecting: no request at all
    assert names(tmp_path) == []


async def test_a_borrowed_session_is_checked_by_the_address_answering(tmp_path: Path) -> None:
    async with Scripted() as files, aiohttp.ClientSession() as session:
        files.always("GET", "/a.png", reply(200, raw=PNG, content_type="image/png"))
        async with qr.QuickRouter("k", base_url=REMOTE_API, session=session) as client:
            with pytest.raises(qr.OutputURLRefused, match=r"localhost is at 127\.0\.0\.1"):
                await client.download(done("p1", f"http://localhost:{files.port}/a.png"), tmp_path)
    assert names(tmp_path) == []  # its answer was never read


async def test_redirects_are_checked_hop_by_hop(tmp_path: Path) -> None:
    async with Scripted() as files:
        to_metadata = {"Location": "http://169.254.169.254/latest/meta-data/iam"}
        to_other = {"Location": f"http://localhost:{files.port}/a.png"}
        files.always("GET", "/a.png", reply(200, raw=PNG, content_type="image/png"))
        files.always("GET", "/metadata", reply(302, raw=b"", headers=to_metadata))
        files.always("GET", "/other", reply(302, raw=b"", headers=to_other))
        # The API on loopback: loopback outputs are allowed, link-local ones never.
        async with qr.QuickRouter("k", base_url=files.base_url, retry=FAST_RETRY) as client:
            with pytest.raises(qr.OutputURLRefused, match="link-local"):
                await client.download(done("p1", f"{files.url}/metadata"), tmp_path)
            only_ip = ("127.0.0.1",)
            with pytest.raises(qr.OutputURLRefused, match="'localhost' is not one of"):
                await client.download(
                    done("p2", f"{files.url}/other"), tmp_path, output_hosts=only_ip
                )
            paths = await client.download(done("p3", f"{files.url}/other"), tmp_path)
    assert [path.name for path in paths] == ["p3-0.png"]
    assert files.count("GET", "/a.png") == 1


async def test_output_hosts_allow_only_their_hosts(tmp_path: Path) -> None:
    async with Scripted() as files:
        files.always("GET", "/a.png", reply(200, raw=PNG, content_type="image/png"))
        delivery = ("replicate.delivery", "*.replicate.delivery")
        async with qr.QuickRouter(
            "k", base_url=files.base_url, retry=FAST_RETRY, output_hosts=delivery
        ) as client:
            with pytest.raises(qr.OutputURLRefused, match="not one of output_hosts"):
                await client.download(done("p1", f"{files.url}/a.png"), tmp_path)
            paths = await client.download(
                done("p1", f"{files.url}/a.png"), tmp_path, output_hosts=["127.0.0.1"]
            )
            inline = await client.download(done("p2", "data:,x"), tmp_path)  # no host: allowed
        assert files.count("GET", "/a.png") == 1
    assert [path.name for path in [*paths, *inline]] == ["p1-0.png", "p2-0.txt"]


def test_host_patterns() -> None:
    policy = OutputPolicy(("replicate.delivery", "*.replicate.delivery"))
    assert policy.host_allowed("replicate.delivery")
    assert policy.host_allowed("pbxt.Replicate.Delivery.")
    assert not policy.host_allowed("evilreplicate.delivery")
    assert not policy.host_allowed("replicate.delivery.evil.example")
    assert OutputPolicy().host_allowed("anything.example")
    assert OutputPolicy().refusal("not-an-address") is None
    assert OutputPolicy(allow_loopback=True).refusal("127.0.0.1") is None
    assert OutputPolicy(allow_loopback=True).refusal("fe80::1%eth0") is not None
    for bad in ("https://replicate.delivery", "a.b:443", "*", "*.", ".x", "", 3):
        with pytest.raises(qr.InputError, match="output_hosts"):
            qr.QuickRouter("k", output_hosts=[bad])  # type: ignore[list-item]
    with pytest.raises(qr.InputError, match="a list of hosts"):
        qr.QuickRouter("k", output_hosts="replicate.delivery")


# -- file system failures for real: a full disk, a folder that is not writable -------

SAVE = """
import asyncio, json, pathlib, sys
import quickrouter_async as qr

async def main(base_url, output_file, dest):
    output = pathlib.Path(output_file).read_text()  # a data: URI is too long for argv
    done = qr.Prediction(id="p1", status=qr.Status.SUCCEEDED, output=[output])
    async with qr.QuickRouter("k", base_url=base_url) as client:
        try:
            await client.download(done, dest)
            error = None
        except qr.DownloadError as exc:
            error = {"message": str(exc), "errno": exc.errno, "os": isinstance(exc, OSError)}
    left = sorted(p.name for p in pathlib.Path(dest).rglob("*"))
    print(json.dumps({"error": error, "left": left}))

asyncio.run(main(*sys.argv[1:]))
"""


async def save_in_namespace(
    command: list[str], base_url: str, output: str, dest: Path
) -> dict[str, object]:
    """Download ``output`` into ``dest`` in a process run under ``command`` (an
    ``unshare`` prefix); skip where user namespaces are not available.
    """
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = await anyio.run_process([*command, "true"], check=False)
    if probe.returncode != 0:
        pytest.skip("unprivileged user namespaces are not available")
    output_file = dest.parent / "output.txt"
    await anyio.Path(output_file).write_text(output)
    arguments = [sys.executable, "-c", SAVE, base_url, str(output_file), str(dest)]
    done = await anyio.run_process([*command, *arguments], check=False)
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, object] = json.loads(done.stdout.decode().splitlines()[-1])
    return result


@pytest.mark.parametrize("inline", [False, True])
async def test_a_full_disk_is_a_download_error_and_leaves_nothing(
    tmp_path: Path, inline: bool
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    body = PNG * 4000  # 280 KB, on a 64 KiB disk
    async with Scripted() as files:
        files.always("GET", "/big.png", reply(200, raw=body, content_type="image/png"))
        output = (
            "data:image/png;base64," + base64.b64encode(body).decode()
            if inline
            else f"{files.url}/big.png"
        )
        mount = f'mount -t tmpfs -o size=64k none {disk} && exec "$@"'
        unshare = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, "sh"]
        result = await save_in_namespace(unshare, files.base_url, output, disk)
    error = result["error"]
    assert isinstance(error, dict)
    assert error["errno"] == errno.ENOSPC
    assert error["os"] is True
    assert "the disk is full" in error["message"]
    assert result["left"] == []


async def test_a_folder_without_write_permission_is_a_download_error(tmp_path: Path) -> None:
    dest = tmp_path / "locked"
    await anyio.Path(dest).mkdir(mode=0o555)
    await anyio.Path(tmp_path).chmod(0o755)  # nobody may look in, not write
    async with Scripted() as files:
        files.always("GET", "/a.png", reply(200, raw=PNG, content_type="image/png"))
        # As nobody: root may write anywhere.
        unshare = ["unshare", "--user"]
        result = await save_in_namespace(unshare, files.base_url, f"{files.url}/a.png", dest)
    error = result["error"]
    assert isinstance(error, dict)
    assert error["errno"] == errno.EACCES
    assert "no permission to write there" in error["message"]
    assert result["left"] == []


async def test_a_refused_connection_is_still_a_transport_error(tmp_path: Path) -> None:
    async with Scripted() as files:
        closed = f"http://127.0.0.1:{files.port}/a.png"
        async with qr.QuickRouter("k", base_url=files.base_url, retry=FAST_RETRY) as client:
            pass
    # The API on loopback allows loopback; nothing listens there any more.
    async with qr.QuickRouter("k", base_url=files.base_url, retry=FAST_RETRY) as client:
        with pytest.raises(qr.TransportError):
            await client.download(done("p1", closed), tmp_path)


def test_which_apis_are_on_loopback() -> None:
    assert on_loopback("http://localhost:8080/replicate")
    assert on_loopback("http://api.localhost/replicate")
    assert on_loopback("http://127.0.0.2:1/replicate")
    assert on_loopback("http://[::1]:1/replicate")
    assert not on_loopback("https://api.quickrouter.ai/replicate")
    assert not on_loopback("http://10.0.0.1/replicate")
