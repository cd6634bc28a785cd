"""The client against a Replicate-compatible server that is not our emulator.

Only ``base_url`` changes: Imagen 4, Seedream 4 and a generic model run to completion,
and 401 / 404 / 422 answers map onto the error tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import quickrouter_async as qr

from .conftest import FAST_POLL
from .replicate_replay import TOKEN, ReplayServer

pytestmark = pytest.mark.anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def replay() -> AsyncIterator[ReplayServer]:
    async with ReplayServer() as server:
        yield server


@pytest.fixture
async def replay_client(replay: ReplayServer) -> AsyncIterator[qr.QuickRouter]:
    async with qr.QuickRouter(TOKEN, base_url=replay.base_url, poll=FAST_POLL) as client:
        yield client


async def test_imagen_runs_to_completion(replay_client: qr.QuickRouter) -> None:
    p = await replay_client.run(qr.Imagen4Input(prompt="a lighthouse", aspect_ratio="16:9"))
    assert p.succeeded
    assert isinstance(p.output, str)
    assert p.output_urls == [p.output]
    assert p.version == "hidden"


async def test_seedream_runs_to_completion(replay_client: qr.QuickRouter) -> None:
    p = await replay_client.run(qr.Seedream4Input(prompt="a store front"))
    assert p.succeeded
    assert isinstance(p.output, list)
    assert len(p.output_urls) == 1


async def test_generic_model_by_name_and_by_version(
    replay_client: qr.QuickRouter, replay: ReplayServer
) -> None:
    p = await replay_client.run("google/nano-banana", {"prompt": "x"})
    assert p.succeeded
    assert p.model == "google/nano-banana"
    v = await replay_client.create("google/imagen-4:" + "a" * 64, {"prompt": "y"})
    assert v.model == "google/imagen-4"
    done = await replay_client.wait(v, timeout=5)
    assert done.succeeded
    # Polls went to the base URL built from the id, not to urls.get (api.replicate.com).
    assert replay.polls >= 4


async def test_401_maps_to_authentication_error(replay: ReplayServer) -> None:
    async with qr.QuickRouter("wrong-key", base_url=replay.base_url) as client:
        with pytest.raises(qr.AuthenticationError) as info:
            await client.create("google/imagen-4", {"prompt": "x"})
    assert info.value.status == 401
    assert info.value.title == "Unauthenticated"
    assert "wrong-key" not in str(info.value)


async def test_404_maps_to_not_found(replay_client: qr.QuickRouter) -> None:
    with pytest.raises(qr.NotFoundError) as info:
        await replay_client.get("does-not-exist")
    assert info.value.detail == "Not found."


async def test_422_maps_to_invalid_input(replay_client: qr.QuickRouter) -> None:
    with pytest.raises(qr.InvalidInputError) as info:
        await replay_client.create("google/imagen-4", {"negative": "x"})
    assert info.value.invalid_fields[0]["type"] == "required"
    with pytest.raises(qr.InvalidInputError, match="Invalid version"):
        await replay_client.create("acme/model:" + "b" * 64, {"prompt": "x"})
