"""Local files on the command line: ``@path`` values in JSON lines and ``--set``."""

from __future__ import annotations

import base64
import json
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest
from quickrouter_async._journal import JOURNAL_NAME
from quickrouter_async.cli import main
from quickrouter_async.cli._batch import BatchOptions
from quickrouter_async.cli._execute import run_batch
from quickrouter_async.cli._lines import input_as_sent, local_files
from quickrouter_async.cli._run import build_input, run_one

if TYPE_CHECKING:
    from pathlib import Path

    import quickrouter_async as qr
    from quickrouter_async.testing import Emulator

pytestmark = pytest.mark.anyio

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
JPEG = b"\xff\xd8\xff\xe0" + bytes(60)
SEEDREAM = "bytedance/seedream-4"


def data_uri(kind: str, data: bytes) -> str:
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with an input file's images, and a current folder elsewhere."""
    folder = tmp_path / "job"
    (folder / "refs").mkdir(parents=True)
    (folder / "ref.png").write_bytes(PNG)
    (folder / "refs" / "b.jpg").write_bytes(JPEG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths are relative to the input file, not here
    return folder


async def test_batch_lines_send_their_files_and_the_journal_keeps_the_lines(
    client: qr.QuickRouter, emulator: Emulator, job: Path
) -> None:
    lines: list[Any] = [
        {"model": SEEDREAM, "input": {"prompt": "edit", "image_input": ["@ref.png"]}},
        {"model": "acme/editor", "input": {"prompt": "@@me", "refs": {"image": "@refs/b.jpg"}}},
    ]
    source = write_lines(job / "in.jsonl", lines)
    out = job / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out)) == 0
    sent = {p.model: p.input for p in emulator.predictions}
    assert sent[SEEDREAM]["image_input"] == [data_uri("png", PNG)]
    assert sent["acme/editor"] == {"prompt": "@me", "refs": {"image": data_uri("jpeg", JPEG)}}
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["input"] for r in results] == [line["input"] for line in lines]
    with sqlite3.connect(out / JOURNAL_NAME) as db:
        stored = " ".join(str(row) for row in db.execute("SELECT * FROM entries"))
    assert "@ref.png" in stored
    assert "base64" not in stored


async def test_a_resumed_batch_finds_a_create_in_doubt_by_its_files(
    client: qr.QuickRouter, emulator: Emulator, job: Path
) -> None:
    lines = [{"prompt": "edit", "image_input": ["@ref.png"]}, {"prompt": "another"}]
    source = write_lines(job / "in.jsonl", lines)
    out = job / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=SEEDREAM)) == 0
    with sqlite3.connect(out / JOURNAL_NAME) as db:
        db.execute("UPDATE entries SET state='submitting', prediction_id=NULL WHERE idx=0")
    options = BatchOptions(source=source, out=out, model=SEEDREAM, resume=True)
    assert await run_batch(client, options) == 0
    assert emulator.count("create") == 2  # found by lookup, not sent again


async def test_a_missing_file_stops_the_batch_before_anything_is_sent(
    client: qr.QuickRouter,
    emulator: Emulator,
    job: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines: list[Any] = [
        {"prompt": "fine", "image_input": ["@ref.png"]},
        {"prompt": "broken", "image_input": ["@nope.png"]},
        {"prompt": "@home"},
    ]
    source = write_lines(job / "in.jsonl", lines)
    code = await run_batch(client, BatchOptions(source=source, out=job / "out", model=SEEDREAM))
    assert code == 2
    err = capsys.readouterr().err
    assert "in.jsonl:2: input.image_input[0]: cannot read" in err
    assert "nope.png" in err
    assert "in.jsonl:3: input.prompt: cannot read" in err
    assert "write @@ for a literal @" in err
    assert "in.jsonl:1" not in err
    assert emulator.count("create") == 0


async def test_run_sends_set_files_from_the_current_folder(
    client: qr.QuickRouter, emulator: Emulator, job: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(job)
    one = build_input(SEEDREAM, "@not-a-file", ["image_input=@ref.png"])
    assert one["prompt"] == "@not-a-file"  # --prompt is always text
    two = build_input(SEEDREAM, "x", ['image_input=["@ref.png", "@refs/b.jpg"]'])
    other = build_input("acme/editor", "x", ["image=@ref.png", "note=@@home"])
    assert other["note"] == "@home"
    for payload in (one, two):
        assert await run_one(client, SEEDREAM, payload, job / "out") == 0
    assert await run_one(client, "acme/editor", other, job / "out") == 0
    sent = [p.input for p in emulator.predictions]
    assert sent[0]["image_input"] == [data_uri("png", PNG)]
    assert sent[1]["image_input"] == [data_uri("png", PNG), data_uri("jpeg", JPEG)]
    assert sent[2]["image"] == data_uri("png", PNG)


def test_run_refuses_an_unreadable_file_before_anything(
    job: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUICKROUTER_API_KEY", raising=False)  # not even a key is needed
    arguments = ["run", SEEDREAM, "--prompt", "x", "--set", "image_input=@missing.png"]
    assert main(arguments) == 2
    assert "cannot read 'missing.png'" in capsys.readouterr().err
    big = job / "big.png"
    big.write_bytes(bytes(11 * 1024 * 1024))
    assert main(["run", SEEDREAM, "--prompt", "x", "--set", f"image_input=@{big}"]) == 2
    assert "larger than 10 MiB" in capsys.readouterr().err


def test_at_values_at_any_depth_become_paths(job: Path) -> None:
    payload = {"a": ["@x", {"b": "@@y"}], "c": 3, "d": "plain"}
    expanded = local_files(payload, job)
    assert expanded == {"a": [job / "x", {"b": "@y"}], "c": 3, "d": "plain"}
    assert local_files([1], job) == [1]
    deep: Any = "@x"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested too deeply"):
        local_files({"deep": deep}, job)


async def test_the_input_as_sent_reads_its_files(job: Path) -> None:
    plain = {"prompt": "x"}
    assert await input_as_sent(plain, job) == plain
    assert await input_as_sent({"image": "@ref.png"}, job) == {"image": data_uri("png", PNG)}
    # A file gone since the check: its path stays, and its create will fail unsent.
    assert await input_as_sent({"image": "@gone.png"}, job) == {"image": job / "gone.png"}
