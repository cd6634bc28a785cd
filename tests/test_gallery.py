"""Reprs stay short; `qr.gallery` and the batch's index.html render any data without crashing."""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

import pytest
import quickrouter_async as qr
from aiohttp import web
from quickrouter_async._journal import Entry
from quickrouter_async._serde import parse_page, parse_prediction
from quickrouter_async.cli._gallery import write_gallery
from quickrouter_async.testing import Emulator

from .conftest import FAST_POLL, FAST_RETRY
from .http_servers import Scripted, prediction_json

if TYPE_CHECKING:
    from pathlib import Path

HUGE = "data:image/png;base64," + "A" * 5_000_000
SHORT = 800


def prediction(**fields: Any) -> qr.Prediction:
    return parse_prediction({**prediction_json("p1"), **fields})


def test_a_prediction_repr_is_short_whatever_it_holds() -> None:
    p = prediction(
        input={"prompt": "a lighthouse", "image_input": [HUGE, HUGE]},
        output=[HUGE],
        error="x" * 10_000,
        logs="y" * 1_000_000,
    )
    shown = repr(p)
    assert len(shown) < SHORT
    assert shown.startswith("Prediction(id='p1', status='succeeded', model='google/imagen-4'")
    assert "5,000,022 characters" in shown
    assert "'a lighthouse'" in shown
    assert len(repr([p] * 100)) < 100 * SHORT


def test_an_outcome_repr_is_short_and_names_what_became_of_it() -> None:
    failed = prediction(status="failed", error="flagged as sensitive (E005)")
    error = qr.PredictionFailed(
        "prediction p1 failed: flagged as sensitive (E005)", prediction=failed
    )
    outcome = qr.Outcome(
        7, ("bytedance/seedream-4", {"prompt": "p", "image_input": [HUGE]}), failed, error
    )
    shown = repr(outcome)
    assert len(shown) < SHORT
    assert shown.startswith("Outcome(index=7, ok=False, input=('bytedance/seedream-4', {")
    assert "prediction=Prediction(id='p1', status='failed', …)" in shown
    assert "error='PredictionFailed: prediction p1 failed: flagged as sensitive (E005)'" in shown
    typed = qr.Outcome(0, qr.Imagen4Input(prompt="z" * 100_000, aspect_ratio="16:9"))
    shown = repr(typed)
    assert len(shown) < SHORT
    assert "Imagen4Input(prompt='zzz" in shown
    assert "aspect_ratio='16:9'" in shown
    assert "output_format" not in shown  # fields left at their defaults are not shown
    assert shown.endswith("prediction=None, error=None)")


def test_a_page_repr_is_short_and_renders_as_a_grid() -> None:
    data = {
        "next": "https://api.example/v1/predictions?cursor=abc",
        "previous": None,
        "results": [prediction_json(f"p{n}", output=HUGE[:1000]) for n in range(100)],
    }
    page = parse_page(data)
    assert repr(page) == (
        "PredictionPage(100 predictions, next='https://api.example/v1/predictions?cursor=abc')"
    )
    assert repr(parse_page({"results": []})) == "PredictionPage(0 predictions)"
    rendered = page._repr_html_()
    assert rendered.count("<figure") == 100
    assert "100 predictions; more on the next page" in rendered


def test_html_escapes_and_shows_errors_and_labels() -> None:
    failed = prediction(status="failed", input={"prompt": "<b>x</b>"}, error="bad <input>")
    error = qr.PredictionFailed("prediction p1 failed: bad <input>", prediction=failed)
    rendered = qr.Outcome(4, qr.Imagen4Input(prompt="<b>x</b>"), failed, error)._repr_html_()
    assert "<b>x</b>" not in rendered
    assert 'alt="&lt;b&gt;x&lt;/b&gt;"' in rendered
    assert "<b>index 4</b>" in rendered
    assert "PredictionFailed: prediction p1 failed: bad &lt;input&gt;" in rendered
    never_created = qr.Outcome(
        2, ("google/imagen-4", {"prompt": "a cat"}), None, qr.InputError("no")
    )
    rendered = never_created._repr_html_()
    assert "not created" in rendered
    assert "a cat" in rendered
    assert "InputError: no" in rendered


