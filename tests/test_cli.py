"""The command line: the demo runs end to end on the in-process emulator."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from quickrouter_async.cli import main

if TYPE_CHECKING:
    from pathlib import Path


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
    assert "quickrouter-async emulator" in capsys.readouterr().out
