"""The command line: run, batch, demo and emulator, through `main` as a user calls them.

`main` runs its own event loop, so these tests are synchronous and the emulator they talk
to runs on an event loop of its own in a thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import TYPE_CHECKING, Any

import pytest
from quickrouter_async.cli import main
from quickrouter_async.cli._lines import parse_setting, validate
from quickrouter_async.cli._progress import Display, Tally
from quickrouter_async.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SECRET = "cli-secret-key-123"


@pytest.fixture
def server() -> Iterator[Emulator]:
    """An emulator on its own event loop in a thread (``main`` runs its own loop)."""
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        holder["stop"], holder["loop"] = stop, asyncio.get_running_loop()
        async with Emulator(duration=0.05, api_key=SECRET, seed=3) as emulator:
            holder["emulator"] = emulator
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    ready.wait(10)
    try:
        yield holder["emulator"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)


@pytest.fixture
def environment(server: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    monkeypatch.setenv("QUICKROUTER_API_KEY", SECRET)
    monkeypatch.setenv("QUICKROUTER_BASE_URL", server.base_url)
    return server


def test_demo_writes_images_results_and_gallery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(records)))
    assert all(r["status"] == "succeeded" and r["error"] is None for r in records)
    files = [name for r in records for name in r["files"]]
    assert len(files) >= len(records)
    for name in files:
        assert (out / name).stat().st_size > 0
        assert name.startswith(tuple(r["prediction_id"] for r in records))
    gallery = (out / "index.html").read_text()
    assert all(name in gallery for name in files)
    assert (out / "journal.sqlite3").is_file()
    assert "succeeded" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_emulator_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["emulator", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "quickrouter-async emulator" in text
    for flag in ("--port", "--duration", "--api-key", "--reset-after-create", "--failure-rate"):
        assert flag in text


def test_run_downloads_and_prints_paths(
    environment: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    arguments = ["run", "bytedance/seedream-4", "--prompt", "a comic", "--out", str(out)]
    arguments += ["--set", "sequential_image_generation=auto", "--set", "max_images=2"]
    assert main(arguments) == 0
    printed = capsys.readouterr()
    paths = printed.out.split()
    assert len(paths) == 2
    assert all((out / path.rsplit("/", 1)[-1]).is_file() for path in paths)
    assert environment.predictions[0].input["max_images"] == 2
    assert SECRET not in printed.out + printed.err


def test_run_failure_and_invalid_input(
    environment: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environment.fail_prompts = ["doomed"]
    assert main(["run", "google/imagen-4", "--prompt", "doomed", "--out", str(tmp_path)]) == 1
    assert "failed" in capsys.readouterr().err
    code = main(["run", "google/imagen-4", "--prompt", "x", "--set", "aspect_ratio=7:1"])
    assert code == 2
    assert "aspect_ratio" in capsys.readouterr().err
    assert main(["run", "google/imagen-4", "--prompt", "x", "--set", "novalue"]) == 2
    assert environment.count("create") == 1
    assert main(["run", "acme/model:no-such-version", "--prompt", "x"]) == 1
    assert "error:" in capsys.readouterr().err


def test_api_key_from_file_only_and_never_printed(
    server: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("QUICKROUTER_API_KEY", raising=False)
    monkeypatch.setenv("QUICKROUTER_BASE_URL", server.base_url)
    assert main(["run", "google/imagen-4", "--prompt", "x"]) == 2
    assert "QUICKROUTER_API_KEY" in capsys.readouterr().err
    assert main(["run", "google/imagen-4", "--prompt", "x", "--api-key-file", "/nonexistent"]) == 2
    key_file = tmp_path / "key"
    key_file.write_text("wrong-key-456\n")
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n')
    out = tmp_path / "out"
    arguments = ["batch", str(source), "--out", str(out), "--model", "google/imagen-4"]
    assert main([*arguments, "--api-key-file", str(key_file)]) == 1
    key_file.write_text(SECRET + "\n")
    assert main([*arguments, "--api-key-file", str(key_file), "--resume"]) == 0
    printed = capsys.readouterr()
    for text in (printed.out, printed.err, *(p.read_text() for p in out.glob("*.jsonl"))):
        assert SECRET not in text
        assert "wrong-key-456" not in text
    assert SECRET.encode() not in (out / "journal.sqlite3").read_bytes()


def test_batch_reports_every_invalid_line_before_sending(
    environment: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(
            [
                '{"prompt": "fine"}',
                "not json",
                '{"prompt": "x", "aspect_ratio": "7:1"}',
                '{"model": "bytedance/seedream-4", "input": {"prompt": "y", "sizee": "2K"}}',
                '{"model": "bytedance/seedream-4", "input": {"size": "custom", "prompt": "z"}}',
                '{"model": "no-slash", "input": {"prompt": "z"}}',
                '{"model": "acme/m", "input": [1]}',
                '{"model": "acme/m", "input": {}, "extra": 1}',
                '{"model": 5, "input": {}}',
                '{"aspect_ratio": "1:1"}',
                '{"prompt": "fine", "model": "google/imagen-4"}',
            ]
        )
    )
    arguments = ["batch", str(source), "--out", str(tmp_path / "out"), "--model", "google/imagen-4"]
    assert main(arguments) == 2
    err = capsys.readouterr().err
    for number in range(2, 12):
        assert f"in.jsonl:{number}:" in err
    assert "in.jsonl:1:" not in err
    assert "10 invalid line(s)" in err
    assert environment.count() == 0
    assert main(["batch", str(source), "--out", str(tmp_path / "o2")]) == 2
    assert "no model: pass --model" in capsys.readouterr().err


def test_batch_flags_are_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for flags in (["--concurrency", "0"], ["--rate-limit", "-1"]):
        with pytest.raises(SystemExit) as info:
            main(["batch", "in.jsonl", "--out", str(tmp_path), *flags])
        assert info.value.code == 2
    assert "must be" in capsys.readouterr().err


def test_settings_are_json_when_they_parse() -> None:
    assert parse_setting("max_images=3") == ("max_images", 3)
    assert parse_setting("enhance_prompt=false") == ("enhance_prompt", False)
    assert parse_setting("aspect_ratio=16:9") == ("aspect_ratio", "16:9")
    assert parse_setting("prompt= a = b") == ("prompt", " a = b")
    validate("acme/anything", {"whatever": 1})


def test_progress_line_and_display() -> None:
    from io import StringIO  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415

    tally = Tally(10, done_before=2, succeeded_before=1)
    assert "ETA ?" in tally.line()
    tally.start()
    tally.finish(ok=True)
    tally.start()
    tally.finish(ok=False)
    tally.finish(ok=False, started=False)
    assert tally.succeeded == 2
    assert tally.failed == 3
    assert tally.running == 0
    assert tally.eta is not None
    buffer = StringIO()
    console = Console(file=buffer, force_terminal=True, width=200)
    with Display(tally, console=console, enabled=True):
        tally.start()
    assert "running 1" in buffer.getvalue()
    with Display(tally, enabled=False):
        pass
