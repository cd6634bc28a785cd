"""The batch engine, in-process against the emulator: results, resume, doubt, Ctrl-C."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import quickrouter_async as qr
from quickrouter_async._journal import JOURNAL_NAME
from quickrouter_async.cli._batch import BatchOptions
from quickrouter_async.cli._execute import run_batch
from quickrouter_async.testing import Emulator, Faults

from .conftest import FAST_POLL, FAST_RETRY, running

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

MODEL = "google/imagen-4"


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def _prompts(count: int) -> list[dict[str, Any]]:
    return [{"prompt": f"batch input {n}", "aspect_ratio": "16:9"} for n in range(count)]


def _results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _per_input(emulator: Emulator) -> Counter[str]:
    return Counter(str((p.input or {}).get("prompt")) for p in emulator.predictions)


def _sql(out: Path, statement: str, *values: Any) -> None:
    with sqlite3.connect(out / JOURNAL_NAME) as db:
        db.execute(statement, values)


async def test_batch_writes_results_files_and_gallery(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[Any] = _prompts(4)
    lines.insert(2, {"model": "bytedance/seedream-4", "input": {"prompt": "a <b>bold</b> cat"}})
    source = _write(tmp_path / "in.jsonl", lines)
    (tmp_path / "in.jsonl").write_text(source.read_text() + "\n")  # a blank line is skipped
    out = tmp_path / "out"
    code = await run_batch(client, BatchOptions(source=source, out=out, model=MODEL))
    assert code == 0
    results = _results(out)
    assert [r["index"] for r in results] == list(range(5))
    assert [r["model"] for r in results] == [MODEL, MODEL, "bytedance/seedream-4", MODEL, MODEL]
    for result in results:
        assert result["status"] == "succeeded"
        assert result["error"] is None
        assert result["prediction_id"]
        assert set(result["timings"]) == {"created", "started", "completed", "seconds"}
        assert result["timings"]["seconds"] > 0
        for name in result["files"]:
            assert (out / name).stat().st_size > 0
    gallery = (out / "index.html").read_text()
    assert all(f'src="{name}"' in gallery for r in results for name in r["files"])
    assert "a &lt;b&gt;bold&lt;/b&gt; cat" in gallery
    assert "5 of 5 succeeded" in capsys.readouterr().out
    assert emulator.count("create") == 5

    # Running the same command again does nothing more.
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    assert emulator.count("create") == 5
    assert _results(out) == results


async def test_resume_attaches_to_what_a_crash_left(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path
) -> None:
    source = _write(tmp_path / "in.jsonl", _prompts(6))
    out = tmp_path / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    first = _results(out)
    # Rewind the journal as a crash at different steps would have left it.
    _sql(
        out,
        "UPDATE entries SET state='submitting', prediction_id=NULL, status=NULL WHERE idx=0",
    )
    _sql(out, "UPDATE entries SET state='submitted', status=NULL, files='[]' WHERE idx=1")
    _sql(out, "UPDATE entries SET state='terminal', files='[]' WHERE idx=2")
    _sql(out, "UPDATE entries SET state='pending', prediction_id=NULL WHERE idx=3")
    _sql(
        out,
        "UPDATE entries SET state='submitting', prediction_id=NULL, sent_at=? WHERE idx=4",
        time.time(),
    )
    for name in first[2]["files"]:
        (out / name).unlink()
    creates = emulator.count("create")
    options = BatchOptions(source=source, out=out, model=MODEL, resume=True)
    assert await run_batch(client, options) == 0
    # Only the pending input was sent again; the one in doubt was found by lookup.
    assert emulator.count("create") == creates + 1
    assert emulator.count("list") >= 1
    second = _results(out)
    assert len(second) == 6
    assert second[0]["prediction_id"] == first[0]["prediction_id"]
    assert second[1]["prediction_id"] == first[1]["prediction_id"]
    assert second[4]["prediction_id"] == first[4]["prediction_id"]
    assert second[3]["prediction_id"] != first[3]["prediction_id"]
    assert all((out / name).is_file() for r in second for name in r["files"])
    counts = _per_input(emulator)
    assert counts.pop("batch input 3") == 2
    assert set(counts.values()) == {1}


async def test_resume_on_a_gateway_keeps_what_it_cannot_look_up_in_doubt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A server with create and get only: a prediction id in the journal is enough to
    # attach, but a create a crash left without one cannot be looked up.
    async with (
        Emulator(profile="gateway", duration=0.05, seed=7) as emulator,
        qr.QuickRouter(
            emulator.api_key, base_url=emulator.base_url, poll=FAST_POLL, retry=FAST_RETRY
        ) as client,
    ):
        source = _write(tmp_path / "in.jsonl", _prompts(4))
        out = tmp_path / "out"
        assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
        first = _results(out)
        _sql(
            out,
            "UPDATE entries SET state='submitting', prediction_id=NULL, status=NULL, sent_at=?"
            " WHERE idx=0",
            time.time(),
        )
        _sql(out, "UPDATE entries SET state='submitted', status=NULL, files='[]' WHERE idx=1")
        _sql(out, "UPDATE entries SET state='pending', prediction_id=NULL WHERE idx=2")
        creates = emulator.count("create")
        capsys.readouterr()

        options = BatchOptions(source=source, out=out, model=MODEL, resume=True)
        assert await run_batch(client, options) == 1
        assert "3 of 4 succeeded, 0 failed, 1 in doubt" in capsys.readouterr().out
        # The pending input was sent; the one in doubt was neither sent nor found.
        assert emulator.count("create") == creates + 1
        assert emulator.count("list", status=200) == 0
        second = _results(out)
        assert second[1]["prediction_id"] == first[1]["prediction_id"]
        assert second[0]["status"] == "in_doubt"
        assert client.capabilities.list_predictions is False

        resend = BatchOptions(
            source=source, out=out, model=MODEL, resume=True, resend_in_doubt=True
        )
        assert await run_batch(client, resend) == 0
        assert "4 of 4 succeeded, 0 failed, 0 in doubt" in capsys.readouterr().out
        assert emulator.count("create") == creates + 2
        counts = _per_input(emulator)
        assert counts["batch input 0"] == 2  # paid twice, as --resend-in-doubt says
        assert counts["batch input 1"] == 1
        assert not running(emulator)


async def test_usage_errors(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(tmp_path / "in.jsonl", _prompts(2))
    out = tmp_path / "out"
    options = BatchOptions(source=source, out=out, model=MODEL, resume=True)
    assert await run_batch(client, options) == 2
    assert "nothing to resume" in capsys.readouterr().err
    missing = BatchOptions(source=tmp_path / "nope.jsonl", out=out, model=MODEL)
    assert await run_batch(client, missing) == 2
    assert "cannot read" in capsys.readouterr().err

    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    other = _write(tmp_path / "other.jsonl", [{"prompt": "another job"}, *_prompts(3)])
    assert await run_batch(client, BatchOptions(source=other, out=out, model=MODEL)) == 2
    err = capsys.readouterr().err
    assert "lines 1, 2 changed" in err
    assert f"this job was started from {source}" in err
    other_model = BatchOptions(source=source, out=out, model="google/imagen-4-fast")
    assert await run_batch(client, other_model) == 2
    assert "job run with --model google/imagen-4, not google/imagen-4-fast" in (
        capsys.readouterr().err
    )
    assert emulator.count("create") == 2


async def test_failures_are_reported_and_exit_1(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path
) -> None:
    emulator.fail_prompts = ["doomed"]
    lines: list[Any] = [
        {"prompt": "fine"},
        {"prompt": "doomed to fail"},
        {"model": "acme/some-model:not-a-version", "input": {"prompt": "x"}},
    ]
    source = _write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 1
    ok, failed, refused = _results(out)
    assert ok["status"] == "succeeded"
    assert failed["status"] == "failed"
    assert failed["error"]
    assert failed["files"] == []
    assert refused["status"] == "failed"
    assert refused["prediction_id"] is None
    assert "failed" in (out / "index.html").read_text()


async def test_account_errors_leave_inputs_pending(emulator: Emulator, tmp_path: Path) -> None:
    source = _write(tmp_path / "in.jsonl", _prompts(2))
    out = tmp_path / "out"
    async with qr.QuickRouter("wrong-key", base_url=emulator.base_url, retry=FAST_RETRY) as bad:
        assert await run_batch(bad, BatchOptions(source=source, out=out, model=MODEL)) == 1
    results = _results(out)
    assert [r["status"] for r in results] == ["pending", "pending"]
    assert all("wrong-key" not in json.dumps(r) for r in results)
    assert "401" in results[0]["error"] or "nauthent" in results[0]["error"]
    async with qr.QuickRouter(
        emulator.api_key, base_url=emulator.base_url, poll=FAST_POLL, retry=FAST_RETRY
    ) as good:
        assert await run_batch(good, BatchOptions(source=source, out=out, model=MODEL)) == 0


class _InterruptingClient(qr.QuickRouter):
    """A client that sets ``interrupt`` once ``count`` predictions are being waited for."""

    def __init__(self, emulator: Emulator, interrupt: anyio.Event, count: int) -> None:
        super().__init__(
            emulator.api_key, base_url=emulator.base_url, poll=FAST_POLL, retry=FAST_RETRY
        )
        self.interrupt, self.count = interrupt, count

    async def wait(self, prediction: qr.Prediction | str, **options: Any) -> qr.Prediction:
        self.count -= 1
        if self.count == 0:
            self.interrupt.set()
        return await super().wait(prediction, **options)


@pytest.mark.parametrize("detach", [False, True])
async def test_interrupt_cancels_unless_detached(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path, detach: bool
) -> None:
    emulator.duration = 30.0
    source = _write(tmp_path / "in.jsonl", _prompts(6))
    out = tmp_path / "out"
    options = BatchOptions(source=source, out=out, model=MODEL, concurrency=3, detach=detach)
    interrupt = anyio.Event()
    async with _InterruptingClient(emulator, interrupt, 3) as interrupting:
        assert await run_batch(interrupting, options, interrupt=interrupt) == 130
    statuses = Counter(str(p.status) for p in emulator.predictions)
    states = Counter(r["status"] for r in _results(out))
    assert len(_results(out)) == 6
    if detach:
        assert emulator.count("cancel") == 0
        assert statuses == {"starting": 3} or "processing" in statuses
        assert states["submitted"] == 3
    else:
        assert statuses == {"canceled": 3}
        assert states == {"pending": 6}
    # The resumed run finishes the job: attaching to detached predictions, or anew.
    emulator.duration = 0.05
    if detach:
        for prediction in emulator.predictions:
            prediction.cancel(time.monotonic())  # stand-in for the long ones finishing
    code = await run_batch(client, BatchOptions(source=source, out=out, model=MODEL))
    assert code == (1 if detach else 0)
    assert len(_results(out)) == 6


async def test_a_failed_lookup_never_sends_again(
    client: qr.QuickRouter, emulator: Emulator, tmp_path: Path
) -> None:
    source = _write(tmp_path / "in.jsonl", _prompts(3))
    out = tmp_path / "out"
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    _sql(out, "UPDATE entries SET state='submitting', prediction_id=NULL WHERE idx=1")
    emulator.faults = Faults(server_error=1.0, endpoints=["list"])
    creates = emulator.count("create")
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 1
    assert emulator.count("create") == creates
    assert _results(out)[1]["status"] == "in_doubt"
    assert _results(out)[1]["error"]
    emulator.faults = None
    assert await run_batch(client, BatchOptions(source=source, out=out, model=MODEL)) == 0
    assert emulator.count("create") == creates
