"""Local files in inputs: paths, bytes and open files reach the server as data: URIs."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import quickrouter_async as qr
from hypothesis import given, settings
from hypothesis import strategies as st
from quickrouter_async._local_files import (
    MAX_FILE_BYTES,
    MAX_INPUT_FILE_BYTES,
    encode_local_files,
    media_type,
)

if TYPE_CHECKING:
    from quickrouter_async.testing import Emulator

pytestmark = pytest.mark.anyio

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(64))
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(32)
GIF = b"GIF89a\x01\x00\x01\x00" + bytes(16)


def decoded(uri: str) -> tuple[str, bytes]:
    """The media type and bytes of a base64 data: URI."""
    header, _, payload = uri.partition(",")
    assert header.startswith("data:")
    assert header.endswith(";base64")
    return header[5:].removesuffix(";base64"), base64.b64decode(payload, validate=True)


@pytest.fixture
def ref(tmp_path: Path) -> Path:
    path = tmp_path / "ref.png"
    path.write_bytes(PNG)
    return path


async def test_every_kind_of_local_image_reaches_the_server_as_a_data_uri(
    client: qr.QuickRouter, emulator: Emulator, ref: Path
) -> None:
    with ref.open("rb") as handle:
        kinds: list[list[Any]] = [
            [ref],
            [str(ref)],
            [PNG],
            [bytearray(PNG)],
            [memoryview(PNG)],
            [handle],
            [ref, "https://example.com/b.png"],
        ]
        for images in kinds:
            prediction = await client.create(qr.Seedream4Input(prompt="edit", image_input=images))
            sent = emulator.predictions[-1].input["image_input"]
            assert decoded(sent[0]) == ("image/png", PNG)
            assert sent[1:] == images[1:]  # a URL stays a URL
            assert prediction.input == emulator.predictions[-1].input  # matched as sent
        assert handle.tell() == 0  # the open file is put back where it stood
    assert len(emulator.predictions) == len(kinds)


async def test_a_dict_input_sends_paths_bytes_and_files_at_any_depth(
    client: qr.QuickRouter, emulator: Emulator, ref: Path, tmp_path: Path
) -> None:
    jpeg = tmp_path / "b.jpg"
    jpeg.write_bytes(JPEG)
    payload = {
        "prompt": str(ref),  # a string is never read as a path in a dict input
        "image": ref,
        "refs": [{"image": jpeg}, io.BytesIO(GIF), (WEBP,)],
        "note": None,
    }
    prediction = await client.create("acme/editor", payload)
    sent = emulator.predictions[-1].input
    assert sent["prompt"] == str(ref)
    assert decoded(sent["image"]) == ("image/png", PNG)
    assert decoded(sent["refs"][0]["image"]) == ("image/jpeg", JPEG)
    assert decoded(sent["refs"][1]) == ("image/gif", GIF)
    assert decoded(sent["refs"][2][0]) == ("image/webp", WEBP)
    assert "note" not in sent
    assert prediction.input == sent
    assert payload["image"] == ref  # the caller's input is left as it was


async def test_run_and_run_many_send_files_and_keep_the_input_as_given(
    client: qr.QuickRouter, emulator: Emulator, ref: Path
) -> None:
    typed = qr.Seedream4Input(prompt="run", image_input=[ref])
    done = await client.run(typed)
    assert decoded(done.input["image_input"][0])[1] == PNG  # type: ignore[index]
    inputs = [typed, ("acme/editor", {"prompt": "x", "image": ref})]
    async with client.run_many(inputs, concurrency=2) as outcomes:
        results = {outcome.index: outcome async for outcome in outcomes}
    assert results[0].ok
    assert results[1].ok
    assert results[0].input is typed
    assert results[1].input == inputs[1]
    assert all(p.input and "data:image/png" in str(p.input) for p in emulator.predictions)


async def test_files_are_read_in_a_worker_thread(client: qr.QuickRouter) -> None:
    loop_thread = threading.current_thread()
    readers: list[threading.Thread] = []

    class Recording(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            readers.append(threading.current_thread())
            return super().read(size)

    await client.create("acme/editor", {"prompt": "x", "image": Recording(PNG)})
    assert readers
    assert loop_thread not in readers


async def test_the_same_input_twice_sends_the_same_body(
    client: qr.QuickRouter, emulator: Emulator, ref: Path
) -> None:
    with ref.open("rb") as handle:
        handle.seek(4)  # read from where it stands
        typed = qr.Seedream4Input(prompt="twice", image_input=[ref, handle, PNG])
        await client.create(typed)
        await client.create(typed)
    first, second = (p.input for p in emulator.predictions)
    assert first == second
    assert decoded(first["image_input"][1])[1] == PNG[4:]


async def test_a_stream_that_cannot_rewind_is_sent_once(
    client: qr.QuickRouter, emulator: Emulator
) -> None:
    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.left = PNG

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            size = min(len(buffer), len(self.left))
            buffer[:size], self.left = self.left[:size], self.left[size:]
            return size

    pipe = Pipe()
    await client.create("acme/editor", {"prompt": "x", "image": pipe})
    with pytest.raises(qr.InputError, match="empty"):
        await client.create("acme/editor", {"prompt": "x", "image": pipe})
    assert emulator.count("create") == 1


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (["missing.png"], "no file 'missing.png' exists"),
        (["ftp://example.com/a.png"], "not an http"),
        ([3], "must be an http"),
        ([b""], "empty"),
        ([Path()], "not a file"),
        (["https://example.com/a.png"] * 11, "at most 10"),
        (Path("a.png"), "put a single one in a list"),
        ("https://example.com/a.png", "put a single one in a list"),
        (7, "must be a list of images"),
    ],
)
def test_bad_images_are_refused_when_the_input_is_built(images: Any, match: str) -> None:
    with pytest.raises(qr.InputError, match=match) as caught:
        qr.Seedream4Input(prompt="x", image_input=images)
    assert caught.value.field == "image_input"


def test_text_files_and_byte_paths_are_refused(ref: Path) -> None:
    with ref.open(encoding="latin-1") as text, pytest.raises(qr.InputError, match="binary"):
        qr.Seedream4Input(prompt="x", image_input=[text])

    class BytesPath:
        def __fspath__(self) -> bytes:
            return bytes(ref)

    with pytest.raises(qr.InputError, match="paths must be text"):
        qr.Seedream4Input(prompt="x", image_input=[BytesPath()])


async def test_files_that_fail_when_read_send_nothing(
    client: qr.QuickRouter, emulator: Emulator, ref: Path, tmp_path: Path
) -> None:
    typed = qr.Seedream4Input(prompt="x", image_input=[ref])
    await anyio.Path(ref).unlink()  # gone between building the input and creating
    with pytest.raises(qr.InputError, match="no file") as caught:
        await client.create(typed)
    assert caught.value.field == "image_input"
    closed = io.BytesIO(PNG)
    closed.close()
    folder = tmp_path / "folder"
    folder.mkdir()
    text = io.StringIO("not bytes")
    bad: list[tuple[object, str]] = [
        (closed, "cannot read the file"),
        (folder, "cannot read"),
        (text, "binary mode"),
        (b"", "empty"),
    ]
    for value, match in bad:
        with pytest.raises(qr.InputError, match=match):
            await client.create("acme/editor", {"prompt": "x", "image": [value]})
    assert emulator.count("create") == 0


async def test_files_past_the_size_limits_are_refused_before_sending(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path
) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(PNG + bytes(MAX_FILE_BYTES))
    with pytest.raises(qr.InputError, match=r"larger than 10\.0 MiB") as caught:
        qr.Seedream4Input(prompt="x", image_input=[big])
    assert len(str(caught.value)) < 2000
    with pytest.raises(qr.InputError, match=r"larger than 10\.0 MiB"):
        qr.Seedream4Input(prompt="x", image_input=[big.read_bytes()])
    for value in (big, big.read_bytes(), io.BytesIO(big.read_bytes())):
        with pytest.raises(qr.InputError, match=r"larger than 10\.0 MiB") as caught:
            await client.create("acme/editor", {"prompt": "x", "image": value})
        assert len(str(caught.value)) < 2000
    part = bytes(MAX_FILE_BYTES)
    many = [part] * (MAX_INPUT_FILE_BYTES // MAX_FILE_BYTES + 1)
    with pytest.raises(qr.InputError, match=r"add up to more than 40\.0 MiB"):
        await client.create("acme/editor", {"prompt": "x", "images": many})
    assert emulator.count("create") == 0


def test_media_types_come_from_the_bytes_then_the_name() -> None:
    assert media_type(PNG, "photo.jpg") == "image/png"  # the bytes win over the name
    assert media_type(JPEG, None) == "image/jpeg"
    assert media_type(WEBP, None) == "image/webp"
    assert media_type(GIF, None) == "image/gif"
    assert media_type(b"BM....", "scan.BMP") == "image/bmp"
    assert media_type(b"....", "x.webp") == "image/webp"
    assert media_type(b"....", "notes") == "application/octet-stream"
    assert media_type(b"....", None) == "application/octet-stream"


def test_a_deeply_nested_input_is_an_input_error() -> None:
    nested: Any = PNG
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(qr.InputError, match="nested too deeply"):
        encode_local_files({"deep": nested})


@settings(max_examples=50, deadline=None)
@given(data=st.binary(min_size=1, max_size=2048), name=st.sampled_from([None, "a.png", "b.bin"]))
def test_any_bytes_round_trip_and_always_give_the_same_text(data: bytes, name: str | None) -> None:
    value: object = data if name is None else io.BytesIO(data)
    first = encode_local_files({"file": value, "list": [data]})
    second = encode_local_files({"file": value, "list": [data]})
    assert first == second
    media, sent = decoded(first["file"])
    assert sent == data
    assert decoded(first["list"][0])[1] == data
    assert media == media_type(data, None)


@settings(max_examples=50, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    )
)
def test_inputs_without_files_are_left_alone(value: object) -> None:
    assert encode_local_files({"value": value}) == {"value": value}


async def test_odd_values_in_a_dict_input(client: qr.QuickRouter, emulator: Emulator) -> None:
    class AsyncFile:
        async def read(self, size: int = -1) -> bytes:
            return PNG[:size]

    with pytest.raises(qr.InputError, match="binary mode"):
        await client.create("acme/editor", {"prompt": "x", "image": AsyncFile()})
    with pytest.raises(qr.InputError, match="not JSON"):
        await client.create("acme/editor", {"prompt": "x", "when": object(), "image": PNG})
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(qr.InputError, match="contains itself"):
        await client.create("acme/editor", {"prompt": "x", "a": looped, "b": looped})
    assert emulator.count("create") == 0


def test_no_images_and_a_short_repr() -> None:
    assert qr.Seedream4Input(prompt="x", image_input=None).image_input == ()  # type: ignore[arg-type]
    shown = repr(qr.Seedream4Input(prompt="x", image_input=[PNG * 100_000]))
    assert len(shown) < 1000
    assert f"{len(PNG) * 100_000:,} bytes" in shown
