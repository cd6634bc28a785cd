"""The models the emulator knows: their input schemas, validation and output shapes.

Validation is written here from the published schemas, independently of the client's
typed inputs, so that each checks the other. Errors follow Replicate's 422 answers:
one ``invalid_fields`` entry per problem with a ``type`` (``required``, ``enum``,
``number_gte``, ``number_lte``, ``type``, ``format``, ``array_max_items``), a dotted
``field`` and a ``description``. Inputs of unknown models are accepted as they are, and
unknown fields of known models are ignored, as Replicate does.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

#: One entry of a 422 answer's ``invalid_fields``.
InvalidField = dict[str, str]

IMAGEN_MODELS: Final = ("google/imagen-4", "google/imagen-4-fast", "google/imagen-4-ultra")
SEEDREAM_MODEL: Final = "bytedance/seedream-4"
MAX_SEEDREAM_IMAGES: Final = 15

#: Version ids published for the known models, so ``{"version": "<64 hex>"}`` resolves.
KNOWN_VERSIONS: Final[Mapping[str, str]] = {
    "eb08b03f79ebc3d4b2542baacca07cc1e0729d24ed1730945555409f0ee30e1a": "google/imagen-4-ultra",
    "3ee3b70df63b39e425ccb0188d3c14961177c11fa20516d9dfd30a868b41b2d5": SEEDREAM_MODEL,
    "cf7d431991436f19d1c8dad83fe463c729c816d7a21056c5105e75c84a0aa7e9": SEEDREAM_MODEL,
    "e6cff243d7a5e551e1ca2b4bf291413d649c9f1417f9a52c1c0a4fbc36027b83": SEEDREAM_MODEL,
}

#: Models the emulator runs; a create for any other answers 404, as the API does
#: (unless the emulator is told to accept any model).
KNOWN_MODELS: Final = frozenset(
    {
        *IMAGEN_MODELS,
        SEEDREAM_MODEL,
        "bytedance/seedream-4.5",
        "black-forest-labs/flux-kontext-pro",
        "black-forest-labs/flux-kontext-max",
        "black-forest-labs/flux-schnell",
        "flux-kontext-apps/multi-image-kontext-max",
        "ideogram-ai/ideogram-v2-turbo",
    }
)

_VERSION_ID = re.compile(r"[0-9a-f]{64}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def json_type(value: object) -> str:
    """The JSON Schema type name of a decoded JSON value, as validators report it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def invalid(kind: str, field: str, description: str) -> InvalidField:
    """One ``invalid_fields`` entry."""
    return {"type": kind, "field": field, "description": description}


def type_error(field: str, expected: str, value: object) -> InvalidField:
    """An entry for a value of the wrong JSON type."""
    return invalid("type", field, f"Invalid type. Expected: {expected}, given: {json_type(value)}")


@attrs.frozen
class _String:
    def check(self, field: str, value: object) -> list[InvalidField]:
        return [] if isinstance(value, str) else [type_error(field, "string", value)]


@attrs.frozen
class _Boolean:
    def check(self, field: str, value: object) -> list[InvalidField]:
        return [] if isinstance(value, bool) else [type_error(field, "boolean", value)]


@attrs.frozen
class _Enum:
    choices: tuple[str, ...]

    def check(self, field: str, value: object) -> list[InvalidField]:
        if isinstance(value, str) and value in self.choices:
            return []
        name = field.rsplit(".", 1)[-1]
        listed = ", ".join(json.dumps(choice) for choice in self.choices)
        return [invalid("enum", field, f"{name} must be one of the following: {listed}")]


@attrs.frozen
class _Integer:
    minimum: int
    maximum: int

    def check(self, field: str, value: object) -> list[InvalidField]:
        # JSON does not tell 2048 from 2048.0; validators accept whole floats as integers.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (isinstance(value, float) and not value.is_integer())
        ):
            return [type_error(field, "integer", value)]
        if value < self.minimum:
            return [
                invalid("number_gte", field, f"Must be greater than or equal to {self.minimum}")
            ]
        if value > self.maximum:
            return [invalid("number_lte", field, f"Must be less than or equal to {self.maximum}")]
        return []


@attrs.frozen
class _UriArray:
    max_items: int

    def check(self, field: str, value: object) -> list[InvalidField]:
        if not isinstance(value, list):
            return [type_error(field, "array", value)]
        problems: list[InvalidField] = []
        if len(value) > self.max_items:
            problems.append(
                invalid("array_max_items", field, f"Array must have at most {self.max_items} items")
            )
        for position, item in enumerate(value):
            item_field = f"{field}.{position}"
            if not isinstance(item, str):
                problems.append(type_error(item_field, "string", item))
            elif not urlsplit(item).scheme:
                problems.append(invalid("format", item_field, "Does not match format 'uri'"))
        return problems


_Field = _String | _Boolean | _Enum | _Integer | _UriArray

