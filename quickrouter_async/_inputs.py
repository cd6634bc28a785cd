"""Typed, validated inputs for the models the library knows well.

Each input class is frozen and keyword-only, validates on construction (raising
`InputError`, a `ValueError`, that names the field) and knows its model. The converter
in `_serde.py` turns it into the request's ``input`` object, leaving out None. Image
fields take URLs or local files (`_local_files`): files are read into ``data:`` URIs
when the create is built. Messages quote values through `short_repr`, never whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    Protocol,
    TypeAlias,
    get_args,
    runtime_checkable,
)

import attrs

from ._errors import InputError, short_repr
from ._local_files import ImageSource, image_source, is_local_file

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

__all__ = [
    "IMAGEN4_MODELS",
    "SEEDREAM4_MODEL",
    "Imagen4Input",
    "ModelInput",
    "Seedream4Input",
    "validate_model_name",
]

ImagenModel: TypeAlias = Literal["google/imagen-4", "google/imagen-4-fast", "google/imagen-4-ultra"]
ImagenAspectRatio: TypeAlias = Literal["1:1", "9:16", "16:9", "3:4", "4:3"]
ImagenOutputFormat: TypeAlias = Literal["jpg", "png"]
SafetyFilterLevel: TypeAlias = Literal[
    "block_low_and_above", "block_medium_and_above", "block_only_high"
]
SeedreamSize: TypeAlias = Literal["1K", "2K", "4K", "custom"]
SeedreamAspectRatio: TypeAlias = Literal[
    "match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9"
]
SequentialImageGeneration: TypeAlias = Literal["disabled", "auto"]

IMAGEN4_MODELS: Final[tuple[str, ...]] = get_args(ImagenModel)
SEEDREAM4_MODEL: Final = "bytedance/seedream-4"
SEEDREAM_MAX_INPUT_IMAGES: Final = 10
SEEDREAM_MAX_TOTAL_IMAGES: Final = 15
SEEDREAM_MIN_SIDE: Final = 1024
SEEDREAM_MAX_SIDE: Final = 4096


@runtime_checkable
class ModelInput(Protocol):
    """What `QuickRouter.create` accepts as a typed input: something that names its model.

    Any attrs class with a ``model`` attribute works; the converter sends its other
    fields, leaving out those that are None.
    """

    @property
    def model(self) -> str:
        """The model, as ``owner/name``."""
        ...


def validate_model_name(model: object) -> str:
    """Check that ``model`` reads ``owner/name`` (optionally ``:version``) and return it."""
    if not isinstance(model, str):
        raise InputError(
            f"model must be a string 'owner/name', not {short_repr(model)}", field="model"
        )
    name = model.split(":", 1)[0]
    owner, _, rest = name.partition("/")
    if not owner or not rest or "/" in rest or any(c.isspace() for c in model):
        raise InputError(f"model must read 'owner/name', got {short_repr(model)}", field="model")
    return model


def _one_of(choices: Collection[str]) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise InputError(
                f"{attribute.name} must be one of {allowed}; got {short_repr(value)}",
                field=attribute.name,
            )

    return check


def _int_between(low: int, high: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(
                f"{attribute.name} must be an integer, got {short_repr(value)}",
                field=attribute.name,
            )
        if not low <= value <= high:
            raise InputError(
                f"{attribute.name} must be between {low} and {high}; got {short_repr(value)}",
                field=attribute.name,
            )

    return check


def _prompt(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise InputError(f"prompt must be a string, got {short_repr(value)}", field=attribute.name)
    if not value.strip():
        raise InputError("prompt must not be empty", field=attribute.name)


def _bool_or_none(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise InputError(f"{attribute.name} must be True or False", field=attribute.name)


def _image_list(value: object) -> tuple[ImageSource, ...]:
    """The images of ``image_input``: URLs kept, local files checked (not read yet)."""
    if value is None:
        return ()
    if isinstance(value, str) or is_local_file(value):
        raise InputError(
            "image_input takes a list of images; put a single one in a list: [image]",
            field="image_input",
        )
    if not isinstance(value, Iterable):
        raise InputError(
            f"image_input must be a list of images, not {type(value).__name__}",
            field="image_input",
        )
    items = tuple(value)
    if len(items) > SEEDREAM_MAX_INPUT_IMAGES:
        raise InputError(
            f"image_input takes at most {SEEDREAM_MAX_INPUT_IMAGES} images; got {len(items)}",
            field="image_input",
        )
    return tuple(
        image_source(item, f"image_input[{position}]", "image_input")
        for position, item in enumerate(items)
    )


def _images_repr(images: tuple[ImageSource, ...]) -> str:
    # data: URIs and bytes run to megabytes: a repr shows their start and their size.
    return short_repr(images, limit=400)


@attrs.frozen(kw_only=True)
class Imagen4Input:
    """Input of Google Imagen 4 (``google/imagen-4``, ``-fast`` and ``-ultra``).

    The output is a single image URL.

    Attributes:
        prompt: the text prompt (required, not empty).
        aspect_ratio: one of ``1:1`` (default), ``9:16``, ``16:9``, ``3:4``, ``4:3``.
        output_format: ``jpg`` (default) or ``png``.
        safety_filter_level: ``block_only_high`` (default, most permissive),
            ``block_medium_and_above`` or ``block_low_and_above`` (strictest).
        model: which Imagen 4 model runs it; not sent in the input.
    """

    prompt: str = attrs.field(validator=_prompt)
    aspect_ratio: ImagenAspectRatio = attrs.field(
        default="1:1", validator=_one_of(get_args(ImagenAspectRatio))
    )
    output_format: ImagenOutputFormat = attrs.field(
        default="jpg", validator=_one_of(get_args(ImagenOutputFormat))
    )
    safety_filter_level: SafetyFilterLevel = attrs.field(
        default="block_only_high", validator=_one_of(get_args(SafetyFilterLevel))
    )
    model: ImagenModel = attrs.field(default="google/imagen-4", validator=_one_of(IMAGEN4_MODELS))


@attrs.frozen(kw_only=True)
class Seedream4Input:
    """Input of ByteDance Seedream 4 (``bytedance/seedream-4``).

    The output is a list of image URLs, even for one image.

    Attributes:
        prompt: the text prompt (required, not empty).
        image_input: up to 10 reference images, each an ``http(s)://`` or ``data:`` URL,
            or a local file: a `pathlib.Path`, a ``str`` naming a file, ``bytes``, or a
            file opened in binary mode. Files are checked here (one ``stat``), read when
            the create is built (in a worker thread) and sent as ``data:`` URIs of at most
            10 MiB each.
        size: ``1K``, ``2K`` (default), ``4K``, or ``custom`` (then `width` and `height`).
        aspect_ratio: ``match_input_image`` (default), ``1:1``, ``4:3``, ``3:4``, ``16:9``,
            ``9:16``, ``3:2``, ``2:3`` or ``21:9``; ignored for a custom size.
        width: 1024-4096 pixels; required with ``size="custom"``, ignored by the server
            otherwise (server default 2048).
        height: 1024-4096 pixels; required with ``size="custom"``, ignored by the server
            otherwise (server default 2048).
        sequential_image_generation: ``disabled`` (default: one image) or ``auto`` (the
            model may make several related images, up to `max_images`).
        max_images: 1-15 (default 1), an upper bound used with ``auto``; input and
            generated images together can't exceed 15.
        enhance_prompt: prompt enhancement, slower and better (server default True);
            None leaves it out, for model versions that lack it.
    """

    prompt: str = attrs.field(validator=_prompt)
    image_input: tuple[ImageSource, ...] = attrs.field(
        factory=tuple, converter=_image_list, repr=_images_repr
    )
    size: SeedreamSize = attrs.field(default="2K", validator=_one_of(get_args(SeedreamSize)))
    aspect_ratio: SeedreamAspectRatio = attrs.field(
        default="match_input_image", validator=_one_of(get_args(SeedreamAspectRatio))
    )
    width: int | None = attrs.field(
        default=None, validator=_int_between(SEEDREAM_MIN_SIDE, SEEDREAM_MAX_SIDE)
    )
    height: int | None = attrs.field(
        default=None, validator=_int_between(SEEDREAM_MIN_SIDE, SEEDREAM_MAX_SIDE)
    )
    sequential_image_generation: SequentialImageGeneration = attrs.field(
        default="disabled", validator=_one_of(get_args(SequentialImageGeneration))
    )
    max_images: int = attrs.field(default=1, validator=_int_between(1, SEEDREAM_MAX_TOTAL_IMAGES))
    enhance_prompt: bool | None = attrs.field(default=None, validator=_bool_or_none)

    def __attrs_post_init__(self) -> None:
        if self.size == "custom":
            for name in ("width", "height"):
                if getattr(self, name) is None:
                    raise InputError(f'size="custom" needs {name} (1024-4096)', field=name)
        if len(self.image_input) + self.max_images > SEEDREAM_MAX_TOTAL_IMAGES:
            raise InputError(
                f"input images ({len(self.image_input)}) plus max_images ({self.max_images}) "
                f"can't exceed {SEEDREAM_MAX_TOTAL_IMAGES}",
                field="max_images",
            )

    @property
    def model(self) -> str:
        """Always ``bytedance/seedream-4``."""
        return SEEDREAM4_MODEL
