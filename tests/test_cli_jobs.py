"""``quickrouter-async batch`` and ``demo`` in child processes, against the emulator.

The emulator runs in the test's event loop, so its records show every request the
command sent.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import pytest
from quickrouter_async.cli._lock import JobLock
from quickrouter_async.testing import Emulator

from .cli_process import COMMAND, ROOT, cli, environment, per_input

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MODEL = "google/imagen-4"


def _prompts(path: Path, count: int, word: str = "input") -> list[str]:
    prompts = [f"{word} {n}" for n in range(count)]
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return prompts


async def test_a_wrong_key_stops_the_batch_after_the_first_wave(tmp_path: Path) -> None:
    source, out = tmp_path / "k.jsonl", tmp_path / "out"
    prompts = _prompts(source, 200)
    async with Emulator(duration=0.05, api_key="k") as emulator:
        ran = await cli(
            "batch", source, "--out", out, "--model", MODEL, emulator=emulator, key="wrong"
        )
        refused = emulator.count("create", status=401)
        assert ran.code == 1
        print(f"wrong key: {refused} creates refused of 200 inputs, exit {ran.code}")  # noqa: T201
        assert 1 <= refused <= 12
        assert emulator.count("create") == refused
        assert "does not accept the API key" in ran.err
        assert "401" in ran.err
        assert "200 input(s) are left pending" in ran.err
        assert "Traceback" not in ran.text
        # With the right key the same command finishes the job.
        ran = await cli(
            "batch",
            source,
            "--out",
            out,
            "--model",
            MODEL,
            "--rate-limit",
            "500",
            emulator=emulator,
        )
        assert ran.code == 0, ran.err
        assert per_input(emulator) == Counter(dict.fromkeys(prompts, 1))


async def test_two_runs_on_one_folder_make_each_prediction_once(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out"
    prompts = _prompts(source, 50)
    async with Emulator(duration=1.0, api_key="k") as emulator:
        command = [*COMMAND, "batch", str(source), "--out", str(out), "--model", MODEL]
        codes: list[int] = []
        errors: list[str] = []

        async def one() -> None:
            done = await anyio.run_process(
                command, env=environment(emulator), cwd=ROOT, check=False
            )
            codes.append(done.returncode)
            errors.append(done.stderr.decode())

        async with anyio.create_task_group() as group:
            group.start_soon(one)
            group.start_soon(one)
        assert per_input(emulator) == Counter(dict.fromkeys(prompts, 1))
    assert 0 in codes
    assert set(codes) <= {0, 2}
    for code, err in zip(codes, errors, strict=True):
        if code == 2:
            # Who holds it, unless the holder had not written its record yet.
            assert "is in use by another quickrouter-async run (" in err
            assert "(pid " in err or "has not said who it is yet" in err


async def test_a_held_lock_names_its_holder_and_a_killed_one_holds_nothing(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out"
    _prompts(source, 3)
    out.mkdir()
    async with Emulator(duration=0.05) as emulator:
        async with JobLock(out):
            ran = await cli("batch", source, "--out", out, "--model", MODEL, emulator=emulator)
        assert ran.code == 2
        assert f"pid {os.getpid()} on " in ran.err
        assert emulator.count() == 0
        # A holder killed with SIGKILL: the kernel dropped its lock with it.
        holder = (
            "import anyio, sys; from pathlib import Path\n"
            "from quickrouter_async.cli._lock import JobLock\n"
            "async def main():\n"
            "    async with JobLock(Path(sys.argv[1])):\n"
            "        print('locked', flush=True); await anyio.sleep(60)\n"
            "anyio.run(main)\n"
        )
        async with await anyio.open_process(
            [sys.executable, "-c", holder, str(out)], cwd=ROOT, stdout=subprocess.PIPE
        ) as process:
            assert process.stdout is not None
            assert (await process.stdout.receive()).startswith(b"locked")
            process.send_signal(signal.SIGKILL)
            await process.wait()
        ran = await cli("batch", source, "--out", out, "--model", MODEL, emulator=emulator)
        assert ran.code == 0, ran.err
        assert len(emulator.predictions) == 3


async def test_demo_refuses_a_job_folder_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "job"
    _prompts(source, 3)
    async with Emulator(duration=0.05) as emulator:
        ran = await cli("batch", source, "--out", out, "--model", MODEL, emulator=emulator)
        assert ran.code == 0, ran.err
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.name != "journal.lock"}
    ran = await cli("demo", "--out", out)
    assert ran.code == 2
    assert "holds another job" in ran.err
    after = {path.name: path.read_bytes() for path in out.iterdir() if path.name != "journal.lock"}
    assert after == before
    # Nor a folder of other files; an earlier demo is replaced.
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    assert (await cli("demo", "--out", other)).code == 2
    assert sorted(path.name for path in other.iterdir()) == ["cat.jpg"]
    demo = tmp_path / "demo"
    assert (await cli("demo", "--out", demo)).code == 0
    ran = await cli("demo", "--out", demo)
    assert ran.code == 0, ran.err
    assert "6 of 6 succeeded" in ran.out
    # And batch never resumes a demo.
    ran = await cli("batch", demo / "inputs.jsonl", "--out", demo, "--model", MODEL)
    assert ran.code == 2


BAD_LINES = {
    "not UTF-8": (b'{"prompt": "caf\xe9"}\n', "not UTF-8: byte 0xe9"),
    "a lone surrogate": (b'{"prompt": "\\ud800"}\n', "a lone surrogate \\ud800"),
    "NaN": (b'{"prompt": "x", "seed": NaN}\n', "NaN is not a number"),
    "a 5,000-digit integer": (
        b'{"prompt": "x", "seed": ' + b"7" * 5000 + b"}\n",
        "an integer of 5000 digits",
    ),
    "a 100,000-deep line": (b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested more than"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
async def test_a_bad_line_is_refused_with_its_number_before_anything_is_sent(
    tmp_path: Path, case: str
) -> None:
    line, message = BAD_LINES[case]
    source, out = tmp_path / "in.jsonl", tmp_path / "out"
    source.write_bytes(b'{"prompt": "fine"}\n' + line + b'{"prompt": "fine too"}\n')
    async with Emulator(duration=0.05, api_key="k") as emulator:
        ran = await cli("batch", source, "--out", out, "--model", MODEL, emulator=emulator)
        assert emulator.count() == 0
    assert ran.code == 2
    assert f"in.jsonl:2: {message}" in ran.err
    assert "in.jsonl:1" not in ran.err
    assert "Traceback" not in ran.text
    assert not out.exists()


async def test_journal_failures_are_said_not_raised(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out"
    _prompts(source, 2)
    async with Emulator(duration=0.05) as emulator:
        assert (
            await cli("batch", source, "--out", out, "--model", MODEL, emulator=emulator)
        ).code == 0
        journal = out / "journal.sqlite3"
        # Another program holds a write transaction for longer than SQLite waits (5 s).
        holder = sqlite3.connect(journal, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            ran = await cli("batch", source, "--out", out, "--model", MODEL, emulator=emulator)
        finally:
            holder.close()
        assert ran.code == 2
        assert "is locked by another program (database is locked)" in ran.err
        assert "Traceback" not in ran.text
        # A damaged journal.
        journal.write_bytes(b"not a database, just text\n" * 100)
        ran = await cli("batch", source, "--out", out, "--model", MODEL, emulator=emulator)
        assert ran.code == 2
        assert "is damaged (file is not a database)" in ran.err
        assert "restore it from a backup" in ran.err
        assert "Traceback" not in ran.text
        assert emulator.count("create") == 2
