"""Predictions parse in every shape the API returns, and nothing else parses."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import quickrouter_async as qr
from hypothesis import given
from hypothesis import strategies as st
from quickrouter_async._serde import _KNOWN, parse_page, parse_prediction, prediction_to_json

FULL: dict[str, Any] = {
    "id": "gm3qorzdhgbfurvjtvhg6dckhu",
    "model": "google/imagen-4",
    "version": "hidden",
    "input": {"prompt": "a lighthouse"},
    "output": "https://replicate.delivery/xezq/abc/out-0.jpg",
    "logs": "",
    "error": None,
    "status": "succeeded",
    "created_at": "2025-09-10T08:15:35.262Z",
    "started_at": "2025-09-10T08:15:36.064900134Z",
    "completed_at": "2025-09-10T08:15:41Z",
    "data_removed": False,
    "source": "api",
    "metrics": {"predict_time": 4.93, "total_time": 5.7, "image_count": 1},
    "urls": {
        "get": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu",
        "cancel": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu/cancel",
        "web": "https://replicate.com/p/gm3qorzdhgbfurvjtvhg6dckhu",
    },
}


def test_full_prediction() -> None:
    p = parse_prediction(FULL)
    assert p.status is qr.Status.SUCCEEDED
    assert p.terminal
    assert p.succeeded
    assert p.output_urls == [FULL["output"]]
    assert p.predict_time == pytest.approx(4.93)
    assert p.created_at == dt.datetime(2025, 9, 10, 8, 15, 35, 262000, tzinfo=dt.UTC)
    assert p.started_at is not None
    assert p.started_at.microsecond == 64900
    assert p.extra == {}


@pytest.mark.parametrize("digits", range(10))
def test_timestamps_with_any_fractional_digits(digits: int) -> None:
    fraction = "." + "123456789"[:digits] if digits else ""
    p = parse_prediction(
        {"id": "x", "status": "starting", "created_at": f"2025-01-02T03:04:05{fraction}Z"}
    )
    assert p.created_at is not None
    assert p.created_at.second == 5
    assert p.created_at.tzinfo is not None


def test_minimal_prediction_and_missing_fields() -> None:
    p = parse_prediction({"id": "abc", "status": "starting"})
    assert p.status is qr.Status.STARTING
    assert not p.terminal
    assert p.output is None
    assert p.output_urls == []
    assert p.urls is None
    assert p.predict_time is None


def test_canceled_with_null_logs_and_list_output() -> None:
    p = parse_prediction({**FULL, "status": "canceled", "logs": None, "output": ["a", "b", 3]})
    assert p.logs is None
    assert p.output_urls == ["a", "b"]
    assert p.status.terminal


def test_aborted_is_terminal() -> None:
    assert parse_prediction({"id": "a", "status": "aborted"}).terminal


def test_unknown_status_is_kept_and_not_terminal() -> None:
    p = parse_prediction({"id": "a", "status": "queued"})
    assert p.status == "queued"
    assert p.status.value == "queued"
    assert not p.status.terminal
    assert not p.status.known
    assert qr.Status.SUCCEEDED.known


def test_unknown_fields_are_kept_and_written_back() -> None:
    data = {**FULL, "deadline": "2025-09-10T08:20:00Z", "shiny": {"new": 1}}
    p = parse_prediction(data)
    assert p.extra == {"shiny": {"new": 1}}
    back = prediction_to_json(p)
    assert back["shiny"] == {"new": 1}
    assert back["status"] == "succeeded"
    assert back["deadline"] == "2025-09-10T08:20:00Z"
    assert parse_prediction(back) == p


def test_error_objects_become_text() -> None:
    assert (
        parse_prediction({"id": "a", "status": "failed", "error": {"message": "boom"}}).error
        == "boom"
    )
    assert parse_prediction({"id": "a", "status": "failed", "error": ["x"]}).error == "['x']"


class Text(str):
    """A string of another type, as a caller's own mapping may hold."""


def test_fields_of_subclassed_types_are_accepted() -> None:
    body = {
        "id": "a",
        "status": "processing",
        "model": Text("google/imagen-4"),
        "input": {"prompt": "x"},
        "created_at": Text("2025-01-02T03:04:05.5Z"),
    }
    prediction = parse_prediction(body)
    assert prediction.model == "google/imagen-4"
    assert prediction.created_at == dt.datetime(2025, 1, 2, 3, 4, 5, 500000, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [("version", 7, "a string"), ("webhook", ["x"], "a string"), ("urls", "x", "an object")],
)
def test_a_field_of_the_wrong_type_is_named(field: str, value: object, what: str) -> None:
    with pytest.raises(qr.ProtocolError, match=f"'{field}' should be {what}"):
        parse_prediction({"id": "a", "status": "starting", field: value})


@pytest.mark.parametrize(
    "body",
    [
        [],
        "text",
        None,
        {"status": "starting"},
        {"id": "", "status": "starting"},
        {"id": "a", "status": 3},
        {"id": "a"},
        {"id": "a", "status": "starting", "created_at": 5},
        {"id": "a", "status": "starting", "created_at": "yesterday"},
        {"id": "a", "status": "starting", "input": "prompt"},
        {"id": "a", "status": "starting", "logs": 3},
        {"id": "a", "status": "starting", "data_removed": "no"},
        {"id": "a", "status": "starting", "webhook_events_filter": "start"},
    ],
)
def test_bodies_that_are_not_predictions(body: object) -> None:
    with pytest.raises(qr.ProtocolError):
        parse_prediction(body)


def test_pages() -> None:
    page = parse_page(
        {"next": "https://x/v1/predictions?cursor=a", "previous": None, "results": [FULL]}
    )
    assert page.next
    assert page.previous is None
    assert page.results[0].id == FULL["id"]
    with pytest.raises(qr.ProtocolError):
        parse_page({"results": {}})
    with pytest.raises(qr.ProtocolError):
        parse_page({"results": [], "next": 3})


def test_outcome_ok() -> None:
    p = parse_prediction(FULL)
    assert qr.Outcome(0, {"prompt": "x"}, p).ok
    failed = qr.Outcome(1, {"prompt": "x"}, p, qr.PredictionFailed("no", prediction=p))
    assert not failed.ok


def test_html_render_escapes() -> None:
    p = parse_prediction({**FULL, "input": {"prompt": "<script>"}, "error": "x<y"})
    rendered = p._repr_html_()
    assert "<script>" not in rendered
    assert "&lt;script&gt;" in rendered
    assert '<img src="https://replicate.delivery' in rendered
    assert "x&lt;y" in rendered


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    status=st.sampled_from(
        ["starting", "processing", "succeeded", "failed", "canceled", "aborted", "weird"]
    ),
    output=json_values,
    extra=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: k not in _KNOWN), json_values, max_size=3
    ),
    timestamp=st.datetimes(timezones=st.just(dt.UTC)),
)
def test_round_trip(
    status: str, output: object, extra: dict[str, Any], timestamp: dt.datetime
) -> None:
    data = {
        **FULL,
        **extra,
        "status": status,
        "output": output,
        "created_at": timestamp.isoformat(),
    }
    p = parse_prediction(data)
    assert p.status == status
    assert p.created_at == timestamp
    assert parse_prediction(prediction_to_json(p)) == p