_IMAGEN_FIELDS: Final[Mapping[str, _Field]] = {
    "prompt": _String(),
    "aspect_ratio": _Enum(("1:1", "9:16", "16:9", "3:4", "4:3")),
    "output_format": _Enum(("jpg", "png")),
    "safety_filter_level": _Enum(
        ("block_low_and_above", "block_medium_and_above", "block_only_high")
    ),
}
_SEEDREAM_FIELDS: Final[Mapping[str, _Field]] = {
    "prompt": _String(),
    "image_input": _UriArray(10),
    "size": _Enum(("1K", "2K", "4K", "custom")),
    "aspect_ratio": _Enum(
        ("match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9")
    ),
    "width": _Integer(1024, 4096),
    "height": _Integer(1024, 4096),
    "sequential_image_generation": _Enum(("disabled", "auto")),
    "max_images": _Integer(1, MAX_SEEDREAM_IMAGES),
    "enhance_prompt": _Boolean(),
}


def _schema(model: str) -> Mapping[str, _Field] | None:
    if model in IMAGEN_MODELS:
        return _IMAGEN_FIELDS
    if model == SEEDREAM_MODEL:
        return _SEEDREAM_FIELDS
    return None


def validate_input(model: str, values: Mapping[str, Any]) -> list[InvalidField]:
    """The problems of ``values`` as input of ``model`` (empty when it is valid)."""
    schema = _schema(model)
    if schema is None:
        return []
    problems: list[InvalidField] = []
    if "prompt" not in values:
        problems.append(invalid("required", "input", "prompt is required"))
    for name, field in schema.items():
        if name in values:
            problems.extend(field.check(f"input.{name}", values[name]))
    if model == SEEDREAM_MODEL and not problems:
        problems.extend(_seedream_total(values))
    return problems


def _seedream_total(values: Mapping[str, Any]) -> list[InvalidField]:
    """The cross-field rule: input images plus generated images at most 15."""
    if values.get("sequential_image_generation") != "auto":
        return []
    given = len(values.get("image_input", []))
    allowed = MAX_SEEDREAM_IMAGES - given
    if int(values.get("max_images", 1)) <= allowed:
        return []
    return [
        invalid(
            "number_lte",
            "input.max_images",
            f"Must be less than or equal to {allowed} "
            f"(input images plus generated images cannot exceed {MAX_SEEDREAM_IMAGES})",
        )
    ]


@attrs.frozen
class OutputPlan:
    """What a prediction will produce: how many images, of which format and size.

    ``single`` is true for models whose output is one URI string (Imagen 4) rather than
    a list of URI strings.
    """

    count: int
    extension: str
    width: int
    height: int
    single: bool
    label: str

    @property
    def content_type(self) -> str:
        """The media type of the files."""
        return "image/png" if self.extension == "png" else "image/jpeg"


def _dimensions(ratio_width: float, ratio_height: float, long_edge: int) -> tuple[int, int]:
    if ratio_width >= ratio_height:
        return long_edge, max(1, round(long_edge * ratio_height / ratio_width))
    return max(1, round(long_edge * ratio_width / ratio_height)), long_edge


def _ratio(label: str) -> tuple[int, int]:
    width, _, height = label.partition(":")
    return int(width), int(height)


def plan_output(model: str, values: Mapping[str, Any], image_size: int) -> OutputPlan:
    """The output of a valid ``values`` for ``model``, with images ``image_size`` long."""
    if model in IMAGEN_MODELS:
        label = str(values.get("aspect_ratio", "1:1"))
        width, height = _dimensions(*_ratio(label), image_size)
        extension = str(values.get("output_format", "jpg"))
        return OutputPlan(1, extension, width, height, single=True, label=label)
    if model == SEEDREAM_MODEL:
        if values.get("size") == "custom":
            custom = int(values.get("width", 2048)), int(values.get("height", 2048))
            label = f"{custom[0]}x{custom[1]}"
            width, height = _dimensions(*custom, image_size)
        else:
            label = str(values.get("aspect_ratio", "match_input_image"))
            # Without decoding the input images, "match" has nothing to match: square.
            ratio = (1, 1) if label == "match_input_image" else _ratio(label)
            width, height = _dimensions(*ratio, image_size)
        auto = values.get("sequential_image_generation") == "auto"
        count = int(values.get("max_images", 1)) if auto else 1
        return OutputPlan(count, "jpg", width, height, single=False, label=label)
    return OutputPlan(1, "png", image_size, image_size, single=False, label="1:1")


def parse_version(value: str, registry: Mapping[str, str]) -> tuple[str, str] | None:
    """``(model, version)`` for a create's ``version`` field, or ``None`` if invalid.

    ``owner/name`` runs the model's current version (``"hidden"``),
    ``owner/name:<64 hex>`` that version, and a bare ``<64 hex>`` a version found in
    ``registry`` (version id to model).
    """
    name, colon, version = value.partition(":")
    if colon:
        if _MODEL_NAME.fullmatch(name) and _VERSION_ID.fullmatch(version):
            return name, version
        return None
    if _MODEL_NAME.fullmatch(value):
        return value, "hidden"
    if _VERSION_ID.fullmatch(value) and value in registry:
        return registry[value], value
    return None


def valid_model_name(owner: str, name: str) -> bool:
    """Whether ``owner/name`` is a well-formed model name."""
    return _MODEL_NAME.fullmatch(f"{owner}/{name}") is not None
