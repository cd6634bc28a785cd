"""A batch process killed with SIGKILL mid-run, then resumed: one prediction per input.

The smaller sibling of ``benchmarks/kill_resume.py``: the batch runs as a child process
(so it can really be killed), the emulator in the test's event loop, where its records
show every prediction ever created.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest
from quickrouter_async.testing import Emulator, Faults

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
INPUTS = 30


async def test_sigkill_then_resume_creates_each_prediction_once(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out"
    prompts = [f"killed input {n}" for n in range(INPUTS)]
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    # A third of the creates are answered late (after the prediction exists), so the
    # kill is likely to catch some inputs "submitting" with a prediction on the server.
    faults = Faults(slow=0.3, slow_seconds=1.0, endpoints=["create"])
    async with Emulator(duration=(0.2, 0.8), seed=11, faults=faults) as emulator:
        environment = {
            **os.environ,
            "QUICKROUTER_BASE_URL": emulator.base_url,
            "QUICKROUTER_API_KEY": emulator.api_key,
        }
        command = [sys.executable, "-m", "quickrouter_async.cli", "batch", str(source)]
        command += ["--out", str(out), "--model", "google/imagen-4", "--concurrency", "8"]
        async with await anyio.open_process(
            command, env=environment, cwd=ROOT, stdout=subprocess.DEVNULL
        ) as first:
            with anyio.fail_after(20):
                # Another process's progress: there is no event to await, only time.
                while sum(p.terminal for p in emulator.predictions) < 5:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            first.send_signal(signal.SIGKILL)
            assert await first.wait() == -signal.SIGKILL
        with sqlite3.connect(out / "journal.sqlite3") as db:
            at_kill = dict(db.execute("SELECT state, count(*) FROM entries GROUP BY state"))
        assert at_kill.get("done", 0) < INPUTS

        resumed = await anyio.run_process(command, env=environment, cwd=ROOT, check=False)
        assert resumed.returncode == 0, resumed.stderr.decode()

        per_input = Counter(str(p.input.get("prompt")) for p in emulator.predictions)
    assert per_input == Counter(dict.fromkeys(prompts, 1))
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in results) == list(range(INPUTS))
    assert all(r["status"] == "succeeded" for r in results)
    assert all((out / name).is_file() for r in results for name in r["files"])
    assert sum(len(r["files"]) for r in results) == INPUTS


async def test_ctrl_c_cancels_on_the_server_and_exits_130(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out"
    source.write_text("".join(json.dumps({"prompt": f"p{n}"}) + "\n" for n in range(6)))
    async with Emulator(duration=30.0) as emulator:
        environment = {**os.environ, "QUICKROUTER_API_KEY": emulator.api_key}
        command = [sys.executable, "-m", "quickrouter_async.cli", "batch", str(source)]
        command += ["--out", str(out), "--model", "google/imagen-4", "--concurrency", "3"]
        command += ["--base-url", emulator.base_url]
        async with await anyio.open_process(command, env=environment, cwd=ROOT) as process:
            with anyio.fail_after(20):
                while len(emulator.predictions) < 3:  # noqa: ASYNC110 (another process)
                    await anyio.sleep(0.01)
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(20):
                assert await process.wait() == 130
        assert emulator.predictions
        assert all(str(p.status) == "canceled" for p in emulator.predictions)
    with sqlite3.connect(out / "journal.sqlite3") as db:
        states = dict(db.execute("SELECT state, count(*) FROM entries GROUP BY state"))
    assert states == {"pending": 6}
