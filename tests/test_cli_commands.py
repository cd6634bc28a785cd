"""``run``, ``get``, file modes, messages and a really full disk, in child processes."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import stat
import subprocess
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import pytest
from quickrouter_async.testing import Emulator, Faults

from .cli_process import COMMAND, ROOT, cli, environment, per_input

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MODEL = "google/imagen-4"


async def test_run_checks_out_before_it_creates_and_prints_the_id(tmp_path: Path) -> None:
    afile = tmp_path / "afile.txt"
    afile.write_text("not a folder")
    async with Emulator(duration=0.05) as emulator:
        ran = await cli("run", MODEL, "--prompt", "x", "--out", afile, emulator=emulator)
        assert ran.code == 2
        assert "is a file, not a folder" in ran.err
        assert emulator.count() == 0
        ran = await cli("run", MODEL, "--prompt", "x", "--out", afile / "sub", emulator=emulator)
        assert ran.code == 2
        assert emulator.count() == 0

        out = tmp_path / "new" / "folder"
        ran = await cli("run", MODEL, "--prompt", "x", "--out", out, emulator=emulator)
        assert ran.code == 0, ran.err
        (prediction,) = emulator.predictions
        assert f"prediction {prediction.id} created" in ran.err
        assert ran.out.split() == [str(out / f"{prediction.id}-0.jpg")]

        emulator.fail_prompts = ["doomed"]
        ran = await cli("run", MODEL, "--prompt", "doomed", "--out", out, emulator=emulator)
        assert ran.code == 1
        assert "failed" in ran.err
        assert "Traceback" not in ran.text


async def test_get_shows_a_prediction_and_downloads_its_files(tmp_path: Path) -> None:
    async with Emulator(duration=0.05) as emulator:
        ran = await cli(
            "run", "bytedance/seedream-4", "--prompt", "two cats", "--out", tmp_path / "run",
            "--set", "sequential_image_generation=auto", "--set", "max_images=2",
            emulator=emulator,
        )  # fmt: skip
        assert ran.code == 0, ran.err
        (prediction,) = emulator.predictions
        out = tmp_path / "got"
        ran = await cli("get", prediction.id, "--out", out, emulator=emulator)
        assert ran.code == 0, ran.err
        files = sorted(path.name for path in out.iterdir())
        assert files == [f"{prediction.id}-0.jpg", f"{prediction.id}-1.jpg"]
        assert all((out / name).stat().st_size > 0 for name in files)
        assert "status:    succeeded" in ran.out
        assert "model:     bytedance/seedream-4" in ran.out
        assert ran.out.count("/files/") == 2  # both output URLs

        ran = await cli("get", prediction.id, emulator=emulator)
        assert ran.code == 0
        assert "status:    succeeded" in ran.out
        ran = await cli("get", "nosuchprediction", "--out", out, emulator=emulator)
        assert ran.code == 1
        assert "no prediction 'nosuchprediction'" in ran.err
        emulator.fail_prompts = ["doomed"]
        assert (await cli("run", MODEL, "--prompt", "doomed", emulator=emulator)).code == 1
        failed = emulator.predictions[-1]
        ran = await cli("get", failed.id, "--out", out, emulator=emulator)
        assert ran.code == 1
        assert "status:    failed" in ran.out
        assert "error:" in ran.out
        assert "nothing to download" in ran.err


@pytest.mark.parametrize(("umask", "mode"), [(0o002, 0o664), (0o027, 0o640)])
async def test_the_files_a_job_writes_honour_the_umask(
    tmp_path: Path, umask: int, mode: int
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out"
    source.write_text('{"prompt": "a"}\n')
    async with Emulator(duration=0.05) as emulator:
        command = ("batch", source, "--out", out, "--model", MODEL)
        ran = await cli(*command, emulator=emulator, umask=umask)
        assert ran.code == 0, ran.err
    for name in ("results.jsonl", "index.html", "journal.sqlite3", "journal.lock"):
        assert stat.S_IMODE((out / name).stat().st_mode) == mode, name


async def test_messages_say_what_a_line_must_look_like_once(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out"
    source.write_text('{"model": "google/imagen-4", "prompt": "a fox"}\n' * 40)
    async with Emulator(duration=0.05) as emulator:
        ran = await cli("batch", source, "--out", out, emulator=emulator)
        assert ran.code == 2
        assert ran.err.count("in.jsonl") == 2  # the lines once, then the count
        assert "lines 1, 2, 3, 4, 5 and 35 more" in ran.err
        assert '{"model": "owner/name", "input": {"prompt": "..."}}' in ran.err
        ran = await cli("batch", source, "--out", out, "--model", MODEL, emulator=emulator)
        assert "unknown field(s) 'model'" in ran.err
        assert '"input": {"prompt"' in ran.err
        assert emulator.count() == 0

        # --resume without --model: the job's own --model is used, and said once.
        source.write_text('{"prompt": "a fox"}\n' * 3)
        ran = await cli("batch", source, "--out", out, "--model", MODEL, emulator=emulator)
        assert ran.code == 0, ran.err
        ran = await cli("batch", source, "--out", out, "--resume", emulator=emulator)
        assert ran.code == 0, ran.err
        assert ran.err.count(MODEL) == 1
        assert emulator.count("create") == 3


def _can_mount_tmpfs(where: Path) -> bool:
    probe = ["unshare", "--mount", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {where}"]
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(probe, check=False, capture_output=True).returncode == 0  # noqa: S603


# Which write meets the full disk first: the journal's (many inputs, small images) or an
# image's (an image larger than what is left). Both stop the run at once.
FULL_DISKS = {
    "the journal": ("300k", 256, 40, "the disk is full (database or disk is full)"),
    "an image": ("128k", 2048, 3, "-0.jpg: No space left on device"),
}


@pytest.mark.parametrize("first", list(FULL_DISKS))
async def test_a_really_full_disk_stops_the_run_and_a_resume_finishes_it(
    tmp_path: Path, first: str
) -> None:
    size, image_size, count, message = FULL_DISKS[first]
    tiny, saved = tmp_path / "tiny", tmp_path / "saved"
    tiny.mkdir()
    if not _can_mount_tmpfs(tiny):
        pytest.skip("needs `unshare --mount` to mount a tiny tmpfs (root or user namespaces)")
    source = tmp_path / "in.jsonl"
    prompts = [f"input {n}" for n in range(count)]
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    batch = [*COMMAND, "batch", str(source), "--out", f"{tiny}/out", "--model", MODEL]
    batch += ["--concurrency", "1" if count < 10 else "16"]
    # A private mount of a tiny file system; the job folder is copied out before the
    # namespace (and the mount) goes away.
    script = (
        f"mount -t tmpfs -o size={size} tmpfs {tiny} && {' '.join(batch)} 2>{tmp_path}/err; "
        f"echo $? >{tmp_path}/code; cp -a {tiny}/out {saved}"
    )
    async with Emulator(duration=0.05, image_size=image_size) as emulator:
        assert await _unshared(script, environment(emulator)) == 0
        code, err = int((tmp_path / "code").read_text()), (tmp_path / "err").read_text()
        assert code == 1, err
        assert message in err
        assert "free some space, then run the same command again" in err
        assert "Traceback" not in err
        with sqlite3.connect(saved / "journal.sqlite3") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            states = dict(db.execute("SELECT state, count(*) FROM entries GROUP BY state"))
        assert states.get("done", 0) < count
        ran = await cli("batch", source, "--out", saved, "--model", MODEL, emulator=emulator)
        assert ran.code == 0, ran.err
        assert per_input(emulator) == Counter(dict.fromkeys(prompts, 1))


async def _read_all(stream: anyio.abc.ByteReceiveStream | None) -> str:
    assert stream is not None
    data = b""
    async for chunk in stream:
        data += chunk
    return data.decode()


async def _unshared(script: str, env: dict[str, str]) -> int:
    done = await anyio.run_process(
        ["unshare", "--mount", "sh", "-c", script], env=env, cwd=ROOT, check=False
    )
    return done.returncode


async def test_ctrl_c_during_a_slow_create_still_cancels_its_prediction(tmp_path: Path) -> None:
    # The create's answer comes 2 s after the prediction exists: Ctrl-C arrives before it.
    faults = Faults(slow=1.0, slow_seconds=2.0, endpoints=["create"])
    async with Emulator(duration=30.0, faults=faults) as emulator:
        command = [*COMMAND, "run", MODEL, "--prompt", "slow", "--out", str(tmp_path)]
        async with await anyio.open_process(
            command, env=environment(emulator), cwd=ROOT, stderr=subprocess.PIPE
        ) as process:
            with anyio.fail_after(20):
                while not emulator.predictions:  # noqa: ASYNC110 (another process)
                    await anyio.sleep(0.01)
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(20):
                assert await process.wait() == 130
            err = await _read_all(process.stderr)
        (prediction,) = emulator.predictions
        assert f"prediction {prediction.id} created" in err
        assert str(prediction.status) == "canceled"


async def test_get_says_why_it_could_not(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    async with Emulator(duration=0.05) as emulator:
        out = tmp_path / "out"
        assert (await cli("run", MODEL, "--prompt", "a", "--out", out, emulator=emulator)).code == 0
        (prediction,) = emulator.predictions
        ran = await cli("get", prediction.id, "--out", afile, emulator=emulator)
        assert ran.code == 2
        assert "is a file, not a folder" in ran.err
        ran = await cli("get", prediction.id, emulator=emulator, key="wrong")
        assert ran.code == 1
        assert "401" in ran.err
        # Its file's name is taken by a folder: the download fails, and says how to retry.
        blocked = tmp_path / "blocked"
        (blocked / f"{prediction.id}-0.jpg").mkdir(parents=True)
        ran = await cli("get", prediction.id, "--out", blocked, emulator=emulator)
        assert ran.code == 1
        assert f"could not download the files of prediction {prediction.id}" in ran.err
        assert f"quickrouter-async get {prediction.id} --out {blocked}" in ran.err
        assert "Traceback" not in ran.text


async def test_ctrl_c_during_get_ends_quietly(tmp_path: Path) -> None:
    # A server that takes the request and never answers.
    connected = anyio.Event()

    async def hold(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            connected.set()
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 (not Django)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, hold)
        command = [*COMMAND, "get", "someid", "--base-url", f"http://127.0.0.1:{port}"]
        env = {**environment(None), "QUICKROUTER_API_KEY": "k"}
        async with await anyio.open_process(
            command, env=env, cwd=ROOT, stderr=subprocess.PIPE
        ) as process:
            with anyio.fail_after(20):
                await connected.wait()
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(20):
                assert await process.wait() == 130
            assert "Traceback" not in await _read_all(process.stderr)
        group.cancel_scope.cancel()
