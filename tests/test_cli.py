"""The command line: run, batch, demo and emulator, through `main` as a user calls them.

`main` runs its own event loop, so these tests are synchronous and the emulator they talk
to runs on an event loop of its own in a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import pytest
import quickrouter_async as qr
from quickrouter_async import InputError
from quickrouter_async.cli import main
from quickrouter_async.cli._get import describe
from quickrouter_async.cli._lines import entries, parse_setting, validate
from quickrouter_async.cli._main import _unexpected
from quickrouter_async.cli._progress import Display, Tally
from quickrouter_async.testing import Emulator, Faults

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
        assert f"in.jsonl:{number}:" in err or f"in.jsonl: lines {number}, " in err
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


def test_more_bad_lines_are_named_and_counted(
    environment: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = {"prompt": "x"}
    nested: Any = "leaf"
    for _ in range(40):
        nested = [nested]
    deep["seed"] = nested
    lines = [
        json.dumps({"model": "acme/any", "input": {"prompt": "fine", "strength": 0.5}}),
        '{"prompt": "x", "seed": 1e400}',
        json.dumps(deep),
        *(f'{{"prompt": "x", "aspect_ratio": "{n}:7"}}' for n in range(30)),
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    arguments = ["batch", str(source), "--out", str(tmp_path / "out"), "--model", "google/imagen-4"]
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert "in.jsonl:2: the number 1e400 is out of range" in err
    assert "in.jsonl:3: nested more than 32 levels deep" in err
    assert "error: in.jsonl: 12 more invalid line(s) not shown" in err
    assert "32 invalid line(s)" in err
    assert environment.count() == 0
    with pytest.raises(InputError, match=r"in\.jsonl:2: the number"):
        list(entries(source, "google/imagen-4"))


def test_folders_that_hold_something_else_are_refused(
    environment: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n')
    afile = tmp_path / "afile"
    afile.write_text("x")
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<p>my site</p>")
    cases = {afile: "is a file, not a folder", afile / "sub": "cannot make --out"}
    cases[web] = "holds index.html but no journal"
    for out, message in cases.items():
        assert main(["batch", str(source), "--out", str(out), "--model", "google/imagen-4"]) == 2
        assert message in capsys.readouterr().err
    assert (web / "index.html").read_text() == "<p>my site</p>"
    assert main(["demo", "--out", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["demo", "--out", str(afile / "sub")]) == 2
    assert "afile" in capsys.readouterr().err
    assert environment.count() == 0


def test_a_job_without_model_may_be_given_one_later(
    environment: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"model": "google/imagen-4", "input": {"prompt": "a"}}\n')
    out = tmp_path / "out"
    assert main(["batch", str(source), "--out", str(out)]) == 0
    assert main(["batch", str(source), "--out", str(out), "--resume"]) == 0
    with source.open("a") as handle:
        handle.write('{"prompt": "bare"}\n')
    assert main(["batch", str(source), "--out", str(out), "--model", "google/imagen-4"]) == 0
    assert main(["batch", str(source), "--out", str(out), "--resume"]) == 0
    assert "reading bare lines as inputs of google/imagen-4" in capsys.readouterr().err
    assert environment.count("create") == 2


def test_a_lock_whose_holder_said_nothing_yet(
    environment: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n')
    out = tmp_path / "out"
    out.mkdir()
    with (out / "journal.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # locked, but no record written
        assert main(["batch", str(source), "--out", str(out), "--model", "google/imagen-4"]) == 2
    assert "a process that has not said who it is yet" in capsys.readouterr().err
    assert environment.count() == 0


def test_an_earlier_demo_is_replaced_and_a_batch_never_resumes_it(
    environment: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    # As the first release left it: no kind in the journal's meta (and a damaged one).
    db = sqlite3.connect(out / "journal.sqlite3")
    db.execute("DELETE FROM meta WHERE key = 'kind'")
    db.commit()
    db.close()
    assert main(["demo", "--out", str(out)]) == 0
    (out / "journal.sqlite3").write_bytes(b"damaged" * 1000)
    assert main(["demo", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["batch", str(out / "inputs.jsonl"), "--out", str(out)]) == 2
    assert "holds a demo job, not a batch" in capsys.readouterr().err
    assert environment.count() == 0


def test_run_refuses_a_prompt_that_is_not_text(
    environment: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    # How the bytes b"caf\xe9" of a Latin-1 terminal reach Python.
    prompt = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert main(["run", "google/imagen-4", "--prompt", prompt]) == 2
    assert "--prompt and --set take UTF-8 text" in capsys.readouterr().err
    assert environment.count() == 0


def test_a_key_file_that_is_not_text_is_refused_without_showing_it(
    server: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"\xffsecret-bytes")
    arguments = ["get", "someid", "--base-url", server.base_url, "--api-key-file", str(key_file)]
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text" in err
    assert "secret" not in err


def test_an_unexpected_failure_is_one_line_without_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUICKROUTER_API_KEY", SECRET)
    options = argparse.Namespace(api_key_file=None)
    failure = ExceptionGroup("", [ExceptionGroup("", [ValueError(f"bad {SECRET} thing")])])
    assert _unexpected(failure, options) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: an unexpected failure stopped the command: ValueError: bad")
    assert SECRET not in err
    assert "[API key]" in err
    assert _unexpected(BaseExceptionGroup("", [KeyboardInterrupt()]), options) == 130
    assert _unexpected(ExceptionGroup("", [InputError("bad id")]), options) == 2
    assert capsys.readouterr().err == "error: bad id\n"
    assert _unexpected(ValueError("x"), argparse.Namespace()) == 1


def test_get_refuses_what_is_not_an_id(
    environment: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["get", ".."]) == 2
    assert "a prediction id must be" in capsys.readouterr().err
    assert environment.count() == 0


def test_get_describes_what_it_cannot_show_whole() -> None:
    long = "data:image/png;base64," + "A" * 5000
    prediction = qr.Prediction(
        id="p1", status=qr.Status.FAILED, output=[long], error="boom", data_removed=True
    )
    lines = describe(prediction)
    assert "error:     boom" in lines
    assert any(line.endswith("... (5022 characters)") for line in lines)
    assert lines[-1] == "output:    removed by the server (it keeps files for an hour)"
    assert not any(line.startswith("predict:") for line in lines)


@pytest.mark.slow
def test_resend_in_doubt_also_resends_this_runs_creates(
    environment: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"prompt": "p{n}"}}\n' for n in range(3)))
    arguments = ["batch", str(source), "--out", str(tmp_path / "out"), "--concurrency", "1"]
    arguments += ["--model", "google/imagen-4"]
    # A gateway without the list route, where every other create is stored and then
    # answered 500: nothing can tell whether those made a prediction.
    environment.list_route = False
    environment.faults = Faults(server_error_after_create=0.5, endpoints=["create"])
    assert main(arguments) == 1
    doubts = int(capsys.readouterr().out.split(" in doubt")[0].rsplit(" ", 1)[-1])
    assert doubts >= 1
    made = len(environment.predictions)
    assert main([*arguments, "--resend-in-doubt"]) == 0
    assert "3 of 3 succeeded, 0 failed, 0 in doubt" in capsys.readouterr().out
    # Each input in doubt was sent again (paid twice), and so was every create that
    # fell in doubt in this run.
    assert len(environment.predictions) >= made + doubts
