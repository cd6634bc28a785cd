"""``run_many(..., progress=True)`` draws a tqdm bar with a total; callbacks still work."""

from __future__ import annotations

import functools
import io
import sys
from typing import TYPE_CHECKING

import pytest
import quickrouter_async as qr
from quickrouter_async._progressbar import ProgressBar
from tqdm.std import tqdm

if TYPE_CHECKING:
    from collections.abc import Iterator


def prompts(count: int) -> list[qr.Imagen4Input]:
    return [qr.Imagen4Input(prompt=f"a lighthouse, style {n}") for n in range(count)]


async def test_a_bar_counts_finished_inputs_out_of_their_length(
    client: qr.QuickRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = [outcome async for outcome in client.run_many(prompts(3), progress=True)]
    assert all(outcome.ok for outcome in outcomes)
    drawn = capsys.readouterr().err
    last = drawn.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("run_many: 100%")
    assert "3/3" in last
    assert "running=0, succeeded=3, failed=0" in last
    assert drawn.endswith("\n")  # closed when the call ended


async def test_inputs_without_a_length_get_a_bar_without_a_total(
    client: qr.QuickRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    def generated() -> Iterator[qr.Imagen4Input]:
        yield from prompts(2)

    async with client.run_many(generated(), progress=True) as outcomes:
        assert len([outcome async for outcome in outcomes]) == 2
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("run_many: 2input")
    assert "%" not in last


async def test_a_bar_left_early_is_closed_where_it_stopped(
    client: qr.QuickRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    client_inputs = prompts(6)
    async with client.run_many(client_inputs, concurrency=1, progress=True) as outcomes:
        async for _ in outcomes:
            break
    drawn = capsys.readouterr().err
    assert drawn.endswith("\n")
    assert "1/6" in drawn.replace("\r", "\n").strip().splitlines()[-1]


async def test_the_progress_callback_and_off_still_work(
    client: qr.QuickRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[qr.Progress] = []
    async for _ in client.run_many(prompts(2), progress=seen.append):
        pass
    assert seen[-1].succeeded == 2
    async for _ in client.run_many(prompts(1), progress=False):
        pass
    assert capsys.readouterr().err == ""
    with pytest.raises(qr.InputError, match="progress must be True, False, None or a callable"):
        client.run_many(prompts(1), progress="yes")  # type: ignore[arg-type]


async def test_without_tqdm_progress_true_says_what_to_install(
    client: qr.QuickRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"pip install 'quickrouter-async\[progress\]'"):
        client.run_many(prompts(1), progress=True)


def test_the_bar_shows_cancels_and_throttles_when_there_are_some() -> None:
    out = io.StringIO()
    bar = ProgressBar(4, functools.partial(tqdm, file=out, mininterval=0))
    bar(qr.Progress(submitted=4, running=1, succeeded=1, failed=0, canceled=2, throttled=5))
    bar.close()
    bar.close()
    assert "3/4" in out.getvalue()
    assert "canceled=2, throttled=5" in out.getvalue()
    ProgressBar(None, tqdm).close()  # never drawn: nothing to close
