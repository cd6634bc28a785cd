"""Error answers of every shape map onto the exception tree with a readable message."""

from __future__ import annotations

import json

import pytest
import quickrouter_async as qr
from quickrouter_async._http import Answer, error_from_answer


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> qr.APIError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return error_from_answer(
        Answer(status, headers or {}, raw), method="POST", path="/v1/predictions"
    )


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, qr.BadRequestError),
        (401, qr.AuthenticationError),
        (402, qr.PaymentRequiredError),
        (403, qr.PermissionDeniedError),
        (404, qr.NotFoundError),
        (409, qr.APIError),
        (422, qr.InvalidInputError),
        (429, qr.RateLimitError),
        (500, qr.ServerError),
        (503, qr.ServerError),
    ],
)
def test_status_maps_to_class(status: int, cls: type[qr.APIError]) -> None:
    error = answer(status, {"title": "T", "detail": "D", "status": status})
    assert type(error) is cls
    assert error.status == status
    assert (error.title, error.detail) == ("T", "D")
    assert str(error) == f"{status} T: D (POST /v1/predictions)"


def test_problem_json_with_invalid_fields() -> None:
    body = {
        "detail": '- input.aspect_ratio: aspect_ratio must be one of the following: "1:1"\n',
        "status": 422,
        "title": "Input validation failed",
        "invalid_fields": [
            {"type": "enum", "field": "input.aspect_ratio", "description": "must be one of"},
            "junk",
        ],
    }
    error = answer(422, body)
    assert isinstance(error, qr.InvalidInputError)
    assert error.invalid_fields == [body["invalid_fields"][0]]
    assert "input.aspect_ratio: must be one of" in str(error)
    assert error.body == body


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"error": {"message": "invalid token", "type": "new_api_error"}}, "invalid token"),
        ({"message": "quota exhausted"}, "quota exhausted"),
        ({"error": "bad key"}, "bad key"),
        (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "502 Bad Gateway"),
        (b"upstream connect error", "upstream connect error"),
    ],
)
def test_gateway_and_plain_bodies(body: object, detail: str) -> None:
    error = answer(502, body)
    assert isinstance(error, qr.ServerError)
    assert error.detail == detail
    assert detail in str(error)


# What nginx answers for a crashed upstream: the status in the <head> and in the <body>.
NGINX_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (NGINX_PAGE, "502 Bad Gateway nginx (POST /v1/predictions)"),
        (
            {"error": {"message": "Invalid URL (POST /v1/predictions)", "type": "bad"}},
            "502 bad: Invalid URL (POST /v1/predictions)",
        ),
        (b"upstream connect error", "502 upstream connect error (POST /v1/predictions)"),
    ],
)
def test_a_message_says_the_status_and_the_route_once(body: object, message: str) -> None:
    error = answer(502, body)
    assert str(error) == message
    assert error.body == (body.decode() if isinstance(body, bytes) else body)


def test_empty_body_still_reads() -> None:
    error = answer(401, b"")
    assert isinstance(error, qr.AuthenticationError)
    assert str(error) == "401 error (POST /v1/predictions)"


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"Retry-After": "7"}, {}, 7.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, {}, 0.0),
        ({}, {"retry_after": 3}, 3.0),
        ({}, {"detail": "Request was throttled. Your rate limit resets in ~30s."}, 30.0),
        ({}, {"detail": "Request was throttled. Expected available in 1 second."}, 1.0),
        ({"ratelimit-reset": "2"}, {}, 2.0),
        ({"ratelimit-reset": "soon"}, {}, None),
        ({}, {}, None),
    ],
)
def test_retry_after_hints(headers: dict[str, str], body: object, expected: float | None) -> None:
    error = answer(429, body, headers)
    assert isinstance(error, qr.RateLimitError)
    assert error.retry_after == expected
