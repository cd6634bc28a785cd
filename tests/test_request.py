"""A create is encoded once: the body, the input it sends, and what a lookup compares."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import given
from hypothesis import strategies as st
from quickrouter_async._lookup import Wanted
from quickrouter_async._request import build_create, input_json

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(payload=st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=5))
def test_a_create_sends_its_input_as_json_and_keys_it_as_the_server_echoes_it(
    payload: dict[str, object],
) -> None:
    request = build_create(
        "acme/model",
        payload,
        wait=None,
        webhook=None,
        webhook_events_filter=None,
        cancel_after=None,
    )
    sent = json.loads(request.body)
    expected = {key: value for key, value in payload.items() if value is not None}
    assert sent == {"input": expected}
    assert request.input == expected
    # What a lookup compares for the prediction the server echoes back equals the create's.
    since = dt.datetime.now(dt.UTC)
    assert Wanted.of("acme/model:v1", sent["input"], since).input_json == request.input_json
    assert input_json(sent["input"]) == request.input_json
