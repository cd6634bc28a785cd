"""Typed inputs: every field, enum, default and range, checked before any request."""

from __future__ import annotations

from types import MappingProxyType

import attrs
import pytest
import quickrouter_async as qr
from hypothesis import given
from hypothesis import strategies as st
from quickrouter_async._serde import input_payload

IMAGEN_RATIOS = ["1:1", "9:16", "16:9", "3:4", "4:3"]
SEEDREAM_RATIOS = ["match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9"]
prompts = st.text(min_size=1, max_size=200).filter(lambda s: s.strip())


def test_imagen_defaults_match_the_model_schema() -> None:
    value = qr.Imagen4Input(prompt="a lighthouse")
    assert value.model == "google/imagen-4"
    assert input_payload(value) == {
        "prompt": "a lighthouse",
        "aspect_ratio": "1:1",
        "output_format": "jpg",
        "safety_filter_level": "block_only_high",
    }


@pytest.mark.parametrize("model", ["google/imagen-4-fast", "google/imagen-4-ultra"])
def test_imagen_variants_share_the_fields(model: str) -> None:
    value = qr.Imagen4Input(prompt="x", model=model)  # type: ignore[arg-type]
    assert value.model == model
    assert "model" not in input_payload(value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("aspect_ratio", "2:1"),
        ("output_format", "webp"),
        ("safety_filter_level", "none"),
        ("model", "google/imagen-3"),
    ],
)
def test_imagen_rejects_values_outside_the_enums(field: str, value: str) -> None:
    with pytest.raises(qr.InputError, match=field) as info:
        qr.Imagen4Input(prompt="x", **{field: value})
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("prompt", ["", "   ", None, 3])
def test_prompt_is_required_and_not_blank(prompt: object) -> None:
    with pytest.raises(qr.InputError, match="prompt"):
        qr.Imagen4Input(prompt=prompt)  # type: ignore[arg-type]
    with pytest.raises(qr.InputError, match="prompt"):
        qr.Seedream4Input(prompt=prompt)  # type: ignore[arg-type]


def test_inputs_are_frozen_and_keyword_only() -> None:
    value = qr.Imagen4Input(prompt="x")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        value.prompt = "y"  # type: ignore[misc]
    with pytest.raises(TypeError):
        qr.Imagen4Input("x")  # type: ignore[misc]


def test_seedream_defaults_leave_out_unset_fields() -> None:
    value = qr.Seedream4Input(prompt="a store front")
    assert value.model == "bytedance/seedream-4"
    assert input_payload(value) == {
        "prompt": "a store front",
        "image_input": [],
        "size": "2K",
        "aspect_ratio": "match_input_image",
        "sequential_image_generation": "disabled",
        "max_images": 1,
    }


def test_seedream_custom_size_needs_width_and_height() -> None:
    with pytest.raises(qr.InputError, match="width") as info:
        qr.Seedream4Input(prompt="x", size="custom", height=2048)
    assert info.value.field == "width"
    with pytest.raises(qr.InputError, match="height"):
        qr.Seedream4Input(prompt="x", size="custom", width=2048)
    value = qr.Seedream4Input(prompt="x", size="custom", width=1024, height=4096)
    assert input_payload(value)["width"] == 1024


@pytest.mark.parametrize(("field", "value"), [("width", 1023), ("height", 4097), ("width", 2e3)])
def test_seedream_sides_are_bounded_integers(field: str, value: object) -> None:
    sides = {"width": 2048, "height": 2048, field: value}
    with pytest.raises(qr.InputError, match=field):
        qr.Seedream4Input(prompt="x", size="custom", **sides)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_images", [0, 16, True])
def test_seedream_max_images_range(max_images: object) -> None:
    with pytest.raises(qr.InputError, match="max_images"):
        qr.Seedream4Input(prompt="x", max_images=max_images)  # type: ignore[arg-type]