@pytest.mark.parametrize(
    "output",
    [None, 42, {"text": "hello"}, ["https://files.invalid/a.png", None, 3.5], "plain text", [[1]]],
)
def test_odd_outputs_and_lone_surrogates_never_break_a_rendering(output: object) -> None:
    p = prediction(input={"prompt": "lone \ud800 surrogate", "n": 3}, output=output)
    for text in (repr(p), p._repr_html_(), qr.gallery([p]).html, repr(qr.Outcome(0, p.input, p))):
        text.encode("utf-8")  # a lone surrogate would fail here
        assert "\ufffd" in text


def test_data_uri_outputs_are_embedded_within_the_budget() -> None:
    small = "data:image/png;base64," + "B" * 1000
    p = prediction(output=[small, "data:image/png;base64," + "C" * 30_000_000])
    rendered = p._repr_html_()
    assert small in rendered
    assert len(rendered) < 10_000
    assert "image not shown: a data: URI of 30,000,022 characters" in rendered
    assert "prompt" not in qr.gallery(prediction(input=None)).html


async def test_a_gallery_of_a_batch_embeds_the_downloaded_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with (
        Emulator(duration=0.05, fail_prompts=["forbidden"]) as emulator,
        qr.QuickRouter(emulator.api_key, base_url=emulator.base_url, poll=FAST_POLL) as client,
    ):
        prompts = [qr.Imagen4Input(prompt=p) for p in ("a red <fox>", "forbidden", "a pond")]
        outcomes = sorted(
            [outcome async for outcome in client.run_many(prompts)], key=lambda o: o.index
        )
        for outcome in outcomes:
            if outcome.ok:
                await client.download(outcome, "out")
    files = sorted((tmp_path / "out").iterdir())
    assert len(files) == 2

    linked = qr.gallery(outcomes, files="out")
    rendered = linked.html
    assert rendered.count('<img src="out/') == 2
    assert "https://" not in re.sub(r'href="out/[^"]*"', "", rendered.split("<figure")[1])
    assert 'alt="a red &lt;fox&gt;"' in rendered
    assert rendered.count("<figure") == 3
    assert "<b>index 1</b>" in rendered
    assert "PredictionFailed" in rendered
    assert repr(linked) == "<Gallery 3 items, files='out', embed=False>"
    assert len(linked) == 3

    embedded = qr.gallery(outcomes, files="out", embed=True)
    rendered = embedded._repr_html_()
    assert rendered.count('<img src="data:image/') == 2
    (tmp_path / "pages").mkdir()
    page = embedded.save(tmp_path / "pages" / "gallery.html")
    text = page.read_text(encoding="utf-8")
    assert '<html lang="en">' in text
    assert '<meta name="viewport"' in text
    assert text.count('<img src="data:image/') == 2

    # Linked from a page elsewhere: the paths are relative to the page.
    elsewhere = qr.gallery(outcomes, files="out").save(tmp_path / "pages" / "linked.html")
    assert elsewhere.read_text(encoding="utf-8").count('<img src="../out/') == 2

    # Past the budget, files are linked and the gallery says how many were not embedded.
    size = files[0].stat().st_size
    tight = qr.gallery(outcomes, files="out", embed=True, max_embed_bytes=size * 2).html
    assert tight.count('<img src="data:image/') == 1
    assert tight.count('<img src="out/') == 1
    assert "1 images not embedded (past max_embed_bytes=" in tight


async def test_a_gallery_without_downloaded_files_shows_the_output_urls(
    client: qr.QuickRouter, tmp_path: Path
) -> None:
    p = await client.run(qr.Imagen4Input(prompt="a lighthouse"))
    assert isinstance(p.output, str)
    for files in (None, tmp_path / "missing", tmp_path):
        rendered = qr.gallery(p, files=files).html
        assert f'<img src="{html.escape(p.output)}"' in rendered


def test_gallery_arguments_are_checked() -> None:
    p = prediction()
    with pytest.raises(qr.InputError, match="not dict"):
        qr.gallery([p, {"id": "x"}])  # type: ignore[list-item]
    with pytest.raises(qr.InputError, match="download them first"):
        qr.gallery([p], embed=True)
    with pytest.raises(qr.InputError, match="must not be negative"):
        qr.gallery([p], max_embed_bytes=-1)
    with pytest.raises(qr.InputError, match="must be an integer"):
        qr.gallery([p], max_embed_bytes=True)


async def echo_the_key(request: web.Request) -> web.StreamResponse:
    """A server that quotes the Authorization header back in its error."""
    return web.json_response(
        {"detail": f"invalid token: {request.headers.get('Authorization')}"}, status=422
    )


async def test_an_outcome_holding_an_error_never_shows_the_key() -> None:
    key = "sk-live-0123456789abcdef"
    async with Scripted() as server:
        server.always("POST", "/replicate/v1/models/google/imagen-4/predictions", echo_the_key)
        async with qr.QuickRouter(key, base_url=server.base_url, retry=FAST_RETRY) as client:
            [outcome] = [o async for o in client.run_many([qr.Imagen4Input(prompt="x")])]
    assert isinstance(outcome.error, qr.InvalidInputError)
    assert server.count("POST") == 1
    shown = repr(outcome) + outcome._repr_html_() + qr.gallery([outcome]).html
    assert "invalid token" in shown
    assert key not in shown


def test_the_batch_gallery_labels_cards_as_results_jsonl_numbers_them(tmp_path: Path) -> None:
    entries = [
        Entry(
            index=0,
            line=1,
            model="google/imagen-4",
            input={"prompt": "a <red> fox"},
            state="done",
            prediction_id="p0",
            status="succeeded",
            files=["p0-0.jpg", "odd name #1?.png"],
        ),
        Entry(
            index=1,
            line=3,
            model="google/imagen-4",
            input={"prompt": "lone \ud800 surrogate", "image_input": [HUGE]},
            state="terminal",
            prediction_id="p1",
            status="failed",
            error="E" * 100_000,
        ),
        Entry(index=2, line=4, model="m/x", input={"prompt": 42}, state="pending"),
        Entry(index=3, line=5, model="m/x", input={}, state="pending"),
    ]
    target = tmp_path / "index.html"
    assert write_gallery(target, entries) == 4
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert '<html lang="en">' in page
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert '<a href="results.jsonl">results.jsonl</a>' in page
    assert "<b>line 1 · index 0</b>" in page
    assert "<b>line 3 · index 1</b>" in page
    assert 'title="results.jsonl: index 0 (from 0), line 1 of the input file"' in page
    assert '<img src="p0-0.jpg" alt="a &lt;red&gt; fox"' in page
    assert '<img src="odd%20name%20%231%3F.png"' in page
    assert "lone \ufffd surrogate" in page
    assert "(100,000 characters)" in page
    assert "data:image" not in page
    assert ">42<" in page
    assert 'alt="output of prediction' not in page  # cards without images have no img
    assert len(page) < 20_000
    assert "4 inputs" in page


def test_removed_data_bytes_and_deep_inputs_are_shown_short() -> None:
    removed = prediction(data_removed=True, output=None, input=None, model=None, id="p9")
    rendered = removed._repr_html_()
    assert "removed by the server (data_removed)" in rendered
    assert 'alt="output of prediction p9"' not in rendered
    nested = qr.Outcome(
        0, {"a": {"b": {"c": qr.Imagen4Input(prompt="deep")}}, "raw": b"\x89" * 10_000}
    )
    shown = repr(nested)
    assert len(shown) < SHORT
    assert "…(10,000 bytes)" in shown
    assert repr(qr.Outcome(0, [[[qr.Imagen4Input(prompt="deep")]]])).count("Imagen4Input(…)") == 1


async def test_a_downloaded_file_gone_before_rendering_is_linked(
    client: qr.QuickRouter, tmp_path: Path
) -> None:
    p = await client.run(qr.Imagen4Input(prompt="a lighthouse"))
    (tmp_path / f"{p.id}-0.png").symlink_to(tmp_path / "gone.png")
    rendered = qr.gallery(p, files=tmp_path, embed=True).html
    assert "data:image" not in rendered
    assert f"{p.id}-0.png" in rendered


def test_an_outcome_of_a_bare_input_shows_what_it_has() -> None:
    outcome = qr.Outcome(5, {"prompt": "bare", "raw": b"abc"}, None, qr.InputError("bad"))
    assert "'raw': b'abc'" in repr(outcome)
    rendered = outcome._repr_html_()
    assert "bare" in rendered
    assert "<code>" not in rendered