def test_seedream_image_limits() -> None:
    urls = [f"https://example.com/{i}.png" for i in range(11)]
    with pytest.raises(qr.InputError, match="at most 10"):
        qr.Seedream4Input(prompt="x", image_input=urls)
    with pytest.raises(qr.InputError, match="can't exceed 15"):
        qr.Seedream4Input(
            prompt="x", image_input=urls[:10], sequential_image_generation="auto", max_images=6
        )
    ok = qr.Seedream4Input(
        prompt="x", image_input=urls[:10], sequential_image_generation="auto", max_images=5
    )
    assert input_payload(ok)["image_input"] == urls[:10]


@pytest.mark.parametrize("image_input", ["https://example.com/a.png", ["ftp://x/a.png"], [3]])
def test_seedream_image_input_must_be_a_list_of_urls(image_input: object) -> None:
    with pytest.raises(qr.InputError, match="image_input"):
        qr.Seedream4Input(prompt="x", image_input=image_input)  # type: ignore[arg-type]


def test_seedream_enums_and_flags() -> None:
    with pytest.raises(qr.InputError, match="size"):
        qr.Seedream4Input(prompt="x", size="8K")  # type: ignore[arg-type]
    with pytest.raises(qr.InputError, match="sequential_image_generation"):
        qr.Seedream4Input(prompt="x", sequential_image_generation="on")  # type: ignore[arg-type]
    with pytest.raises(qr.InputError, match="enhance_prompt"):
        qr.Seedream4Input(prompt="x", enhance_prompt="yes")  # type: ignore[arg-type]
    assert (
        input_payload(qr.Seedream4Input(prompt="x", enhance_prompt=False))["enhance_prompt"]
        is False
    )


@given(
    prompt=prompts,
    aspect_ratio=st.sampled_from(IMAGEN_RATIOS),
    output_format=st.sampled_from(["jpg", "png"]),
)
def test_imagen_payload_round_trips(prompt: str, aspect_ratio: str, output_format: str) -> None:
    value = qr.Imagen4Input(prompt=prompt, aspect_ratio=aspect_ratio, output_format=output_format)  # type: ignore[arg-type]
    payload = input_payload(value)
    assert qr.Imagen4Input(**payload) == value


@given(
    prompt=prompts,
    aspect_ratio=st.sampled_from(SEEDREAM_RATIOS),
    images=st.lists(
        st.from_regex(r"https://[a-z]{1,10}\.example/[a-z0-9]{1,8}\.png", fullmatch=True),
        max_size=10,
    ),
    auto=st.booleans(),
    max_images=st.integers(1, 15),
    custom=st.none() | st.tuples(st.integers(1024, 4096), st.integers(1024, 4096)),
)
def test_seedream_payload_round_trips_or_names_the_rule(
    prompt: str,
    aspect_ratio: str,
    images: list[str],
    auto: bool,
    max_images: int,
    custom: tuple[int, int] | None,
) -> None:
    kwargs: dict[str, object] = {
        "prompt": prompt,
        "aspect_ratio": aspect_ratio,
        "image_input": images,
        "sequential_image_generation": "auto" if auto else "disabled",
        "max_images": max_images,
    }
    if custom:
        kwargs.update(size="custom", width=custom[0], height=custom[1])
    if len(images) + max_images > 15:
        with pytest.raises(qr.InputError, match="max_images"):
            qr.Seedream4Input(**kwargs)  # type: ignore[arg-type]
        return
    value = qr.Seedream4Input(**kwargs)  # type: ignore[arg-type]
    payload = input_payload(value)
    assert None not in payload.values()
    assert qr.Seedream4Input(**payload) == value


def test_mappings_pass_through_without_none() -> None:
    assert input_payload({"prompt": "x", "seed": None, "steps": 4}) == {"prompt": "x", "steps": 4}
    frozen = MappingProxyType({"prompt": "x", "seed": None})
    assert input_payload(frozen) == {"prompt": "x"}
    with pytest.raises(qr.InputError, match="keys"):
        input_payload(MappingProxyType({2: None}))
    with pytest.raises(qr.InputError, match="keys"):
        input_payload({1: "x"})
    with pytest.raises(qr.InputError, match="typed input or a mapping"):
        input_payload(["prompt"])
